"""FFSpec: one frozen, validated description of an FF model and what its layers learn."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Union

from ffjax import encodings, layers, negatives as negatives_lib, objective

GOODNESS_SCOPES = ("layer", "location")


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
      hidden: the blocks, input side first: an int is a dense block of that width, a
        string a block in the command line's form (layers.parse_block, e.g.
        "conv:32:5:p2"), or any block object (ffjax.layers).
      input_shape: one example's raw input shape, e.g. (784,) or (28, 28, 1); needed
        for conv and local blocks; None (dense blocks only): taken from the data.
      num_classes: C.
      label_encoding: how the label is given to the input: "first_features" (written
        into the first C features), "channels" (C label channels appended to an
        image), "none", or your own object (ffjax.encodings).
      label_strength: value of the one-hot label.
      norm: "rms", "rms_ref" (the reference code's epsilon), "l2", "centered" (mean
        subtracted, then "rms_ref") or "none" (layers.normalize).
      output_norm: "none", or "batch": each layer's output relu(z) standardized per
        channel (the last axis) over the examples and locations, then scaled and shifted
        by the layer's own trained scale and offset; its goodness and the next layer
        read that. Training uses the positives' batch statistics, inference running
        averages of them (layers.BatchNormParams). Channel-wise competitive conv FF
        normalizes every layer's output this way.
      output_norm_momentum: decay of those running averages (m <- momentum m +
        (1 - momentum) batch statistic; 0.9 is torch.nn.BatchNorm's 0.1 update).
      theta: goodness threshold(s): None = each layer's number of units, one number, or
        one per layer.
      objective: "logistic", "symba", "collaborative", "hardest", your own function
        (g_pos_LxB, g_neg_LxM, thetas_L) -> (L,) (ffjax.objective), or a class-group
        objective: "group_softmax" or an objective.GroupObjective (with
        label_encoding="none" and negatives="none").
      temperature: of the logistic, hardest, collaborative and group_softmax objectives.
      group_label_smoothing: label smoothing of the group_softmax objective's targets
        (0 disables; only with objective="group_softmax").
      symba_alpha: alpha of the symba objective.
      loss_scale: multiplies every layer's objective (0.5: the reference code's step).
      negatives: "uniform", "hard" (from the softmax readout; trains it), "all", the
        label-free "hybrid" and "masked" (negatives.hybrid(image_shape=...) for flat
        inputs), "none", or a negatives.NegativeGenerator of your own.
      peer_strength: peer normalization strength (0 disables; 0.03 in the reference).
      peer_momentum: decay of the running mean activity used by peer normalization.
      goodness_scope: what the objective scores: "layer" (the sum of squares of the
        layer's whole activity, the paper's) or "location" (of each location's channels,
        each location a separate term of the loss, averaged; theta then defaults to the
        channels per location; with a class-group objective, each location's group
        goodnesses are scored against the example's label). The goodness readout sums
        the whole layer either way.
      input_noise: std of Gaussian noise added to the [0, 1]-scaled training inputs (a
        permutation-invariant regularizer; 0 disables; never at test time).
      hidden_dropout: the fraction of a hidden layer's units zeroed, each drawn afresh
        for every example of every training pass, in the input the next layer trains on
        (the first layer's input, the image, never; 0 disables). The normalization that
        follows rescales what is left, so no 1 / (1 - p) factor is needed. Never at test
        time, and never in what the readout and the probes read.
      readout: train the one-pass softmax readout (always with hard negatives).
      readout_label_smoothing: label smoothing of the readout's training targets.
      readout_layers: layers the softmax readout reads (None: all but the first).
      layer_probes: also train a linear softmax probe on each layer's normalized
        activity alone, beside the readout (per-layer accuracy where the goodness
        readout does not apply). None: exactly when it does not (no label in the input,
        no class groups) and a readout is trained.
      score_layers: layers whose goodness the C-label readout sums (None: all).
    """

    hidden: tuple = (2000, 2000, 2000, 2000)
    input_shape: tuple | None = None
    num_classes: int = 10
    label_encoding: Any = "first_features"
    label_strength: float = 1.0
    norm: str = "rms_ref"
    output_norm: str = "none"
    output_norm_momentum: float = 0.9
    theta: Union[float, tuple, None] = None
    objective: Any = "logistic"
    temperature: float = 1.0
    group_label_smoothing: float = 0.0
    symba_alpha: float = 4.0
    loss_scale: float = 0.5
    negatives: Any = "hard"
    peer_strength: float = 0.03
    peer_momentum: float = 0.9
    goodness_scope: str = "layer"
    input_noise: float = 0.0
    hidden_dropout: float = 0.0
    readout: bool = True
    readout_label_smoothing: float = 0.0
    readout_layers: tuple | None = None
    score_layers: tuple | None = None
    layer_probes: bool | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if isinstance(self.hidden, (int, str)) or not self.hidden:
            raise ValueError(f"hidden={self.hidden!r}: give a sequence of one or more "
                             "blocks (widths for dense blocks).")
        # Dense blocks are kept as their widths, so equal networks give equal specs.
        blocks = tuple(layers.as_block(h) for h in self.hidden)
        set_("hidden", tuple(b.width if isinstance(b, layers.Dense) else b for b in blocks))
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes={self.num_classes} must be at least 2.")
        set_("num_classes", int(self.num_classes))
        if self.input_shape is not None:
            shape = (self.input_shape,) if isinstance(self.input_shape, int) else tuple(
                self.input_shape)
            if not shape or any(not (isinstance(s, int) and s > 0) for s in shape):
                raise ValueError(f"input_shape={self.input_shape!r} must be a tuple of "
                                 "positive integers, e.g. (784,) or (28, 28, 1).")
            set_("input_shape", shape)
        elif not all(isinstance(h, int) for h in self.hidden):
            raise ValueError("conv, local and other non-dense blocks need the input's "
                             "shape: give FFSpec(input_shape=(H, W, C), ...).")
        if isinstance(self.label_encoding, str):
            encodings.make_encoding(self.label_encoding, num_classes=self.num_classes,
                                    strength=self.label_strength)  # checks the name
        elif not all(hasattr(self.label_encoding, n) for n in (
                "embed", "neutral", "encoded_shape", "carries_label")):
            raise ValueError(f"label_encoding={self.label_encoding!r} must be one of "
                             f"{tuple(encodings.ENCODINGS)} or an object with embed, neutral, "
                             "encoded_shape and carries_label (ffjax.encodings).")
        gen, neg = negatives_lib.resolve(self.negatives), negatives_lib.name_of(self.negatives)
        self._check_objective_kind(gen, neg)
        if self.goodness_scope not in GOODNESS_SCOPES:
            raise ValueError(f"goodness_scope={self.goodness_scope!r}: choose one of "
                             f"{GOODNESS_SCOPES}.")
        if self.goodness_scope == "location" and self.objective == "collaborative":
            raise ValueError("goodness_scope='location' scores every location as its own "
                             "term; the collaborative objective combines whole layers, so "
                             "use goodness_scope='layer' with it.")
        if gen.uses_labels and not self.encoding.carries_label:
            raise ValueError(f"negatives={neg!r} writes wrong labels into the "
                             "input, but the label encoding gives none: use a label-free "
                             "generator or a label encoding.")
        if (not gen.uses_labels and gen is not negatives_lib.no_negatives
                and self.encoding.carries_label):
            raise ValueError(f"negatives={neg!r} makes label-free negatives, "
                             "but the label encoding writes the true label into every "
                             "positive, so the two differ by the label alone: set "
                             "label_encoding='none' (unsupervised FF).")
        if not isinstance(self.theta, (int, float, type(None))):
            set_("theta", tuple(float(t) for t in self.theta))
        self.layer_shapes  # noqa: B018 (raises if a block does not fit its input)
        if self.uses_groups:
            for i, shape in enumerate(self.layer_shapes):
                if shape[-1] % self.num_classes:
                    raise ValueError(
                        f"block {i} ({self.blocks[i]}): its {shape[-1]} channels (units) "
                        f"cannot be split into {self.num_classes} equal class groups; "
                        f"give it a multiple of {self.num_classes}.")
        objective.resolve_thetas(self.theta, self.scored_sizes)  # checks count and sign
        for name in ("label_strength", "temperature", "symba_alpha", "loss_scale",
                     "peer_strength", "peer_momentum", "input_noise",
                     "hidden_dropout", "readout_label_smoothing", "output_norm_momentum",
                     "group_label_smoothing"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name}={v!r} must be a finite number.")
        for name in ("label_strength", "temperature", "symba_alpha", "loss_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        for name in ("input_noise", "peer_strength"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        for name in ("readout_label_smoothing", "peer_momentum", "hidden_dropout",
                     "output_norm_momentum", "group_label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")
        layers.check_norm(self.norm)
        layers.check_output_norm(self.output_norm)
        for name in ("readout_layers", "score_layers"):  # checked here, resolved below
            if getattr(self, name) is not None:
                set_(name, tuple(int(i) for i in getattr(self, name)))
        self.readout_layer_ids, self.score_layer_ids  # noqa: B018 (raise if out of range)
        if self.layer_probes and not self.trains_readout:
            raise ValueError("layer_probes=True trains the probes beside the softmax "
                             "readout, with its optimizer: set readout=True.")

    def _check_objective_kind(self, gen, neg: str) -> None:
        if isinstance(self.objective, str):
            objective.make_objective(self.objective)  # checks the name
        elif not callable(self.objective) and not isinstance(self.objective,
                                                              objective.GroupObjective):
            raise ValueError(f"objective={self.objective!r} must be a name in "
                             f"{objective.OBJECTIVES}, a function (g_pos_LxB, g_neg_LxM, "
                             "thetas_L) -> (L,) losses, or an objective.GroupObjective.")
        if self.group_label_smoothing and self.objective != "group_softmax":
            raise ValueError(f"group_label_smoothing={self.group_label_smoothing} smooths "
                             "the targets of objective='group_softmax' only; set it to 0 "
                             f"with objective={self.objective!r}.")
        if self.uses_groups:
            if gen is not negatives_lib.no_negatives:
                raise ValueError(f"negatives={neg!r}: a class-group objective "
                                 "uses no negative data; set negatives='none'.")
            if self.encoding.carries_label:
                raise ValueError("a class-group objective reads the class off the "
                                 "activity, so the input must not hold the label: set "
                                 "label_encoding='none'.")
        elif gen is negatives_lib.no_negatives:
            raise ValueError("negatives='none' leaves this objective nothing to contrast "
                             "the positives with; it is for class-group objectives "
                             "(objective='group_softmax').")

    @property
    def uses_groups(self) -> bool:
        """Whether the objective is a class-group one (objective.GroupObjective)."""
        return isinstance(self.objective_fn(), objective.GroupObjective)

    @property
    def num_layers(self) -> int:
        return len(self.hidden)

    @property
    def blocks(self) -> tuple:
        """The block objects, input side first (widths made layers.Dense)."""
        return tuple(layers.as_block(h) for h in self.hidden)

    @property
    def encoding(self):
        """The label encoding object."""
        if isinstance(self.label_encoding, str):
            return encodings.make_encoding(self.label_encoding,
                                           num_classes=self.num_classes,
                                           strength=self.label_strength)
        return self.label_encoding

    @property
    def negative_generator(self) -> negatives_lib.NegativeGenerator:
        return negatives_lib.resolve(self.negatives)

    @property
    def network_input_shape(self) -> tuple | None:
        """One example's shape as the first block sees it (after the label encoding),
        or None for dense blocks without an input_shape."""
        if self.input_shape is None:
            return None
        return tuple(self.encoding.encoded_shape(self.input_shape))

    @property
    def layer_shapes(self) -> tuple:
        """Each layer's per-example output shape."""
        if self.input_shape is None:  # dense blocks only: their outputs need no input
            return tuple((h,) for h in self.hidden)
        shapes, shape = [], self.network_input_shape
        for i, b in enumerate(self.blocks):
            rank = getattr(b, "in_rank", None)
            if rank is not None and len(shape) != rank:
                raise ValueError(f"block {i} ({b}): takes inputs of rank {rank} but gets "
                                 f"shape {shape}; conv and local blocks come before "
                                 "dense ones, and need an (H, W, C) input_shape.")
            try:
                shape = tuple(int(s) for s in b.out_shape(shape))
            except ValueError as e:
                raise ValueError(f"block {i} ({b}): {e}") from None
            shapes.append(shape)
        return tuple(shapes)

    @property
    def layer_fan_ins(self) -> tuple[int, ...]:
        """Each layer's inputs per unit (needs input_shape)."""
        if self.input_shape is None:
            raise ValueError("layer_fan_ins needs input_shape; use spec.for_input(shape).")
        ins = (self.network_input_shape,) + self.layer_shapes[:-1]
        return tuple(int(b.fan_in(s)) if callable(getattr(b, "fan_in", None))
                     else math.prod(s) for b, s in zip(self.blocks, ins))

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Each layer's number of units."""
        return tuple(math.prod(s) for s in self.layer_shapes)

    def for_input(self, shape) -> "FFSpec":
        """This spec for inputs of per-example `shape`: input_shape set from it, or
        checked against it."""
        shape = tuple(int(s) for s in shape)
        if self.input_shape is None:
            return dataclasses.replace(self, input_shape=shape)
        if shape != self.input_shape:
            raise ValueError(f"the data's examples have shape {shape} but the spec's "
                             f"input_shape is {self.input_shape}.")
        return self

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
        """One goodness threshold per layer (per location of it, with goodness_scope
        "location")."""
        return objective.resolve_thetas(self.theta, self.scored_sizes)

    @property
    def scored_sizes(self) -> tuple[int, ...]:
        """The units each goodness term sums: a layer's, or a location's channels."""
        if self.goodness_scope == "location":
            return tuple(s[-1] for s in self.layer_shapes)
        return self.layer_sizes

    @property
    def trains_readout(self) -> bool:
        """Whether a softmax readout is trained (asked for, or needed by hard negatives)."""
        return self.readout or self.negative_generator.needs_logits

    @property
    def goodness_readout_applies(self) -> bool:
        """Whether the goodness readout can predict: a label in the input to vary, or
        class groups to compare."""
        return bool(self.encoding.carries_label or self.uses_groups)

    @property
    def trains_probes(self) -> bool:
        """Whether a linear probe per layer is trained (layer_probes; None: where the
        goodness readout does not apply and a readout is trained)."""
        if self.layer_probes is not None:
            return bool(self.layer_probes)
        return self.trains_readout and not self.goodness_readout_applies

    @property
    def readout_width(self) -> int:
        """F: the number of features the softmax readout reads."""
        return sum(self.layer_sizes[i] for i in self.readout_layer_ids)

    def objective_fn(self):
        """The per-layer objective with its settings: a function of the goodness of
        positives and negatives, or an objective.GroupObjective."""
        if not isinstance(self.objective, str):
            return self.objective
        if self.objective == "symba":
            return objective.make_objective("symba", alpha=self.symba_alpha)
        if self.objective == "group_softmax":
            return objective.make_objective(self.objective, temperature=self.temperature,
                                            label_smoothing=self.group_label_smoothing)
        return objective.make_objective(self.objective, temperature=self.temperature)
