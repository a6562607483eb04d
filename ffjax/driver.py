"""The host loop: set up, place, compile the epoch once, run it epoch by epoch, time it.

`fit` trains one model, or K seeds of it at once (jax.vmap over the training state);
`fit_grid` trains a grid of seeds x thresholds x learning rates at once. Both build their
Program (placed state, jitted state-donating epochs from ffjax.epoch) with the one
builder, make_program, and run it through the same loop, run_program.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ffjax import data, epoch as epoch_lib, objective, optim, parallel
from ffjax.spec import FFSpec

SCHEDULES = ("simultaneous", "greedy")


class EpochReport(NamedTuple):
    """What one epoch produced: 0-based index, epoch means (numpy; with several models
    every field has a leading model axis), seconds."""

    epoch: int
    metrics: epoch_lib.StepMetrics
    seconds: float


class FitResult(NamedTuple):
    """The trained state (a leading model axis for seeds or a grid), one EpochReport per
    epoch run, timings (compilation apart), the number of epochs completed (less than
    asked when on_epoch stopped training) and the number of devices used."""

    state: epoch_lib.TrainState
    history: list
    compile_seconds: float
    train_seconds: float
    epochs_completed: int
    num_devices: int = 1


class GridPoint(NamedTuple):
    """One model of a grid: its seed, threshold for every layer (None: each layer's
    width) and learning rate."""

    seed: int
    theta: float | None
    lr: float


class DivergedError(FloatingPointError):
    """Training produced a NaN or infinite loss; the state of that epoch is discarded."""

    def __init__(self, epoch: int, layer: int | None, seed: int | None, value: float):
        self.epoch, self.layer, self.seed, self.value = epoch, layer, seed, value
        where = f"layer {layer + 1}'s FF loss" if layer is not None else "the readout's loss"
        seed_txt = f" (seed {seed})" if seed is not None else ""
        super().__init__(
            f"training diverged: {where}{seed_txt} was {value} in epoch {epoch + 1}. "
            "Lower the learning rate (--lr) or the goodness threshold (--theta), or use "
            "the default optimizer.")


def check_finite(report: EpochReport) -> None:
    """Raises DivergedError naming the first layer (and seed) whose epoch loss is NaN/Inf."""
    loss = np.asarray(report.metrics.layers.loss)  # (L,) or (K, L) with K models
    bad = np.argwhere(~np.isfinite(np.atleast_2d(loss)))
    if bad.size:
        seed, layer = (int(i) for i in bad[0])
        raise DivergedError(report.epoch, layer, seed if loss.ndim == 2 else None,
                            float(np.atleast_2d(loss)[seed, layer]))
    if report.metrics.readout is not None:
        ro = np.atleast_1d(np.asarray(report.metrics.readout.loss))
        if not np.all(np.isfinite(ro)):
            seed = int(np.argwhere(~np.isfinite(ro))[0][0])
            raise DivergedError(report.epoch, None, seed if ro.size > 1 else None,
                                float(ro[seed]))


def interleaved_epochs(schedule: str, epochs: int, num_layers: int) -> tuple | None:
    """Each layer's number of training epochs under "interleaved:E1,E2,..." (layer i
    trains in the first Ei epochs only, then is frozen while the readout and the later
    layers go on: the interleaved layer training of channel-wise competitive FF, which
    stops each layer before it overfits); None for the other schedules. ValueError
    names what is wrong."""
    if not str(schedule).startswith("interleaved"):
        return None
    head, _, body = str(schedule).partition(":")
    counts = body.split(",") if body else []
    if head != "interleaved" or not counts or not all(c.strip().isdigit() for c in counts):
        raise ValueError(f"schedule={schedule!r}: give interleaved:E1,E2,... with one "
                         "number of epochs per layer, e.g. interleaved:2,3,4,5.")
    counts = tuple(int(c) for c in counts)
    if len(counts) != int(num_layers):
        raise ValueError(f"schedule={schedule!r} gives {len(counts)} layers' epochs for "
                         f"{num_layers} layers: give one per layer.")
    if not all(1 <= c <= int(epochs) for c in counts):
        raise ValueError(f"schedule={schedule!r}: every layer's epochs must be in "
                         f"[1, {epochs}] (the run's epochs).")
    return counts


def phase_plan(schedule: str, epochs: int, num_layers: int) -> list:
    """[(trainable layers or None for all, epochs)] for a training schedule."""
    counts = interleaved_epochs(schedule, epochs, num_layers)
    if counts is not None:  # a phase between every two layers' ends; () trains none
        ends = sorted(set(counts) | {int(epochs)})
        return [(tuple(i for i, c in enumerate(counts) if c > start), end - start)
                for start, end in zip([0] + ends[:-1], ends)]
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: choose one of {SCHEDULES} or "
                         "interleaved:E1,E2,... (each layer's epochs).")
    if schedule == "simultaneous":
        return [(None, int(epochs))]
    if epochs < num_layers:
        raise ValueError(f"greedy training of {num_layers} layers needs at least "
                         f"{num_layers} epochs (one phase per layer); got {epochs}.")
    per = int(epochs) // num_layers
    return [((k,), per if k < num_layers - 1 else int(epochs) - per * (num_layers - 1))
            for k in range(num_layers)]


def make_grid(seeds: Sequence[int], thetas: Sequence[float | None],
              lrs: Sequence[float]) -> list:
    """Every combination, seeds varying fastest."""
    for t in thetas:
        if t is not None and not (np.isfinite(t) and t > 0):
            raise ValueError(f"threshold {t} must be a positive finite number.")
    for lr in lrs:
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate {lr} must be a positive finite number.")
    return [GridPoint(int(s), None if t is None else float(t), float(lr))
            for t, lr, s in itertools.product(thetas, lrs, seeds)]


def model_state(state: epoch_lib.TrainState, k: int) -> epoch_lib.TrainState:
    """Model k's state out of a state with a leading model axis, on the default device."""
    return jax.device_put(jax.tree.map(lambda a: np.asarray(a[k]), state))


