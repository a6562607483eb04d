"""The per-layer Forward-Forward objective: goodness, the losses on it, their metrics.

An objective is a pure function of every layer's goodness on one minibatch,

    objective(g_pos_LxB, g_neg_LxM, thetas_L) -> (L,) losses, one per layer,

where row l holds layer l's goodness of the B positives and the M negatives (M = B, or
a multiple of B with several negatives per positive, grouped by positive). Layer l is
trained on entry l alone. The goodness values of different layers depend on different
parameters only (each layer's input is under stop_gradient), so an objective in which
entry l reads other layers' goodness must put those under jax.lax.stop_gradient to keep
every layer's gradient local; `collaborative` does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp


class LayerMetrics(NamedTuple):
    """Per-layer training metrics; each field is a scalar (or stacked over layers/steps)."""

    loss: jax.Array
    goodness_pos: jax.Array  # mean goodness of positive examples
    goodness_neg: jax.Array  # mean goodness of negative examples
    acc_pos: jax.Array  # fraction of positives with goodness > theta
    acc_neg: jax.Array  # fraction of negatives with goodness < theta


def goodness(h: jax.Array) -> jax.Array:
    """Sum of squared activities per example, over its whole activity: (B, ...) -> (B,)."""
    return jnp.sum(jnp.square(h), axis=tuple(range(1, h.ndim)))


def ff_loss(g_pos_B: jax.Array, g_neg_M: jax.Array, theta) -> jax.Array:
    """mean(softplus(theta - G_pos)) + mean(softplus(G_neg - theta)), stable for any
    magnitude. With one negative per positive (M = B) this is the mean per-example loss
    softplus(theta - G_pos) + softplus(G_neg - theta); M may also be a multiple of B."""
    return (jnp.mean(jax.nn.softplus(theta - g_pos_B))
            + jnp.mean(jax.nn.softplus(g_neg_M - theta)))


def _per_positive(g_neg_M: jax.Array, batch: int) -> jax.Array:
    """(B, M // B): the negatives of each positive (negatives are grouped by positive)."""
    if g_neg_M.shape[-1] % batch:
        raise ValueError(f"{g_neg_M.shape[-1]} negatives cannot be paired with {batch} "
                         "positives; give a whole number of negatives per positive.")
    return g_neg_M.reshape(g_neg_M.shape[:-1] + (batch, -1))


def logistic(g_pos_LxB: jax.Array, g_neg_LxM: jax.Array, thetas_L, *,
             temperature: float = 1.0) -> jax.Array:
    """The recipe's threshold logistic, per layer: mean softplus((theta - G_pos) / T) +
    mean softplus((G_neg - theta) / T), i.e. -log p(positive) with p = sigmoid((G -
    theta) / T). Returns (L,)."""
    t = jnp.asarray(thetas_L, jnp.float32)[:, None]
    return (jnp.mean(jax.nn.softplus((t - g_pos_LxB) / temperature), axis=-1)
            + jnp.mean(jax.nn.softplus((g_neg_LxM - t) / temperature), axis=-1))


def symba(g_pos_LxB: jax.Array, g_neg_LxM: jax.Array, thetas_L=None, *,
          alpha: float = 4.0) -> jax.Array:
    """SymBa (Lee & Song 2023): mean softplus(-alpha (G_pos - G_neg)) over every pair of
    a positive and one of its negatives. There is no threshold (thetas are ignored): a
    layer only has to rank its positive above its negatives. Its gradient with respect
    to G is at most alpha, as the logistic's is at most 1, so alpha also scales the
    step. Returns (L,)."""
    del thetas_L
    neg = _per_positive(g_neg_LxM, g_pos_LxB.shape[-1])  # (L, B, K)
    gap = g_pos_LxB[..., None] - neg
    return jnp.mean(jax.nn.softplus(-alpha * gap), axis=(-2, -1))


def collaborative(g_pos_LxB: jax.Array, g_neg_LxM: jax.Array, thetas_L, *,
                  temperature: float = 1.0) -> jax.Array:
    """Layer collaboration (Lorberbom et al. 2024): layer l's logistic reads the whole
    network's margin, sum over k of (G_k - theta_k), with every other layer's term held
    constant (stop_gradient), so layers specialise instead of repeating each other
    while each one's gradient stays local. Returns (L,)."""
    t = jnp.asarray(thetas_L, jnp.float32)[:, None]

    def totals(g):
        margin = g - t  # (L, N)
        others = jax.lax.stop_gradient(jnp.sum(margin, axis=0) - margin)
        return (margin + others) / temperature

    return (jnp.mean(jax.nn.softplus(-totals(g_pos_LxB)), axis=-1)
            + jnp.mean(jax.nn.softplus(totals(g_neg_LxM)), axis=-1))


Objective = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
OBJECTIVES = ("logistic", "symba", "collaborative")


@dataclasses.dataclass(frozen=True)
class Bound:
    """An objective function with its keyword settings bound; equal (and hashing the
    same) when the function and the settings are, unlike functools.partial."""

    fn: Callable
    settings: tuple = ()  # ((name, value), ...)

    def __call__(self, g_pos_LxB, g_neg_LxM, thetas_L):
        return self.fn(g_pos_LxB, g_neg_LxM, thetas_L, **dict(self.settings))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings)
        return f"{self.fn.__name__}({args})"


def make_objective(name: str = "logistic", **settings) -> Objective:
    """The built-in objective `name` with its settings bound, e.g.
    make_objective("symba", alpha=4.0)."""
    fns = {"logistic": logistic, "symba": symba, "collaborative": collaborative}
    if name not in fns:
        raise ValueError(f"objective {name!r} is not known; choose one of {OBJECTIVES} "
                         "or pass your own function (see docs/objectives.md).")
    return Bound(fns[name], tuple(sorted(settings.items())))


def layer_metrics(g_pos_LxB: jax.Array, g_neg_LxM: jax.Array, thetas_L, loss_L) -> LayerMetrics:
    """Each layer's loss and its own view of how well it separates positives from
    negatives: mean goodness of each, and the fractions on the right side of theta.
    Works for one layer too ((B,), (M,), a scalar theta and loss)."""
    t = jnp.asarray(thetas_L, jnp.float32)[..., None]
    return LayerMetrics(
        loss=loss_L,
        goodness_pos=jnp.mean(g_pos_LxB, axis=-1),
        goodness_neg=jnp.mean(g_neg_LxM, axis=-1),
        acc_pos=jnp.mean((g_pos_LxB > t).astype(jnp.float32), axis=-1),
        acc_neg=jnp.mean((g_neg_LxM < t).astype(jnp.float32), axis=-1),
    )


def resolve_thetas(theta, hidden: Sequence[int]) -> tuple[float, ...]:
    """Per-layer thresholds: None means each layer's number of units (the reference
    recipe: its width, for a dense layer).

    Args:
      theta: None, one number for every layer, or one number per layer.
      hidden: each layer's number of units.
    """
    hidden = tuple(int(h) for h in hidden)
    if theta is None:
        return tuple(float(h) for h in hidden)
    if isinstance(theta, (int, float)):
        thetas = (float(theta),) * len(hidden)
    else:
        thetas = tuple(float(t) for t in theta)
        if len(thetas) != len(hidden):
            raise ValueError(
                f"theta has {len(thetas)} values but the network has {len(hidden)} "
                "hidden layers; give one value, one per layer, or None (= layer width)."
            )
    if any(not t > 0 for t in thetas):
        raise ValueError(f"theta={theta!r}: thresholds must be positive.")
    return thetas
