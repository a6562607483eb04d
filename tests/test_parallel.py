"""Data parallelism over 8 host devices (forced on CPU, in a subprocess so this process's
single-device JAX is untouched): the sharded run matches the single-device run, the state
really is placed on all devices, and the gradients really are reduced across them."""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

# Added to the flags conftest set (which the subprocesses inherit).
EIGHT = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8"}

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    from ffjax import data, driver, epoch, optim, parallel
    from ffjax.spec import FFSpec

    ds = data.load("mnist", sys.argv[1])
    x, y = ds.x_train[:2000], ds.y_train[:2000]
    assert jax.device_count() == 8, jax.devices()
    runs = {}
    # The readout uses plain SGD here: Adam divides by sqrt(nu), which magnifies the
    # (legitimate) summation-order differences of near-zero gradients, e.g. the readout
    # bias's, to ~1e-3 after 50 steps, while the FF layers under Adam stay within 2e-6.
    # Training amplifies rounding differences from step to step, more or less depending
    # on the settings (with the defaults, 50 steps grew them to 1.2e-3 relative), so the
    # layouts are compared over 10 steps (400 examples, 2 epochs), where they must agree.
    spec = FFSpec(hidden=(32, 32), negatives="uniform")
    for n in (None, 8, 2):
        r = driver.fit(jax.random.key(0), x[:400], y[:400], spec, epochs=2,
                       batch_size=80, optimizer=optax.sgd(0.01),
                       readout_optimizer=optax.sgd(0.1), devices=n)
        runs[n] = r

    def rel_diff(state, base):  # largest difference, relative to the leaf's largest value
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                         / max(1.0, float(np.max(np.abs(np.asarray(b))))))
                   for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(base)))

    out = {"loss": {}, "max_param_diff": {}}
    for n, r in runs.items():
        out["loss"][str(n)] = np.stack([h.metrics.layers.loss for h in r.history]).tolist()
        out["max_param_diff"][str(n)] = rel_diff(r.state, runs[None].state)
    # A conv network split over 8 devices equals its single-device run too, and so does
    # one with batch-normalized outputs: their statistics are the whole minibatch's (all
    # 8 devices' rows).
    xi = x[:400].reshape(-1, 28, 28, 1)
    for name, output_norm in (("conv", "none"), ("bn", "batch")):
        conv = FFSpec(hidden=("conv:4:3:s2:p2", "local:4:3:valid", 16),
                      input_shape=(28, 28, 1), negatives="uniform", output_norm=output_norm)
        cruns = {n: driver.fit(jax.random.key(0), xi, y[:400], conv, epochs=2,
                               batch_size=80, optimizer=optax.sgd(0.01),
                               readout_optimizer=optax.sgd(0.1), devices=n)
                 for n in (None, 8)}
        out[f"{name}_max_param_diff"] = rel_diff(cruns[8].state, cruns[None].state)
    leaf = runs[8].state.layers[0].params.w
    out["devices_of_state"] = len(leaf.sharding.device_set)
    out["replicated"] = bool(leaf.sharding.is_fully_replicated)
    # Two seeds at once on 8 devices: vmap and sharding compose.
    seeds = driver.fit(jax.random.key(0), x, y, FFSpec(hidden=(16,)), epochs=1,
                       batch_size=80, num_seeds=2, devices=8)
    out["seeds_loss_shape"] = list(np.shape(seeds.history[0].metrics.layers.loss))
    # A grid of 4 models split over the devices (4 of the 8 divide it) equals the grid on
    # one device.
    points = driver.make_grid(seeds=[0, 1], thetas=[None], lrs=[0.01, 0.03])
    plain = FFSpec(hidden=(16,), negatives="uniform", peer_strength=0.0, readout=False)
    grids = {n: driver.fit_grid(points, x, y, plain, epochs=1, batch_size=80, devices=n)
             for n in (1, 8)}
    out["grid_devices"] = grids[8].num_devices
    out["grid_state_devices"] = len(grids[8].state.layers[0].params.w.sharding.device_set)
    a, b = (grids[n].history[0].metrics.layers.loss for n in (8, 1))
    out["grid_loss_rel_diff"] = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))
    # The compiled sharded epoch sums gradients across devices.
    mesh = parallel.data_mesh(jax.devices())
    opt = optim.make_optimizer("adam", lr=1e-3)
    plain = FFSpec(hidden=(32,), negatives="uniform", peer_strength=0.0, readout=False)
    st = parallel.replicate(epoch.init_train_state(jax.random.key(1), plain, 784, opt), mesh)
    xs, ys = parallel.replicate((x, y), mesh)
    fn = jax.jit(epoch.make_train_epoch(plain, opt, batch_size=80,
                                        batch_sharding=parallel.batch_sharding(mesh)))
    hlo = fn.lower(st, xs, ys, jax.random.key(2)).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    try:
        driver.fit(jax.random.key(0), x, y, FFSpec(hidden=(8,)), epochs=1,
                   batch_size=100, devices=8)
    except ValueError as e:
        out["indivisible"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def _python(code_args, env=None):
    return subprocess.run([sys.executable, *code_args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


# Tolerances are relative (to max(1, |value|)). Splitting a batch or a grid over devices
# changes how XLA fuses and orders float32 sums, which moves a result by a few ULPs of its
# magnitude per step: the FF loss of a layer with a width-sized threshold can be ~1e3,
# where one ULP is 1.2e-4, so an absolute bound of 1e-4 fails on some CPUs. Measured on a
# 2-core x86 CPU: 1.3e-7 (8 devices) and 1.6e-7 (2) after the 10 data-parallel steps,
# 1.1e-6 for the 25-step grid. 1e-4 relative leaves room for other CPUs and stays far
# below any real fault (a wrong gradient reduction or mixed-up models move these by more
# than 1e-2).
def test_eight_device_run_equals_the_single_device_run(data_dir):
    proc = _python(["-c", SCRIPT, str(data_dir)], EIGHT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    base = out["loss"]["None"]
    for n in ("8", "2"):
        for a, b in zip(out["loss"][n], base):
            for u, v in zip(a, b):
                assert abs(u - v) <= 1e-4 * max(1.0, abs(v)), (n, a, b)
        assert out["max_param_diff"][n] < 1e-4, out["max_param_diff"]
    assert out["conv_max_param_diff"] < 1e-4, out["conv_max_param_diff"]
    assert out["bn_max_param_diff"] < 1e-4, out["bn_max_param_diff"]
    assert out["devices_of_state"] == 8 and out["replicated"]
    assert out["seeds_loss_shape"] == [2, 1]
    assert out["all_reduce"]
    assert out["grid_devices"] == 4 and out["grid_state_devices"] == 4
    assert out["grid_loss_rel_diff"] < 1e-4, out["grid_loss_rel_diff"]
    assert "batch_size=100 does not split evenly across 8 devices" in out["indivisible"]


def test_cli_devices_flag(data_dir, tmp_path):
    common = ["-m", "experiments.mnist", "--data-dir", str(data_dir), "--hidden", "16",
              "--epochs", "1", "--train-size", "10000"]
    bad = _python(common + ["--out-dir", str(tmp_path / "a")], EIGHT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "does not split evenly across 8 devices" in bad.stderr
    assert "--devices all" in bad.stderr
    ok = _python(common + ["--devices", "4", "--out-dir", str(tmp_path / "b")], EIGHT)
    assert ok.returncode == 0, ok.stderr[-2000:]
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["test_accuracy"] > 0.5 and results["config"]["devices"] == 4
