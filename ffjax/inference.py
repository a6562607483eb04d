"""Ten-label (C-label) goodness inference: vmapped over candidate labels, evaluated in chunks."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ffjax import encodings, labels, layers, network, objective, readout
from ffjax.spec import FFSpec


def layer_goodness(params: layers.Network, x: jax.Array, spec: FFSpec) -> jax.Array:
    """Goodness of every layer for every candidate label.

    When shares_first_layer(spec), the first layer's pre-activation for all C labels
    comes from one matmul (layer_goodness_shared); otherwise every label is its own
    pass, vmapped (layer_goodness_per_label). Both give the same values up to float
    rounding. With a class-group objective, entry [b, l, c] is layer l's goodness of
    class c's group, from one pass (layer_group_goodness).

    Args:
      x: (B, ...) raw examples (uint8 pixels or floats), without labels.

    Returns:
      (B, L, C) float32: entry [b, l, c] is layer l's goodness for example b with label c
      written in by spec.encoding.
    """
    if spec.uses_groups:
        return layer_group_goodness(params, x, spec)
    if shares_first_layer(spec):
        return layer_goodness_shared(params, x, spec)
    return layer_goodness_per_label(params, x, spec)


def layer_group_goodness(params: layers.Network, x: jax.Array, spec: FFSpec) -> jax.Array:
    """(B, L, C): every layer's class-group goodness from one pass (class-group
    objectives: the label is read off the activity, never written into the input)."""
    acts = network.forward(params, spec.encoding.neutral(labels.to_float(x)), spec)
    return jnp.stack([objective.group_goodness(h, spec.num_classes) for h in acts], axis=1)


def layer_goodness_per_label(params: layers.Network, x: jax.Array,
                             spec: FFSpec) -> jax.Array:
    """layer_goodness as C full passes, one per label, vmapped over the labels."""
    check_goodness_readout(spec)
    xf = labels.to_float(x)

    def for_label(c):
        xl = spec.encoding.embed(xf, jnp.full((xf.shape[0],), c, jnp.int32))
        return jnp.stack([objective.goodness(h) for h in network.forward(params, xl, spec)],
                         axis=-1)  # (B, L)

    g_CxBxL = jax.vmap(for_label)(jnp.arange(spec.num_classes))
    return jnp.transpose(g_CxBxL, (1, 2, 0))


def shares_first_layer(spec: FFSpec) -> bool:
    """Whether the C label passes can share the first layer's matmul exactly.

    That holds when the label overwrites the first C features with a one-hot of one
    strength s (encodings.FirstFeatures) and the first block is dense: every candidate
    input then has the same norm (the label-free features plus s^2), so each one
    normalizes by the same factor r, and its pre-activation is r (x0 @ W + s W[c]) + b
    with x0 the input with its label features zeroed, for every norm that only scales
    (not "centered"). The shortcut computes relu(z) alone, so it also needs
    output_norm "none".
    """
    return (isinstance(spec.encoding, encodings.FirstFeatures)
            and isinstance(spec.blocks[0], layers.Dense) and spec.norm != "centered"
            and spec.output_norm == "none")


def layer_goodness_shared(params: layers.Network, x: jax.Array, spec: FFSpec) -> jax.Array:
    """layer_goodness with the first layer computed once for all C labels
    (shares_first_layer(spec) must hold): its cost falls from C matmuls to one."""
    if not shares_first_layer(spec):
        raise ValueError("layer_goodness_shared needs the first_features label encoding, "
                         "a dense first block, a norm that only scales (not "
                         "'centered') and no output_norm; use layer_goodness.")
    c, s = spec.num_classes, spec.encoding.strength
    flat = labels.to_float(x).reshape(x.shape[0], -1)
    base = flat.at[:, :c].set(0.0)
    scale = layers.norm_scale(base.at[:, 0].set(s), norm=spec.norm)  # any label's norm
    w, b = params[0].w, params[0].b
    z = scale[:, :, None] * ((base @ w)[:, None, :] + s * w[:c][None]) + b  # (B, C, H)
    h1 = jax.nn.relu(z)

    def rest(h_BxH):  # the layers after the first, for one label
        return [objective.goodness(h) for h in network.forward(params, h_BxH, spec, start=1)]

    g_rest = jax.vmap(rest, in_axes=1, out_axes=-1)(h1)  # L - 1 arrays of (B, C)
    return jnp.stack([jnp.sum(jnp.square(h1), axis=-1)] + list(g_rest), axis=1)  # (B, L, C)


def check_goodness_readout(spec: FFSpec) -> None:
    """The C-label goodness readout needs a label in the input (or class groups)."""
    if not spec.encoding.carries_label and not spec.uses_groups:
        raise ValueError("the goodness readout runs the input once per candidate label, "
                         "but this spec's label encoding gives no label: use the softmax "
                         "readout (make_predict_readout).")


def label_scores(params: layers.Network, x: jax.Array, spec: FFSpec) -> jax.Array:
    """(B, C) goodness summed over spec.score_layer_ids; the prediction is its argmax."""
    g = layer_goodness(params, x, spec)
    return jnp.sum(g[:, jnp.array(spec.score_layer_ids), :], axis=1)


class Predictions(NamedTuple):
    """Predicted labels: combined (N,), by each layer alone (N, L), and by the softmax
    readout (N,) when one was given (else None); the goodness of every layer for every
    label (N, L, C), from which any other choice of score layers can be read; and the
    softmax readout's logits (N, C) when it was given, for the joint readout."""

    combined: jax.Array
    per_layer: jax.Array
    readout: jax.Array | None = None
    goodness: jax.Array | None = None
    readout_logits: jax.Array | None = None


