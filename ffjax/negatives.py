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

Built in: uniform, hard, all (a wrong label on the same image), none (for
objectives that use no negative data), and the label-free hybrid (the paper's
unsupervised negatives: two images of the minibatch mixed through a blurred random mask)
and masked (one image with contiguous patches zeroed, a weaker baseline). A new one is a
module that builds a NegativeGenerator and, for the command line, adds it to GENERATORS.
"""

from __future__ import annotations

import dataclasses
import math
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


# The paper does not say how often its mask is blurred; this default was chosen on the
# validation split (docs/unsupervised.md).
HYBRID_BLUR_STEPS = 1
MASKED_FRACTION = 0.5


def _as_images(x, image_shape):
    """x (B, ...) as images (B, H, W, C): x itself when it has that rank, else x
    reshaped to image_shape."""
    if x.ndim == 4:
        return x
    if image_shape is None or len(image_shape) != 3 or math.prod(image_shape) != math.prod(
            x.shape[1:]):
        raise ValueError(f"a mask needs the inputs' image shape (H, W, C): inputs of shape "
                         f"{tuple(x.shape[1:])} with image_shape={image_shape}; build the "
                         "generator with hybrid(image_shape=(28, 28, 1)) or similar.")
    return x.reshape((x.shape[0],) + tuple(image_shape))


def blurred_noise(key, shape_BxHxW, blur_steps: int, blur_steps_max=None) -> jax.Array:
    """Random bits (each 1 with probability 1/2), blurred `blur_steps` times with the
    filter [1/4, 1/2, 1/4] along H and then along W (edges replicated, so every pixel is
    treated alike). Thresholded at 0.5 it is the paper's mask: about half the pixels,
    in regions that grow with blur_steps. With blur_steps_max, each image is blurred its
    own number of times, drawn uniformly from blur_steps..blur_steps_max, so the
    minibatch mixes region sizes. Without it the key draws the bits alone, so a run's
    masks do not depend on whether the option exists (records and resumes stay exact)."""

    def blur(m):
        p = jnp.pad(m, ((0, 0), (1, 1), (0, 0)), mode="edge")
        m = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
        p = jnp.pad(m, ((0, 0), (0, 0), (1, 1)), mode="edge")
        return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]

    if blur_steps_max is None:
        m = jax.random.bernoulli(key, 0.5, shape_BxHxW).astype(jnp.float32)
        return jax.lax.fori_loop(0, int(blur_steps), lambda _, m: blur(m), m)
    bits_key, steps_key = jax.random.split(key)
    m = jax.random.bernoulli(bits_key, 0.5, shape_BxHxW).astype(jnp.float32)
    steps = jax.random.randint(steps_key, (shape_BxHxW[0], 1, 1), int(blur_steps),
                               int(blur_steps_max) + 1)
    return jax.lax.fori_loop(0, int(blur_steps_max),
                             lambda i, m: jnp.where(i < steps, blur(m), m), m)


def hybrid_mask(key, shape_BxHxW, blur_steps: int, blur_steps_max=None) -> jax.Array:
    """(B, H, W) float 0/1: the paper's mask, blurred_noise thresholded at 0.5."""
    return (blurred_noise(key, shape_BxHxW, blur_steps, blur_steps_max) > 0.5).astype(
        jnp.float32)


def partner(key, batch_size: int) -> jax.Array:
    """(B,) the index of each example's partner: example i + s (mod B) for one random
    shift s in [1, B), so no example is its own partner."""
    shift = jax.random.randint(key, (), 1, max(batch_size, 2))
    return (jnp.arange(batch_size) + shift) % batch_size


def nearest_partner(x_BxD: jax.Array) -> jax.Array:
    """(B,) the index of each example's nearest other example of the minibatch, by
    Euclidean distance between the inputs (no labels read). Mixing two similar images
    makes a harder negative than mixing two random ones. Never the example itself."""
    x_BxD = x_BxD.astype(jnp.float32)  # integer pixels would overflow the products
    sq = jnp.sum(x_BxD * x_BxD, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x_BxD @ x_BxD.T)
    d = jnp.where(jnp.eye(x_BxD.shape[0], dtype=bool), jnp.inf, d)
    return jnp.argmin(d, axis=1)


HYBRID_PARTNERS = ("shift", "nearest")
HYBRID_PARTNER = "shift"
HYBRID_COUNT = 1  # the paper's: one negative per positive


@dataclasses.dataclass(frozen=True)
class _Hybrid:
    image_shape: tuple | None
    blur_steps: int
    partner: str
    count: int
    blur_steps_max: int | None
    name = "hybrid"

    def __call__(self, key, batch: Minibatch, spec):
        del spec  # no label: the negative is an input, not an encoded one
        if batch.x.shape[0] < 2:
            raise ValueError("hybrid negatives mix two different images of a minibatch: "
                             "use a batch size of at least 2.")
        images = _as_images(batch.x, self.image_shape)
        if self.count == 1:  # the key used as is, so count=1 is the one-negative generator
            return self._mix(key, images).reshape(batch.x.shape)
        # Grouped by positive, as every generator's: (B, K, ...) -> (B * K, ...).
        mixes = jnp.stack([self._mix(k, images) for k in jax.random.split(key, self.count)],
                          axis=1)
        return mixes.reshape((-1,) + batch.x.shape[1:])

    def _mix(self, key, images):
        """One negative per image (B, H, W, C): its own mask and partner."""
        mask_key, pair_key = jax.random.split(key)  # the same mask for either partner
        mask = hybrid_mask(mask_key, images.shape[:3], self.blur_steps,
                           self.blur_steps_max)[..., None]
        if self.partner == "nearest":
            pick = nearest_partner(images.reshape(images.shape[0], -1))
        else:
            pick = partner(pair_key, images.shape[0])
        return images * mask + images[pick] * (1.0 - mask)


