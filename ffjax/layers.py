"""FF blocks: length normalization and the block protocol, with dense, conv and locally
connected blocks built on it.

A block is what turns one FF layer's normalized input into its pre-activation: any
object with

    init(key, in_shape) -> params        in_shape: one example's input shape, e.g. (784,)
    apply(params, x_Bx...) -> z_Bx...    batched; the layer's output is relu(z)
    out_shape(in_shape) -> shape         one example's output shape; raises ValueError
                                         with a clear message for an input it cannot take

and optionally `in_rank` (the rank of the per-example input it needs, e.g. 3 for an
(H, W, C) image; None: any) and `fan_in(in_shape)` (inputs per unit, for per-layer
learning-rate scaling; default: the input's size). `Block` is a NamedTuple of those
functions for blocks made from plain functions; `from_flax` makes one from any flax.linen
module, `from_nnx` from any flax.nnx module. The built-ins (`Dense`, `Conv`, `Local`) are
frozen dataclasses, so specs holding them compare and hash by value. ffjax.network runs a
stack of blocks (normalize -> block -> ReLU).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

NORMS = ("rms", "rms_ref", "l2", "centered", "none")
_EPS = 1e-8
# The reference code's guard, added to the root rather than under it (see normalize).
_REF_TINY = 1.9287498479639178e-22  # e^-50
PADDINGS = ("SAME", "VALID")


class DenseParams(NamedTuple):
    """One dense layer. w: (D_in, D_out) float32, b: (D_out,) float32."""

    w: jax.Array
    b: jax.Array


Network = tuple  # one params pytree per block, input block first


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; choose one of {NORMS}.")


def normalize(x: jax.Array, *, norm: str) -> jax.Array:
    """Length-normalizes each example so only the direction of its activity is passed on.

    Args:
      x: (B, ...) float array; each example's whole activity (every axis but the first)
        is normalized as one vector.
      norm: "rms" scales each example to mean square 1 (an activity of n units then has
        sum of squares n), as x * rsqrt(mean(x^2) + 1e-8); "rms_ref" is the reference
        code's exact form x / (e^-50 + sqrt(mean(x^2))), which differs only for nearly
        silent examples: it still scales them up to mean square 1, where "rms" leaves
        examples with mean square far below 1e-8 nearly silent; "l2" scales each example
        to unit Euclidean norm; "centered" subtracts each example's mean over its
        activity first and then scales as "rms_ref" (a layer norm without gain or bias:
        the next layer reads how the units differ from the example's average activity);
        "none" passes x on as it is (for layers whose outputs are normalized otherwise,
        e.g. output_norm "batch": then the activity's size does reach the next layer).

    Returns:
      An array of the same shape; all-zero examples stay zero.
    """
    if x.ndim > 2:
        return normalize(x.reshape(x.shape[0], -1), norm=norm).reshape(x.shape)
    if norm == "none":
        return x
    if norm == "centered":
        return normalize(x - jnp.mean(x, axis=-1, keepdims=True), norm="rms_ref")
    sq = jnp.square(x)
    if norm == "rms_ref":
        return x / (_REF_TINY + jnp.sqrt(jnp.mean(sq, axis=-1, keepdims=True)))
    if norm == "rms":
        scale = jnp.mean(sq, axis=-1, keepdims=True)
    elif norm == "l2":
        scale = jnp.sum(sq, axis=-1, keepdims=True)
    else:
        check_norm(norm)
    return x * jax.lax.rsqrt(scale + _EPS)


def norm_scale(x: jax.Array, *, norm: str) -> jax.Array:
    """(B, 1): the factor normalize(x) multiplies each example of x (B, D) by (for the
    norms that only scale: not "centered", which also shifts)."""
    if norm == "centered":
        raise ValueError("norm='centered' shifts each example as well as scaling it, so it "
                         "has no single factor; use normalize.")
    if norm == "none":
        return jnp.ones(x.shape[:1] + (1,), x.dtype)
    sq = jnp.square(x)
    if norm == "rms_ref":
        return 1.0 / (_REF_TINY + jnp.sqrt(jnp.mean(sq, axis=-1, keepdims=True)))
    check_norm(norm)
    scale = jnp.mean(sq, axis=-1, keepdims=True) if norm == "rms" else jnp.sum(
        sq, axis=-1, keepdims=True)
    return jax.lax.rsqrt(scale + _EPS)


OUTPUT_NORMS = ("none", "batch")
BATCH_NORM_EPS = 1e-5  # under the root of the variance, as torch.nn.BatchNorm's


class BatchNormParams(NamedTuple):
    """Per-channel batch normalization of a layer's output (channels: the last axis).

    scale and offset are trained by the layer's own loss; mean and var are running
    averages of the training batches' statistics, which inference uses. They sit in the
    parameters so that every reader of a network (inference, readouts, checkpoints,
    vmapped seeds) has them, but no optimizer moves them: the training step overwrites
    them with their running update (epoch.train_step). The layers' own losses never read
    them (they use the batch's statistics); the readout and the probes, trained on what
    inference computes, do.
    """

    scale: jax.Array
    offset: jax.Array
    mean: jax.Array
    var: jax.Array


class NormedParams(NamedTuple):
    """One layer's parameters with output normalization: the block's, then the norm's."""

    block: Any
    norm: BatchNormParams


def check_output_norm(output_norm: str) -> None:
    if output_norm not in OUTPUT_NORMS:
        raise ValueError(f"output_norm={output_norm!r} is not supported; choose one of "
                         f"{OUTPUT_NORMS}.")


def init_batch_norm(channels: int) -> BatchNormParams:
    """The identity at the start: scale 1, offset 0, running mean 0 and variance 1."""
    # Four separate arrays: a jitted step that donates its state cannot donate one
    # buffer twice.
    shape = (channels,)
    return BatchNormParams(scale=jnp.ones(shape, jnp.float32),
                           offset=jnp.zeros(shape, jnp.float32),
                           mean=jnp.zeros(shape, jnp.float32),
                           var=jnp.ones(shape, jnp.float32))


def batch_stats(h: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
    """(mean, var), each (channels,): the statistics of h's first `rows` examples over
    the examples and every location (all axes but the last), the variance biased."""
    h = h[:rows]
    axes = tuple(range(h.ndim - 1))
    mean = jnp.mean(h, axis=axes)
    return mean, jnp.mean(jnp.square(h - mean), axis=axes)


def batch_norm(p: BatchNormParams, h: jax.Array, stats=None) -> jax.Array:
    """h with each channel standardized by `stats` (mean, var) (training: the batch's),
    or by the running statistics in p when None (inference), then scaled and shifted."""
    mean, var = (p.mean, p.var) if stats is None else stats
    return (h - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPS) * p.scale + p.offset


class Block(NamedTuple):
    """A block from plain functions (see the module docstring for the protocol)."""

    init: Callable[[jax.Array, tuple], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    out_shape: Callable[[tuple], tuple]
    in_rank: int | None = None


def init_dense(key: jax.Array, d_in: int, d_out: int) -> DenseParams:
    """Weights ~ N(0, 1/d_in) as in the reference code, biases 0."""
    w = jax.random.normal(key, (d_in, d_out), jnp.float32) / jnp.sqrt(jnp.float32(d_in))
    return DenseParams(w=w, b=jnp.zeros((d_out,), jnp.float32))


@dataclasses.dataclass(frozen=True)
class Dense:
    """A fully connected block of `width` units; any input is flattened first."""

    width: int
    in_rank = None

    def __post_init__(self):
        if not (isinstance(self.width, int) and self.width > 0):
            raise ValueError(f"dense width {self.width!r} must be a positive integer.")

    def init(self, key, in_shape) -> DenseParams:
        return init_dense(key, math.prod(in_shape), self.width)

    def apply(self, params: DenseParams, x):
        if x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        return x @ params.w + params.b

    def out_shape(self, in_shape) -> tuple:
        return (self.width,)

    def fan_in(self, in_shape) -> int:
        return math.prod(in_shape)

    def __str__(self):
        return str(self.width)


def _fan_in_normal(batch_axis=()):
    """N(0, 1/fan_in) weights, the reference code's initialization, for flax kernels."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                                batch_axis=batch_axis)


def _window_out(size: int, kernel: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "SAME" else (size - kernel) // stride + 1


@dataclasses.dataclass(frozen=True)
class _Spatial:
    """Shared geometry of Conv and Local: `channels` output channels, a square `kernel`
    with `stride` and `padding` ("SAME" or "VALID"), then max pooling over `pool` x
    `pool` windows with stride `pool` (1: none). Max pooling of the pre-activation
    equals pooling the ReLU output, since ReLU is monotone."""

    channels: int
    kernel: int
    stride: int = 1
    padding: str = "SAME"
    pool: int = 1
    in_rank = 3
    kind = "spatial"

    def __post_init__(self):
        for name in ("channels", "kernel", "stride", "pool"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"{self.kind} {name}={v!r} must be a positive integer.")
        object.__setattr__(self, "padding", str(self.padding).upper())
        if self.padding not in PADDINGS:
            raise ValueError(f"{self.kind} padding={self.padding!r}: choose one of "
                             f"{', '.join(p.lower() for p in PADDINGS)}.")

    def out_shape(self, in_shape) -> tuple:
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"needs image inputs (H, W, C); it got shape {in_shape}. Put "
                             "it before any dense block.")
        h, w, _ = in_shape
        if self.padding == "VALID" and self.kernel > min(h, w):
            raise ValueError(f"the {self.kernel}x{self.kernel} kernel is larger than its "
                             f"{h}x{w} input; use a smaller kernel or padding=same.")
        oh, ow = (_window_out(s, self.kernel, self.stride, self.padding) for s in (h, w))
        if self.pool > min(oh, ow):
            raise ValueError(f"pooling {self.pool}x{self.pool} does not fit its {oh}x{ow} "
                             "output.")
        return (oh // self.pool, ow // self.pool, self.channels)

    def fan_in(self, in_shape) -> int:
        return self.kernel * self.kernel * int(in_shape[-1])

    def _patches(self, x):
        """(B, H_out, W_out, C_in * k * k): every output location's input window, features
        ordered (C_in, k, k) as lax.conv_general_dilated_patches orders them. Built from
        k * k strided slices rather than with that op, which XLA runs as a convolution:
        inside the epoch's lax.scan on the CPU the slices were the faster of the two for
        conv layers (docs/blocks.md)."""
        k, s = self.kernel, self.stride
        _, h, w, c = x.shape
        (oh, ow) = (_window_out(d, k, s, self.padding) for d in (h, w))
        if self.padding == "SAME":  # lax's SAME: the extra padding row or column at the end
            pads = [max((o - 1) * s + k - d, 0) for o, d in ((oh, h), (ow, w))]
            x = jnp.pad(x, ((0, 0), (pads[0] // 2, pads[0] - pads[0] // 2),
                            (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)))
        cols = [x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
                for i in range(k) for j in range(k)]
        return jnp.stack(cols, axis=-1).reshape(x.shape[0], oh, ow, c * k * k)

    def _pool(self, z):
        if self.pool == 1:
            return z
        import flax.linen as nn
        return nn.max_pool(z, (self.pool, self.pool), strides=(self.pool, self.pool))

    def init(self, key, in_shape):
        self.out_shape(in_shape)  # a clear error before flax's
        return self._module().init(key, jnp.zeros((1,) + tuple(in_shape)))["params"]

    def apply(self, params, x):
        return self._pool(self._module().apply({"params": params}, x))

    def __str__(self):
        parts = [self.kind, str(self.channels), str(self.kernel)]
        if self.stride != 1:
            parts.append(f"s{self.stride}")
        if self.padding != "SAME":
            parts.append(self.padding.lower())
        if self.pool != 1:
            parts.append(f"p{self.pool}")
        return ":".join(parts)


@dataclasses.dataclass(frozen=True)
class Conv(_Spatial):
    """A convolutional block (weights shared across locations), with flax.linen.Conv's
    parameters ({"kernel": (k, k, C_in, C_out), "bias": (C_out,)}) and results.

    It is computed as image patches (_Spatial._patches) times the kernel rather than as
    a convolution op: XLA's CPU convolutions run many times slower inside
    lax.scan (the epoch loop) than outside it (docs/blocks.md), and FF never needs the
    gradient with respect to a block's input, so the patches are computed once per pass
    and the kernel's gradient is one matmul.
    """

    kind = "conv"
    # Grouped convolution (flax.linen.Conv's feature_group_count): the channels in
    # `groups` contiguous groups, group g's outputs reading only group g's inputs. With
    # class-group objectives and groups = the number of classes, each class's channels
    # see only that class's channels below.
    groups: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.groups, int) and self.groups > 0):
            raise ValueError(f"conv groups={self.groups!r} must be a positive integer.")
        if self.channels % self.groups:
            raise ValueError(f"conv channels={self.channels} must be a multiple of its "
                             f"groups={self.groups}.")

    def out_shape(self, in_shape) -> tuple:
        out = super().out_shape(in_shape)
        if int(in_shape[-1]) % self.groups:
            raise ValueError(f"{self} reads {int(in_shape[-1])} input channels, not a "
                             f"multiple of its {self.groups} groups; give the block below "
                             "a multiple of it.")
        return out

    def fan_in(self, in_shape) -> int:
        return self.kernel * self.kernel * (int(in_shape[-1]) // self.groups)

    def init(self, key, in_shape):
        self.out_shape(in_shape)
        shape = (self.kernel, self.kernel, int(in_shape[-1]) // self.groups, self.channels)
        return {"kernel": _fan_in_normal()(key, shape, jnp.float32),
                "bias": jnp.zeros((self.channels,), jnp.float32)}

    def apply(self, params, x):
        k, c_in, g = self.kernel, x.shape[-1], self.groups
        if g == 1:
            w = jnp.transpose(params["kernel"], (2, 0, 1, 3)).reshape(c_in * k * k, -1)
            return self._pool(self._patches(x) @ w + params["bias"])
        # The patches' features are ordered (C_in, k, k), so each group's are contiguous.
        p = self._patches(x)
        p = p.reshape(p.shape[:3] + (g, (c_in // g) * k * k))
        w = params["kernel"].reshape(k, k, c_in // g, g, -1)  # output channels by group
        w = jnp.transpose(w, (3, 2, 0, 1, 4)).reshape(g, (c_in // g) * k * k, -1)
        z = jnp.einsum("bhwgi,gio->bhwgo", p, w).reshape(p.shape[:3] + (-1,))
        return self._pool(z + params["bias"])

    def __str__(self):
        return super().__str__() + (f":g{self.groups}" if self.groups != 1 else "")


@dataclasses.dataclass(frozen=True)
class Local(_Spatial):
    """A locally connected block (the geometry of Conv, a separate filter at every
    location, no weight sharing): flax.linen.ConvLocal."""

    kind = "local"

    def _module(self):
        import flax.linen as nn
        # The kernel is (H_out, W_out, k*k*C_in, C_out): the location axes are batch
        # axes for the fan-in, so each filter gets N(0, 1/(k*k*C_in)) weights.
        return nn.ConvLocal(self.channels, (self.kernel, self.kernel),
                            strides=(self.stride, self.stride), padding=self.padding,
                            kernel_init=_fan_in_normal(batch_axis=(0, 1)))

    def apply(self, params, x):
        # flax's ConvLocal result (kernel (H_out, W_out, C_in * k * k, C_out), bias
        # (H_out, W_out, C_out)), computed from the same patches as Conv.
        z = jnp.einsum("bhwi,hwio->bhwo", self._patches(x), params["kernel"])
        return self._pool(z + params["bias"])


def _traced_out_shape(init, apply):
    """out_shape for a block made of init and apply: one example's output shape, read
    off an abstract evaluation (no arrays made)."""

    def out_shape(in_shape):
        out = jax.eval_shape(lambda: apply(init(jax.random.key(0), in_shape),
                                           jnp.zeros((1,) + tuple(in_shape))))
        return tuple(out.shape[1:])

    return out_shape


def from_flax(module, *, in_rank: int | None = None) -> Block:
    """A block whose body is a flax.linen module: init(key, in_shape) initializes it on
    a dummy example, apply runs it, out_shape is read off jax.eval_shape. Keep the
    module free of normalization and the final ReLU (ffjax adds both)."""

    def init(key, in_shape):
        return module.init(key, jnp.zeros((1,) + tuple(in_shape)))["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    return Block(init, apply, _traced_out_shape(init, apply), in_rank)


def from_nnx(make, *, in_rank: int | None = None) -> Block:
    """A block whose body is a flax.nnx module. `make(in_shape, rngs)` builds the module
    for one example's input shape (nnx layers are told their input size) from
    `nnx.Rngs`; its `nnx.Param` variables are the block's parameters, as a plain nested
    dict (what optax, orbax and vmap see for every block). A module with other
    variables (batch statistics, counters) would carry state between steps and is
    refused. Keep the module free of normalization and the final ReLU (ffjax adds both)."""
    from flax import nnx

    def split(module):
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError("from_nnx: the module holds variables other than nnx.Param "
                             f"({sorted(nnx.to_pure_dict(rest))}); an FF block's body "
                             "keeps no state between steps.")
        return graphdef, params, rest

    def init(key, in_shape):
        return nnx.to_pure_dict(split(make(tuple(in_shape), nnx.Rngs(key)))[1])

    def apply(params, x):
        # The module's structure from an abstract build (no arrays made), its values
        # from params.
        graphdef, state, rest = split(nnx.eval_shape(
            lambda: make(tuple(x.shape[1:]), nnx.Rngs(0))))
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state, rest)(x)

    return Block(init, apply, _traced_out_shape(init, apply), in_rank)


_SPATIAL = {"conv": Conv, "local": Local}
ARCH_HELP = ("a block per item: N (dense, N units), conv:C:K or local:C:K (C channels, a "
             "KxK kernel) with optional :sS (stride), :valid (no padding), :pP (PxP max "
             "pooling), :gG (conv only: G channel groups), e.g. conv:32:5:p2 "
             "conv:64:3:p2 1000")


def parse_block(token) -> Any:
    """A block from its command-line form (ARCH_HELP): 1000, dense:1000, conv:32:5:p2,
    local:16:3:s2:valid. Raises ValueError naming the bad token."""
    if isinstance(token, int):
        return Dense(token)
    text = str(token).strip().lower()
    if re.fullmatch(r"[+-]?\d+", text):
        return Dense(int(text))
    parts = text.split(":")
    kind = parts[0]
    if kind == "dense" and len(parts) == 2 and parts[1].isdigit():
        return Dense(int(parts[1]))
    if kind not in _SPATIAL:
        raise ValueError(f"unknown block {token!r}: {ARCH_HELP}.")
    if len(parts) < 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"block {token!r}: {kind} needs channels and a kernel size, "
                         f"e.g. {kind}:32:5.")
    kwargs = {}
    for opt in parts[3:]:
        if re.fullmatch(r"s\d+", opt):
            kwargs["stride"] = int(opt[1:])
        elif re.fullmatch(r"p\d+", opt):
            kwargs["pool"] = int(opt[1:])
        elif opt in ("same", "valid"):
            kwargs["padding"] = opt.upper()
        elif re.fullmatch(r"g\d+", opt) and kind == "conv":
            kwargs["groups"] = int(opt[1:])
        else:
            raise ValueError(f"block {token!r}: unknown option {opt!r} (sS: stride, pP: "
                             "max pooling, same / valid: padding, gG: groups, conv only).")
    return _SPATIAL[kind](int(parts[1]), int(parts[2]), **kwargs)


def as_block(item) -> Any:
    """An int is a dense block of that width, a string is parsed (parse_block), and
    anything with init / apply / out_shape is a block as it is."""
    if isinstance(item, (int, str)):
        return parse_block(item)
    if all(callable(getattr(item, n, None)) for n in ("init", "apply", "out_shape")):
        return item
    raise ValueError(f"{item!r} is not a block: give a width, a block string "
                     f"({ARCH_HELP}) or an object with init, apply and out_shape.")
