"""The run record: one run directory's config, metrics, results, plots and provenance."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import tensorboardX

from ffjax import checkpoint, plots

CONFIG, METRICS, RESULTS = "config.json", "metrics.jsonl", "results.json"


class RecordError(ValueError):
    """A run directory that cannot be used as asked (holds another run, is a file, ...)."""


def device_description() -> str:
    """The device the run computes on, e.g. "cpu (x86_64, 2 cores)", "gpu (H100) x1"."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{d.platform} ({d.device_kind}) x{jax.device_count()}"


def device_model() -> str:
    """The model name of the device: the CPU's (from /proc/cpuinfo where there is one)
    or the accelerator's device kind, e.g. "NVIDIA H100 80GB HBM3"."""
    d = jax.devices()[0]
    if d.platform != "cpu":
        return str(d.device_kind)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args) -> str | None:
    """Output of a git command run in the checkout that holds this ffjax, or None when
    ffjax is not imported from a git checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """Which code produced a result: the git commit of the ffjax checkout and whether
    its tree differed from that commit (tracked changes or files git does not ignore);
    for an installed package, its version and a commit of None."""
    from ffjax import __version__
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    return {"git_commit": commit, "git_dirty": None if commit is None else bool(status),
            "ffjax_version": __version__}


def device_slug() -> str:
    """device_description() as a file-name part, e.g. cpu-x86-64-2-cores."""
    return re.sub(r"[^a-z0-9]+", "-", device_description().lower()).strip("-")


def _main_module() -> str | None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec and spec.name else None


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    module = _main_module()
    head = f"python -m {module}" if module else f"python {sys.argv[0]}"
    return " ".join([head] + sys.argv[1:])


def provenance() -> dict:
    """Where, how and by which code a result was measured: device and its model, JAX
    and jaxlib versions, date, command, git commit and whether the tree was dirty."""
    import jaxlib
    return {"device": device_description(), "device_model": device_model(),
            "jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": command_line(), **code_version()}


def replace_atomically(path, write) -> Path:
    """Calls write(tmp_path) and renames the file over `path` (creating the parent
    folders), so a reader or a kill mid-write never sees a truncated file: `path` holds
    either its old content or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, obj) -> Path:
    """Writes obj as indented JSON, atomically (replace_atomically)."""
    text = json.dumps(obj, indent=2)
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_benchmark(name: str, info: dict, out=None, *, suffix: str) -> Path:
    """Writes a benchmark's record, {"benchmark": name, provenance, **info}, to `out` or
    benchmarks/results/<device>-<date>-<suffix>.json, says where, and returns the path."""
    record = {"benchmark": name, **provenance(), **info}
    path = write_json(out or f"benchmarks/results/{device_slug()}-{record['date'][:10]}-"
                      f"{suffix}.json", record)
    print(f"wrote {path}")
    return path


def scalars(row: dict):
    """(tag, value) for every number of a metrics.jsonl row, for TensorBoard: lists per
    layer ("layer_loss/layer_1"), dicts by key ("eval_accuracy_by_score_layers/all"),
    the epoch's durations under "seconds/"."""
    for key, value in row.items():
        if key == "epoch" or isinstance(value, (str, bool)) or value is None:
            continue
        if key in ("seconds", "eval_seconds"):
            yield f"seconds/{'train' if key == 'seconds' else 'eval'}", float(value)
        elif isinstance(value, dict):
            for name, v in value.items():
                yield f"{key}/{name}", float(v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield f"{key}/layer_{i + 1}", float(v)
        else:
            yield key, float(value)


class RunDir:
    """One run's directory. With several processes only the primary one writes files
    (all of them take part in checkpoints, which ffjax.checkpoint handles)."""

    def __init__(self, path, *, primary: bool = True):
        self.path = Path(path)
        self.primary = primary
        self._metrics = None
        self._events = None  # the TensorBoard writer, primary process only

    @classmethod
    def create(cls, path=None, *, name: str = "run", overwrite: bool = False,
               primary: bool = True) -> "RunDir":
        """A new run directory: `path`, or runs/<name>-<date>-<time>. One that already
        holds files is refused unless overwrite (then its old checkpoints are removed,
        so they are never resumed as this run's)."""
        if path is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / f"{name}-{stamp}"
        path = Path(path)
        if not primary:
            return cls(path, primary=False)
        if path.exists() and not path.is_dir():
            raise RecordError(f"--out-dir {path} exists and is not a directory.")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise RecordError(f"run directory {path} already holds files; choose another "
                              "--out-dir or pass --overwrite to write into it.")
        path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            shutil.rmtree(path / checkpoint.SUBDIR, ignore_errors=True)
        return cls(path)

    def write_config(self, config: dict) -> None:
        if self.primary:
            write_json(self.path / CONFIG, config)

    def read_config(self) -> dict:
        """The saved config.json; RecordError when there is none or it is unreadable."""
        path = self.path / CONFIG
        if not path.is_file():
            raise RecordError(f"--resume {self.path}: no run there ({path} does not "
                              "exist). Give the run directory of the run to continue.")
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise RecordError(f"--resume {self.path}: {path} is not readable JSON "
                              f"({e}).") from None

    def has_results(self) -> bool:
        return (self.path / RESULTS).exists()

    def open_metrics(self, keep_through_epoch: int = 0) -> list:
        """Starts metrics.jsonl and the TensorBoard event file: the rows of epochs <=
        keep_through_epoch already there are kept (a resumed run redoes the later ones,
        and TensorBoard hides the events it logged for them) and returned; later rows go
        through log()."""
        path = self.path / METRICS
        kept = []
        if keep_through_epoch and path.exists():
            kept = [r for r in map(json.loads, path.read_text().splitlines())
                    if r["epoch"] <= keep_through_epoch]
        self._metrics = open(path if self.primary else os.devnull, "w")
        for row in kept:
            self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self.primary:
            self._events = tensorboardX.SummaryWriter(
                str(self.path), purge_step=keep_through_epoch + 1 if keep_through_epoch
                else None)
        return kept

    def log(self, row: dict) -> None:
        """Appends one epoch's row to metrics.jsonl and its numbers, as scalars at step
        = epoch, to the TensorBoard event file (both flushed at once)."""
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._events is not None:
            for tag, value in scalars(row):
                self._events.add_scalar(tag, value, global_step=row["epoch"])
            self._events.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def write_results(self, results: dict) -> None:
        if self.primary:
            write_json(self.path / RESULTS, results)

    def write_plots(self, rows: list, images, labels, predicted, class_names) -> None:
        """loss.png (per-layer loss), accuracy.png (per epoch), predictions.png."""
        if not self.primary:
            return
        plots.plot_layer_losses(rows, self.path / "loss.png")
        plots.plot_accuracy(rows, self.path / "accuracy.png")
        plots.plot_predictions(images, labels, predicted, class_names,
                               self.path / "predictions.png")

    def resume_command(self) -> str:
        return f"python -m {_main_module() or 'experiments.mnist'} --resume {self.path}"