# Examples per chunk of every evaluation. Memory grows with the chunk's activities, not
# with N: a whole 10 000-image split at once needs about 22 GB for --preset cifar10-conv,
# more than many GPUs and every TPU core have; 1000 keeps it near 2 GB per model.
CHUNK_SIZE = 1000


def _check_chunk_size(chunk_size) -> None:
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be a positive integer.")


def _chunked(fn, x_NxD: jax.Array, chunk_size: int):
    """Applies fn to x in chunks of chunk_size examples inside one computation (lax.map;
    the last chunk zero-padded), concatenating the per-example outputs."""
    n = x_NxD.shape[0]
    chunk = min(chunk_size, max(n, 1))
    pad = (-n) % chunk
    xp = jnp.pad(x_NxD, ((0, pad),) + ((0, 0),) * (x_NxD.ndim - 1)).reshape(
        (-1, chunk) + x_NxD.shape[1:])
    out = jax.lax.map(fn, xp)
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:n], out)


def _readout_logits(params, rparams, x_BxD, spec: FFSpec):
    """(B, C) logits of the softmax readout from one neutral-label pass."""
    return readout.logits(rparams, readout.features(params, x_BxD, spec))


def _readout_argmax(params, rparams, x_BxD, spec: FFSpec):
    """(B,) labels predicted by the softmax readout from one neutral-label pass."""
    return jnp.argmax(_readout_logits(params, rparams, x_BxD, spec), -1)


def make_predict(spec: FFSpec, *, chunk_size: int = CHUNK_SIZE):
    """Builds a jitted `predict(params, x_NxD, readout_params=None) -> Predictions`.

    The goodness readout runs C label passes per example and sums spec.score_layer_ids;
    with `readout_params` (the trained softmax readout) one neutral-label pass also
    gives the one-pass prediction. Examples are processed `chunk_size` at a time inside
    one device call, so memory stays bounded by one chunk's passes for any N.
    """
    _check_chunk_size(chunk_size)
    check_goodness_readout(spec)
    chosen = jnp.array(spec.score_layer_ids)

    @jax.jit
    def predict(params, x_NxD, readout_params=None):
        network.check_input(params, x_NxD, spec)

        def one(xc):
            g = layer_goodness(params, xc, spec)
            out = {"combined": jnp.argmax(jnp.sum(g[:, chosen, :], axis=1), -1),
                   "per_layer": jnp.argmax(g, -1), "goodness": g}
            if readout_params is not None:
                logits = _readout_logits(params, readout_params, xc, spec)
                out["readout"], out["readout_logits"] = jnp.argmax(logits, -1), logits
            return out

        return Predictions(**_chunked(one, x_NxD, chunk_size))

    return predict


