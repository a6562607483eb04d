"""Input encoding for supervised FF: feature scaling, labels written into the first C features."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Value of the one-hot label features. Measured on MNIST's validation split (784-500-500,
# 2 epochs): 94.35 % with 1.0, 95.20 % with 2.0, 95.18 % with 4.0.
DEFAULT_STRENGTH = 2.0


def to_float(x: jax.Array) -> jax.Array:
    """uint8 features (pixels) scaled to [0, 1]; float features cast to float32 unchanged."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def embed_label(x_BxD: jax.Array, y_B: jax.Array, *, num_classes: int,
                strength: float = DEFAULT_STRENGTH) -> jax.Array:
    """Overwrites the first num_classes features of each row with strength * one_hot(y).

    Args:
      x_BxD: (B, D) float features, D >= num_classes.
      y_B: (B,) integer labels in [0, num_classes).
    """
    onehot = jax.nn.one_hot(y_B, num_classes, dtype=x_BxD.dtype) * strength
    return x_BxD.at[:, :num_classes].set(onehot)


def embed_neutral(x_BxD: jax.Array, *, num_classes: int,
                  strength: float = DEFAULT_STRENGTH) -> jax.Array:
    """Writes the neutral label (strength / C in each of the C label features)."""
    return x_BxD.at[:, :num_classes].set(strength / num_classes)


def uniform_wrong_labels(key: jax.Array, y_B: jax.Array, *, num_classes: int) -> jax.Array:
    """A label drawn uniformly from the C - 1 classes other than y, for each example.

    y + k (mod C) with k uniform in [1, C) is uniform over the wrong classes and can
    never equal y.
    """
    shift = jax.random.randint(key, y_B.shape, 1, num_classes, dtype=y_B.dtype)
    return (y_B + shift) % num_classes
