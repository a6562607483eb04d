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


def location_goodness(h: jax.Array) -> jax.Array:
    """(B, P): the sum of squares of each location's channels (the last axis) for an
    activity (B, ..., C) with P locations; a dense layer's (B, H) has one location."""
    return jnp.sum(jnp.square(h), axis=-1).reshape(h.shape[0], -1)


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


def hardest(g_pos_LxB: jax.Array, g_neg_LxM: jax.Array, thetas_L, *,
            temperature: float = 1.0) -> jax.Array:
    """The threshold logistic with each positive's negatives represented by the hardest
    of them: mean softplus((theta - G_pos) / T) + mean over positives of
    softplus((max_k G_neg_k - theta) / T), where k runs over that positive's K negatives.
    A layer then learns from the negatives it mistakes most for data, as hard (wrong
    label) negatives do in supervised FF, without using labels; the gradient reaches the
    hardest negative of each positive alone. With one negative per positive it is the
    logistic. Returns (L,)."""
    neg = jnp.max(_per_positive(g_neg_LxM, g_pos_LxB.shape[-1]), axis=-1)  # (L, B)
    return logistic(g_pos_LxB, neg, thetas_L, temperature=temperature)


Objective = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
OBJECTIVES = ("logistic", "symba", "collaborative", "hardest", "group_softmax")


def location_group_goodness(h: jax.Array, num_classes: int) -> jax.Array:
    """(B, P, C): the mean squared activity of each class's group of units at each of
    the P locations of an activity (B, ..., units). The units of the last axis (a dense
    layer's units, a conv layer's channels) are split into C equal contiguous groups,
    group c belonging to class c; a dense layer has one location."""
    k = h.shape[-1] // num_classes
    grouped = h.reshape(h.shape[0], -1, num_classes, k)  # (B, P, C, K)
    return jnp.mean(jnp.square(grouped), axis=3)


def group_goodness(h: jax.Array, num_classes: int) -> jax.Array:
    """(B, C): the mean squared activity of each class's group of units over the whole
    layer (every location): the mean over locations of location_group_goodness, since
    every location holds the same number of a group's units."""
    return jnp.mean(location_group_goodness(h, num_classes), axis=1)


class GroupObjective(NamedTuple):
    """A per-layer objective on each layer's class-group goodness and the labels, with
    no negative data (channel-wise competitive FF, Papachristodoulou et al. 2024): for
    every layer, loss(scores_BxC, y_B) -> scalar with scores = group_goodness(h, C).
    With goodness_scope "location" the rows are the (example, location) pairs instead:
    scores (B·P, C) from location_group_goodness, each example's label repeated over
    its P locations, so a mean-over-rows loss is the mean over locations. Prediction
    reads whole-layer scores from one pass either way (no label in the input).

    log_probs(scores_BxC) -> (B, C), optional: the class log-probabilities the loss
    trains the scores to give. With it, the joint readout (inference.joint_scores)
    multiplies the layers' class distributions with the softmax readout's; without it
    (None) the joint readout does not apply."""

    loss: Callable[[jax.Array, jax.Array], jax.Array]
    name: str = "group"
    log_probs: Callable[[jax.Array], jax.Array] | None = None


def group_softmax(*, temperature: float, label_smoothing: float) -> GroupObjective:
    """Softmax cross-entropy of the group goodness divided by `temperature` against
    the labels: a layer is trained to make its true class's group the most active.
    With `label_smoothing` e > 0 the target is (1 - e) one-hot + e / C, so the loss is
    least at a finite gap between the true group and the others and a layer stops
    pushing the groups of the examples it already classifies apart (a regularizer)."""
    import optax

    def loss(scores_BxC, y_B):
        logits = scores_BxC / temperature
        if not label_smoothing:
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y_B))
        target = optax.smooth_labels(jax.nn.one_hot(y_B, logits.shape[-1]), label_smoothing)
        return jnp.mean(optax.softmax_cross_entropy(logits, target))

    def log_probs(scores_BxC):
        return jax.nn.log_softmax(scores_BxC / temperature, axis=-1)

    return GroupObjective(loss, f"group_softmax(temperature={temperature!r}, "
                                f"label_smoothing={label_smoothing!r})", log_probs)


def group_metrics(scores_LxBxC: jax.Array, y_B: jax.Array, loss_L) -> LayerMetrics:
    """LayerMetrics for a GroupObjective: goodness_pos is the true class's group
    goodness, goodness_neg the mean of the other groups', and acc_pos = acc_neg the
    fraction of examples whose true group is the most active."""
    true = jax.nn.one_hot(y_B, scores_LxBxC.shape[-1], dtype=bool)[None]
    g_true = jnp.sum(jnp.where(true, scores_LxBxC, 0.0), -1)
    g_other = jnp.sum(jnp.where(true, 0.0, scores_LxBxC), -1) / (scores_LxBxC.shape[-1] - 1)
    acc = jnp.mean((jnp.argmax(scores_LxBxC, -1) == y_B[None]).astype(jnp.float32), -1)
    return LayerMetrics(loss=loss_L, goodness_pos=jnp.mean(g_true, -1),
                        goodness_neg=jnp.mean(g_other, -1), acc_pos=acc, acc_neg=acc)


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
    make_objective("symba", alpha=4.0); "group_softmax" gives a GroupObjective."""
    if name == "group_softmax":
        return group_softmax(**{"temperature": 1.0, "label_smoothing": 0.0, **settings})
    fns = {"logistic": logistic, "symba": symba, "collaborative": collaborative,
           "hardest": hardest}
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
