"""Ten-label (C-label) goodness inference: vmapped over candidate labels, evaluated in chunks."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ffjax import labels, layers, objective, readout
from ffjax.spec import FFSpec


def layer_goodness(params: layers.Network, x_BxD: jax.Array, *, num_classes: int,
                   label_strength: float = labels.DEFAULT_STRENGTH,
                   norm: str = layers.DEFAULT_NORM) -> jax.Array:
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


def label_scores(params: layers.Network, x_BxD: jax.Array, spec: FFSpec) -> jax.Array:
    """(B, C) goodness summed over spec.score_layer_ids; the prediction is its argmax."""
    g = layer_goodness(params, x_BxD, num_classes=spec.num_classes,
                       label_strength=spec.label_strength, norm=spec.norm)
    return jnp.sum(g[:, jnp.array(spec.score_layer_ids), :], axis=1)


class Predictions(NamedTuple):
    """Predicted labels: combined (N,), by each layer alone (N, L), and by the softmax
    readout (N,) when one was given (else None); and the goodness of every layer for
    every label (N, L, C), from which any other choice of score layers can be read."""

    combined: jax.Array
    per_layer: jax.Array
    readout: jax.Array | None = None
    goodness: jax.Array | None = None


def _check_x(params, x_NxD) -> None:
    if len(x_NxD.shape) != 2 or x_NxD.shape[1] != params[0].w.shape[0]:
        raise ValueError(f"x must have shape (N, {params[0].w.shape[0]}) for this network; "
                         f"got {tuple(x_NxD.shape)}.")


def _chunked(fn, x_NxD: jax.Array, chunk_size: int):
    """Applies fn to x in chunks of chunk_size rows inside one computation (lax.map; the
    last chunk zero-padded), concatenating the per-example outputs."""
    n = x_NxD.shape[0]
    chunk = min(chunk_size, max(n, 1))
    pad = (-n) % chunk
    xp = jnp.pad(x_NxD, ((0, pad), (0, 0))).reshape(-1, chunk, x_NxD.shape[1])
    out = jax.lax.map(fn, xp)
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:n], out)


def _readout_argmax(params, rparams, x_BxD, spec: FFSpec):
    """(B,) labels predicted by the softmax readout from one neutral-label pass."""
    f = readout.features(params, x_BxD, num_classes=spec.num_classes,
                         readout_layers=spec.readout_layer_ids,
                         label_strength=spec.label_strength, norm=spec.norm)
    return jnp.argmax(readout.logits(rparams, f), -1)


def make_predict(spec: FFSpec, *, chunk_size: int = 1000):
    """Builds a jitted `predict(params, x_NxD, readout_params=None) -> Predictions`.

    The goodness readout runs C label passes per example and sums spec.score_layer_ids;
    with `readout_params` (the trained softmax readout) one neutral-label pass also
    gives the one-pass prediction. Examples are processed `chunk_size` at a time inside
    one device call, so memory stays bounded by one chunk's passes for any N.
    """
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be a positive integer.")
    chosen = jnp.array(spec.score_layer_ids)

    @jax.jit
    def predict(params, x_NxD, readout_params=None):
        _check_x(params, x_NxD)

        def one(xc):
            g = layer_goodness(params, xc, num_classes=spec.num_classes,
                               label_strength=spec.label_strength, norm=spec.norm)
            out = {"combined": jnp.argmax(jnp.sum(g[:, chosen, :], axis=1), -1),
                   "per_layer": jnp.argmax(g, -1), "goodness": g}
            if readout_params is not None:
                out["readout"] = _readout_argmax(params, readout_params, xc, spec)
            return out

        return Predictions(**_chunked(one, x_NxD, chunk_size))

    return predict


def make_predict_readout(spec: FFSpec, *, chunk_size: int = 10000):
    """Builds a jitted `predict(params, readout_params, x_NxD) -> (N,)` labels from the
    one-pass softmax readout alone: one neutral-label forward pass per example."""

    @jax.jit
    def predict(params, readout_params, x_NxD):
        _check_x(params, x_NxD)
        return _chunked(lambda xc: _readout_argmax(params, readout_params, xc, spec),
                        x_NxD, chunk_size)

    return predict


def predict(params: layers.Network, x_NxD: jax.Array, spec: FFSpec, *,
            chunk_size: int = 1000) -> jax.Array:
    """Predicted labels (N,) by the goodness readout. Convenience over make_predict."""
    return _cached_predict(spec, chunk_size=int(chunk_size))(params, x_NxD).combined


# Repeated calls with the same spec reuse one jitted function (one trace per shape).
_cached_predict = functools.lru_cache(maxsize=32)(make_predict)


def accuracy_of_layers(goodness_NxLxC, y_N, layer_selection) -> float:
    """Accuracy of the goodness readout that sums the layers `layer_selection`, from the
    per-layer goodness of Predictions.goodness (host arrays)."""
    g = np.asarray(goodness_NxLxC)[:, list(layer_selection), :].sum(axis=1)
    return accuracy(np.argmax(g, -1), y_N)


def accuracy(pred_N: jax.Array, y_N: jax.Array) -> float:
    """Fraction of predictions equal to the labels."""
    return float(jnp.mean((jnp.asarray(pred_N) == jnp.asarray(y_N)).astype(jnp.float32)))
