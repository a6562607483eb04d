"""The code examples of the README and docs/ run as written."""

import re

import pytest

from tests.conftest import REPO

DOCS = ["README.md", *sorted(p.relative_to(REPO).as_posix()
                             for p in (REPO / "docs").glob("*.md"))]


def _python_blocks(name):
    return re.findall(r"```python\n(.*?)```", (REPO / name).read_text(), flags=re.S)


@pytest.mark.parametrize("name", [d for d in DOCS if _python_blocks(d)])
def test_examples_run(name, capsys):
    namespace = {}
    for code in _python_blocks(name):
        exec(compile(code, name, "exec"), namespace)
    out = capsys.readouterr().out
    if name == "README.md":
        acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
        assert acc > 0.9
    if name == "docs/recipe.md":  # the library form shown is exactly --preset hinton
        from ffjax import config
        cfg = config.parse_config(["--preset", "hinton"], config.Config())
        assert namespace["hinton"] == config.spec_of(cfg, 10)
        assert namespace["hinton_optimizer"] == config.optimizer_of(cfg)


def test_links_point_to_files_that_exist():
    for name in DOCS + ["benchmarks/results/README.md"]:
        base = (REPO / name).parent
        for target in re.findall(r"\]\(([^)#]+)\)", (REPO / name).read_text()):
            if "://" not in target:
                assert (base / target).exists(), f"{name} links to missing {target}"
