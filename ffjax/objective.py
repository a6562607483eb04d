"""The per-layer Forward-Forward objective: goodness, the logistic loss on it, its metrics."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp


class LayerMetrics(NamedTuple):
    """Per-layer training metrics; each field is a scalar (or stacked over layers/steps)."""

    loss: jax.Array
    goodness_pos: jax.Array  # mean goodness of positive examples
    goodness_neg: jax.Array  # mean goodness of negative examples
    acc_pos: jax.Array  # fraction of positives with goodness > theta
    acc_neg: jax.Array  # fraction of negatives with goodness < theta


def goodness(h_BxH: jax.Array) -> jax.Array:
    """Sum of squared activities per example: (B, H) -> (B,)."""
    return jnp.sum(jnp.square(h_BxH), axis=-1)


def ff_loss(g_pos_B: jax.Array, g_neg_M: jax.Array, theta) -> jax.Array:
    """mean(softplus(theta - G_pos)) + mean(softplus(G_neg - theta)), stable for any
    magnitude. With one negative per positive (M = B) this is the mean per-example loss
    softplus(theta - G_pos) + softplus(G_neg - theta); M may also be a multiple of B."""
    return (jnp.mean(jax.nn.softplus(theta - g_pos_B))
            + jnp.mean(jax.nn.softplus(g_neg_M - theta)))


def layer_metrics(g_pos_B: jax.Array, g_neg_B: jax.Array, theta) -> LayerMetrics:
    """Loss and the layer's own view of how well it separates positives from negatives."""
    return LayerMetrics(
        loss=ff_loss(g_pos_B, g_neg_B, theta),
        goodness_pos=jnp.mean(g_pos_B),
        goodness_neg=jnp.mean(g_neg_B),
        acc_pos=jnp.mean((g_pos_B > theta).astype(jnp.float32)),
        acc_neg=jnp.mean((g_neg_B < theta).astype(jnp.float32)),
    )


def resolve_thetas(theta, hidden: Sequence[int]) -> tuple[float, ...]:
    """Per-layer thresholds: None means each layer's width (the reference recipe).

    Args:
      theta: None, one number for every layer, or one number per layer.
      hidden: the hidden widths.
    """
    hidden = tuple(int(h) for h in hidden)
    if theta is None:
        return tuple(float(h) for h in hidden)
    if isinstance(theta, (int, float)):
        thetas = (float(theta),) * len(hidden)
    else:
        thetas = tuple(float(t) for t in theta)
        if len(thetas) != len(hidden):
            raise ValueError(
                f"theta has {len(thetas)} values but the network has {len(hidden)} "
                "hidden layers; give one value, one per layer, or None (= layer width)."
            )
    if any(not t > 0 for t in thetas):
        raise ValueError(f"theta={theta!r}: thresholds must be positive.")
    return thetas
