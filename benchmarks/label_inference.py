"""Ten-label inference with the first layer shared across labels against C full passes:
`python -m benchmarks.label_inference --help`.

For each architecture, both forms of inference.layer_goodness (the shared first layer,
layer_goodness_shared, and one full pass per label, layer_goodness_per_label) are jitted
and timed on the same 10k MNIST-shaped examples in the same run: compilation apart, then
the median of --repeats blocked calls. The largest difference between the two goodness
arrays and how often their predictions agree are recorded with the times. Results go to
benchmarks/results/<device>-<date>-label-inference.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from benchmarks.timing import timed
from ffjax import inference, network, record
from ffjax.spec import FFSpec

DEFAULT_CONFIGS = ("784-500-500", "784-2000-2000-2000-2000")


def bench_config(sizes, *, repeats: int, n: int = 10_000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = jax.device_put(rng.integers(0, 256, (n, sizes[0]), dtype=np.uint8))
    spec = FFSpec(hidden=tuple(sizes[1:]), input_shape=(sizes[0],))
    params = network.init_network(jax.random.key(seed), spec)
    row = {"sizes": list(sizes), "examples": n}
    out = {}
    for name, fn in (("per_label", inference.layer_goodness_per_label),
                     ("shared", inference.layer_goodness_shared)):
        f = jax.jit(lambda p, xx, fn=fn: fn(p, xx, spec))
        t0 = time.perf_counter()
        out[name] = jax.block_until_ready(f(params, x))
        row[f"{name}_compile_and_first_seconds"] = time.perf_counter() - t0
        times = timed(lambda f=f: f(params, x), repeats)
        row[f"{name}_seconds_median"] = statistics.median(times)
        row[f"{name}_seconds_all"] = times
    a, b = (np.asarray(out[k]) for k in ("per_label", "shared"))
    row["max_rel_goodness_diff"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0)))
    # Untrained weights on random pixels score the labels nearly alike, so rounding can
    # flip a few near-ties: the agreement is reported, not assumed.
    row["prediction_agreement"] = float(np.mean(a.sum(1).argmax(-1) == b.sum(1).argmax(-1)))
    row["speedup"] = row["per_label_seconds_median"] / row["shared_seconds_median"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="architectures as D-H1-H2-..., e.g. 784-2000-2000")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per form")
    parser.add_argument("--out", default=None, help="output JSON (default: benchmarks/"
                        "results/<device>-<date>-label-inference.json)")
    args = parser.parse_args(argv)
    rows = []
    for cfg in args.configs:
        row = bench_config(tuple(int(s) for s in cfg.split("-")), repeats=args.repeats)
        rows.append(row)
        print(f"{cfg:>24}: C passes {1e3 * row['per_label_seconds_median']:.1f} ms, shared "
              f"first layer {1e3 * row['shared_seconds_median']:.1f} ms on 10k: "
              f"{row['speedup']:.2f}x (max rel. goodness diff "
              f"{row['max_rel_goodness_diff']:.1e}, predictions agree on "
              f"{100 * row['prediction_agreement']:.2f} %)", flush=True)
    record.write_benchmark("label_inference", {"results": rows}, args.out,
                           suffix="label-inference")


if __name__ == "__main__":
    main()
