"""Many models per program: a grid point trains exactly as the lone run it stands for."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from benchmarks import sweep_throughput
from experiments import sweep
from ffjax import driver, optim
from ffjax.spec import FFSpec
from tests.conftest import quietly


@pytest.mark.parametrize("net, schedule", [("dense", "simultaneous"), ("conv", "greedy")])
def test_grid_points_equal_separate_runs(mnist, net, schedule):
    """For a dense network trained simultaneously and a conv network trained greedily
    (the grid honours the schedule), each grid point is its lone run."""
    x, y = mnist.x_train[:1500], mnist.y_train[:1500]
    points = driver.make_grid(seeds=[0, 1], thetas=[None, 10.0], lrs=[0.01, 0.03])
    assert len(points) == 8 and points[0] == driver.GridPoint(0, None, 0.01)
    chosen = [points[1], points[6]]  # (seed 1, width, 0.01), (seed 0, 10.0, 0.03)
    spec = FFSpec(hidden=(24, 16), negatives="uniform", readout=False)
    if net == "conv":
        x = x.reshape(-1, 28, 28, 1)
        spec = dataclasses.replace(spec, hidden=("conv:4:3:s2:p2", 16),
                                   input_shape=(28, 28, 1))
    common = dict(epochs=2, batch_size=50, schedule=schedule)
    # The grid is a vmap of the scanned epoch: JAX 0.10's key-reuse checker wrongly
    # flags that (see test_recipe's vmapped-seeds test); the lone runs stay checked.
    with jax.debug_key_reuse(False):
        grid = driver.fit_grid(chosen, x, y, spec, **common)
    assert grid.history[0].metrics.layers.loss.shape == (2, 2)
    for k, p in enumerate(chosen):
        alone = driver.fit(jax.random.key(p.seed), x, y,
                           dataclasses.replace(spec, theta=p.theta),
                           optimizer=optim.OptimizerSpec(lr=p.lr), **common)
        for g, a in zip(grid.history, alone.history):
            np.testing.assert_allclose(g.metrics.layers.loss[k], a.metrics.layers.loss,
                                       rtol=1e-5)
        for g, a in zip(jax.tree.leaves(driver.model_state(grid.state, k).layers[0].params),
                        jax.tree.leaves(alone.state.layers[0].params)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(a), atol=1e-5)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(seeds=[0], thetas=[-1.0], lrs=[0.1]), "threshold -1.0"),
    (dict(seeds=[0], thetas=[None], lrs=[0.0]), "learning rate 0.0"),
])
def test_bad_grid_values_are_named(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        driver.make_grid(**kwargs)


def _sweep(*args):
    """(exit code, stderr) of `python -m experiments.sweep args`, run in this process (the
    real process's one-line refusals are tested in test_experiment)."""
    return quietly(sweep.main, list(map(str, args)))


def test_sweep_cli_writes_one_table(data_dir, tmp_path):
    out = tmp_path / "sweep"
    with jax.debug_key_reuse(False):  # the grid: see test_grid_points_equal_separate_runs
        code, err = _sweep("--data-dir", data_dir, "--hidden", 16, "--epochs", 1, "--thetas",
                           8, 16, "--lrs", 0.01, 0.03, "--seeds", 2, "--train-size", 30000,
                           "--out-dir", out)
    assert code == 0, err[-2000:]
    record = json.loads((out / "sweep.json").read_text())
    assert record["models"] == 8 and len(record["runs"]) == 8
    assert {(r["seed"], r["theta"], r["lr"]) for r in record["runs"]} == {
        (s, t, lr) for s in (0, 1) for t in (8.0, 16.0) for lr in (0.01, 0.03)}
    means = [r["validation_accuracy_mean"] for r in record["summary"]]
    assert len(means) == 4 and means == sorted(means, reverse=True) and means[0] > 0.5
    assert all(r["seeds"] == 2 for r in record["summary"])
    assert "| theta | lr | seeds |" in (out / "sweep.md").read_text()
    assert len((out / "sweep.csv").read_text().splitlines()) == 9
    assert "test" not in json.dumps(record["runs"])  # tuning never looks at the test set


@pytest.mark.parametrize("args, msg", [
    (["--validation-size", "0"], "give --validation-size"),
    (["--lrs", "0.1", "-2"], "learning rate -2.0"),
    (["--resume", "somewhere"], "--resume is not available"),
])
def test_sweep_cli_refuses_bad_settings(args, msg, data_dir, tmp_path):
    code, err = _sweep("--data-dir", data_dir, "--hidden", 8, "--epochs", 1,
                       "--out-dir", tmp_path / "s", *args)
    assert code == 2 and msg in err and "Traceback" not in err, err


def test_sweep_throughput_benchmark_writes_its_record(data_dir, tmp_path):
    out = tmp_path / "t.json"
    with jax.debug_key_reuse(False):  # the grid: see test_grid_points_equal_separate_runs
        code = sweep_throughput.main(["--data-dir", str(data_dir), "--hidden", "16",
                                      "--models", "2", "--epochs", "1", "--n-train", "1000",
                                      "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["models"] == 2 and r["grid_models_per_second"] > 0 and r["speedup"] > 0
    assert {"device", "jax_version", "date", "command"} <= set(r)
