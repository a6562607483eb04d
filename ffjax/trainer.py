"""The host-side training loop: compile the epoch once, run it, time it, report each epoch."""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from ffjax import data, labels, objective, optim, parallel, train


class EpochReport(NamedTuple):
    """What one epoch produced: 0-based index, epoch means (numpy), seconds."""

    epoch: int
    metrics: train.StepMetrics
    seconds: float


SCHEDULES = ("simultaneous", "greedy")


def phase_plan(schedule: str, epochs: int, num_layers: int) -> list:
    """[(trainable layers or None for all, epochs)] for a training schedule."""
    if schedule == "simultaneous":
        return [(None, int(epochs))]
    per = int(epochs) // num_layers
    return [((k,), per if k < num_layers - 1 else int(epochs) - per * (num_layers - 1))
            for k in range(num_layers)]


class FitResult(NamedTuple):
    """The trained state, one EpochReport per epoch run, timings (compilation apart), and
    the number of epochs completed (less than asked when on_epoch stopped training)."""

    state: train.TrainState
    history: list
    compile_seconds: float
    train_seconds: float
    epochs_completed: int


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
    loss = np.asarray(report.metrics.layers.loss)  # (L,) or (K, L) with K seeds
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


def run_epoch(epoch_fn: Callable, e: int, *args) -> tuple:
    """(state, EpochReport): epoch `e` as `epoch_fn(*args)`, its metrics fetched to the
    host (the one device sync of an epoch) and its wall time."""
    t0 = time.perf_counter()
    state, metrics = epoch_fn(*args)
    metrics = jax.tree.map(np.asarray, jax.device_get(metrics))
    return state, EpochReport(e, metrics, time.perf_counter() - t0)


