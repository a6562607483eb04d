"""FF training epoch and inference time: `python -m benchmarks.epoch_time --help`.

Times one MNIST-sized epoch (60k examples of 784 uint8 features, 10 classes) of the
ffjax training loop for several architectures, in two variants measured in the same run:
"plain" (uniform negatives, no readout) and "recipe" (the experiments' default: hard
negatives from the softmax readout, peer normalization, readout trained). Compilation is
reported apart; then the median of --repeats epochs (each blocked until ready), and the
median times of ten-label goodness inference and of the one-pass softmax readout over
10k examples. The data are random pixels: the work per epoch does not depend on their
values. Results go to benchmarks/results/<device>-<date>-epoch.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from benchmarks.timing import timed
from ffjax import driver, inference, record
from ffjax.epoch import params_of
from ffjax.spec import FFSpec

DEFAULT_CONFIGS = ("784-500-500", "784-1000-1000-1000", "784-2000-2000-2000-2000")


VARIANTS = {
    "plain": dict(negatives="uniform", peer_strength=0.0, readout=False),
    "recipe": dict(),  # the experiments' defaults: FFSpec()'s
}


def bench_config(sizes, *, variant, batch_size, repeats, n_train=60_000, n_test=10_000,
                 seed=0):
    rng = np.random.default_rng(seed)
    x = jax.device_put(rng.integers(0, 256, (n_train, sizes[0]), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, (n_train,), dtype=np.int32))
    x_test = jax.device_put(rng.integers(0, 256, (n_test, sizes[0]), dtype=np.uint8))
    spec = FFSpec(hidden=tuple(sizes[1:]), **VARIANTS[variant])
    program = driver.make_program(jax.random.key(seed), x, y, spec, epochs=repeats + 1,
                                  batch_size=batch_size)
    t0 = time.perf_counter()
    compiled = program.epochs[0].lower(program.state, x, y, program.epoch_key(0)).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": program.state, "e": 0}

    def one_epoch():
        box["e"] += 1
        box["state"], m = compiled(box["state"], x, y, program.epoch_key(box["e"]))
        return box["state"], m

    one_epoch()  # warm-up
    epoch_times = timed(one_epoch, repeats)

    predict = inference.make_predict(spec)
    params = params_of(box["state"])
    t0 = time.perf_counter()
    jax.block_until_ready(predict(params, x_test))  # compile + first run
    infer_first = time.perf_counter() - t0
    infer_times = timed(lambda: predict(params, x_test), max(repeats, 5))
    one_pass = None
    if box["state"].readout is not None:
        rp = box["state"].readout.params
        predict_ro = inference.make_predict_readout(spec)
        jax.block_until_ready(predict_ro(params, rp, x_test))
        one_pass = statistics.median(timed(lambda: predict_ro(params, rp, x_test),
                                            max(repeats, 5)))
    steps = n_train // batch_size
    flops = 6 * 2 * batch_size * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * steps
    return {
        "sizes": list(sizes),
        "variant": variant,
        "batch_size": batch_size,
        "compile_seconds": compile_s,
        "epoch_seconds_median": statistics.median(epoch_times),
        "epoch_seconds_all": epoch_times,
        # 6 FLOP per weight per row (forward + backward) for the B positives and B
        # negatives; the recipe's extra neutral-label pass and readout are not counted.
        "train_tflop_per_epoch": flops / 1e12,
        "achieved_tflops": flops / 1e12 / statistics.median(epoch_times),
        "infer_10k_seconds_median": statistics.median(infer_times),
        "one_pass_infer_10k_seconds_median": one_pass,
        "infer_compile_and_first_seconds": infer_first,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="architectures as D-H1-H2-..., e.g. 784-2000-2000")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per config")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="plain: uniform negatives; recipe: the experiments' default")
    parser.add_argument("--out", default=None, help="output JSON (default: "
                        "benchmarks/results/<device>-<date>-epoch.json)")
    args = parser.parse_args(argv)
    rows = []
    for cfg in args.configs:
        sizes = tuple(int(s) for s in cfg.split("-"))
        for variant in args.variants:
            row = bench_config(sizes, variant=variant, batch_size=args.batch_size,
                               repeats=args.repeats)
            rows.append(row)
            one = row["one_pass_infer_10k_seconds_median"]
            print(f"{cfg:>24} {variant:>6}  batch {args.batch_size}: epoch "
                  f"{row['epoch_seconds_median']:.3f}s (compile {row['compile_seconds']:.1f}s, "
                  f"{row['achieved_tflops']:.2f} TFLOP/s)  inference on 10k: ten-label "
                  f"{1e3 * row['infer_10k_seconds_median']:.1f} ms"
                  + (f", one-pass {1e3 * one:.1f} ms" if one is not None else ""), flush=True)
    record.write_benchmark("epoch_time", {"results": rows}, args.out, suffix="epoch")


if __name__ == "__main__":
    main()