def _check_data(x_NxD, y_N, spec: FFSpec, epochs: int, batch_size: int) -> None:
    data.check_arrays(x_NxD, y_N, num_classes=spec.num_classes, what="training data")
    if int(epochs) <= 0:
        raise ValueError(f"epochs={epochs} must be a positive integer.")
    if not 0 < int(batch_size) <= len(y_N):
        raise ValueError(f"batch_size={batch_size} must be in [1, {len(y_N)}] (the number "
                         "of training examples).")


class Program(NamedTuple):
    """A training program ready to run (make_program, make_grid_program): the placed
    initial state and data key(s), one jitted, state-donating epoch per phase with the
    phases' lengths, the placed data, whether there is a leading model axis, extra
    epoch arguments (a grid's thresholds), the device count, and whether a NaN loss
    stops training."""

    state: epoch_lib.TrainState
    data_key: jax.Array
    epochs: tuple
    phases: tuple
    x: jax.Array
    y: jax.Array
    many: bool
    extra: tuple = ()
    num_devices: int = 1
    check: bool = True

    def epoch_key(self, e: int) -> jax.Array:
        """Epoch e's key(s): the data key folded with e, so any epoch can be redone."""
        if self.many:
            return jax.vmap(jax.random.fold_in, in_axes=(0, None))(self.data_key, e)
        return jax.random.fold_in(self.data_key, e)


