"""Optax optimizers for FF layers from plain settings (name, lr, schedule)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "sgd", "smoothed_sgd")
LR_SCALINGS = ("fan_in", "none")
REFERENCE_FAN_IN = 1000


def check_decay_start(decay_start: float) -> float:
    """The share of the run before the lr starts to fall: a number in [0, 1)."""
    if not (math.isfinite(decay_start) and 0.0 <= decay_start < 1.0):
        raise ValueError(f"lr_decay_start={decay_start} must be a share of the run in "
                         "[0, 1): 0.5 (the reference) decays over the second half, 0 over "
                         "the whole run; for a constant lr turn the decay off instead.")
    return float(decay_start)


def lr_schedule(lr: float, total_steps: int | None, *, decay: bool, decay_start: float):
    """Constant lr for the first `decay_start` share of training, then linear decay to 0
    (the reference recipe's schedule has decay_start 0.5). Without total_steps or with
    decay=False, a constant lr."""
    decay_start = check_decay_start(decay_start)
    if not decay or not total_steps:
        return lr
    start = max(int(int(total_steps) * decay_start), 1 if decay_start else 0)
    falling = optax.linear_schedule(lr, 0.0, max(int(total_steps) - start, 1))
    if not start:
        return falling
    return optax.join_schedules([optax.constant_schedule(lr), falling], [start])


def epoch_gain_schedule(lr: float, *, epochs: int, steps_per_epoch: int,
                        decay_start: float):
    """The reference code's schedule, set once per epoch e = 1..E: lr while
    e <= s E, then lr * (1 + 2 (E - e)) / (2 (1 - s) E) (a staircase falling linearly
    towards 0; never below 0 if training runs past E), with s = decay_start (0.5 in the
    reference: lr (1 + 2 (E - e)) / E over the second half)."""
    epochs, steps_per_epoch = int(epochs), int(steps_per_epoch)
    decay_start = check_decay_start(decay_start)
    if epochs <= 0 or steps_per_epoch <= 0:
        raise ValueError(f"epochs={epochs} and steps_per_epoch={steps_per_epoch} must be "
                         "positive.")
    span = 2.0 * epochs * (1.0 - decay_start)  # = E at the reference's s = 0.5, exactly

    def schedule(count):
        e = (count // steps_per_epoch + 1).astype(jnp.float32)
        gain = jnp.where(e <= epochs * decay_start, 1.0, (1.0 + 2.0 * (epochs - e)) / span)
        return lr * jnp.maximum(gain, 0.0)

    return schedule


BIAS_NAMES = ("b", "bias")


def _is_bias(path, leaf) -> bool:
    """A bias: a leaf named `b` or `bias` (DenseParams.b, flax's "bias", whatever its
    rank, e.g. a locally connected block's per-location bias), or any leaf of fewer than
    2 axes under another name."""
    last = path[-1] if path else None
    name = getattr(last, "name", None) or getattr(last, "key", None)
    return name in BIAS_NAMES or jnp.ndim(leaf) < 2


def matrices(params):
    """Mask of the weights (kernels and matrices), not the biases."""
    return jax.tree_util.tree_map_with_path(lambda p, a: not _is_bias(p, a), params)


def vectors(params):
    """Mask of the biases."""
    return jax.tree_util.tree_map_with_path(_is_bias, params)


def make_optimizer(name: str = "adam", *, lr: float, total_steps: int | None = None,
                   decay: bool = True, decay_start: float = 0.5, momentum: float = 0.9,
                   weight_decay: float = 0.0, decoupled_decay: bool = False,
                   steps_per_epoch: int | None = None,
                   train_biases: bool = True) -> optax.GradientTransformation:
    """An optax optimizer; each FF layer gets its own state of it.

    Args:
      name: "adam" (AdamW when weight_decay > 0), "sgd" (heavy-ball momentum) or
        "smoothed_sgd" (the reference code's update: the step follows an exponential
        moving average of the gradient, g_s <- m g_s + (1 - m) g, so its size is lr
        times the gradient, not lr / (1 - m) times as with heavy-ball momentum).
      lr: peak learning rate.
      total_steps: minibatch steps of the whole run, for the decay schedule.
      decay: constant-then-linear-decay schedule (True) or constant lr.
      decay_start: with decay, the share of the run before the lr starts to fall (0.5:
        the reference's second half; 0: the whole run).
      momentum: SGD momentum / smoothing factor.
      weight_decay: weight decay. For the SGDs it is added to the gradient before the
        smoothing (coupled) unless decoupled_decay; Adam's is always decoupled (AdamW).
      decoupled_decay: apply the weight decay after the smoothing, to the weight
        matrices only (the reference code: w <- w + lr gain (s - wc w), no decay on
        biases): optax.add_decayed_weights with a mask, after optax.ema.
      steps_per_epoch: with decay, set the gain once per epoch (epoch_gain_schedule,
        the reference code) instead of decaying it every step; total_steps must then
        be a whole number of epochs.
      train_biases: False keeps biases (1-axis leaves) at their initial value (the
        reference code's softmax readout never updates its bias).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not known; choose one of {OPTIMIZERS}.")
    if not lr > 0:
        raise ValueError(f"lr={lr} must be positive.")
    if decay and steps_per_epoch and total_steps:
        schedule = epoch_gain_schedule(lr, epochs=int(total_steps) // int(steps_per_epoch),
                                       steps_per_epoch=steps_per_epoch,
                                       decay_start=decay_start)
    else:
        schedule = lr_schedule(lr, total_steps, decay=decay, decay_start=decay_start)
    frozen = [] if train_biases else [optax.masked(optax.set_to_zero(), vectors)]
    if name == "adam":
        mask = matrices if decoupled_decay else None
        opt = (optax.adamw(schedule, weight_decay=weight_decay, mask=mask) if weight_decay
               else optax.adam(schedule))
        return optax.chain(opt, *frozen) if frozen else opt
    coupled = [optax.add_decayed_weights(weight_decay)] if (
        weight_decay and not decoupled_decay) else []
    smooth = (optax.ema(momentum, debias=False) if name == "smoothed_sgd"
              else optax.trace(decay=momentum))
    after = [optax.add_decayed_weights(weight_decay, mask=matrices)] if (
        weight_decay and decoupled_decay) else []
    return optax.chain(*coupled, smooth, *after, optax.scale_by_learning_rate(schedule),
                       *frozen)


def layer_learning_rates(lr: float, fan_ins, *, scaling: str = "fan_in") -> tuple:
    """Per-layer learning rates.

    With scaling="fan_in", a layer with n inputs gets lr * 1000 / n. An Adam step moves
    every weight by about lr, so a unit's pre-activation moves by about lr times its
    fan-in, so without this scaling wide layers take larger steps than narrow ones and
    their units die early (docs/recipe.md has the ablation). An SGD step moves a unit's
    pre-activation by lr times its gradient times |x|^2, and RMS-normalized inputs have
    |x|^2 = n, so the same scaling evens out SGD's steps across widths as well (the
    reference recipe, tuned on 784-1000-1000, uses "none"). "none": lr everywhere.
    """
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr scaling {scaling!r} is not known; choose one of {LR_SCALINGS}.")
    if scaling == "none":
        return tuple(float(lr) for _ in fan_ins)
    return tuple(float(lr) * REFERENCE_FAN_IN / int(n) for n in fan_ins)


def make_layer_optimizers(name: str = "adam", *, lr: float, fan_ins, scaling: str = "fan_in",
                          total_steps=None, **kwargs) -> tuple:
    """One optimizer per layer, for layers of fan-ins `fan_ins` (FFSpec.layer_fan_ins),
    with learning rates from layer_learning_rates; `total_steps` is one count for every
    layer or one per layer; kwargs go to make_optimizer."""
    rates = layer_learning_rates(lr, list(fan_ins), scaling=scaling)
    steps = (list(total_steps) if isinstance(total_steps, (list, tuple))
             else [total_steps] * len(rates))
    if len(steps) != len(rates):
        raise ValueError(f"total_steps gives {len(steps)} layers' steps for {len(rates)} "
                         "layers.")
    return tuple(make_optimizer(name, lr=r, total_steps=n, **kwargs)
                 for r, n in zip(rates, steps))


def with_lr(optimizer: optax.GradientTransformation, lr) -> optax.GradientTransformation:
    """`optimizer` (built with lr=1) with its updates scaled by `lr`, held in the optimizer
    state (optax.inject_hyperparams), so `lr` may be a traced value: states initialized
    under jax.vmap with different rates train different rates through one update
    function. Equal to building `optimizer` with `lr` in place of 1 (up to float
    rounding)."""
    return optax.chain(optimizer, optax.inject_hyperparams(optax.scale)(step_size=lr))


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """How the FF layers and the softmax readout are optimized (each layer and the
    readout get their own state). The defaults are the command line's, the reference
    code's: smoothed SGD, lr 0.01, weight decay 0.001 after the smoothing and on weights
    only; readout lr 0.1, decay 0.003, bias kept at 0; a gain set once per epoch, 1 for
    half the run, then falling linearly towards 0.

    Attributes:
      name: "smoothed_sgd", "sgd" or "adam" (make_optimizer), layers and readout alike.
      lr: peak learning rate (with lr_scaling="fan_in": of a layer with 1000 inputs).
      lr_scaling: "none", or "fan_in" (lr * 1000 / fan-in per layer; for Adam).
      lr_decay: constant for half the run, then linear decay to 0; else constant.
      lr_decay_start: with lr_decay, the share of the run before the decay begins (0.5,
        the reference: the second half; 0: the whole run).
      lr_gain_per_epoch: set the decayed lr once per epoch (the reference code).
      momentum: smoothing / momentum factor.
      weight_decay: the layers' weight decay.
      decoupled_weight_decay: after the smoothing, weights only (the reference code).
      readout_lr, readout_weight_decay: the softmax readout's.
      readout_bias: train the readout's bias (the reference code keeps it at 0).
    """

    name: str = "smoothed_sgd"
    lr: float = 0.01
    lr_scaling: str = "none"
    lr_decay: bool = True
    lr_decay_start: float = 0.5
    lr_gain_per_epoch: bool = True
    momentum: float = 0.9
    weight_decay: float = 0.001
    decoupled_weight_decay: bool = True
    readout_lr: float = 0.1
    readout_weight_decay: float = 0.003
    readout_bias: bool = False

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.name!r} is not known; choose one of "
                             f"{OPTIMIZERS}.")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr scaling {self.lr_scaling!r} is not known; choose one of "
                             f"{LR_SCALINGS}.")
        for name in ("lr", "readout_lr", "weight_decay", "readout_weight_decay", "momentum"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise ValueError(f"{name}={v} must be a finite number.")
            if not (v > 0 if name.endswith("lr") else v >= 0):
                raise ValueError(f"{name}={v} must be "
                                 f"{'positive' if name.endswith('lr') else '>= 0'}.")
        check_decay_start(self.lr_decay_start)

    def _shared(self, steps_per_epoch: int) -> dict:
        return dict(decay=self.lr_decay, decay_start=self.lr_decay_start,
                    momentum=self.momentum,
                    decoupled_decay=self.decoupled_weight_decay,
                    steps_per_epoch=steps_per_epoch if self.lr_gain_per_epoch else None)

    def layer_optimizers(self, fan_ins, *, steps_per_epoch: int, epochs,
                         lr: float | None = None) -> tuple:
        """One optimizer per layer, for layers of fan-ins `fan_ins`
        (FFSpec.layer_fan_ins), its schedule spanning `epochs` epochs (one count, or one
        per layer) (lr: override the peak rate, e.g. 1.0 for a grid that scales each
        model's updates itself)."""
        steps = ([int(e) * int(steps_per_epoch) for e in epochs]
                 if isinstance(epochs, (list, tuple)) else int(epochs) * int(steps_per_epoch))
        return make_layer_optimizers(
            self.name, lr=self.lr if lr is None else lr, fan_ins=fan_ins,
            scaling=self.lr_scaling, total_steps=steps,
            weight_decay=self.weight_decay, **self._shared(steps_per_epoch))

    def readout_optimizer(self, *, steps_per_epoch: int,
                          epochs: int) -> optax.GradientTransformation:
        return make_optimizer(
            self.name, lr=self.readout_lr, total_steps=int(epochs) * int(steps_per_epoch),
            weight_decay=self.readout_weight_decay, train_biases=self.readout_bias,
            **self._shared(steps_per_epoch))
