"""One-pass softmax readout: a linear classifier on the normalized activities of one
neutral-label pass, trained beside the FF layers without sending them any gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ffjax import labels, layers, network


def layer_features(params: layers.Network, x: jax.Array, spec) -> tuple:
    """Every layer's (B, F_i) normalized, flattened activity for the input with the
    neutral label (spec.encoding.neutral), under stop_gradient.

    x holds raw examples (uint8 or float, no label). No gradient flows back into the
    FF layers from these features.
    """
    acts = network.forward(params, spec.encoding.neutral(labels.to_float(x)), spec)
    return tuple(jax.lax.stop_gradient(
        network.output_features(layers.normalize(a, norm=spec.norm))) for a in acts)


def select(layer_feats: tuple, spec) -> jax.Array:
    """(B, F): the softmax readout's features, those of spec.readout_layer_ids."""
    return jnp.concatenate([layer_feats[i] for i in spec.readout_layer_ids], axis=-1)


def features(params: layers.Network, x: jax.Array, spec) -> jax.Array:
    """(B, F): the softmax readout's features (the normalized, flattened activities of
    spec.readout_layer_ids, neutral label), which send no gradient to the FF layers."""
    return select(layer_features(params, x, spec), spec)


def init_probes(spec) -> tuple:
    """One zero-initialized linear probe per layer, on that layer's features alone."""
    return tuple(init_readout(n, spec.num_classes) for n in spec.layer_sizes)


def init_readout(d_in: int, num_classes: int) -> layers.DenseParams:
    """Zero weights and biases: the readout starts at the uniform prediction."""
    return layers.DenseParams(jnp.zeros((d_in, num_classes), jnp.float32),
                              jnp.zeros((num_classes,), jnp.float32))


def logits(rparams: layers.DenseParams, feats_BxF: jax.Array) -> jax.Array:
    """(B, C) class logits."""
    return feats_BxF @ rparams.w + rparams.b


def cross_entropy(logits_BxC: jax.Array, y_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits against integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B))


def loss(rparams: layers.DenseParams, feats_BxF: jax.Array, y_B: jax.Array) -> jax.Array:
    """The readout's training loss: mean softmax cross-entropy."""
    return cross_entropy(logits(rparams, feats_BxF), y_B)
