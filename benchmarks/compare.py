"""FF against backprop on the same data, in one run: `python -m benchmarks.compare --help`.

Three models train on the same training set and are evaluated on the same test set:
  ff      the experiments' default FF recipe (hard negatives, peer normalization, softmax
          readout trained alongside) with the given hidden widths;
  bp_mlp  a flax MLP of the same widths and normalization placement, softmax output,
          trained end to end (Adam, same schedule shape), in the same scanned epoch;
  bp_cnn  a small flax CNN, the model a user would pick instead.
For each: test accuracy after every epoch, training time to reach each target test error,
median seconds per epoch (compilation apart), inference time over the test set (FF:
ten-label goodness and one-pass softmax), XLA's FLOP count of one training step and the
achieved FLOP/s as a fraction of a measured matmul peak, and memory (XLA's compiled
memory analysis; the device's peak where it reports one). Then scaling curves of seconds
per epoch against width, depth and batch size for ff and bp_mlp.

Writes <out-dir>/<device>-<date>[-quick].json, a markdown table (.md) and two PNG plots.
`--quick` is a CPU-sized run (data subset, small widths) used by the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from benchmarks import baselines
from benchmarks.timing import matmul_peak_flops, median_seconds, timed
from ffjax import data, driver, inference, optim, plots, record
from ffjax.epoch import params_of
from ffjax.spec import FFSpec

MODELS = ("ff", "bp_mlp", "bp_cnn")
SCALED_MODELS = ("ff", "bp_mlp")

FULL = dict(hidden=(2000, 2000, 2000, 2000), epochs=20, batch_size=100, n_train=None,
            n_test=None, widths=(500, 1000, 2000, 4000), depths=(2, 4, 6, 8),
            batches=(50, 100, 1000, 10_000), repeats=5, matmul_n=8192)
QUICK = dict(hidden=(64, 64), epochs=2, batch_size=100, n_train=3000, n_test=1000,
             widths=(32, 64), depths=(1, 2), batches=(100, 1000), repeats=2, matmul_n=512)


class _Model:
    """One model prepared for the benchmark: its state, jitted epoch, evaluation and
    inference timers. `host_step`, when set, is the pure training step to run from a
    Python loop instead of the scanned epoch (see _uses_host_loop)."""

    def __init__(self, name, state, epoch, evaluate, inference_fns, host_step=None):
        self.name, self.state, self.epoch = name, state, epoch
        self.evaluate, self.inference_fns, self.host_step = evaluate, inference_fns, host_step


def _uses_host_loop(name: str) -> bool:
    """XLA's CPU backend runs convolutions inside a while loop (lax.scan) through a slow
    path: one CNN step took 1.1 s inside the scanned epoch against 0.08 s as its own
    jitted call (2-core CPU, JAX 0.10.2). On CPU the CNN's steps therefore run from a
    Python loop; everywhere else, and for every other model, the epoch is one scan."""
    return name == "bp_cnn" and jax.default_backend() == "cpu"


def _build_ff(key, hidden, epochs, batch_size, num_classes, x_train, y_train, x_test, y_test):
    spec = FFSpec(hidden=tuple(hidden), num_classes=num_classes)  # the experiments' recipe
    program = driver.make_program(key, x_train, y_train, spec, epochs=epochs,
                                  batch_size=batch_size)
    goodness = inference.make_predict(spec)
    one_pass = inference.make_predict_readout(spec)

    def evaluate(st):
        p = goodness(params_of(st), x_test, st.readout.params)
        return {"test_accuracy": inference.accuracy(p.combined, y_test),
                "test_accuracy_softmax": inference.accuracy(p.readout, y_test)}

    def inference_fns(st):
        params, rp = params_of(st), st.readout.params
        return {"ten_label_goodness": lambda: goodness(params, x_test).combined,
                "one_pass_softmax": lambda: one_pass(params, rp, x_test)}

    return _Model("ff", program.state, program.epochs[0], evaluate, inference_fns)


def _build_bp(name, key, hidden, epochs, batch_size, num_classes, x_train, y_train, x_test,
              y_test, lr=1e-3):
    model = (baselines.MLP(tuple(hidden), num_classes) if name == "bp_mlp"
             else baselines.CNN(num_classes))
    opt = optim.make_optimizer("adam", lr=lr,
                               total_steps=epochs * (x_train.shape[0] // batch_size))
    state = baselines.init_state(key, model, x_train.shape[1], opt)
    epoch = baselines.make_bp_epoch(model, opt, batch_size=batch_size)
    host_step = baselines.make_bp_step(model, opt) if _uses_host_loop(name) else None
    predict = baselines.make_bp_predict(model)

    def evaluate(st):
        return {"test_accuracy": inference.accuracy(predict(st.variables, x_test), y_test)}

    def inference_fns(st):
        return {"backprop_forward": lambda: predict(st.variables, x_test)}

    return _Model(name, state, epoch, evaluate, inference_fns, host_step)


def _build(name, key, hidden, epochs, batch_size, num_classes, x_train, y_train, x_test,
           y_test):
    build = _build_ff if name == "ff" else functools.partial(_build_bp, name)
    return build(key, hidden, epochs, batch_size, num_classes, x_train, y_train, x_test,
                 y_test)


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _compile(m: _Model, x, y, batch_size: int):
    """(epoch callable, compile seconds, memory, XLA's FLOP count of one training step).

    The step's FLOPs come from the epoch compiled on exactly one minibatch (or from the
    step itself for a host-loop model); the epoch callable runs all N // B steps."""
    key = jax.random.key(0)
    if m.host_step is None:
        step_flops = _flops(m.epoch.lower(m.state, x[:batch_size], y[:batch_size],
                                          key).compile())
        t0 = time.perf_counter()
        compiled = m.epoch.lower(m.state, x, y, key).compile()
        return compiled, time.perf_counter() - t0, _memory(compiled), step_flops

    def gathered_step(st, x_NxD, y_N, idx):
        return m.host_step(st, x_NxD[idx], y_N[idx])

    t0 = time.perf_counter()
    step = jax.jit(gathered_step, donate_argnums=0).lower(
        m.state, x, y, jnp.arange(batch_size)).compile()
    order_fn = jax.jit(baselines.epoch_batches, static_argnums=(1, 2))
    jax.block_until_ready(order_fn(key, x.shape[0], batch_size))
    compile_seconds = time.perf_counter() - t0

    def epoch(st, x_NxD, y_N, k):
        metrics = None
        for idx in order_fn(k, x_NxD.shape[0], batch_size):
            st, metrics = step(st, x_NxD, y_N, idx)
        return st, metrics

    return epoch, compile_seconds, _memory(step), _flops(step)


