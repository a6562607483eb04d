"""Label encodings: how a label (or the neutral label) is given to the network's input.

A label encoding is any object with

    embed(x_Bx..., y_B) -> x'      the input with label y written into it
    neutral(x_Bx...) -> x'         the input with the neutral label (the softmax readout's
                                   pass: every class equally likely)
    encoded_shape(in_shape) -> shape   one example's shape after encoding; raises
                                   ValueError when the input cannot hold the label
    carries_label: bool            False for an encoding that gives no label at all

x holds float features scaled to [0, 1] (labels.to_float). The built-ins are frozen
dataclasses; FFSpec(label_encoding=...) takes one of their names or your own object.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ffjax import labels

ENCODINGS = ("first_features", "channels", "none")


@dataclasses.dataclass(frozen=True)
class FirstFeatures:
    """The reference code's encoding: the first C features of each example (of its
    flattened activity, for images) are overwritten by strength * one_hot(y); the
    neutral label is strength / C in each."""

    num_classes: int
    strength: float
    carries_label = True

    def embed(self, x, y):
        flat = x.reshape(x.shape[0], -1)
        out = labels.embed_label(flat, y, num_classes=self.num_classes,
                                 strength=self.strength)
        return out.reshape(x.shape)

    def neutral(self, x):
        flat = x.reshape(x.shape[0], -1)
        return labels.embed_neutral(flat, num_classes=self.num_classes,
                                    strength=self.strength).reshape(x.shape)

    def encoded_shape(self, in_shape):
        if math.prod(in_shape) < self.num_classes:
            raise ValueError(
                f"inputs of shape {tuple(in_shape)} have fewer than num_classes="
                f"{self.num_classes} features: the label is written into the first C "
                "features, so C <= D is required.")
        return tuple(in_shape)


@dataclasses.dataclass(frozen=True)
class Channels:
    """For images (H, W, C_in): C label channels appended to the image, channel y set
    to `strength` at every pixel and the others 0; the neutral label is strength / C in
    every label channel. The image itself is left whole."""

    num_classes: int
    strength: float
    carries_label = True

    def _append(self, x, planes_BxC):
        planes = jnp.broadcast_to(planes_BxC[:, None, None, :].astype(x.dtype),
                                  x.shape[:3] + (self.num_classes,))
        return jnp.concatenate([x, planes], axis=-1)

    def embed(self, x, y):
        return self._append(x, jax.nn.one_hot(y, self.num_classes) * self.strength)

    def neutral(self, x):
        return self._append(x, jnp.full((x.shape[0], self.num_classes),
                                        self.strength / self.num_classes))

    def encoded_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"label_encoding='channels' needs image inputs (H, W, C); "
                             f"got per-example shape {tuple(in_shape)}.")
        return tuple(in_shape[:2]) + (in_shape[2] + self.num_classes,)


@dataclasses.dataclass(frozen=True)
class NoLabel:
    """No label in the input (label-free negatives, class-group objectives): embed and
    neutral return the input unchanged."""

    carries_label = False

    def embed(self, x, y):
        del y
        return x

    def neutral(self, x):
        return x

    def encoded_shape(self, in_shape):
        return tuple(in_shape)


def make_encoding(name: str, *, num_classes: int, strength: float):
    """The built-in encoding `name` (ENCODINGS) for C classes at label strength."""
    if name == "first_features":
        return FirstFeatures(int(num_classes), float(strength))
    if name == "channels":
        return Channels(int(num_classes), float(strength))
    if name == "none":
        return NoLabel()
    raise ValueError(f"label_encoding={name!r} is not known; choose one of {ENCODINGS} or "
                     "pass your own object (embed, neutral, encoded_shape, carries_label).")
