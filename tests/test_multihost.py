"""Two processes on localhost (CPU, gloo collectives) train one model through
jax.distributed, the way several hosts would: the same run directory, the same result as
one process."""

import json
import socket
import subprocess
import sys

from experiments import mnist
from ffjax import experiment
from tests.conftest import REPO, quietly

SETTINGS = ["--hidden", "32", "--epochs", "2", "--batch-size", "1000", "--negatives",
            "uniform", "--no-readout", "--eval-every", "1", "--train-size", "20000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(data_dir, tmp_path):
    port, out = _free_port(), tmp_path / "two"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.mnist", "--data-dir", str(data_dir), *SETTINGS,
         "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
         str(i), "--out-dir", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    # The one-process run needs no process of its own: it runs in this one.
    code, err = quietly(experiment.main, mnist.DEFAULTS, "test",
                        ["--data-dir", str(data_dir), *SETTINGS, "--out-dir",
                         str(tmp_path / "one")])
    assert code == 0, err[-2000:]
    rows = {d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text()
                .splitlines()] for d in ("two", "one")}
    for a, b in zip(rows["two"], rows["one"]):
        for u, v in zip(a["layer_loss"], b["layer_loss"]):
            assert abs(u - v) <= 1e-4 * max(1.0, abs(v))
        assert abs(a["eval_accuracy"] - b["eval_accuracy"]) <= 0.002
    assert (out / "results.json").exists() and (out / "checkpoints" / "2").is_dir()