def _memory(compiled) -> dict:
    """Bytes of the compiled epoch (XLA's analysis) and the device's peak so far."""
    out = {}
    try:
        m = compiled.memory_analysis()
        out["compiled_bytes"] = int(m.argument_size_in_bytes + m.output_size_in_bytes
                                    + m.temp_size_in_bytes - m.alias_size_in_bytes)
        out["compiled_temp_bytes"] = int(m.temp_size_in_bytes)
    except Exception:  # not every backend reports it
        pass
    stats = jax.devices()[0].memory_stats() or {}
    out["device_peak_bytes_so_far"] = stats.get("peak_bytes_in_use")
    return out


def time_to_targets(rows: list, targets, key: str = "test_accuracy") -> dict:
    """{target error: training seconds (compilation excluded) of the first epoch whose
    test error is <= target, or None}."""
    out = {}
    for t in targets:
        hit = next((r for r in rows if 1.0 - r[key] <= t), None)
        out[f"{t:g}"] = None if hit is None else {"seconds": hit["train_seconds_cumulative"],
                                                 "epoch": hit["epoch"]}
    return out


def bench_model(name, args, ds, x_train, y_train, x_test, y_test, peak_flops):
    key = jax.random.key(args.seed)
    m = _build(name, key, args.hidden, args.epochs, args.batch_size, ds.num_classes,
               x_train, y_train, x_test, y_test)
    compiled, compile_seconds, memory, flops = _compile(m, x_train, y_train, args.batch_size)
    state, rows, total = m.state, [], 0.0
    data_key = jax.random.fold_in(key, 1)
    for e in tqdm(range(args.epochs), desc=name, unit="epoch", leave=False):
        t0 = time.perf_counter()
        state, metrics = compiled(state, x_train, y_train, jax.random.fold_in(data_key, e))
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - t0
        total += seconds
        rows.append({"epoch": e + 1, "seconds": seconds, "train_seconds_cumulative": total,
                     **m.evaluate(state)})
    epoch_median = statistics.median(r["seconds"] for r in rows)
    steps = x_train.shape[0] // args.batch_size
    infer = {k: median_seconds(fn, args.repeats)
             for k, fn in m.inference_fns(state).items()}
    out = {
        "model": name,
        "epoch_loop": "host" if m.host_step is not None else "scan",
        "compile_seconds": compile_seconds,
        "epoch_seconds_median": epoch_median,
        "epochs": rows,
        "final_test_accuracy": rows[-1]["test_accuracy"],
        "time_to_target_error": time_to_targets(rows, args.targets),
        "inference_seconds_median": infer,
        "step_flops": flops,
        "epoch_flops": None if flops is None else flops * steps,
        "achieved_flops_per_second": None if flops is None else flops * steps / epoch_median,
        "fraction_of_matmul_peak": (None if flops is None
                                    else flops * steps / epoch_median / peak_flops),
        "memory": memory,
    }
    if "test_accuracy_softmax" in rows[-1]:
        out["final_test_accuracy_softmax"] = rows[-1]["test_accuracy_softmax"]
        out["time_to_target_error_softmax"] = time_to_targets(rows, args.targets,
                                                              "test_accuracy_softmax")
    return out


