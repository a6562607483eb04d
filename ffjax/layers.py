"""Forward-Forward blocks: length-normalize -> dense -> ReLU, and their initialization."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

NORMS = ("rms", "rms_ref", "l2")
DEFAULT_NORM = "rms_ref"  # the reference code's form (docs/recipe.md)
_EPS = 1e-8
# The reference code's guard, added to the root rather than under it (see normalize).
_REF_TINY = 1.9287498479639178e-22  # e^-50


class DenseParams(NamedTuple):
    """One dense layer. w: (D_in, D_out) float32, b: (D_out,) float32."""

    w: jax.Array
    b: jax.Array


Network = tuple  # tuple[DenseParams, ...], input layer first


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; choose one of {NORMS}.")


def normalize(x_BxD: jax.Array, *, norm: str = DEFAULT_NORM) -> jax.Array:
    """Length-normalizes each row so only the direction of the activity is passed on.

    Args:
      x_BxD: (..., D) float array.
      norm: "rms" scales each row to mean square 1 (a row of width D then has sum of
        squares D), as x * rsqrt(mean(x^2) + 1e-8); "rms_ref" is the reference code's
        exact form x / (e^-50 + sqrt(mean(x^2))), which differs only for nearly silent
        rows: it still scales them up to mean square 1, where "rms" leaves rows with
        mean square far below 1e-8 nearly silent; "l2" scales each row to unit
        Euclidean norm.

    Returns:
      An array of the same shape; all-zero rows stay zero.
    """
    sq = jnp.square(x_BxD)
    if norm == "rms_ref":
        return x_BxD / (_REF_TINY + jnp.sqrt(jnp.mean(sq, axis=-1, keepdims=True)))
    if norm == "rms":
        scale = jnp.mean(sq, axis=-1, keepdims=True)
    elif norm == "l2":
        scale = jnp.sum(sq, axis=-1, keepdims=True)
    else:
        check_norm(norm)
    return x_BxD * jax.lax.rsqrt(scale + _EPS)


def block(params: DenseParams, x_BxD: jax.Array, *,
          norm: str = DEFAULT_NORM) -> jax.Array:
    """normalize -> dense -> ReLU. x_BxD: (B, D_in) -> (B, D_out)."""
    return jax.nn.relu(normalize(x_BxD, norm=norm) @ params.w + params.b)


def init_dense(key: jax.Array, d_in: int, d_out: int) -> DenseParams:
    """Weights ~ N(0, 1/d_in) as in the reference code, biases 0."""
    w = jax.random.normal(key, (d_in, d_out), jnp.float32) / jnp.sqrt(jnp.float32(d_in))
    return DenseParams(w=w, b=jnp.zeros((d_out,), jnp.float32))


def init_network(key: jax.Array, sizes: Sequence[int]) -> Network:
    """Initializes a network of len(sizes) - 1 blocks, each from its own key.

    Args:
      key: a PRNG key.
      sizes: [D_in, H_1, ..., H_L], the input width then the hidden widths.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(
            f"sizes={sizes} needs the input width and at least one hidden width, "
            "e.g. [784, 500, 500]."
        )
    bad = [s for s in sizes if s <= 0]
    if bad:
        raise ValueError(f"sizes={sizes}: every width must be a positive integer.")
    keys = jax.random.split(key, len(sizes) - 1)
    return tuple(init_dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:]))


def forward(params: Network, x_BxD: jax.Array, *,
            norm: str = DEFAULT_NORM) -> list[jax.Array]:
    """All hidden activities [(B, H_1), ..., (B, H_L)] for input x_BxD."""
    acts = []
    h = x_BxD
    for p in params:
        h = block(p, h, norm=norm)
        acts.append(h)
    return acts


def widths(params: Network) -> tuple[int, ...]:
    """Hidden widths (H_1, ..., H_L) of a network."""
    return tuple(int(p.w.shape[1]) for p in params)