def fit(key: jax.Array, x_NxD, y_N, *, hidden: Sequence[int], epochs: int,
        num_classes: int, batch_size: int = 100, optimizer=None, lr: float = 0.0015,
        theta=None, norm: str = "rms", label_strength: float = labels.DEFAULT_STRENGTH,
        negatives: str = "uniform", peer_strength: float = 0.0,
        objective_fn: objective.Objective = objective.logistic, loss_scale: float = 1.0,
        readout: bool = False,
        readout_optimizer=None, readout_lr: float = 0.003, readout_layers=None,
        num_seeds: int | None = None, schedule: str = "simultaneous",
        on_epoch: Callable[[EpochReport, train.TrainState], bool | None] | None = None,
        resume_from: Callable[[train.TrainState], train.TrainState] | None = None,
        start_epoch: int = 0, devices=None) -> FitResult:
    """Trains an FF network on (x, y) with every layer learning locally.

    Args:
      key: PRNG key; split into the initialization key and the data key (shuffling and
        negative labels, folded with the epoch index).
      x_NxD: (N, D) uint8 pixels or float features. y_N: (N,) int labels in [0, C).
      hidden: hidden widths, e.g. (500, 500).
      epochs: passes over the data.
      num_classes: C (C <= D).
      batch_size: minibatch size.
      optimizer: an optax.GradientTransformation (or one per layer); default: Adam per
        layer at lr * 1000 / fan_in (optim.layer_learning_rates), constant for the
        first half of training then linearly decayed to 0.
      lr: the default optimizer's learning rate for a layer with 1000 inputs.
      theta: goodness threshold(s); None = each layer's width.
      norm: "rms" (default) or "l2" length normalization before every layer.
      label_strength: value of the one-hot label features.
      negatives: "uniform", "hard" (needs the readout) or "all" (train.make_train_epoch).
      peer_strength: peer normalization strength (0 disables; 0.03 in the reference).
      objective_fn: the per-layer objective (ffjax.objective.make_objective or your own
        function); loss_scale multiplies it (0.5: the reference code's step size).
      readout: also train the one-pass softmax readout (reading `readout_layers`,
        default all but the first) with `readout_optimizer` (default: Adam at
        `readout_lr` with the same schedule).
      num_seeds: train this many independent runs at once in one compiled program
        (jax.vmap over the training state and the keys). Run i is exactly the run
        fit(jax.random.split(key, num_seeds)[i], ...) would do; the state and every
        metric then have a leading axis of size num_seeds.
      schedule: "simultaneous" (every layer on every minibatch, the reference) or
        "greedy" (layer by layer: layer k alone is trained during the k-th of L equal
        phases of the epochs, the last phase taking the remainder; the readout trains
        throughout). With greedy, pass optimizers whose schedules span one phase.
      on_epoch: called after every epoch with its EpochReport and the new state; when it
        returns True, training stops after that epoch (FitResult.epochs_completed).
      resume_from: continue an interrupted run: called with a freshly initialized state
        (a template of the structure, shapes and dtypes) and returns the saved state
        after `start_epoch` epochs (e.g. Checkpoints.restore). Training then runs
        epochs start_epoch .. epochs - 1 with the same data order and negatives as the
        uninterrupted run, so it ends in exactly the same state on the same platform.
      devices: data parallelism over these devices (a list of jax devices, or a count
        of the first jax.devices()): every minibatch is split across them, parameters
        and optimizer states are replicated (ffjax.parallel). batch_size must divide
        by their number. None: one device, as without sharding.

    Raises:
      ValueError: bad arguments, before anything is compiled.
      DivergedError: an epoch's loss was NaN or infinite (checked after every epoch; the
        state of that epoch is not passed to on_epoch).
    """
    data.check_arrays(x_NxD, y_N, num_classes=num_classes, what="training data")
    if int(epochs) <= 0:
        raise ValueError(f"epochs={epochs} must be a positive integer.")
    if int(batch_size) <= 0 or int(batch_size) > len(y_N):
        raise ValueError(f"batch_size={batch_size} must be in [1, {len(y_N)}] (the number "
                         "of training examples).")
    hidden = tuple(int(h) for h in hidden)
    steps_per_epoch = len(y_N) // int(batch_size)
    sizes = (int(x_NxD.shape[1]),) + hidden
    phases = phase_plan(schedule, epochs, len(hidden))
    if optimizer is None:
        optimizer = optim.make_layer_optimizers(
            "adam", lr=lr, sizes=sizes, total_steps=max(n for _, n in phases) * steps_per_epoch)
    thetas = objective.resolve_thetas(theta, hidden)
    readout = readout or readout_optimizer is not None or negatives == "hard"
    if readout and readout_optimizer is None:
        readout_optimizer = optim.make_optimizer("adam", lr=readout_lr,
                                                 total_steps=epochs * steps_per_epoch)

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: choose one of {SCHEDULES}.")
    if schedule == "greedy" and epochs < len(hidden):
        raise ValueError(f"greedy training of {len(hidden)} layers needs at least "
                         f"{len(hidden)} epochs (one phase per layer); got {epochs}.")
    if num_seeds is not None and int(num_seeds) <= 0:
        raise ValueError(f"num_seeds={num_seeds} must be a positive integer (or None).")
    if not 0 <= int(start_epoch) <= int(epochs):
        raise ValueError(f"start_epoch={start_epoch} must be in [0, epochs={epochs}].")
    if int(start_epoch) and resume_from is None:
        raise ValueError("start_epoch > 0 needs resume_from (the state to continue from).")
    mesh = None
    if devices is not None:
        if isinstance(devices, int):
            devices = parallel.select_devices(devices)
        if len(devices) > 1:
            parallel.check_batch_divides(batch_size, len(devices))
            mesh = parallel.data_mesh(devices)

    def setup(k):
        init_key, data_key = jax.random.split(k)
        return train.init_train_state(init_key, sizes, optimizer,
                                      readout_optimizer=readout_optimizer,
                                      readout_layers=readout_layers,
                                      num_classes=num_classes), data_key

    def make_epoch(trainable):
        fn = train.make_train_epoch(
            optimizer, batch_size=batch_size, num_classes=num_classes, thetas=thetas,
            norm=norm, label_strength=label_strength, negatives=negatives,
            peer_strength=peer_strength, objective_fn=objective_fn, loss_scale=loss_scale,
            readout_optimizer=readout_optimizer, readout_layers=readout_layers,
            trainable=trainable,
            batch_sharding=None if mesh is None else parallel.batch_sharding(mesh),
            jit=num_seeds is None)
        if num_seeds is not None:
            fn = jax.jit(jax.vmap(fn, in_axes=(0, None, None, 0)), donate_argnums=0)
        return fn

    if num_seeds is None:
        state, data_key = setup(key)
        epoch_key = jax.random.fold_in
    else:
        state, data_key = jax.vmap(setup)(jax.random.split(key, int(num_seeds)))
        epoch_key = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    if resume_from is not None:
        state = resume_from(state)
    if mesh is None:
        x, y = jax.device_put(x_NxD), jax.device_put(y_N)
    else:
        state, data_key, x, y = parallel.replicate((state, data_key, x_NxD, y_N), mesh)
    compiled, compile_seconds = [], 0.0
    for trainable, _ in phases:  # one compiled epoch per phase (one in all, unless greedy)
        t0 = time.perf_counter()
        compiled.append(make_epoch(trainable).lower(
            state, x, y, epoch_key(data_key, 0)).compile())
        compile_seconds += time.perf_counter() - t0
    epoch_fns = [fn for fn, (_, n) in zip(compiled, phases) for _ in range(n)]

    history, train_seconds, done = [], 0.0, int(start_epoch)
    for e in range(int(start_epoch), len(epoch_fns)):
        state, report = run_epoch(epoch_fns[e], e, state, x, y, epoch_key(data_key, e))
        train_seconds += report.seconds
        check_finite(report)
        history.append(report)
        done = e + 1
        if on_epoch is not None and on_epoch(report, state):
            break
    return FitResult(state, history, compile_seconds, train_seconds, done)
