"""Many FF models in one program: a grid of seeds x thresholds x learning rates trained at
once with jax.vmap over the training state (and split over devices when there are several).

Each grid point k is the run `trainer.fit` would do with key jax.random.key(seed_k),
threshold theta_k for every layer (None: each layer's width) and learning rate lr_k: the
learning rate lives in the optimizer state (optim.with_lr) and the thresholds are an
argument of the epoch, so one compiled epoch trains every point.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ffjax import data, labels, objective, optim, parallel, train, trainer


class GridPoint(NamedTuple):
    seed: int
    theta: float | None
    lr: float


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


class GridResult(NamedTuple):
    """States with a leading grid axis, per-epoch EpochReports (metrics (K, ...)),
    compile and training seconds, the device count the grid was split over."""

    state: train.TrainState
    history: list
    compile_seconds: float
    train_seconds: float
    num_devices: int


def fit_grid(points: Sequence[GridPoint], x_NxD, y_N, *, hidden: Sequence[int],
             epochs: int, num_classes: int, batch_size: int = 100,
             optimizer: str = "smoothed_sgd", lr_scaling: str = "none",
             lr_decay: bool = True, weight_decay: float = 0.0,
             readout_optimizer: optax.GradientTransformation | None = None,
             readout_layers=None, norm: str = "rms",
             label_strength: float = labels.DEFAULT_STRENGTH, negatives: str = "uniform",
             peer_strength: float = 0.0,
             objective_fn: objective.Objective = objective.logistic,
             loss_scale: float = 1.0, optimizer_settings: dict | None = None,
             devices=None,
             on_epoch: Callable[[trainer.EpochReport], None] | None = None) -> GridResult:
    """Trains every grid point at once (see the module docstring).

    Args:
      points: the grid (make_grid).
      optimizer, lr_scaling, lr_decay, weight_decay: the layers' optimizer, as
        optim.make_layer_optimizers builds it, with each point's lr;
        optimizer_settings: further keywords of optim.make_optimizer.
      devices: split the grid over these devices (or the first N; default all): the
        largest count that divides the number of points is used.
      Others: as in trainer.fit.
    """
    data.check_arrays(x_NxD, y_N, num_classes=num_classes, what="training data")
    if not points:
        raise ValueError("the grid is empty.")
    if int(epochs) <= 0:
        raise ValueError(f"epochs={epochs} must be a positive integer.")
    if not 0 < int(batch_size) <= len(y_N):
        raise ValueError(f"batch_size={batch_size} must be in [1, {len(y_N)}].")
    if negatives == "hard" and readout_optimizer is None:
        raise ValueError("negatives='hard' needs a readout_optimizer.")
    hidden = tuple(int(h) for h in hidden)
    sizes = (int(x_NxD.shape[1]),) + hidden
    steps = len(y_N) // int(batch_size)
    relative = optim.make_layer_optimizers(
        optimizer, lr=1.0, sizes=sizes, scaling=lr_scaling, total_steps=epochs * steps,
        decay=lr_decay, weight_decay=weight_decay, **(optimizer_settings or {}))

    def layer_optimizers(lr):
        return tuple(optim.with_lr(o, lr) for o in relative)

    def setup(key, lr):
        init_key, data_key = jax.random.split(key)
        return train.init_train_state(init_key, sizes, layer_optimizers(lr),
                                      readout_optimizer=readout_optimizer,
                                      readout_layers=readout_layers,
                                      num_classes=num_classes), data_key

    keys = jax.vmap(jax.random.key)(jnp.asarray([p.seed for p in points], jnp.uint32))
    lrs = jnp.asarray([p.lr for p in points], jnp.float32)
    thetas = jnp.asarray([objective.resolve_thetas(p.theta, hidden) for p in points],
                         jnp.float32)
    state, data_keys = jax.vmap(setup)(keys, lrs)
    # Every layer's optimizer state holds the same lrs array: give each leaf its own
    # buffer, since the epoch donates the state.
    state = jax.tree.map(jnp.copy, state)
    epoch = train.make_train_epoch(
        layer_optimizers(1.0), batch_size=batch_size, num_classes=num_classes,
        thetas=objective.resolve_thetas(None, hidden), norm=norm,
        label_strength=label_strength, negatives=negatives, peer_strength=peer_strength,
        objective_fn=objective_fn, loss_scale=loss_scale,
        readout_optimizer=readout_optimizer, readout_layers=readout_layers, jit=False)
    grid_epoch = jax.jit(jax.vmap(epoch, in_axes=(0, None, None, 0, 0)), donate_argnums=0)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))

    devices = parallel.select_devices(devices) if not isinstance(devices, list) else devices
    mesh = parallel.model_mesh(devices, len(points))
    if mesh.size > 1:
        state, data_keys, thetas = parallel.shard_models((state, data_keys, thetas), mesh)
        x, y = parallel.replicate((x_NxD, y_N), mesh)
    else:
        x, y = jax.device_put(x_NxD), jax.device_put(y_N)

    t0 = time.perf_counter()
    compiled = grid_epoch.lower(state, x, y, fold(data_keys, 0), thetas).compile()
    compile_seconds = time.perf_counter() - t0
    history, train_seconds = [], 0.0
    for e in range(int(epochs)):
        state, report = trainer.run_epoch(compiled, e, state, x, y, fold(data_keys, e), thetas)
        train_seconds += report.seconds
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
    return GridResult(state, history, compile_seconds, train_seconds, mesh.size)


def point_state(state: train.TrainState, k: int) -> train.TrainState:
    """Grid point k's state, on the default device."""
    return jax.device_put(jax.tree.map(lambda a: np.asarray(a[k]), state))
