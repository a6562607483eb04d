"""Self-contrastive pair negatives, added to ffjax from outside it: a plugin module.

`python -m experiments.mnist --plugins experiments.self_contrastive --label-encoding pair
--negatives pair --validation-size 10000` trains with label-free negatives of another
kind than the paper's hybrid images: every input is a pair of images side by side. A
positive is an image beside itself, (x, x); a negative is an image beside another image
of the minibatch, (x, x'), so a layer learns that the two halves belong together. (The
pairing of the Self-Contrastive Forward-Forward algorithm; everything else, the update,
the objective and the readout, is ffjax's.) Prediction reads the features of (x, x).

Importing this module registers the encoding as "pair" in ffjax.encodings.ENCODINGS and
the generator as "pair" in ffjax.negatives.GENERATORS; --plugins imports it before the
settings are checked and saves it with the run, so --resume finds it again. It is the
worked example of docs/blocks.md ("Label encodings", "Negative generators"): a new kind of
input and negative data is one module like this one, with no change to ffjax.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ffjax import encodings, negatives


@dataclasses.dataclass(frozen=True)
class Pair:
    """No label; each example is doubled along its last axis (features of a flat input,
    channels of an image): (x, x). The neutral input is the same pair."""

    carries_label = False

    def embed(self, x, y):
        del y  # label-free: the pair carries no label
        return jnp.concatenate([x, x], axis=-1)

    def neutral(self, x):
        return self.embed(x, None)

    def encoded_shape(self, in_shape):
        return tuple(in_shape[:-1]) + (2 * in_shape[-1],)


def pair_negatives(key, batch: negatives.Minibatch, spec):
    """(x, x') for every image x of the minibatch and another image x' of it (its partner
    a random shift further on, negatives.partner: never x itself). Reads no labels."""
    del spec
    if batch.x.shape[0] < 2:
        raise ValueError("pair negatives put two different images of a minibatch side by "
                         "side: use a batch size of at least 2.")
    other = batch.x[negatives.partner(key, batch.x.shape[0])]
    return jnp.concatenate([batch.x, other], axis=-1)


pair_negatives.name = "pair"

encodings.ENCODINGS["pair"] = lambda *, num_classes, strength: Pair()
negatives.GENERATORS["pair"] = negatives.NegativeGenerator(pair_negatives, uses_labels=False)
