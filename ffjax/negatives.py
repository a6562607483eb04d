"""Negative-data generators: what a layer's goodness must be low for.

A generator is a `NegativeGenerator(generate, needs_logits, uses_labels)`:

    generate(key, batch: Minibatch, spec) -> x_neg_Mx...

returns the M negative inputs, ready for the first layer (label already encoded with
spec.encoding where the generator uses labels), with M a whole multiple of B, grouped
by positive (negatives m*K .. m*K + K - 1 belong to positive m). `needs_logits` asks
for the softmax readout's logits of the minibatch (computed with the readout's
parameters from before this step's update), so the readout is trained; `uses_labels`
says whether it reads batch.y or the encoding (a label-free generator works with
label_encoding="none").

Built in: uniform, hard, all (a wrong label on the same image), and none (for
objectives that use no negative data). A new one is a module
that builds a NegativeGenerator and, for the command line, adds it to GENERATORS.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ffjax import labels


class Minibatch(NamedTuple):
    """One minibatch as a generator sees it: float inputs without labels (B, ...), the
    labels (B,), and the readout's logits (B, C) or None."""

    x: jax.Array
    y: jax.Array
    logits: jax.Array | None = None


class NegativeGenerator(NamedTuple):
    generate: Callable
    needs_logits: bool = False
    uses_labels: bool = True


def with_labels(x, y_neg, spec):
    """x (B, ...) with the wrong labels y_neg written in by spec.encoding; y_neg (B * K,)
    grouped by positive repeats every image K times."""
    if y_neg.shape[0] != x.shape[0]:
        x = jnp.repeat(x, y_neg.shape[0] // x.shape[0], axis=0)
    return spec.encoding.embed(x, y_neg)


def _uniform(key, batch: Minibatch, spec):
    return with_labels(batch.x, labels.uniform_wrong_labels(
        key, batch.y, num_classes=spec.num_classes), spec)


def _hard(key, batch: Minibatch, spec):
    return with_labels(batch.x, labels.hard_wrong_labels(key, batch.logits, batch.y), spec)


def _all(key, batch: Minibatch, spec):
    del key
    return with_labels(batch.x, labels.all_wrong_labels(
        batch.y, num_classes=spec.num_classes).reshape(-1), spec)


def _none(key, batch: Minibatch, spec):
    del key, spec
    return batch.x[:0]


uniform = NegativeGenerator(_uniform)
"""The image with a wrong label drawn uniformly from the C - 1 others."""
hard = NegativeGenerator(_hard, needs_logits=True)
"""The image with a wrong label drawn from the readout's softmax, true label masked (the
reference recipe: the labels the model confuses most)."""
every_wrong = NegativeGenerator(_all)
"""The image with each of its C - 1 wrong labels (C - 1 negatives per positive)."""

no_negatives = NegativeGenerator(_none, uses_labels=False)
"""No negative data, for objectives that need none (objective.GroupObjective)."""

GENERATORS = {"uniform": uniform, "hard": hard, "all": every_wrong, "none": no_negatives}


def resolve(negatives) -> NegativeGenerator:
    """A generator from its name in GENERATORS, or the NegativeGenerator given."""
    if isinstance(negatives, NegativeGenerator):
        return negatives
    if isinstance(negatives, str) and negatives in GENERATORS:
        return GENERATORS[negatives]
    raise ValueError(f"negatives={negatives!r}: choose one of {tuple(GENERATORS)} or pass "
                     "an ffjax.negatives.NegativeGenerator.")