def run_program(program: Program, *, on_epoch=None, start_epoch: int = 0) -> FitResult:
    """The loop shared by fit and fit_grid: compiles each phase's epoch once, then runs
    epochs start_epoch.. (epoch e with program.epoch_key(e), so a resumed run repeats
    the uninterrupted one), checks the loss, reports each epoch to on_epoch."""
    p = program
    compiled, compile_seconds = [], 0.0
    for fn in p.epochs:  # one compiled epoch per phase (one in all, unless greedy)
        t0 = time.perf_counter()
        compiled.append(fn.lower(p.state, p.x, p.y, p.epoch_key(0), *p.extra).compile())
        compile_seconds += time.perf_counter() - t0
    per_epoch = [fn for fn, n in zip(compiled, p.phases) for _ in range(n)]
    state, history, train_seconds, done = p.state, [], 0.0, int(start_epoch)
    for e in range(int(start_epoch), len(per_epoch)):
        t0 = time.perf_counter()
        state, metrics = per_epoch[e](state, p.x, p.y, p.epoch_key(e), *p.extra)
        metrics = jax.tree.map(np.asarray, jax.device_get(metrics))  # the epoch's one sync
        report = EpochReport(e, metrics, time.perf_counter() - t0)
        train_seconds += report.seconds
        if p.check:
            check_finite(report)
        history.append(report)
        done = e + 1
        if on_epoch is not None and on_epoch(report, state):
            break
    return FitResult(state, history, compile_seconds, train_seconds, done, p.num_devices)


def fit(key: jax.Array, x_NxD, y_N, spec: FFSpec = FFSpec(), *, epochs: int,
        batch_size: int = 100, optimizer=optim.OptimizerSpec(),
        readout_optimizer: optax.GradientTransformation | None = None,
        num_seeds: int | None = None, schedule: str = "simultaneous",
        on_epoch: Callable[[EpochReport, epoch_lib.TrainState], bool | None] | None = None,
        resume_from: Callable | None = None, start_epoch: int = 0,
        devices=None) -> FitResult:
    """Trains the FF model `spec` on (x, y) with every layer learning locally:
    run_program(make_program(...)).

    Args:
      key: PRNG key; split into the initialization key and the data key (shuffling and
        negative labels, folded with the epoch index).
      x_NxD: (N, ...) uint8 pixels or float features (images for conv and local
        blocks). y_N: (N,) int labels in [0, C).
      spec: the model and its objective (FFSpec; spec.hidden are its blocks).
      epochs: passes over the data.
      batch_size: minibatch size.
      optimizer: an optim.OptimizerSpec (default: the experiments' smoothed SGD), or an
        optax.GradientTransformation (or one per layer) with readout_optimizer.
      num_seeds: train this many independent runs at once in one compiled program
        (jax.vmap over the training state and the keys). Run i is exactly the run
        fit(jax.random.split(key, num_seeds)[i], ...) would do; the state and every
        metric then have a leading axis of size num_seeds (model_state(state, i)).
      schedule: "simultaneous" (every layer on every minibatch, the reference),
        "greedy" (layer k alone is trained during the k-th of L equal phases of the
        epochs, the last phase taking the remainder; the readout trains throughout) or
        "interleaved:E1,...,EL" (layer k trains in the first Ek epochs only, its lr
        schedule spanning them; the readout trains throughout).
      on_epoch: called after every epoch with its EpochReport and the new state; when it
        returns True, training stops after that epoch (FitResult.epochs_completed).
      resume_from: continue an interrupted run: called with a freshly initialized state
        (a template of the structure, shapes and dtypes) and returns the saved state
        after `start_epoch` epochs (e.g. Checkpoints.restore). The run then ends in
        exactly the state of the uninterrupted run on the same platform.
      devices: None (one device), or data parallelism over these devices (a list, or a
        count of the first jax.devices()): every minibatch is split across them
        (ffjax.parallel); batch_size must divide by their number.

    Raises:
      ValueError: bad arguments, before anything is compiled.
      DivergedError: an epoch's loss was NaN or infinite (checked after every epoch; the
        state of that epoch is not passed to on_epoch).
    """
    if not 0 <= int(start_epoch) <= int(epochs):
        raise ValueError(f"start_epoch={start_epoch} must be in [0, epochs={epochs}].")
    if int(start_epoch) and resume_from is None:
        raise ValueError("start_epoch > 0 needs resume_from (the state to continue from).")
    program = make_program(key, x_NxD, y_N, spec, epochs=epochs, batch_size=batch_size,
                           optimizer=optimizer, readout_optimizer=readout_optimizer,
                           num_seeds=num_seeds, schedule=schedule, devices=devices,
                           resume_from=resume_from)
    return run_program(program, on_epoch=on_epoch, start_epoch=start_epoch)


