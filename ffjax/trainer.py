"""The host-side training loop: compile the epoch once, run it, time it, report each epoch."""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from ffjax import data, labels, objective, optim, train


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
    """The trained state, one EpochReport per epoch, and timings (compilation apart)."""

    state: train.TrainState
    history: list
    compile_seconds: float
    train_seconds: float


def fit(key: jax.Array, x_NxD, y_N, *, hidden: Sequence[int], epochs: int,
        num_classes: int, batch_size: int = 100, optimizer=None, lr: float = 0.0015,
        theta=None, norm: str = "rms", label_strength: float = labels.DEFAULT_STRENGTH,
        negatives: str = "uniform", peer_strength: float = 0.0, readout: bool = False,
        readout_optimizer=None, readout_lr: float = 0.003, readout_layers=None,
        num_seeds: int | None = None, schedule: str = "simultaneous",
        on_epoch: Callable[[EpochReport, train.TrainState], None] | None = None
        ) -> FitResult:
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
      on_epoch: called after every epoch with its EpochReport and the new state.
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
            peer_strength=peer_strength, readout_optimizer=readout_optimizer,
            readout_layers=readout_layers, trainable=trainable, jit=num_seeds is None)
        if num_seeds is not None:
            fn = jax.jit(jax.vmap(fn, in_axes=(0, None, None, 0)), donate_argnums=0)
        return fn

    if num_seeds is None:
        state, data_key = setup(key)
        epoch_key = jax.random.fold_in
    else:
        state, data_key = jax.vmap(setup)(jax.random.split(key, int(num_seeds)))
        epoch_key = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    x, y = jax.device_put(x_NxD), jax.device_put(y_N)
    compiled, compile_seconds = [], 0.0
    for trainable, _ in phases:  # one compiled epoch per phase (one in all, unless greedy)
        t0 = time.perf_counter()
        compiled.append(make_epoch(trainable).lower(
            state, x, y, epoch_key(data_key, 0)).compile())
        compile_seconds += time.perf_counter() - t0
    epoch_fns = [fn for fn, (_, n) in zip(compiled, phases) for _ in range(n)]

    history, train_seconds = [], 0.0
    for e, epoch_fn in enumerate(epoch_fns):
        t0 = time.perf_counter()
        state, metrics = epoch_fn(state, x, y, epoch_key(data_key, e))
        metrics = jax.tree.map(np.asarray, jax.device_get(metrics))
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        report = EpochReport(e, metrics, seconds)
        history.append(report)
        if on_epoch is not None:
            on_epoch(report, state)
    return FitResult(state, history, compile_seconds, train_seconds)
