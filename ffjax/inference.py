"""Ten-label (C-label) goodness inference: vmapped over candidate labels, evaluated in chunks."""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ffjax import labels, layers, objective


def default_score_layers(num_layers: int) -> tuple[int, ...]:
    """All layers but the first when there are two or more (the reference recipe)."""
    return tuple(range(1, num_layers)) if num_layers >= 2 else (0,)


def resolve_score_layers(score_layers, num_layers: int) -> tuple[int, ...]:
    """None -> the default; otherwise checked 0-based layer indices."""
    if score_layers is None:
        return default_score_layers(num_layers)
    chosen = tuple(sorted({int(i) for i in score_layers}))
    if not chosen or any(i < 0 or i >= num_layers for i in chosen):
        raise ValueError(
            f"score_layers={tuple(score_layers)!r} must be a non-empty set of layer "
            f"indices in [0, {num_layers}) (0 is the first hidden layer)."
        )
    return chosen


def layer_goodness(params: layers.Network, x_BxD: jax.Array, *, num_classes: int,
                   label_strength: float = labels.DEFAULT_STRENGTH,
                   norm: str = "rms") -> jax.Array:
    """Goodness of every layer for every candidate label, vmapped over the labels.

    Args:
      x_BxD: (B, D) features (uint8 pixels or floats), without labels.

    Returns:
      (B, L, C) float32: entry [b, l, c] is layer l's goodness for example b with label c.
    """
    x = labels.to_float(x_BxD)

    def for_label(c):
        y = jnp.full((x.shape[0],), c, jnp.int32)
        xl = labels.embed_label(x, y, num_classes=num_classes, strength=label_strength)
        return jnp.stack([objective.goodness(h) for h in layers.forward(params, xl, norm=norm)],
                         axis=-1)  # (B, L)

    g_CxBxL = jax.vmap(for_label)(jnp.arange(num_classes))
    return jnp.transpose(g_CxBxL, (1, 2, 0))


def label_scores(params: layers.Network, x_BxD: jax.Array, *, num_classes: int,
                 label_strength: float = labels.DEFAULT_STRENGTH, norm: str = "rms",
                 score_layers: Sequence[int] | None = None) -> jax.Array:
    """(B, C) goodness summed over the chosen layers; the prediction is its argmax."""
    chosen = resolve_score_layers(score_layers, len(params))
    g = layer_goodness(params, x_BxD, num_classes=num_classes,
                       label_strength=label_strength, norm=norm)
    return jnp.sum(g[:, jnp.array(chosen), :], axis=1)


class Predictions(NamedTuple):
    """Predicted labels: combined (N,) and by each layer alone (N, L)."""

    combined: jax.Array
    per_layer: jax.Array


def make_predict(*, num_classes: int, label_strength: float = labels.DEFAULT_STRENGTH,
                 norm: str = "rms", score_layers: Sequence[int] | None = None,
                 chunk_size: int = 1000):
    """Builds a jitted `predict(params, x_NxD) -> Predictions` for any N.

    The examples are processed `chunk_size` at a time inside one device call
    (`lax.map` over chunks), so memory stays bounded by one chunk's C label passes.
    """
    layers.check_norm(norm)
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be a positive integer.")

    @jax.jit
    def predict(params, x_NxD):
        chosen = jnp.array(resolve_score_layers(score_layers, len(params)))
        n = x_NxD.shape[0]
        chunk = min(chunk_size, max(n, 1))
        pad = (-n) % chunk
        xp = jnp.pad(x_NxD, ((0, pad), (0, 0)))

        def one(xc):
            g = layer_goodness(params, xc, num_classes=num_classes,
                               label_strength=label_strength, norm=norm)  # (b, L, C)
            return jnp.argmax(jnp.sum(g[:, chosen, :], axis=1), -1), jnp.argmax(g, -1)

        comb, per = jax.lax.map(one, xp.reshape(-1, chunk, xp.shape[1]))
        return Predictions(comb.reshape(-1)[:n], per.reshape(-1, per.shape[-1])[:n])

    return predict


def predict(params: layers.Network, x_NxD: jax.Array, *, num_classes: int,
            label_strength: float = labels.DEFAULT_STRENGTH, norm: str = "rms",
            score_layers: Sequence[int] | None = None, chunk_size: int = 1000) -> jax.Array:
    """Predicted labels (N,) by the goodness readout. Convenience over make_predict."""
    if score_layers is not None:
        score_layers = tuple(int(i) for i in score_layers)
    fn = _cached_predict(num_classes=int(num_classes), label_strength=float(label_strength),
                         norm=norm, score_layers=score_layers, chunk_size=int(chunk_size))
    return fn(params, x_NxD).combined


# Repeated calls with the same settings reuse one jitted function (one trace per shape).
_cached_predict = functools.lru_cache(maxsize=32)(make_predict)


def accuracy(pred_N: jax.Array, y_N: jax.Array) -> float:
    """Fraction of predictions equal to the labels."""
    return float(jnp.mean((jnp.asarray(pred_N) == jnp.asarray(y_N)).astype(jnp.float32)))