def fit_grid(points: Sequence[GridPoint], x_NxD, y_N, spec: FFSpec = FFSpec(), *,
             epochs: int, batch_size: int = 100,
             optimizer: optim.OptimizerSpec = optim.OptimizerSpec(),
             schedule: str = "simultaneous", devices=None,
             on_epoch: Callable[[EpochReport, epoch_lib.TrainState], None] | None = None
             ) -> FitResult:
    """Trains every grid point at once: run_program(make_program(grid=points, ...)).
    Point k is the run `fit` would do with key jax.random.key(seed_k), threshold
    theta_k for every layer (None: each layer's number of units) and learning rate
    lr_k; a diverged point does not stop the others (its losses are NaN in the
    history). Arguments as in make_program."""
    program = make_program(None, x_NxD, y_N, spec, epochs=epochs, batch_size=batch_size,
                           optimizer=optimizer, grid=points, schedule=schedule,
                           devices=devices)
    return run_program(program, on_epoch=on_epoch)


def make_program(key: jax.Array | None, x_NxD, y_N, spec: FFSpec = FFSpec(), *, epochs: int,
                 batch_size: int = 100, optimizer=optim.OptimizerSpec(),
                 readout_optimizer: optax.GradientTransformation | None = None,
                 num_seeds: int | None = None, grid: Sequence[GridPoint] | None = None,
                 schedule: str = "simultaneous", devices=None,
                 resume_from: Callable | None = None) -> Program:
    """The one program builder behind fit and fit_grid, built but not run: one model,
    `num_seeds` seeds of it, or a `grid` of (seed, threshold, learning rate) points,
    each in one compiled program (for callers that drive or time the epochs
    themselves, e.g. the benchmarks).

    Args (others as in fit):
      key: the PRNG key of one model or of the seeds; None with a grid (each point
        names its seed).
      grid: GridPoints (make_grid). Each model's learning rate lives in its optimizer
        state (optim.with_lr) and its thresholds are an argument of the epoch, so one
        compiled epoch trains every point; optimizer must then be an OptimizerSpec.
      devices: None: one device. Otherwise a list of devices or a count of the first
        jax.devices(): one model or its seeds split every minibatch across them (data
        parallelism; batch_size must divide by their number); a grid is split across
        them by model (the largest count that divides the number of points is used).
    """
    _check_data(x_NxD, y_N, spec, epochs, batch_size)
    phases = phase_plan(schedule, epochs, spec.num_layers)
    if grid is not None:
        if num_seeds is not None or key is not None:
            raise ValueError("a grid names each point's seed: pass key=None and no "
                             "num_seeds with grid.")
        if not grid:
            raise ValueError("the grid is empty.")
        if not isinstance(optimizer, optim.OptimizerSpec) or readout_optimizer is not None:
            raise ValueError("a grid sets each point's learning rate in an "
                             "optim.OptimizerSpec: pass optimizer=OptimizerSpec(...) and "
                             "no readout_optimizer.")
    elif key is None:
        raise ValueError("key is needed (a jax.random.key), unless a grid is given.")
    if num_seeds is not None and int(num_seeds) <= 0:
        raise ValueError(f"num_seeds={num_seeds} must be a positive integer (or None).")
    spec = spec.for_input(x_NxD.shape[1:])
    steps = len(y_N) // int(batch_size)
    # A layer's lr schedule spans the epochs it trains in: with greedy, the longest
    # phase; with interleaved, each its own.
    span = (interleaved_epochs(schedule, epochs, spec.num_layers)
            or max(n for _, n in phases))
    if isinstance(optimizer, optim.OptimizerSpec):
        if readout_optimizer is not None:
            raise ValueError("readout_optimizer is given with an OptimizerSpec, which "
                             "builds the readout's optimizer itself (readout_lr, "
                             "readout_weight_decay): pass optax transformations for both, "
                             "or set the readout's settings in the OptimizerSpec.")
        if spec.trains_readout:
            readout_optimizer = optimizer.readout_optimizer(steps_per_epoch=steps,
                                                            epochs=epochs)
        opt = optimizer.layer_optimizers(spec.layer_fan_ins, steps_per_epoch=steps,
                                         epochs=span, lr=1.0 if grid else None)
    else:
        opt = optimizer
    many = grid is not None or num_seeds is not None
    extra = ()
    if grid is not None:
        relative = opt

        def layer_optimizers(lr):
            return tuple(optim.with_lr(o, lr) for o in relative)

        opt = layer_optimizers(1.0)  # one update function: each state holds its own lr
        keys = jax.vmap(jax.random.key)(jnp.asarray([p.seed for p in grid], jnp.uint32))
        lrs = jnp.asarray([p.lr for p in grid], jnp.float32)
        extra = (jnp.asarray([objective.resolve_thetas(p.theta, spec.scored_sizes)
                              for p in grid], jnp.float32),)

    def setup(k, lr=None):
        init_key, data_key = jax.random.split(k)
        layer_opt = opt if lr is None else layer_optimizers(lr)
        return epoch_lib.init_train_state(init_key, spec, spec.input_shape, layer_opt,
                                          readout_optimizer), data_key

    if grid is not None:
        state, data_key = jax.vmap(setup)(keys, lrs)
        # Every layer's optimizer state holds the same lrs array: give each leaf its own
        # buffer, since the epoch donates the state.
        state = jax.tree.map(jnp.copy, state)
    elif many:
        state, data_key = jax.vmap(setup)(jax.random.split(key, int(num_seeds)))
    else:
        state, data_key = setup(key)
    if resume_from is not None:
        state = resume_from(state)

    if devices is not None and not isinstance(devices, (list, tuple)):
        devices = parallel.select_devices(devices)
    data_mesh = batch_sharding = None
    num_devices = 1
    if devices is not None and len(devices) > 1 and grid is not None:
        mesh = parallel.model_mesh(list(devices), len(grid))
        num_devices = mesh.size
        if mesh.size > 1:
            state, data_key, extra = parallel.shard_models((state, data_key, extra), mesh)
            x, y = parallel.replicate((x_NxD, y_N), mesh)
    elif devices is not None and len(devices) > 1:
        parallel.check_batch_divides(batch_size, len(devices))
        data_mesh = parallel.data_mesh(list(devices))
        num_devices = data_mesh.size
        batch_sharding = parallel.batch_sharding(data_mesh)
        state, data_key, x, y = parallel.replicate((state, data_key, x_NxD, y_N), data_mesh)
    if num_devices == 1:
        x, y = jax.device_put(x_NxD), jax.device_put(y_N)

    def jitted_epoch(trainable):
        fn = epoch_lib.make_train_epoch(spec, opt, readout_optimizer, batch_size=batch_size,
                                        trainable=trainable, batch_sharding=batch_sharding)
        if many:
            fn = jax.vmap(fn, in_axes=(0, None, None, 0) + (0,) * len(extra))
        return jax.jit(fn, donate_argnums=0)

    return Program(state, data_key, tuple(jitted_epoch(t) for t, _ in phases),
                   tuple(n for _, n in phases), x, y, many, extra=extra,
                   num_devices=num_devices, check=grid is None)