def scaling_point(name, hidden, batch_size, x, y, num_classes, repeats, peak_flops) -> dict:
    """Seconds per epoch (median of `repeats` after one warm-up epoch) of one setting."""
    m = _build(name, jax.random.key(0), hidden, 1, batch_size, num_classes, x, y, x[:1],
               np.zeros(1, np.int32))
    compiled, compile_seconds, _, flops = _compile(m, x, y, batch_size)
    box = {"state": m.state, "e": 0}

    def one_epoch():
        box["e"] += 1
        box["state"], metrics = compiled(box["state"], x, y, jax.random.key(box["e"]))
        return metrics

    jax.block_until_ready(one_epoch())
    seconds = statistics.median(timed(one_epoch, repeats))
    epoch_flops = None if flops is None else flops * (x.shape[0] // batch_size)
    return {"model": name, "hidden": list(hidden), "batch_size": batch_size,
            "epoch_seconds_median": seconds, "compile_seconds": compile_seconds,
            "epoch_flops": epoch_flops,
            "fraction_of_matmul_peak": (None if epoch_flops is None
                                        else epoch_flops / seconds / peak_flops)}


def scaling_curves(args, x, y, num_classes, peak_flops) -> dict:
    width, depth = args.hidden[0], len(args.hidden)
    grids = {
        "width": [((w,) * depth, args.batch_size) for w in args.widths],
        "depth": [((width,) * d, args.batch_size) for d in args.depths],
        "batch_size": [(tuple(args.hidden), b) for b in args.batches
                       if b <= x.shape[0]],
    }
    points = {}  # a setting on several axes (the base one) is measured once
    todo = list(dict.fromkeys((name, h, b) for grid in grids.values() for h, b in grid
                              for name in SCALED_MODELS))
    for name, hidden, batch in tqdm(todo, desc="scaling", leave=False):
        points[name, hidden, batch] = scaling_point(name, hidden, batch, x, y, num_classes,
                                                    args.repeats, peak_flops)
    return {axis: [points[name, h, b] for h, b in grid for name in SCALED_MODELS]
            for axis, grid in grids.items()}


def _fmt(v, scale=1.0, digits=3, unit=""):
    return "–" if v is None else f"{v * scale:.{digits}f}{unit}"


def markdown(info: dict) -> str:
    targets = info["settings"]["targets"]
    head = ("| model | test error | " + " | ".join(f"time to {100 * t:g} %" for t in targets)
            + " | s / epoch | compile s | inference on test set | step GFLOP | % of matmul"
              " peak | epoch program MB |")
    lines = [f"Device: {info['device']}, JAX {info['jax_version']}, {info['date']}. "
             f"Command: `{info['command']}`. Matmul peak measured: "
             f"{info['matmul_peak_flops'] / 1e12:.2f} TFLOP/s.", "", head,
             "|" + " --- |" * (8 + len(targets))]
    for r in info["models"]:
        err = f"{100 * (1 - r['final_test_accuracy']):.2f} %"
        if "final_test_accuracy_softmax" in r:
            err += f" (softmax {100 * (1 - r['final_test_accuracy_softmax']):.2f} %)"
        ttt = [("–" if v is None else f"{v['seconds']:.2f} s (ep {v['epoch']})")
               for v in r["time_to_target_error"].values()]
        inf = ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in r["inference_seconds_median"].items())
        lines.append(f"| {r['model']} | {err} | " + " | ".join(ttt) +
                     f" | {r['epoch_seconds_median']:.3f} | {r['compile_seconds']:.1f} | {inf} |"
                     f" {_fmt(r['step_flops'], 1e-9, 2)} |"
                     f" {_fmt(r['fraction_of_matmul_peak'], 100, 1)} |"
                     f" {_fmt(r['memory'].get('compiled_bytes'), 1e-6, 0)} |")
    for axis, points in info["scaling"].items():
        lines += ["", f"Seconds per epoch vs {axis}:", "",
                  "| model | hidden | batch | s / epoch | epoch TFLOP | % of matmul peak |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in points:
            lines.append(f"| {p['model']} | {'x'.join(map(str, p['hidden']))} | "
                         f"{p['batch_size']} | {p['epoch_seconds_median']:.4f} | "
                         f"{_fmt(p['epoch_flops'], 1e-12, 3)} | "
                         f"{_fmt(p['fraction_of_matmul_peak'], 100, 1)} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized run: data subset, small widths, short grids")
    parser.add_argument("--dataset", default="mnist", choices=list(data.DATASETS))
    parser.add_argument("--data-dir", default=None,
                        help=f"local IDX folder (default: ${data.DATA_DIR_ENV}, else TFDS)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--hidden", type=int, nargs="+", help=f"default {FULL['hidden']}")
    parser.add_argument("--epochs", type=int, help=f"default {FULL['epochs']}")
    parser.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']}")
    parser.add_argument("--n-train", type=int, help="use the first N training examples")
    parser.add_argument("--n-test", type=int, help="use the first N test examples")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.03, 0.02, 0.015],
                        help="test errors to time")
    parser.add_argument("--widths", type=int, nargs="+", help=f"default {FULL['widths']}")
    parser.add_argument("--depths", type=int, nargs="+", help=f"default {FULL['depths']}")
    parser.add_argument("--batches", type=int, nargs="+", help=f"default {FULL['batches']}")
    parser.add_argument("--no-scaling", dest="scaling", action="store_false",
                        help="skip the scaling curves")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement")
    parser.add_argument("--matmul-n", type=int, help="matmul size for the peak FLOP/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default=None,
                        help="file name stem (default: <device>-<date>[-quick])")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing record of the same device and date")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k in ("hidden", "widths", "depths", "batches"):
        setattr(args, k, tuple(getattr(args, k)))
    bad = [f"--{k.replace('_', '-')}" for k in ("epochs", "batch_size", "repeats", "matmul_n")
           if getattr(args, k) <= 0]
    bad += [f"--{k}" for k in ("hidden", "widths", "depths", "batches")
            if any(v <= 0 for v in getattr(args, k))]
    if bad:
        parser.error(f"{', '.join(bad)}: must be positive.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    date = datetime.date.today().isoformat()
    stem = args.name or f"{record.device_slug()}-{date}" + ("-quick" if args.quick else "")
    out_dir = Path(args.out_dir)
    out = out_dir / f"{stem}.json"
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it or choose --out-dir.",
              file=sys.stderr)
        return 2
    try:
        ds = data.load(args.dataset, args.data_dir)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x_train, y_train = ds.x_train[: args.n_train], ds.y_train[: args.n_train]
    x_test, y_test = ds.x_test[: args.n_test], ds.y_test[: args.n_test]
    if args.batch_size > len(y_train):
        print(f"error: --batch-size {args.batch_size} is larger than the training set "
              f"({len(y_train)} examples).", file=sys.stderr)
        return 2
    x_train, y_train, x_test = (jax.device_put(a) for a in (x_train, y_train, x_test))

    peak = matmul_peak_flops(args.matmul_n)
    print(f"matmul peak ({args.matmul_n}^2, float32 default precision): "
          f"{peak / 1e12:.2f} TFLOP/s", flush=True)
    models = []
    for name in args.models:
        r = bench_model(name, args, ds, x_train, y_train, x_test, y_test, peak)
        models.append(r)
        print(f"{name:>7}: test error {100 * (1 - r['final_test_accuracy']):.2f} %, "
              f"{r['epoch_seconds_median']:.3f} s/epoch, compile {r['compile_seconds']:.1f} s",
              flush=True)
    scaling = scaling_curves(args, x_train, y_train, ds.num_classes, peak) if args.scaling else {}
    info = {
        "benchmark": "compare",
        **record.provenance(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "num_train": int(x_train.shape[0]),
        "num_test": int(x_test.shape[0]),
        "ff_spec": dataclasses.asdict(FFSpec(hidden=tuple(args.hidden),
                                             num_classes=ds.num_classes)),
        "matmul_peak_flops": peak,
        "models": models,
        "scaling": scaling,
    }
    record.write_json(out, info)
    table = markdown(info)
    out.with_suffix(".md").write_text(table)
    plots.plot_compare_accuracy(models, out_dir / f"{stem}-accuracy.png")
    if scaling:
        plots.plot_scaling(scaling, out_dir / f"{stem}-scaling.png")
    print(table)
    print(f"wrote {out}, {out.with_suffix('.md')} and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
