"""Backprop baselines for the comparison: a flax MLP of the FF network's architecture and a
small CNN, trained end to end with Optax in the same on-device scanned epoch as ffjax.

The MLP mirrors an FF network of hidden widths (H_1, ..., H_L): before every dense layer
the activity is length-normalized exactly as in ffjax (`layers.normalize`), hidden layers
use ReLU, and a final dense layer on the normalized last hidden activity gives the softmax
logits. The input is the image alone (no label is written into it). The CNN is what a
user would pick instead of either MLP: two 3x3 convolutions (32, 64 channels) with ReLU and
2x2 max pooling, a 128-unit dense layer, the logits.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ffjax import labels, layers, readout


class MLP(nn.Module):
    """normalize -> dense -> ReLU per hidden layer, then normalize -> dense logits."""

    hidden: Sequence[int]
    num_classes: int
    norm: str = "rms"

    @nn.compact
    def __call__(self, x_BxD):
        h = x_BxD
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(layers.normalize(h, norm=self.norm)))
        return nn.Dense(self.num_classes)(layers.normalize(h, norm=self.norm))


class CNN(nn.Module):
    """A small convolutional classifier for 28x28 grey images."""

    num_classes: int
    side: int = 28

    @nn.compact
    def __call__(self, x_BxD):
        h = x_BxD.reshape(x_BxD.shape[0], self.side, self.side, 1)
        for channels in (32, 64):
            h = nn.relu(nn.Conv(channels, (3, 3))(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.relu(nn.Dense(128)(h.reshape(h.shape[0], -1)))
        return nn.Dense(self.num_classes)(h)


class BlockNet(nn.Module):
    """The FF network of `spec` (its blocks, normalization placement and shapes) trained
    by backprop: normalize -> block -> ReLU per layer with no gradient stopped (then, with
    spec.output_norm "batch", per-channel batch normalization with spec's momentum and
    ffjax's epsilon: the batch's statistics when `train`, the running ones otherwise),
    then normalize -> dense logits on the last layer's flattened activity. Inputs arrive
    flat (B, D) and are shaped to spec.input_shape."""

    spec: object

    @nn.compact
    def __call__(self, x_BxD, train: bool = False):
        spec = self.spec
        layers.check_output_norm(spec.output_norm)
        h = x_BxD.reshape((x_BxD.shape[0],) + spec.input_shape)
        shapes = (spec.network_input_shape,) + spec.layer_shapes[:-1]
        for i, (block, shape) in enumerate(zip(spec.blocks, shapes)):
            p = self.param(f"block_{i}", lambda key, b=block, s=shape: b.init(key, s))
            h = nn.relu(block.apply(p, layers.normalize(h, norm=spec.norm)))
            if spec.output_norm == "batch":
                h = nn.BatchNorm(use_running_average=not train,
                                 momentum=spec.output_norm_momentum,
                                 epsilon=layers.BATCH_NORM_EPS, name=f"norm_{i}")(h)
        h = layers.normalize(h.reshape(h.shape[0], -1), norm=spec.norm)
        return nn.Dense(spec.num_classes)(h)


class BPState(NamedTuple):
    """A backprop model's variables (its "params" and any other collection, such as
    BlockNet's "batch_stats") and the optimizer state of its "params"."""

    variables: dict
    opt_state: optax.OptState


def init_state(key: jax.Array, model: nn.Module, num_inputs: int,
               optimizer: optax.GradientTransformation) -> BPState:
    variables = model.init(key, jnp.zeros((1, num_inputs), jnp.float32))
    return BPState(variables, optimizer.init(variables["params"]))


def make_bp_step(model: nn.Module, optimizer: optax.GradientTransformation) -> Callable:
    """`step(state, x_BxD, y_B) -> (state, (loss, accuracy))`: one cross-entropy update
    (pure; not jitted). A model with collections besides "params" (batch statistics) is
    called with train=True, and those collections take the values it returns."""

    def step(st: BPState, x_raw, y):
        params, others = st.variables["params"], {
            k: v for k, v in st.variables.items() if k != "params"}
        x = labels.to_float(x_raw)

        def loss_fn(p):
            if others:
                lg, new_others = model.apply({"params": p, **others}, x, train=True,
                                             mutable=list(others))
            else:
                lg, new_others = model.apply({"params": p}, x), {}
            correct = (jnp.argmax(lg, -1) == y).astype(jnp.float32)
            return readout.cross_entropy(lg, y), (jnp.mean(correct), new_others)

        (loss, (acc, new_others)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(g, st.opt_state, params)
        params = optax.apply_updates(params, updates)
        return BPState({"params": params, **new_others}, opt_state), (loss, acc)

    return step


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """(N // B, B) example indices of one shuffled epoch (the remainder skipped)."""
    steps = n // batch_size
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


def make_bp_epoch(model: nn.Module, optimizer: optax.GradientTransformation, *,
                  batch_size: int) -> Callable:
    """`epoch(state, x_NxD, y_N, key) -> (state, (loss, accuracy))`, jitted with the state
    donated: shuffle on the device, then `lax.scan` over N // batch_size minibatches of
    one cross-entropy step each (the same loop structure as ffjax's FF epoch)."""
    step = make_bp_step(model, optimizer)

    def epoch(state: BPState, x_NxD, y_N, key):
        order = epoch_batches(key, x_NxD.shape[0], batch_size)
        state, (loss, acc) = jax.lax.scan(
            lambda st, idx: step(st, x_NxD[idx], y_N[idx]), state, order)
        return state, (jnp.mean(loss), jnp.mean(acc))

    return jax.jit(epoch, donate_argnums=0)


def make_bp_predict(model: nn.Module, *, chunk_size: int = 10_000) -> Callable:
    """`predict(variables, x_NxD) -> (N,)` class indices, in chunks of `chunk_size`
    (a model with batch statistics uses its running ones)."""

    @jax.jit
    def predict(variables, x_NxD):
        return jnp.concatenate([
            jnp.argmax(model.apply(variables, labels.to_float(x_NxD[i:i + chunk_size])), -1)
            for i in range(0, x_NxD.shape[0], chunk_size)])

    return predict
