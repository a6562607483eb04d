"""Models trained per second: a vmapped grid against the same models one by one.

`python -m benchmarks.sweep_throughput --help`. Trains --models FF networks (seeds x
learning rates of the experiments' default recipe) for --epochs epochs on MNIST, once as
one grid program (ffjax.driver.fit_grid) and once one after another (driver.fit, one
compiled program per model), and reports training seconds (compilation apart, reported
separately) and models per second for both, in the same run.
Writes benchmarks/results/<device>-<date>-sweep.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax

from ffjax import config, data, driver, record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=None,
                        help="use the first N training examples")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if min(args.models, args.epochs, *args.hidden) <= 0:
        parser.error("--models, --epochs and --hidden must be positive.")
    ds = data.load("mnist", args.data_dir)
    x, y = ds.x_train[: args.n_train], ds.y_train[: args.n_train]
    cfg = config.Config(hidden=tuple(args.hidden), epochs=args.epochs)
    spec, opt = config.spec_of(cfg, ds.num_classes), config.optimizer_of(cfg)
    lrs = [cfg.lr * f for f in (0.5, 1.0, 2.0, 4.0)]
    points = [driver.GridPoint(seed=k // len(lrs), theta=None, lr=lrs[k % len(lrs)])
              for k in range(args.models)]
    common = dict(epochs=cfg.epochs, batch_size=cfg.batch_size)
    grid = driver.fit_grid(points, x, y, spec, optimizer=opt, **common)
    seq_train, seq_compile = 0.0, 0.0
    for p in points:
        r = driver.fit(jax.random.key(p.seed), x, y, spec,
                       optimizer=dataclasses.replace(opt, lr=p.lr), **common)
        seq_train += r.train_seconds
        seq_compile += r.compile_seconds
    info = {
        "benchmark": "sweep_throughput",
        **record.provenance(),
        "hidden": list(cfg.hidden), "epochs": cfg.epochs, "models": len(points),
        "num_train": int(len(y)),
        "grid_train_seconds": grid.train_seconds,
        "grid_compile_seconds": grid.compile_seconds,
        "grid_devices": grid.num_devices,
        "one_by_one_train_seconds": seq_train,
        "one_by_one_compile_seconds": seq_compile,
        "grid_models_per_second": len(points) / grid.train_seconds,
        "one_by_one_models_per_second": len(points) / seq_train,
        "speedup": seq_train / grid.train_seconds,
    }
    out = record.write_json(args.out or f"benchmarks/results/{record.device_slug()}-"
                            f"{info['date'][:10]}-sweep.json", info)
    print(f"{len(points)} models of {'x'.join(map(str, cfg.hidden))}, {cfg.epochs} epochs: "
          f"grid {grid.train_seconds:.2f} s ({info['grid_models_per_second']:.3f} models/s), "
          f"one by one {seq_train:.2f} s ({info['one_by_one_models_per_second']:.3f} "
          f"models/s): {info['speedup']:.2f}x. Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
