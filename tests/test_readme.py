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


def test_the_quick_start_is_the_recorded_run():
    """The README's main command is the run its record measured, with its figure."""
    import json
    readme = (REPO / "README.md").read_text()
    cmd = re.search(r"```bash\npip install -e \. && (python -m experiments\.mnist[^\n]*)\n",
                    readme).group(1)
    rec = json.loads((REPO / "benchmarks/results/runs/"
                      "mnist-quickstart-2x500-25ep-results.json").read_text())
    recorded = re.sub(r" --(data-dir|out-dir) \S+", "", rec["command"])
    assert cmd == recorded
    assert f"**{100 * rec['test_accuracy']:.2f} % test accuracy**" in readme
    assert rec["test_accuracy"] >= 0.98 and rec["train_seconds"] <= 90
    assert not rec["git_dirty"]


@pytest.mark.parametrize("module, preset, records", [
    ("fashion_mnist", "hinton-unsupervised-local",
     ["fashion-unsupervised-local-paper-100ep-seed0",
      "fashion-unsupervised-local-paper-100ep-seed1"]),
    ("mnist", "hinton-unsupervised-local",
     ["mnist-unsupervised-local-paper-noise-100ep-seed0",
      "mnist-unsupervised-local-paper-noise-100ep-seed1",
      "mnist-unsupervised-local-paper-noise-wide-100ep-seed0",
      "mnist-unsupervised-local-paper-noise-wide-100ep-seed1"]),
    ("mnist", "mnist-conv-wide",
     ["mnist-conv-groups-4conv-p3-320-bn-wide15-drop02-20ep-test-seed0",
      "mnist-conv-groups-4conv-p3-320-bn-wide15-drop02-20ep-test-seed1"]),
    ("fashion_mnist", "fashion-conv",
     ["fashion-conv-groups-4conv-p3-320-bn-wide15-drop01-20ep-test-seed0",
      "fashion-conv-groups-4conv-p3-320-bn-wide15-drop01-20ep-test-seed1",
      "fashion-conv-groups-4conv-p3-320-bn-wide15-drop01-20ep-test-seed2",
      "fashion-conv-groups-4conv-p3-320-bn-wide15-drop01-20ep-test-seed3",
      "fashion-conv-groups-4conv-p3-320-bn-wide15-drop01-20ep-test-seed4"]),
])
def test_a_preset_row_is_the_recorded_run(module, preset, records):
    """Each README table command of the preset, with and without its optional part
    ([--seed 1]), names the settings of one of its records (only the goodness readout's
    score layers, unused without a label, the checkpoint cadence, a --resume and the preset's
    name may differ: a record may have been run with explicit flags or continued), and the
    README quotes every record's test figure (and its joint readout's, where it has one)."""
    import dataclasses
    import importlib
    import json
    from ffjax import config
    defaults = importlib.import_module(f"experiments.{module}").DEFAULTS
    readme = (REPO / "README.md").read_text()
    # The table's commands, which evaluate on the test set, not the quick-start ones.
    cmds = re.findall(rf"\| `python -m experiments\.{module} (--preset "
                      rf"{re.escape(preset)}(?: [^`]*)?)` \|", readme)
    assert cmds, f"no table command for experiments.{module} --preset {preset} in the README"
    recs = [json.loads((REPO / f"benchmarks/results/runs/{r}-results.json").read_text())
            for r in records]
    ignore = {"preset", "score_first_layer", "data_dir", "out_dir", "checkpoint_every",
              "resume"}
    # A setting added after a record was made takes its default, as --resume reads it.
    recorded = [{k: v for k, v in
                 dataclasses.asdict(config.config_from_dict(rec["config"])).items()
                 if k not in ignore} for rec in recs]
    for cmd in cmds:
        for variant in (re.sub(r" \[[^]]*\]", "", cmd),
                        re.sub(r" \[([^]]*)\]", r" \1", cmd)):
            named = dataclasses.asdict(config.parse_config(variant.split(), defaults))
            assert {k: v for k, v in named.items() if k not in ignore} in recorded, variant
    for rec in recs:
        assert f"{100 * rec['test_accuracy']:.2f} %" in readme or \
            f"{100 * (1 - rec['test_accuracy']):.2f} %" in readme
        if "test_accuracy_joint_by_score_layers" in rec:
            assert any(f"{100 * a:.2f} %" in readme for a in
                       rec["test_accuracy_joint_by_score_layers"].values())
        assert rec["num_train"] == 60000 - rec["config"]["validation_size"]
        assert not rec["git_dirty"]
