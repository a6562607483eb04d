"""FFSpec: one frozen, validated description of an FF model and what its layers learn."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, Union

from ffjax import labels, layers, objective

NEGATIVES = ("uniform", "hard", "all")


def resolve_layers(selection, num_layers: int, *, default: Sequence[int],
                   what: str) -> tuple[int, ...]:
    """Which layers: None -> `default`; otherwise checked, sorted, 0-based indices."""
    if selection is None:
        return tuple(default)
    chosen = tuple(sorted({int(i) for i in selection}))
    if not chosen or any(i < 0 or i >= num_layers for i in chosen):
        raise ValueError(
            f"{what}={tuple(selection)!r} must be a non-empty set of layer indices in "
            f"[0, {num_layers}) (0 is the first hidden layer).")
    return chosen


def all_but_first(num_layers: int) -> tuple[int, ...]:
    """Every layer but the first when there are two or more (the reference code's
    choice for both readouts)."""
    return tuple(range(1, num_layers)) if num_layers >= 2 else (0,)


@dataclasses.dataclass(frozen=True)
class FFSpec:
    """An FF model and its training objective, checked once when built.

    Every default here is also the command line's (ffjax.config builds its flags from
    these values), so a library call and a CLI run without flags train the same model.
    The defaults are the reference code's update (docs/recipe.md), except that the
    goodness readout sums every layer: both chosen on the validation split.
    Passed whole to init_train_state, make_train_epoch, make_predict, fit and fit_grid.

    Attributes:
      hidden: hidden widths (H_1, ..., H_L).
      num_classes: C; labels are written into the first C input features.
      label_strength: value of the one-hot label features.
      norm: "rms", "rms_ref" (the reference code's epsilon) or "l2" (layers.normalize).
      theta: goodness threshold(s): None = each layer's width, one number, or one per
        layer.
      objective: "logistic", "symba", "collaborative", or your own function
        (g_pos_LxB, g_neg_LxM, thetas_L) -> (L,) (ffjax.objective).
      temperature: of the logistic and collaborative objectives.
      symba_alpha: alpha of the symba objective.
      loss_scale: multiplies every layer's objective (0.5: the reference code's step).
      negatives: "uniform", "hard" (from the softmax readout; trains it) or "all".
      peer_strength: peer normalization strength (0 disables; 0.03 in the reference).
      peer_momentum: decay of the running mean activity used by peer normalization.
      input_noise: std of Gaussian noise added to the [0, 1]-scaled training inputs (a
        permutation-invariant regularizer; 0 disables; never at test time).
      readout: train the one-pass softmax readout (always with hard negatives).
      readout_label_smoothing: label smoothing of the readout's training targets.
      readout_layers: layers the softmax readout reads (None: all but the first).
      score_layers: layers whose goodness the C-label readout sums (None: all).
    """

    hidden: tuple = (2000, 2000, 2000, 2000)
    num_classes: int = 10
    label_strength: float = labels.DEFAULT_STRENGTH
    norm: str = layers.DEFAULT_NORM
    theta: Union[float, tuple, None] = None
    objective: Union[str, Callable] = "logistic"
    temperature: float = 1.0
    symba_alpha: float = 4.0
    loss_scale: float = 0.5
    negatives: str = "hard"
    peer_strength: float = 0.03
    peer_momentum: float = 0.9
    input_noise: float = 0.0
    readout: bool = True
    readout_label_smoothing: float = 0.0
    readout_layers: tuple | None = None
    score_layers: tuple | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        hidden = tuple(int(h) for h in self.hidden)
        if not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"hidden={self.hidden!r}: give one or more positive widths.")
        set_("hidden", hidden)
        if not isinstance(self.theta, (int, float, type(None))):
            set_("theta", tuple(float(t) for t in self.theta))
        objective.resolve_thetas(self.theta, hidden)  # checks count and sign
        for name in ("label_strength", "temperature", "symba_alpha", "loss_scale",
                     "peer_strength", "peer_momentum", "input_noise",
                     "readout_label_smoothing"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name}={v!r} must be a finite number.")
        for name in ("label_strength", "temperature", "symba_alpha", "loss_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        for name in ("input_noise", "peer_strength"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        for name in ("readout_label_smoothing", "peer_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes={self.num_classes} must be at least 2.")
        set_("num_classes", int(self.num_classes))
        layers.check_norm(self.norm)
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives={self.negatives!r}: choose one of {NEGATIVES}.")
        if isinstance(self.objective, str):
            objective.make_objective(self.objective)  # checks the name
        elif not callable(self.objective):
            raise ValueError(f"objective={self.objective!r} must be a name in "
                             f"{objective.OBJECTIVES} or a function (g_pos_LxB, g_neg_LxM, "
                             "thetas_L) -> (L,) losses.")
        for name in ("readout_layers", "score_layers"):  # checked here, resolved below
            if getattr(self, name) is not None:
                set_(name, tuple(int(i) for i in getattr(self, name)))
        self.readout_layer_ids, self.score_layer_ids  # noqa: B018 (raise if out of range)

    @property
    def num_layers(self) -> int:
        return len(self.hidden)

    @property
    def readout_layer_ids(self) -> tuple[int, ...]:
        """The layers the softmax readout reads (default: all but the first)."""
        return resolve_layers(self.readout_layers, self.num_layers,
                              default=all_but_first(self.num_layers), what="readout_layers")

    @property
    def score_layer_ids(self) -> tuple[int, ...]:
        """The layers whose goodness the C-label readout sums (default: all)."""
        return resolve_layers(self.score_layers, self.num_layers,
                              default=range(self.num_layers), what="score_layers")

    @property
    def thetas(self) -> tuple[float, ...]:
        """One goodness threshold per layer."""
        return objective.resolve_thetas(self.theta, self.hidden)

    @property
    def trains_readout(self) -> bool:
        """Whether a softmax readout is trained (asked for, or needed by hard negatives)."""
        return self.readout or self.negatives == "hard"

    @property
    def readout_width(self) -> int:
        """F: the number of features the softmax readout reads."""
        return sum(self.hidden[i] for i in self.readout_layer_ids)

    def objective_fn(self) -> objective.Objective:
        """The per-layer objective as a function, with its settings."""
        if callable(self.objective):
            return self.objective
        if self.objective == "symba":
            return objective.make_objective("symba", alpha=self.symba_alpha)
        return objective.make_objective(self.objective, temperature=self.temperature)
