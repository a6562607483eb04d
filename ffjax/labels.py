"""Label primitives for supervised FF: feature scaling, labels written into the first C
features, wrong-label samplers. ffjax.encodings and ffjax.negatives build on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

def to_float(x: jax.Array) -> jax.Array:
    """uint8 features (pixels) scaled to [0, 1]; float features cast to float32 unchanged.
    Always a jax array, so callers may pass numpy arrays and use jax's array methods."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def embed_label(x_BxD: jax.Array, y_B: jax.Array, *, num_classes: int,
                strength: float) -> jax.Array:
    """Overwrites the first num_classes features of each row with strength * one_hot(y).

    Args:
      x_BxD: (B, D) float features, D >= num_classes.
      y_B: (B,) integer labels in [0, num_classes).
    """
    onehot = jax.nn.one_hot(y_B, num_classes, dtype=x_BxD.dtype) * strength
    return x_BxD.at[:, :num_classes].set(onehot)


def embed_neutral(x_BxD: jax.Array, *, num_classes: int, strength: float) -> jax.Array:
    """Writes the neutral label (strength / C in each of the C label features)."""
    return x_BxD.at[:, :num_classes].set(strength / num_classes)


def uniform_wrong_labels(key: jax.Array, y_B: jax.Array, *, num_classes: int) -> jax.Array:
    """A label drawn uniformly from the C - 1 classes other than y, for each example.

    y + k (mod C) with k uniform in [1, C) is uniform over the wrong classes and can
    never equal y.
    """
    shift = jax.random.randint(key, y_B.shape, 1, num_classes, dtype=y_B.dtype)
    return (y_B + shift) % num_classes


def hard_wrong_labels(key: jax.Array, logits_BxC: jax.Array, y_B: jax.Array) -> jax.Array:
    """A wrong label per example, drawn from softmax(logits) with the true label masked
    out (the reference recipe's hard negatives: the labels the model confuses most)."""
    masked = jnp.where(jax.nn.one_hot(y_B, logits_BxC.shape[-1], dtype=bool), -jnp.inf,
                       logits_BxC)
    return jax.random.categorical(key, masked, axis=-1).astype(y_B.dtype)


def all_wrong_labels(y_B: jax.Array, *, num_classes: int) -> jax.Array:
    """(B, C - 1): every wrong label of each example."""
    shifts = jnp.arange(1, num_classes, dtype=y_B.dtype)
    return (y_B[:, None] + shifts[None, :]) % num_classes
