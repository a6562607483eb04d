"""The one forward pass of an FF network (normalize -> block -> ReLU per layer), used by
training, both readouts and inference, and the network's initialization."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ffjax import labels, layers


class Activity(NamedTuple):
    """One layer's pre-activation z and output h, each (B, *shape): h = relu(z), then
    batch-normalized per channel when spec.output_norm is "batch". stats: the (mean,
    var) that normalized it when they were the batch's (training), else None."""

    z: jax.Array
    h: jax.Array
    stats: tuple | None = None


def init_network(key: jax.Array, spec) -> layers.Network:
    """The parameters of spec's blocks, each from its own key, for inputs of shape
    spec.input_shape (spec.for_input sets it from the data)."""
    if spec.input_shape is None:
        raise ValueError("init_network needs spec.input_shape; use spec.for_input(shape).")
    keys = jax.random.split(key, spec.num_layers)
    shapes = (spec.network_input_shape,) + spec.layer_shapes[:-1]
    net = tuple(b.init(k, s) for b, k, s in zip(spec.blocks, keys, shapes))
    if spec.output_norm == "batch":
        net = tuple(layers.NormedParams(p, layers.init_batch_norm(s[-1]))
                    for p, s in zip(net, spec.layer_shapes))
    return net


def block_params(p, spec):
    """A layer's block parameters (without its output normalization's)."""
    return p.block if spec.output_norm == "batch" else p


def forward_activities(params: layers.Network, x: jax.Array, spec, *,
                       start: int = 0, dropout_key: jax.Array | None = None,
                       stats_rows: int | None = None) -> list[Activity]:
    """Every layer's Activity for the encoded input x (B, *network_input_shape); with
    start = k, the Activities of layers k.. for x the output of layer k - 1.

    Each layer reads its input under stop_gradient: a layer's output depends on its own
    parameters alone as far as gradients go, which is what keeps FF training local.

    dropout_key, given only by training, zeroes spec.hidden_dropout of every hidden
    layer's units (fresh for each example and layer) in the input of the layer after it,
    before that layer normalizes its input; the image is never dropped.

    With spec.output_norm "batch", stats_rows (given only by training: the number of
    positives, which lead the batch) normalizes each layer's output with the statistics
    of the batch's first stats_rows examples, so negatives are measured against data;
    without it, the running statistics in the parameters normalize (inference).
    """
    acts, h = [], x
    drop = dropout_key is not None and spec.hidden_dropout > 0
    for i, (block, p) in enumerate(zip(spec.blocks[start:], params[start:]), start):
        h_in = jax.lax.stop_gradient(h)
        if drop and i > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i),
                                        1.0 - spec.hidden_dropout, h_in.shape)
            h_in = jnp.where(keep, h_in, 0.0)
        z = block.apply(block_params(p, spec), layers.normalize(h_in, norm=spec.norm))
        h, stats = jax.nn.relu(z), None
        if spec.output_norm == "batch":
            if stats_rows is not None:
                stats = layers.batch_stats(h, stats_rows)
            h = layers.batch_norm(p.norm, h, stats)
        acts.append(Activity(z, h, stats))
    return acts


def forward(params: layers.Network, x: jax.Array, spec, *, start: int = 0) -> list[jax.Array]:
    """Every layer's output [(B, *shape_1), ..., (B, *shape_L)] for the encoded input
    (from layer `start` on, as forward_activities)."""
    return [a.h for a in forward_activities(params, x, spec, start=start)]


def check_input(params: layers.Network, x, spec) -> None:
    """Raises ValueError, before anything is compiled, when the examples of x (raw,
    without label) do not have the shape the network's parameters were made for."""
    shape = tuple(x.shape[1:])
    if len(x.shape) < 2:
        raise ValueError(f"x must hold one example per row, (N, ...); got shape "
                         f"{tuple(x.shape)}.")
    try:
        expected = jax.eval_shape(lambda: init_network(jax.random.key(0),
                                                       spec.for_input(shape)))
    except ValueError as e:
        raise ValueError(f"x's examples of shape {shape} do not fit this spec: {e}") from None
    got = [np.shape(a) for a in jax.tree.leaves(params)]
    want = [a.shape for a in jax.tree.leaves(expected)]
    if got != want or (jax.tree.structure(params) != jax.tree.structure(expected)):
        raise ValueError(f"x has examples of shape {shape}, but the network's parameters "
                         f"do not fit them ({len(params)} layers, the first with "
                         f"parameters of shapes {[np.shape(a) for a in jax.tree.leaves(params[0])]}"
                         f"; this spec on these inputs has {spec.num_layers} layers, the "
                         f"first {[a.shape for a in jax.tree.leaves(expected[0])]}). Build "
                         "the state and the epoch from the same spec and input shape.")


def output_features(h: jax.Array) -> jax.Array:
    """(B, units): a layer's output flattened per example."""
    return h.reshape(h.shape[0], -1)


def recalibrate_batch_norm(params: layers.Network, x, spec, *,
                           chunk_size: int = 1000) -> layers.Network:
    """params with every layer's running batch-norm statistics replaced by the exact
    statistics of its output over the raw examples x (uint8 or float, no label), as
    inference computes it: no dropout, the neutral label, the layers below already
    recalibrated (layer by layer, bottom up).

    Training normalizes with each batch's statistics and keeps running averages for
    inference, but with spec.hidden_dropout the batches' layers saw dropped inputs, which
    inference never does: the running statistics then describe another distribution than
    the one inference normalizes. Nothing is trained: scale and offset (the layers' own
    parameters) are kept, and each layer's new statistics depend on the layers below it
    only, as its training does. x is read in chunks of chunk_size examples; the
    variance is biased, as layers.batch_stats's."""
    if spec.output_norm != "batch":
        raise ValueError("recalibrate_batch_norm applies to batch-normalized networks "
                         "(output_norm='batch'); this one has output_norm="
                         f"{spec.output_norm!r}.")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    n = len(x)
    if n == 0:
        raise ValueError("recalibrate_batch_norm needs at least one example.")
    check_input(params, x, spec)
    params = tuple(params)
    for i in range(spec.num_layers):
        @jax.jit
        def moments(ps, xb, i=i):
            h = jax.nn.relu(forward_activities(
                ps[:i + 1], spec.encoding.neutral(labels.to_float(xb)), spec)[i].z)
            axes = tuple(range(h.ndim - 1))
            return jnp.mean(h, axis=axes), jnp.mean(jnp.square(h), axis=axes)

        total_mean, total_sq = 0.0, 0.0
        for start in range(0, n, int(chunk_size)):
            xb = jnp.asarray(x[start:start + int(chunk_size)])
            m, sq = moments(params, xb)
            w = xb.shape[0] / n  # every example has the same number of locations
            total_mean, total_sq = total_mean + w * m, total_sq + w * sq
        var = jnp.maximum(total_sq - jnp.square(total_mean), 0.0)
        p = params[i]
        params = params[:i] + (p._replace(norm=p.norm._replace(
            mean=jnp.asarray(total_mean, jnp.float32), var=jnp.asarray(var, jnp.float32))),) \
            + params[i + 1:]
    return params
