"""Reliability: checkpoints and exact resume, Ctrl-C, divergence guard, determinism, and a
clear one-line refusal (exit code 2) for every kind of bad input a user can give."""

import dataclasses
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import mnist
from ffjax import checkpoint, driver, experiment, optim
from ffjax.spec import FFSpec
from tests.conftest import REPO, built_once, quietly

# Big enough that an epoch takes a moment on 2 CPU cores, so a run can be stopped mid-way.
RUN = ["--hidden", "128", "128", "--epochs", "4", "--train-size", "20000"]


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "experiments.mnist", *map(str, args)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, proc, timeout=300):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def _final_state(run_dir, epochs):
    ckpt = checkpoint.Checkpoints(run_dir)
    path = ckpt.directory / str(epochs)
    assert path.is_dir(), f"no checkpoint of epoch {epochs} in {ckpt.directory}"
    import orbax.checkpoint as ocp
    state = ocp.StandardCheckpointer().restore(path / "default")
    ckpt.close()
    return state


def _same_run(a, b):
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for k in ("test_accuracy", "test_accuracy_softmax", "test_accuracy_per_layer"):
        assert ra[k] == rb[k], k
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (a, b)]
    timing = {"seconds", "eval_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows[1]]
    sa, sb = _final_state(a, ra["epochs"]), _final_state(b, rb["epochs"])
    la, lb = jax.tree.leaves(sa), jax.tree.leaves(sb)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="session")
def uninterrupted(data_dir, tmp_path_factory):
    """The run the stopped-and-resumed runs must equal, made once per test session
    whichever workers ask for it. The tests ask for it once their own run is done
    (request.getfixturevalue), so a worker waiting for another's build has worked
    meanwhile."""
    def build(out):
        code, err = _main_in_process(["--data-dir", str(data_dir), *RUN,
                                      "--out-dir", str(out)])
        assert code == 0, err[-2000:]
    return built_once(tmp_path_factory, "uninterrupted-run", build)


