"""The experiment entry points, run as a user runs them (real CLI, real data)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, quietly

RESULT_KEYS = {"test_accuracy", "test_error", "train_seconds", "compile_seconds", "epochs",
               "device", "jax_version", "config", "test_accuracy_per_layer", "command",
               "device_model", "jaxlib_version", "git_commit", "git_dirty"}


def _run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_mnist_experiment_writes_the_run_directory(data_dir, tmp_path):
    out = tmp_path / "run"
    proc = _run("experiments.mnist", "--data-dir", data_dir, "--epochs", 3, "--hidden", 64, 32,
                "--eval-every", 2, "--train-size", 20000, "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "results.json", "loss.png", "accuracy.png",
            "predictions.png"} <= files
    assert all((out / f).stat().st_size > 1000 for f in ("loss.png", "predictions.png"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert len(r["layer_loss"]) == 2 and len(r["layer_acc_pos"]) == 2
        assert r["seconds"] > 0 and r["eval_split"] == "test"
        assert 0.5 < r["eval_accuracy_softmax"] <= 1  # the cheap readout: every epoch
    # Both readouts every --eval-every epochs and at the end, only those.
    assert ["eval_accuracy" in r for r in rows] == [False, True, True]
    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert results["config"]["hidden"] == [64, 32] and results["epochs"] == 3
    assert results["num_train"] == 20000
    # The last epoch's evaluation is the final one, not run twice, and its time counted.
    assert results["test_accuracy"] == rows[-1]["eval_accuracy"]
    assert results["eval_seconds"] == pytest.approx(sum(r["eval_seconds"] for r in rows))
    assert results["train_seconds"] + results["eval_seconds"] < results["wall_seconds"]
    # TensorBoard reads the same per-epoch numbers back from the run directory.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"layer_loss/layer_1", "layer_loss/layer_2", "readout_loss", "eval_accuracy",
            "eval_accuracy_softmax", "eval_accuracy_per_layer/layer_2", "seconds/train",
            "seconds/eval"} <= tags
    loss = events.Scalars("layer_loss/layer_2")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["layer_loss"][1] for r in rows])
    assert [e.step for e in events.Scalars("eval_accuracy")] == [2, 3]
    assert abs(results["test_error"] + results["test_accuracy"] - 1.0) < 1e-9
    assert results["test_accuracy"] > 0.85
    assert results["command"].startswith("python -m experiments.mnist")
    # The goodness readout of other summed layers comes from the same passes; the one the
    # run used is its test accuracy.
    by = results["test_accuracy_by_score_layers"]
    assert set(by) == {"all", "all_but_first"}
    used = "all" if results["score_layers"] == [0, 1] else "all_but_first"
    assert by[used] == results["test_accuracy"]
    assert 0.85 < results["test_accuracy_softmax"] <= 1  # default: readout trained too
    assert json.loads((out / "config.json").read_text())["epochs"] == 3

    code, err = _entry("mnist", "--data-dir", data_dir, "--epochs", 1, "--hidden", 8,
                       "--out-dir", out)
    assert code == 2 and "already holds files" in err and "Traceback" not in err, err
    assert json.loads((out / "results.json").read_text()) == results  # nothing lost


def _entry(module, *args):
    """(exit code, stderr) of `python -m experiments.<module> args`, run in this process
    (the entry point's own defaults and description)."""
    import importlib
    from ffjax import experiment
    mod = importlib.import_module(f"experiments.{module}")
    return quietly(experiment.main, mod.DEFAULTS, mod.__doc__.splitlines()[0],
                   list(map(str, args)))


def test_a_conv_network_from_the_command_line(data_dir, tmp_path):
    """A conv + local + dense network with the label as image channels, end to end: the
    images reach it as (28, 28, 1), per-layer figures are recorded, and its one-pass
    readout learns within one epoch."""
    out = tmp_path / "conv"
    code, err = _entry("mnist", "--data-dir", data_dir, "--epochs", 1, "--hidden",
                       "conv:4:3:s2:p2", "local:4:3:valid", 32, "--label-encoding",
                       "channels", "--optimizer", "adam", "--lr", 0.001, "--train-size", 7000,
                       "--validation-size", 1000, "--out-dir", out)
    assert code == 0, err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["hidden"] == ["conv:4:3:s2:p2", "local:4:3:valid", 32]
    assert len(results["validation_accuracy_per_layer"]) == 3
    assert results["validation_accuracy_softmax"] > 0.5


def test_cifar10_entry_point_on_a_tiny_archive(tmp_path):
    """python -m experiments.cifar10 end to end (its preset, with a small network) on an
    archive in CIFAR-10's binary format: RGB images reach the conv blocks whole."""
    from tests.test_data import _cifar_archive
    (tmp_path / "cifar10").mkdir()
    _cifar_archive(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", records_per_batch=10)
    out = tmp_path / "run"
    code, err = _entry("cifar10", "--data-dir", tmp_path, "--epochs", 1, "--batch-size", 10,
                       "--hidden", "conv:10:3:s2:p2", "conv:20:3", "--out-dir", out)
    assert code == 0, err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["preset"] == "cifar10-conv"
    assert results["config"]["objective"] == "group_softmax"
    assert results["num_train"] == 50 and 0 <= results["test_accuracy"] <= 1
    # class groups and a softmax readout: the joint readout is recorded for both choices
    joint = results["test_accuracy_joint_by_score_layers"]
    assert set(joint) == {"all", "all_but_first"} and all(0 <= a <= 1 for a in joint.values())
    assert (out / "predictions.png").stat().st_size > 1000


def test_fashion_mnist_experiment_with_validation_split(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "fm"
    monkeypatch.setenv("FFJAX_DATA_DIR", str(data_dir))  # the data folder from the env
    code, err = _entry("fashion_mnist", "--epochs", 1, "--hidden", 32, "--train-size", 20000,
                       "--validation-size", 10000, "--out-dir", out)
    assert code == 0, err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_train"] == 10000 and 0.3 < results["validation_accuracy"] <= 1
    assert not any(k.startswith("test_") for k in results)  # the test set stays unseen
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["eval_split"] == "validation"


def test_several_seeds_in_one_program(data_dir, tmp_path):
    out = tmp_path / "seeds"
    import jax
    # Seeds are a vmap of the scanned epoch: JAX 0.10's key-reuse checker wrongly flags
    # that (see test_recipe's vmapped-seeds test), so it is off for this run.
    with jax.debug_key_reuse(False):
        code, err = _entry("mnist", "--data-dir", data_dir, "--epochs", 1, "--hidden", 32,
                           "--seeds", 3, "--train-size", 10000, "--out-dir", out)
    assert code == 0, err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == 3 and len(results["test_accuracy_seeds"]) == 3
    assert len(set(results["test_accuracy_seeds"])) > 1  # different seeds, different nets
    assert abs(results["test_accuracy"] - sum(results["test_accuracy_seeds"]) / 3) < 1e-9
    assert results["test_accuracy_std"] > 0 and len(results["test_accuracy_softmax_seeds"]) == 3


def test_help_explains_every_flag():
    """--help names every Config field's flag, with a help text and its default."""
    import dataclasses
    from ffjax.config import Config, make_parser
    from experiments import mnist
    text = make_parser(mnist.DEFAULTS, "d").format_help()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text and f.metadata["help"], flag
    assert "(default: 100)" in text  # --epochs


def _main(argv):
    """The real CLI entry point (experiments.mnist's main) in this process."""
    return _entry("mnist", *argv)


@pytest.mark.parametrize("args, msg", [
    (["--epochs", "0"], "--epochs 0: must be a positive integer"),
    (["--hidden", "100", "-5"], "--hidden -5: dense width -5 must be a positive integer"),
    (["--lr", "-1"], "--lr -1.0: must be positive"),
    (["--norm", "layer"], "--norm layer: choose one of rms, rms_ref, l2"),
    (["--data-dir", "/nonexistent/ffjax"], "does not exist"),
    (["--preset", "paper"], "unknown preset 'paper'"),
    (["--negatives", "random"], "--negatives random: choose one of uniform, hard, all"),
    (["--hidden", "conv:8:40:valid"], "--hidden conv:8:40:valid: the 40x40 kernel is "
                                      "larger than its 28x28 input"),
    (["--hidden", "1000", "conv:8:3"], "--hidden conv:8:3: takes inputs of rank 3"),
    (["--hidden", "pool:2"], "--hidden pool:2: unknown block 'pool:2'"),
    (["--time-limit", "2x"], "--time-limit 2x: give a duration such as 2h30m"),
    (["--train-size", "0"], "--train-size 0: must be a positive integer"),
    (["--schedule", "interleaved:2,3"], "--schedule interleaved:2,3: gives 2 layers' epochs "
                                        "for 4 layers"),
    (["--schedule", "layerwise"], "--schedule layerwise: choose one of simultaneous, greedy"),
    # Unsupervised FF: the label and the negatives must agree.
    (["--label-encoding", "none"], "--negatives 'hard': writes wrong labels into the input"),
    (["--negatives", "hybrid"], "--negatives 'hybrid': makes label-free negatives"),
    (["--negatives", "hybrid", "--label-encoding", "none", "--no-readout"],
     "the softmax readout is the prediction"),
    (["--negatives", "hybrid", "--label-encoding", "none", "--score-layers", "1"],
     "--score-layers: the goodness readout needs a label in the input"),
    (["--negatives", "masked", "--label-encoding", "none", "--mask-fraction", "1"],
     "--mask-fraction 1.0: must be in (0, 1)"),
    (["--negatives", "hybrid", "--label-encoding", "none", "--hybrid-partner", "closest"],
     "--hybrid-partner closest: choose one of shift, nearest"),
    (["--hybrid-partner", "nearest"], "--hybrid-partner nearest: chooses the second image "
                                      "of --negatives hybrid, not of --negatives hard"),
    (["--negatives", "hybrid", "--label-encoding", "none", "--hybrid-count", "0"],
     "--hybrid-count 0: give at least 1 negative per positive"),
    (["--hybrid-count", "2"], "--hybrid-count 2: counts the mixtures of --negatives hybrid, "
                              "not the negatives of --negatives hard"),
    (["--negatives", "hybrid", "--label-encoding", "none", "--mask-blur-steps", "2",
      "--mask-blur-steps-max", "1"], "--mask-blur-steps-max 1: must be at least "
                                     "--mask-blur-steps (2)"),
    (["--mask-blur-steps-max", "3"], "--mask-blur-steps-max 3: sets the masks of "
                                     "--negatives hybrid and masked, not of --negatives hard"),
])
def test_bad_settings_give_one_line_and_exit_code_2(args, msg, tmp_path):
    code, err = _main([*args, "--out-dir", str(tmp_path / "x")])
    assert code == 2 and msg in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_a_refusal_is_one_line_on_stderr_of_the_real_process(tmp_path):
    """The exit path of every refusal, in a process of its own: one line, nothing after
    it (no traceback from a background thread as the process ends)."""
    proc = _run("experiments.mnist", "--epochs", "0", "--out-dir", tmp_path / "x")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --epochs 0: must be a positive "
                                                "integer."], proc.stderr


def _trained_settings(cfg):
    """A config's settings less what says where and how the run was evaluated and saved,
    not what it trained."""
    import dataclasses
    ignore = {"preset", "data_dir", "out_dir", "validation_size", "eval_every",
              "checkpoint_every"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}


def _recorded_config(name):
    from ffjax import config
    return config.config_from_dict(json.loads(
        (REPO / f"benchmarks/results/runs/{name}-config.json").read_text()))


def test_the_fashion_conv_preset_is_the_validated_run():
    """--preset fashion-conv names every setting of the validation run that chose it (the
    record), and gives the same settings through either entry point: it names the input
    noise and readout label smoothing on which their defaults differ."""
    from experiments import fashion_mnist, mnist
    from ffjax import config
    rec = _recorded_config("fashion-conv-groups-4conv-p3-320-bn-wide15-noise0-20ep-val-seed0")
    via_fashion = config.parse_config(["--preset", "fashion-conv"], fashion_mnist.DEFAULTS)
    via_mnist = config.parse_config(["--preset", "fashion-conv", "--dataset",
                                     "fashion_mnist"], mnist.DEFAULTS)
    assert _trained_settings(via_fashion) == _trained_settings(via_mnist)
    assert _trained_settings(via_fashion) == _trained_settings(rec)


def test_the_mnist_conv_wide_preset_is_the_validated_run():
    """--preset mnist-conv-wide names every setting of the MNIST validation run that chose
    it (run then as --preset fashion-conv --hidden-dropout 0.2)."""
    from experiments import mnist
    from ffjax import config
    rec = _recorded_config("mnist-conv-groups-4conv-p3-320-bn-wide15-drop02-20ep-val-seed0")
    named = config.parse_config(["--preset", "mnist-conv-wide"], mnist.DEFAULTS)
    assert named.hidden_dropout == 0.2
    assert _trained_settings(named) == _trained_settings(rec)
