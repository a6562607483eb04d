"""Label encodings: how a label (or the neutral label) is given to the network's input.

A label encoding is any object with

    embed(x_Bx..., y_B) -> x'      the input with label y written into it
    neutral(x_Bx...) -> x'         the input with the neutral label (the softmax readout's
                                   pass: every class equally likely)
    encoded_shape(in_shape) -> shape   one example's shape after encoding; raises
                                   ValueError when the input cannot hold the label
    carries_label: bool            False for an encoding that gives no label at all

x holds float features scaled to [0, 1] (labels.to_float). An encoding may also set
`in_rank = 3` when it needs image inputs (H, W, C). The built-ins are frozen
dataclasses; FFSpec(label_encoding=...) takes a name of ENCODINGS or your own object.
ENCODINGS maps each name to a factory called as factory(num_classes=C, strength=s); a
module that adds an entry makes its encoding a --label-encoding choice (--plugins).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ffjax import labels

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
    in_rank = 3  # image inputs: the label planes are appended as channels

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


def _no_label(*, num_classes: int, strength: float) -> NoLabel:
    del num_classes, strength  # no label is written
    return NoLabel()


ENCODINGS = {
    "first_features": lambda *, num_classes, strength: FirstFeatures(int(num_classes),
                                                                     float(strength)),
    "channels": lambda *, num_classes, strength: Channels(int(num_classes), float(strength)),
    "none": _no_label,
}
"""By name, for FFSpec(label_encoding=...) and --label-encoding: factories called as
factory(num_classes=C, strength=s). Read at each use, so an entry a module adds is a
choice from then on."""


def make_encoding(name: str, *, num_classes: int, strength: float):
    """The encoding registered as `name` in ENCODINGS, for C classes at label strength."""
    if name not in ENCODINGS:
        raise ValueError(f"label_encoding={name!r} is not known; choose one of "
                         f"{tuple(ENCODINGS)} or pass your own object (embed, neutral, "
                         "encoded_shape, carries_label).")
    return ENCODINGS[name](num_classes=num_classes, strength=strength)
