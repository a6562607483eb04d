"""Local FF training: per-layer optimizer states, one train step, one jitted on-device epoch."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from ffjax import labels, layers, objective


class LayerState(NamedTuple):
    """One layer's parameters and its own optimizer state."""

    params: layers.DenseParams
    opt_state: optax.OptState


class TrainState(NamedTuple):
    """The whole training state: one LayerState per hidden layer, input layer first."""

    layers: tuple


def _per_layer(optimizer, n: int) -> tuple:
    """One GradientTransformation per layer (the same one repeated, or one each)."""
    if isinstance(optimizer, optax.GradientTransformation):
        return (optimizer,) * n
    optimizers = tuple(optimizer)
    if len(optimizers) != n or not all(
        isinstance(o, optax.GradientTransformation) for o in optimizers
    ):
        raise ValueError(
            f"optimizer must be an optax.GradientTransformation or a sequence of {n} of "
            f"them (one per hidden layer); got {optimizer!r}."
        )
    return optimizers


def init_train_state(key: jax.Array, sizes: Sequence[int], optimizer) -> TrainState:
    """A fresh network of widths `sizes` ([D_in, H_1, ..., H_L]) and its optimizer states.

    Args:
      key: PRNG key for the weights (split into one key per layer).
      sizes: input width, then hidden widths.
      optimizer: an optax.GradientTransformation used independently for every layer
        (each layer gets its own state), or a sequence of L of them.
    """
    net = layers.init_network(key, sizes)
    opts = _per_layer(optimizer, len(net))
    return TrainState(tuple(LayerState(p, o.init(p)) for p, o in zip(net, opts)))


def params_of(state: TrainState) -> layers.Network:
    """The network parameters held in a TrainState."""
    return tuple(ls.params for ls in state.layers)


def local_losses(params: layers.Network, x_pos_BxD: jax.Array, x_neg_BxD: jax.Array, *,
                 thetas: Sequence[float], norm: str = "rms"):
    """Each layer's own FF loss on one minibatch.

    Positive and negative examples go through each layer in one (2B, D) matmul. The
    input of every layer is under stop_gradient, so layer k's loss depends on layer k's
    parameters alone: summing the losses and differentiating once gives every layer its
    local gradient and nothing else.

    Returns:
      losses: (L,) float32; metrics: LayerMetrics with (L,) fields.
    """
    batch = x_pos_BxD.shape[0]
    h = jnp.concatenate([x_pos_BxD, x_neg_BxD], axis=0)
    per_layer = []
    for p, theta in zip(params, thetas):
        h = layers.block(p, jax.lax.stop_gradient(h), norm=norm)
        g = objective.goodness(h)
        per_layer.append(objective.layer_metrics(g[:batch], g[batch:], theta))
    metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    return metrics.loss, metrics


def train_step(state: TrainState, x_pos_BxD: jax.Array, x_neg_BxD: jax.Array, *,
               optimizer, thetas: Sequence[float], norm: str = "rms"):
    """Updates every layer once from its own local loss. Returns (state, LayerMetrics)."""
    params = params_of(state)

    def total(ps):
        losses, metrics = local_losses(ps, x_pos_BxD, x_neg_BxD, thetas=thetas, norm=norm)
        return jnp.sum(losses), metrics

    grads, metrics = jax.grad(total, has_aux=True)(params)
    new_layers = []
    for ls, g, opt in zip(state.layers, grads, _per_layer(optimizer, len(params))):
        updates, opt_state = opt.update(g, ls.opt_state, ls.params)
        new_layers.append(LayerState(optax.apply_updates(ls.params, updates), opt_state))
    return TrainState(tuple(new_layers)), metrics


def make_train_epoch(optimizer, *, batch_size: int, num_classes: int,
                     thetas: Sequence[float], norm: str = "rms",
                     label_strength: float = labels.DEFAULT_STRENGTH, jit: bool = True):
    """Builds `epoch(state, x_NxD, y_N, key) -> (state, LayerMetrics)`.

    One call is one pass over the data on the device: the examples are shuffled with
    `key`, split into N // batch_size minibatches (the remainder, different each epoch,
    is skipped), and `lax.scan` runs train_step over them. Positives carry their true
    label, negatives a label drawn uniformly from the wrong ones. The metrics are the
    means over the epoch's minibatches, one value per layer.

    Args:
      optimizer: optax.GradientTransformation (or one per layer), as given to
        init_train_state.
      batch_size: minibatch size B.
      num_classes: C; labels are written into the first C features.
      thetas: per-layer goodness thresholds (see objective.resolve_thetas).
      norm: "rms" or "l2".
      label_strength: value of the one-hot label features.
      jit: return the jitted function (state donated) or the pure Python one.
    """
    layers.check_norm(norm)
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size={batch_size} must be a positive integer.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes} must be at least 2.")
    thetas = tuple(float(t) for t in thetas)

    def epoch(state: TrainState, x_NxD: jax.Array, y_N: jax.Array, key: jax.Array):
        n = x_NxD.shape[0]
        steps = n // batch_size
        if steps == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n}).")
        perm_key, neg_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n)[: steps * batch_size]
        batches = order.reshape(steps, batch_size)
        neg_keys = jax.random.split(neg_key, steps)

        def step(st, inp):
            idx, k = inp
            x = labels.to_float(x_NxD[idx])
            y = y_N[idx]
            y_neg = labels.uniform_wrong_labels(k, y, num_classes=num_classes)
            x_pos = labels.embed_label(x, y, num_classes=num_classes, strength=label_strength)
            x_neg = labels.embed_label(x, y_neg, num_classes=num_classes,
                                       strength=label_strength)
            return train_step(st, x_pos, x_neg, optimizer=optimizer, thetas=thetas, norm=norm)

        state, metrics = jax.lax.scan(step, state, (batches, neg_keys))
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return jax.jit(epoch, donate_argnums=0) if jit else epoch