@dataclasses.dataclass(frozen=True)
class _Masked:
    image_shape: tuple | None
    fraction: float
    blur_steps: int
    blur_steps_max: int | None
    name = "masked"

    def __call__(self, key, batch: Minibatch, spec):
        del spec
        images = _as_images(batch.x, self.image_shape)
        noise = blurred_noise(key, images.shape[:3], self.blur_steps, self.blur_steps_max)
        # Zero each image's `fraction` of pixels where its blurred noise is highest:
        # contiguous patches covering that share of the image.
        flat = noise.reshape(noise.shape[0], -1)
        cut = jnp.quantile(flat, 1.0 - self.fraction, axis=1)[:, None, None]
        keep = (noise < cut).astype(images.dtype)[..., None]
        return (images * keep).reshape(batch.x.shape)


def _check_blur(blur_steps, blur_steps_max):
    if int(blur_steps) < 0:
        raise ValueError(f"blur_steps={blur_steps} must be >= 0.")
    if blur_steps_max is not None and int(blur_steps_max) < int(blur_steps):
        raise ValueError(f"blur_steps_max={blur_steps_max} must be at least "
                         f"blur_steps ({blur_steps}), or None for blur_steps alone.")
    return int(blur_steps), None if blur_steps_max is None else int(blur_steps_max)


def hybrid(*, image_shape=None, blur_steps: int = HYBRID_BLUR_STEPS,
           partner: str = HYBRID_PARTNER, count: int = HYBRID_COUNT,
           blur_steps_max: int | None = None) -> NegativeGenerator:
    """The paper's unsupervised negatives: for each image a of the minibatch and another
    image b of it, a * mask + b * (1 - mask), with the mask of hybrid_mask. Uses no
    labels. image_shape (H, W, C) is needed for flat inputs (dense networks). partner
    chooses b: "shift" (a random other image: each image's partner is the one a random
    shift further on) or "nearest" (its nearest other image in pixel space,
    nearest_partner). count is the number of negatives per positive, each with its own
    mask and (for "shift") its own partner, grouped by positive; the objective averages
    over them, so more of them lower the variance of the negative term, not its weight.
    blur_steps_max (None: every mask blurred blur_steps times) draws each mask's blur
    count from blur_steps..blur_steps_max, for negatives of several region sizes."""
    blur_steps, blur_steps_max = _check_blur(blur_steps, blur_steps_max)
    if partner not in HYBRID_PARTNERS:
        raise ValueError(f"partner={partner!r}: choose one of {', '.join(HYBRID_PARTNERS)}.")
    if int(count) < 1:
        raise ValueError(f"count={count}: give at least one negative per positive.")
    shape = None if image_shape is None else tuple(int(s) for s in image_shape)
    return NegativeGenerator(_Hybrid(shape, blur_steps, partner, int(count), blur_steps_max),
                             uses_labels=False)


def masked(*, image_shape=None, fraction: float = MASKED_FRACTION,
           blur_steps: int = HYBRID_BLUR_STEPS,
           blur_steps_max: int | None = None) -> NegativeGenerator:
    """The image with `fraction` of its pixels zeroed in contiguous patches (where its
    blurred noise is highest): "masking portions of the image", a weaker label-free
    baseline than hybrid. blur_steps_max as for hybrid."""
    if not 0 < float(fraction) < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1).")
    blur_steps, blur_steps_max = _check_blur(blur_steps, blur_steps_max)
    shape = None if image_shape is None else tuple(int(s) for s in image_shape)
    return NegativeGenerator(_Masked(shape, float(fraction), blur_steps, blur_steps_max),
                             uses_labels=False)


uniform = NegativeGenerator(_uniform)
"""The image with a wrong label drawn uniformly from the C - 1 others."""
hard = NegativeGenerator(_hard, needs_logits=True)
"""The image with a wrong label drawn from the readout's softmax, true label masked (the
reference recipe: the labels the model confuses most)."""
every_wrong = NegativeGenerator(_all)
"""The image with each of its C - 1 wrong labels (C - 1 negatives per positive)."""

no_negatives = NegativeGenerator(_none, uses_labels=False)
"""No negative data, for objectives that need none (objective.GroupObjective)."""

GENERATORS = {"uniform": uniform, "hard": hard, "all": every_wrong, "none": no_negatives,
              "hybrid": hybrid(), "masked": masked()}
"""By name, for FFSpec(negatives=...) and --negatives. The "hybrid" and "masked" entries
take the image shape from (B, H, W, C) inputs; for flat inputs build them with
hybrid(image_shape=...) (the command line does)."""


def name_of(negatives) -> str:
    """A generator's name for messages: its GENERATORS name or its generate's `name`."""
    if isinstance(negatives, str):
        return negatives
    for name, gen in GENERATORS.items():
        if gen == negatives:
            return name
    return getattr(getattr(negatives, "generate", None), "name", None) or repr(negatives)


def resolve(negatives) -> NegativeGenerator:
    """A generator from its name in GENERATORS, or the NegativeGenerator given."""
    if isinstance(negatives, NegativeGenerator):
        return negatives
    if isinstance(negatives, str) and negatives in GENERATORS:
        return GENERATORS[negatives]
    raise ValueError(f"negatives={negatives!r}: choose one of {tuple(GENERATORS)} or pass "
                     "an ffjax.negatives.NegativeGenerator.")
