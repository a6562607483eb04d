"""Conv and local blocks' patches from strided slices against lax's patches op (conv) and
flax's ConvLocal (local): `python -m benchmarks.patches --help`.

For each block and input shape, one training-like step (the block's forward pass, ReLU,
sum of squares, its parameters' gradient, an update) runs 40 times in a jitted lax.scan
over minibatches of 100, as the epoch runs it, once with each form of the block. Both
forms are timed in the same run: compilation apart, then the median of --repeats blocked
calls. Results go to benchmarks/results/<device>-<date>-patches.json.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

from benchmarks.timing import timed
from ffjax import layers, record

# (block, input shape): the mnist-conv preset's three layers and local screens' layers.
DEFAULT_CASES = (("conv:20:5:p2", (28, 28, 1)), ("conv:80:3:p2", (14, 14, 20)),
                 ("conv:160:3", (7, 7, 80)), ("local:16:5:s2", (28, 28, 1)),
                 ("local:16:3", (14, 14, 16)), ("local:32:3", (14, 14, 32)))


def patches_op(block, params, x):
    """The block's result from lax.conv_general_dilated_patches (conv) or flax's module
    (local): the forms the slices replaced."""
    if isinstance(block, layers.Local):
        return block._pool(block._module().apply({"params": params}, x))
    k, c_in = block.kernel, x.shape[-1]
    patches = jax.lax.conv_general_dilated_patches(
        x, (k, k), (block.stride, block.stride), block.padding,
        dimension_numbers=("NHWC", "OIHW", "NHWC"))
    w = jnp.transpose(params["kernel"], (2, 0, 1, 3)).reshape(c_in * k * k, -1)
    return block._pool(patches @ w + params["bias"])


def scanned_steps(block, apply):
    def loss(p, x):
        return jnp.sum(jnp.square(jax.nn.relu(apply(block, p, x))))

    def run(p, xs):
        def body(p, x):
            g = jax.grad(loss)(p, x)
            return jax.tree.map(lambda a, b: a - 1e-6 * b, p, g), None
        return jax.lax.scan(body, p, xs)[0]
    return jax.jit(run)


def bench_case(token, shape, *, repeats, steps=40, batch=100):
    block = layers.parse_block(token)
    params = block.init(jax.random.key(0), shape)
    xs = jax.random.normal(jax.random.key(1), (steps, batch) + tuple(shape))
    row = {"block": token, "in_shape": list(shape), "steps": steps, "batch": batch}
    for name, apply in (("slices", lambda b, p, x: b.apply(p, x)), ("patches_op", patches_op)):
        f = scanned_steps(block, apply)
        jax.block_until_ready(f(params, xs))  # compile and warm up
        row[f"{name}_seconds_median"] = statistics.median(timed(lambda: f(params, xs),
                                                                repeats))
    row["speedup"] = row["patches_op_seconds_median"] / row["slices_seconds_median"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per form")
    parser.add_argument("--out", default=None, help="output JSON (default: benchmarks/"
                        "results/<device>-<date>-patches.json)")
    args = parser.parse_args(argv)
    rows = []
    for token, shape in DEFAULT_CASES:
        row = bench_case(token, shape, repeats=args.repeats)
        rows.append(row)
        print(f"{token:>14} on {shape}: slices {1e3 * row['slices_seconds_median']:.0f} ms, "
              f"patches op {1e3 * row['patches_op_seconds_median']:.0f} ms per "
              f"{row['steps']} steps: {row['speedup']:.2f}x", flush=True)
    record.write_benchmark("patches", {"results": rows}, args.out, suffix="patches")


if __name__ == "__main__":
    main()
