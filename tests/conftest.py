"""Shared test setup: key-reuse checking on, the shared data folder, small helpers."""

import atexit
import contextlib
import fcntl
import io
import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_debug_key_reuse", True)

# The tests compile far more XLA programs than they run steps: at XLA's backend
# optimization level 0 a small network's epoch compiles in about a third of the time, and
# the properties tested (equalities between runs, locality, learning) do not depend on the
# level. Set before JAX starts its backend, and inherited by the CLI subprocesses; a level
# already given in XLA_FLAGS wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

# One persistent compilation cache for the whole run, shared with the CLI subprocesses the
# tests start (through the environment): many tests compile the same small programs, and
# XLA compiling them again is most of their time. It lives and dies with the run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="ffjax-test-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)))

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = REPO.parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("FFJAX_DATA_DIR") or _DEFAULT_DATA)


def assert_gradients_are_local(losses, params) -> None:
    """Layer k's loss (`losses(params)[k]`) sends a nonzero gradient to layer k's
    parameters and an exactly zero one to every other layer's. Every layer's gradients
    come from one compiled call (op-by-op conv gradients are slow to dispatch)."""
    import jax.numpy as jnp
    grads = jax.jit(lambda ps: [jax.grad(lambda p: losses(p)[k])(ps)
                                for k in range(len(params))])(params)
    for k, per_layer in enumerate(grads):
        for j, g in enumerate(per_layer):
            total = sum(float(jnp.abs(leaf).sum()) for leaf in jax.tree.leaves(g))
            if j == k:
                assert total > 0.0, f"layer {k} gets no gradient from its own loss"
            else:
                assert total == 0.0, f"layer {k}'s loss sends gradient to layer {j}"


def assert_resume_is_exact(tmp_path, x, y, spec, **fit_kwargs):
    """Trains driver.fit(..., epochs=3) through, saving its state after epoch 2 in an
    orbax checkpoint, then again from that checkpoint: both end bit-identical. Returns
    the uninterrupted run's FitResult."""
    from ffjax import checkpoint, driver
    import chex
    ckpts = checkpoint.Checkpoints(tmp_path)

    def save_after_two(report, state):  # the uninterrupted run's state after 2 epochs
        if report.epoch == 1:
            ckpts.save(2, state)

    whole = driver.fit(jax.random.key(0), x, y, spec, epochs=3, on_epoch=save_after_two,
                       **fit_kwargs)
    resumed = driver.fit(jax.random.key(0), x, y, spec, epochs=3, start_epoch=2,
                         resume_from=lambda like: ckpts.restore(2, like), **fit_kwargs)
    ckpts.close()
    chex.assert_trees_all_equal(whole.state, resumed.state)
    return whole


def quietly(fn, *args):
    """(fn(*args), what it wrote to stderr), its stdout dropped: how the tests run an
    entry point's main in this process and read its refusals."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        result = fn(*args)
    return result, err.getvalue()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once per test session however many
    pytest-xdist workers ask for it: the first to ask builds it under a lock in the
    workers' shared temporary folder, the others wait and reuse it. (xdist's loadgroup,
    which would keep such tests on one worker, silently stopped grouping under pytest 9.2:
    pytest-xdist issue #1386.) A failed build is not marked done: the next worker to ask
    starts it afresh and fails with its own message."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of one session
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                build(folder)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture
def fresh_registries(monkeypatch):
    """The label-encoding and negative-generator registries as copies, and the example
    plugin (experiments.self_contrastive) not yet imported, all restored after the test:
    what a test registers, or a --plugins it checks imports, must not leak into the tests
    that later run in the same worker."""
    import sys
    from ffjax import encodings, negatives
    monkeypatch.setattr(encodings, "ENCODINGS", dict(encodings.ENCODINGS))
    monkeypatch.setattr(negatives, "GENERATORS", dict(negatives.GENERATORS))
    monkeypatch.delitem(sys.modules, "experiments.self_contrastive", raising=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mnist").is_dir():
        pytest.skip(f"no MNIST under {DATA_DIR}; set FFJAX_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir):
    from ffjax import data
    return data.load("mnist", data_dir)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts) starts one worker more than there are cores, up to
    8 cores: every test spends part of its time single-threaded (tracing, compiling,
    starting a CLI process), and the extra worker keeps the cores busy meanwhile."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return cores + 1 if cores <= 8 else cores