def test_killed_run_with_a_corrupt_newest_checkpoint_resumes_exactly(data_dir, tmp_path,
                                                                     request):
    out = tmp_path / "killed"
    proc = _start("--data-dir", data_dir, *RUN, "--checkpoint-every", 1, "--out-dir", out)
    _wait_for(lambda: (out / "checkpoints" / "2").is_dir(), proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "results.json").exists()
    # A half-written save is a temporary folder orbax never reports as a checkpoint.
    (out / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()
    ckpts = checkpoint.Checkpoints(out)
    newest = ckpts.latest_epoch()
    ckpts.close()
    assert newest in (2, 3)
    for f in (out / "checkpoints" / str(newest)).rglob("*"):  # the probe of the issue
        if f.is_file():
            f.write_bytes(np.random.default_rng(0).bytes(max(f.stat().st_size, 64)))

    code, err = _main_in_process(["--resume", str(out), "--data-dir", str(data_dir)])
    assert code == 0, err[-2000:]
    warning = [ln for ln in err.splitlines() if "corrupt" in ln]
    assert len(warning) == 1 and f"checkpoint of epoch {newest}" in warning[0]
    assert f"resuming from the checkpoint of epoch {newest - 1}" in warning[0]
    assert "Traceback" not in err and "does not fit" not in err
    assert (out / "checkpoints" / f"corrupt-{newest}").is_dir()  # kept, set aside
    _same_run(request.getfixturevalue("uninterrupted"), out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_a_checkpoint_and_say_how_to_resume(data_dir, tmp_path,
                                                                    request, sig, code):
    out = tmp_path / "interrupted"
    # --checkpoint-every 0: the only checkpoint before the end is the one the signal makes.
    proc = _start("--data-dir", data_dir, *RUN, "--checkpoint-every", 0, "--out-dir", out)
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    assert f"Resume with: python -m experiments.mnist --resume {out}" in err
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < 4 and checkpoint.Checkpoints(out).latest_epoch() == done
    assert not (out / "results.json").exists()
    if sig == signal.SIGINT:
        return  # the same stop path as SIGTERM's, whose resume follows
    code, err = _main_in_process(["--resume", str(out), "--data-dir", str(data_dir)])
    assert code == 0, err[-2000:]
    _same_run(request.getfixturevalue("uninterrupted"), out)


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(mnist, tmp_path):
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    # A sane rate for two epochs (10 steps each), then an infinite one.
    def lr(count):
        return jnp.where(count < 20, 0.01, jnp.inf)

    ckpts = checkpoint.Checkpoints(tmp_path)
    saved = []

    def on_epoch(report, state):
        ckpts.save(report.epoch + 1, state)
        saved.append(report.epoch + 1)

    with pytest.raises(driver.DivergedError) as e:
        driver.fit(jax.random.key(0), x, y, FFSpec(hidden=(32, 32)), epochs=6,
                   optimizer=optax.sgd(lr), readout_optimizer=optax.sgd(0.1),
                   on_epoch=on_epoch)
    assert e.value.epoch == 2 and e.value.layer is not None
    assert "training diverged" in str(e.value) and "Lower the learning rate" in str(e.value)
    assert saved == [1, 2] and ckpts.latest_epoch() == 2  # the NaN state was never saved
    ckpts.close()


def test_divergence_on_the_cli_is_one_line_naming_the_layer(data_dir, tmp_path):
    code, err = _main_in_process(["--data-dir", str(data_dir), "--hidden", "32",
                                  "--epochs", "2", "--lr", "1000",
                                  "--out-dir", str(tmp_path / "d")])
    assert code == 1
    assert "training diverged: layer 1's FF loss was nan in epoch 1" in err
    assert "Lower the learning rate (--lr)" in err and _one_line(err)


def test_same_seed_same_platform_gives_identical_runs(mnist):
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]

    def run():
        r = driver.fit(jax.random.key(3), x, y, FFSpec(hidden=(32, 16)), epochs=2)
        return [np.asarray(h.metrics.layers.loss) for h in r.history], r.state

    (m1, s1), (m2, s2) = run(), run()
    for a, b in zip(m1, m2):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _one_line(err: str) -> bool:
    """stderr holds exactly one message line besides progress-bar redraws."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines()
             if ln.strip() and "%|" not in ln]
    return len(lines) == 1 and "Traceback" not in err


# ---- bad input: one line on stderr, exit code 2, nothing deep from JAX ------------------

def _main_in_process(argv, capsys=None):
    """Runs the real CLI entry point (experiments.mnist's main) in this process."""
    return quietly(experiment.main, mnist.DEFAULTS, "test", argv)


def _copy_mnist(data_dir, tmp_path):
    dst = tmp_path / "data" / "mnist"
    shutil.copytree(data_dir / "mnist", dst)
    return tmp_path / "data", dst


def _gz(path, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(payload)


def _idx_labels(values):
    return (b"\x00\x00\x08\x01" + len(values).to_bytes(4, "big") + bytes(values))


def _break_missing(d):
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    return "found no t10k-labels-idx1-ubyte.gz"


def _break_corrupt(d):
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data")
    return "t10k-labels-idx1-ubyte.gz"


def _break_truncated(d):
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:5000])
    return "train-images-idx3-ubyte.gz"


def _break_magic(d):
    _gz(d / "t10k-labels-idx1-ubyte.gz", b"\x12\x34\x08\x01" + (0).to_bytes(4, "big"))
    return "magic"


def _break_label_range(d):
    _gz(d / "t10k-labels-idx1-ubyte.gz", _idx_labels([3, 12] * 5000))
    return "labels go up to 12"


def _break_count(d):
    _gz(d / "t10k-labels-idx1-ubyte.gz", _idx_labels([1] * 9000))
    return "holds 10000 images but"


@pytest.mark.parametrize("breaker", [_break_missing, _break_corrupt, _break_truncated,
                                     _break_magic, _break_label_range, _break_count])
def test_malformed_data_files_are_refused_in_one_line(breaker, data_dir, tmp_path):
    root, folder = _copy_mnist(data_dir, tmp_path)
    msg = breaker(folder)
    code, err = _main_in_process(["--data-dir", str(root), "--hidden", "8", "--epochs", "1",
                                  "--out-dir", str(tmp_path / "run")])
    assert code == 2 and msg in err, err
    assert err.startswith("error: ") and _one_line(err)


@pytest.mark.parametrize("args, msg", [
    (["--data-dir", "{missing}"], "Point --data-dir (or FFJAX_DATA_DIR)"),
    (["--batch-size", "70000"], "--batch-size 70000 is larger than the training set"),
    (["--batch-size", "0"], "--batch-size 0: must be a positive integer"),
    (["--hidden", "0"], "--hidden 0: dense width 0 must be a positive integer"),
    (["--lr", "0"], "--lr 0.0: must be positive"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--theta", "inf"], "--theta inf: must be a finite number"),
    (["--label-strength", "0"], "--label-strength 0.0: must be positive"),
    (["--readout-label-smoothing", "1.5"], "--readout-label-smoothing 1.5: must be in [0, 1)"),
    (["--input-noise", "-1"], "--input-noise -1.0: must be >= 0"),
    (["--group-label-smoothing", "0.1"], "--group-label-smoothing 0.1: smooths the targets of "
                                         "objective='group_softmax' only"),
    (["--objective", "hinge"], "--objective hinge: choose one of logistic, symba"),
    (["--validation-size", "60000"], "--validation-size 60000 leaves no training data"),
    (["--readout-layers", "7"], "readout-layers"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1: must be >= 0"),
    (["--norm", "l2"], "--norm l2 gives every activity vector unit length"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--out-dir", "{file}"], "exists and is not a directory"),
    (["--resume", "{missing}"], "no run there"),
])
def test_bad_settings_are_refused_in_one_line(args, msg, data_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    args = [a.format(missing=tmp_path / "nowhere", file=a_file) for a in args]
    argv = ["--data-dir", str(data_dir), "--hidden", "8", "--epochs", "1",
            "--out-dir", str(tmp_path / "run")]
    if args[0] == "--resume":
        argv = []
    code, err = _main_in_process(argv + args)
    assert code == 2 and msg in err, err
    assert _one_line(err)
    assert a_file.read_text() == "mine"


def test_unwritable_run_directory_is_one_line(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")  # a run directory cannot be made inside a file
    code, err = _main_in_process(["--data-dir", str(data_dir), "--hidden", "8",
                                  "--epochs", "1", "--out-dir", str(blocker / "run")])
    assert code == 2 and "Not a directory" in err and _one_line(err), err
    assert blocker.read_text() == "mine"


def test_time_limit_stops_with_a_checkpoint_and_resume_completes(data_dir, tmp_path,
                                                                  request):
    out = tmp_path / "limited"
    # 1 s is over before the first epoch ends: it stops after that epoch, with code 124.
    code, err = _main_in_process(["--data-dir", str(data_dir), *RUN, "--checkpoint-every",
                                  "0", "--time-limit", "1s", "--out-dir", str(out)])
    assert code == 124 and "stopped (--time-limit 1s)" in err and _one_line(err), err
    assert checkpoint.Checkpoints(out).latest_epoch() == 1
    code, err = _main_in_process(["--resume", str(out), "--time-limit", "1h"])
    assert code == 0, err
    _same_run(request.getfixturevalue("uninterrupted"), out)


def test_resuming_another_network_names_the_leaf_and_exits_cleanly(data_dir, tmp_path):
    out = tmp_path / "r"
    code, _ = _main_in_process(["--data-dir", str(data_dir), "--hidden", "8", "4",
                                "--epochs", "2", "--checkpoint-every", "1",
                                "--train-size", "2000", "--out-dir", str(out)])
    assert code == 0
    (out / "results.json").unlink()  # as if it had stopped after its last checkpoint
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "hidden": [8, 5]}))
    code, err = _main_in_process(["--resume", str(out)])
    assert code == 2 and _one_line(err), err
    assert "of another network" in err and "layers.1.params.w" in err


def test_resume_refuses_changed_settings_and_finished_runs(data_dir, tmp_path):
    out = tmp_path / "r"
    code, _ = _main_in_process(["--data-dir", str(data_dir), "--hidden", "8", "--epochs", "1",
                                "--out-dir", str(out)])
    assert code == 0
    code, err = _main_in_process(["--resume", str(out), "--lr", "0.5"])
    assert code == 2 and "drop --lr" in err
    code, err = _main_in_process(["--resume", str(out), "--data-dir", str(data_dir)])
    assert code == 2 and "already finished all 1 epochs" in err


def test_fit_rejects_bad_arguments_before_compiling(mnist):
    x, y = mnist.x_train[:200], mnist.y_train[:200]
    key = jax.random.key(0)
    spec = FFSpec(hidden=(8,))
    with pytest.raises(ValueError, match="positive integer"):
        driver.fit(key, x, y, FFSpec(hidden=(0,)), epochs=1)
    with pytest.raises(ValueError, match="epochs=0"):
        driver.fit(key, x, y, spec, epochs=0)
    with pytest.raises(ValueError, match="batch_size=500"):
        driver.fit(key, x, y, spec, epochs=1, batch_size=500)
    with pytest.raises(ValueError, match="lr=-1"):
        driver.fit(key, x, y, spec, epochs=1, optimizer=optim.OptimizerSpec(lr=-1.0))
    with pytest.raises(ValueError, match="readout_optimizer is given with an OptimizerSpec"):
        driver.fit(key, x, y, spec, epochs=1, readout_optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="fewer than num_classes=10 features"):
        driver.fit(key, x[:, :5], y, spec, epochs=1)
    bad = np.asarray(x, np.float32)
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        driver.fit(key, bad, y, spec, epochs=1)


def test_gunzipped_idx_files_are_accepted(data_dir, tmp_path):
    root, folder = _copy_mnist(data_dir, tmp_path)
    for gz in folder.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    from ffjax import data
    ds = data.load("mnist", root)
    assert ds.x_train.shape == (60000, 784) and ds.y_test.shape == (10000,)


def test_data_dir_that_is_a_file_and_mismatched_image_sizes(data_dir, tmp_path):
    from ffjax import data
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(data.DataError, match="is a file, not a directory"):
        data.load("mnist", a_file)
    root, folder = _copy_mnist(data_dir, tmp_path)
    header = b"\x00\x00\x08\x03" + (10000).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2
    _gz(folder / "t10k-images-idx3-ubyte.gz", header + bytes(10000 * 4))
    with pytest.raises(data.DataError, match="images of 784 pixels but"):
        data.load("mnist", root)


def test_library_refuses_arrays_that_do_not_fit_the_network():
    from ffjax import epoch as epoch_lib
    from ffjax import inference
    opt = optax.sgd(0.1)
    spec = FFSpec(hidden=(8, 8), num_classes=4, negatives="uniform", readout=False)
    state = epoch_lib.init_train_state(jax.random.key(0), spec, 20, opt)
    epoch = epoch_lib.make_train_epoch(spec, opt, batch_size=4)
    x, y = np.zeros((16, 20), np.uint8), np.zeros(16, np.int32)
    with pytest.raises(ValueError, match=r"x has examples of shape \(10,\), but the "
                                         r"network's parameters do not fit them"):
        epoch(state, x[:, :10], y, jax.random.key(1))
    with pytest.raises(ValueError, match=r"y must have shape \(16,\)"):
        epoch(state, x, y[:5], jax.random.key(1))
    short = epoch_lib.make_train_epoch(dataclasses.replace(spec, hidden=(8,)), opt,
                                       batch_size=4)
    with pytest.raises(ValueError, match="this spec on these inputs has 1 layers"):
        short(state, x, y, jax.random.key(1))
    with pytest.raises(ValueError, match=r"x has examples of shape \(5,\)"):
        inference.make_predict(spec)(epoch_lib.params_of(state), x[:, :5])


def test_the_other_datasets_folder_is_recognized(data_dir, tmp_path):
    code, err = _main_in_process(["--data-dir", str(data_dir / "fashion-mnist"), "--hidden",
                                  "8", "--epochs", "1", "--out-dir", str(tmp_path / "r")])
    assert code == 2 and "holds fashion_mnist's training labels, not mnist's" in err
    assert _one_line(err)
    from ffjax import data
    with pytest.raises(data.DataError, match="holds mnist's training labels"):
        data.load("fashion_mnist", data_dir / "mnist")
