"""The wheel: it installs the library alone, with what the library imports."""

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO

_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                                     "__pycache__", ".data", ".pytest_cache")


def test_the_wheel_holds_ffjax_alone(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves the checkout untouched
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", tmp_path / "dist",
                           src], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ffjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ffjax", next(t for t in tops if t.endswith(".dist-info"))}, tops
    modules = {n for n in names if n.startswith("ffjax/")}
    assert {f"ffjax/{p.name}" for p in (REPO / "ffjax").glob("*.py")} == modules
    meta = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = {line.split(":", 1)[1].split(";")[0].strip().split(">")[0].split("=")[0]
                for line in meta.splitlines() if line.startswith("Requires-Dist:")
                and "extra ==" not in line}
    # What the library imports (and nothing only the tests use) is a runtime dependency.
    assert {"jax", "flax", "optax", "numpy", "tensorflow-datasets", "tqdm", "matplotlib",
            "orbax-checkpoint", "tensorboardX"} <= requires
    assert "chex" not in requires and "pytest" not in requires