def make_predict_readout(spec: FFSpec, *, chunk_size: int = CHUNK_SIZE):
    """Builds a jitted `predict(params, readout_params, x_NxD) -> (N,)` labels from the
    one-pass softmax readout alone: one neutral-label forward pass per example,
    `chunk_size` examples at a time."""
    _check_chunk_size(chunk_size)

    @jax.jit
    def predict(params, readout_params, x_NxD):
        network.check_input(params, x_NxD, spec)
        return _chunked(lambda xc: _readout_argmax(params, readout_params, xc, spec),
                        x_NxD, chunk_size)

    return predict


def make_predict_probes(spec: FFSpec, *, chunk_size: int = CHUNK_SIZE):
    """Builds a jitted `predict(params, probe_params, x_NxD) -> (N, L)` labels, each
    layer's linear probe (TrainState.probes) on one neutral-label pass, `chunk_size`
    examples at a time."""
    _check_chunk_size(chunk_size)

    @jax.jit
    def predict(params, probe_params, x_NxD):
        network.check_input(params, x_NxD, spec)

        def one(xc):
            feats = readout.layer_features(params, xc, spec)
            return jnp.stack([jnp.argmax(readout.logits(p, f), -1)
                              for p, f in zip(probe_params, feats)], axis=-1)

        return _chunked(one, x_NxD, chunk_size)

    return predict


def predict(params: layers.Network, x_NxD: jax.Array, spec: FFSpec, *,
            chunk_size: int = CHUNK_SIZE) -> jax.Array:
    """Predicted labels (N,) by the goodness readout. Convenience over make_predict."""
    return _cached_predict(spec, chunk_size=int(chunk_size))(params, x_NxD).combined


# Repeated calls with the same spec reuse one jitted function (one trace per shape).
_cached_predict = functools.lru_cache(maxsize=32)(make_predict)


def accuracy_of_layers(goodness_NxLxC, y_N, layer_selection) -> float:
    """Accuracy of the goodness readout that sums the layers `layer_selection`, from the
    per-layer goodness of Predictions.goodness (host arrays)."""
    g = np.asarray(goodness_NxLxC)[:, list(layer_selection), :].sum(axis=1)
    return accuracy(np.argmax(g, -1), y_N)


def joint_applies(spec: FFSpec) -> bool:
    """Whether the joint readout applies: a class-group objective that names its class
    log-probabilities (objective.GroupObjective.log_probs) and a trained softmax readout."""
    if not (spec.uses_groups and spec.trains_readout):
        return False
    return spec.objective_fn().log_probs is not None


def joint_scores(goodness_NxLxC, readout_logits_NxC, layer_selection, spec: FFSpec):
    """(N, C) scores of the joint readout, whose argmax is its prediction: the sum over
    `layer_selection` of each layer's class log-probabilities (its objective's
    log_probs of its class-group goodness) plus the softmax readout's log-probabilities.
    It is the product of the chosen layers' and the readout's class distributions, each
    trained by its own local loss, so it reads two kinds of evidence the model already
    computes: each layer's competition between class groups, and a linear map of the
    normalized activities. Raises ValueError where it does not apply (joint_applies)."""
    if not joint_applies(spec):
        raise ValueError("the joint readout needs a class-group objective with log_probs "
                         "(objective='group_softmax') and a trained softmax readout "
                         "(readout=True).")
    log_probs = spec.objective_fn().log_probs
    g = jnp.asarray(goodness_NxLxC)
    out = jax.nn.log_softmax(jnp.asarray(readout_logits_NxC), axis=-1)
    for i in layer_selection:
        out = out + log_probs(g[:, i, :])
    return out


def accuracy(pred_N: jax.Array, y_N: jax.Array) -> float:
    """Fraction of predictions equal to the labels."""
    return float(jnp.mean((jnp.asarray(pred_N) == jnp.asarray(y_N)).astype(jnp.float32)))
