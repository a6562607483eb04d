"""A grid of FF runs in one program: `python -m experiments.sweep --help`.

Trains every combination of --thetas x --lrs x --seeds at once (jax.vmap over the
training state; the grid is split over the devices when there are several) and writes
one table of validation accuracies, best first. Hyperparameters are chosen on the
validation split (the last --validation-size training examples, 10000 by default); the
test set is not touched. Every other flag is the experiments' (python -m
experiments.mnist --help), e.g. --hidden, --epochs, --negatives.

  python -m experiments.sweep --hidden 1000 1000 1000 --epochs 10 \\
      --thetas 500 1000 2000 --lrs 0.003 0.01 0.03 --seeds 2
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from ffjax import config, data, driver, experiment, inference, parallel, record
from ffjax.epoch import params_of

DEFAULTS = config.Config(dataset="mnist", hidden=(1000, 1000, 1000), epochs=10,
                             validation_size=10_000)
EXTRA = {
    "thetas": dict(type=float, nargs="+", default=None,
                   help="goodness thresholds to try, each for every layer (default: "
                        "--theta, i.e. each layer's width)"),
    "lrs": dict(type=float, nargs="+", default=None,
                help="learning rates to try (default: --lr)"),
}


def summarize(rows: list) -> list:
    """Mean and std over seeds of each (theta, lr), best mean validation accuracy first."""
    groups = {}
    for r in rows:
        groups.setdefault((r["theta"], r["lr"]), []).append(r)
    out = []
    for (theta, lr), rs in groups.items():
        acc = [r["validation_accuracy"] for r in rs]
        row = {"theta": theta, "lr": lr, "seeds": len(rs),
               "validation_accuracy_mean": float(np.mean(acc)),
               "validation_accuracy_std": float(np.std(acc))}
        if "validation_accuracy_softmax" in rs[0]:
            soft = [r["validation_accuracy_softmax"] for r in rs]
            row.update(validation_accuracy_softmax_mean=float(np.mean(soft)),
                       validation_accuracy_softmax_std=float(np.std(soft)))
        out.append(row)
    key = lambda r: -np.nan_to_num(r["validation_accuracy_mean"], nan=-1.0)  # noqa: E731
    return sorted(out, key=key)


def markdown(summary: list, header: str) -> str:
    soft = "validation_accuracy_softmax_mean" in summary[0]
    lines = [header, "", "| theta | lr | seeds | validation accuracy (goodness) |"
             + (" validation accuracy (softmax) |" if soft else ""),
             "| --- | --- | --- | --- |" + (" --- |" if soft else "")]
    for r in summary:
        theta = "width" if r["theta"] is None else f"{r['theta']:g}"
        def cell(name):  # mean, and the spread over seeds when there are several
            mean, std = (100 * r[f"validation_accuracy{name}_{k}"] for k in ("mean", "std"))
            return f" {mean:.2f} ± {std:.2f} % |" if r["seeds"] > 1 else f" {mean:.2f} % |"

        line = f"| {theta} | {r['lr']:g} | {r['seeds']} |" + cell("")
        if soft:
            line += cell("_softmax")
        lines.append(line)
    return "\n".join(lines) + "\n"


def run(cfg: config.Config, thetas, lrs) -> dict:
    config.check_config(cfg)
    if not cfg.validation_size:
        raise config.UsageError("a sweep chooses hyperparameters on the validation "
                                "split: give --validation-size N (> 0).")
    if cfg.schedule != "simultaneous":
        raise config.UsageError("the sweep trains with --schedule simultaneous only.")
    try:
        points = driver.make_grid(range(cfg.seed, cfg.seed + cfg.seeds),
                                  thetas or [cfg.theta], lrs or [cfg.lr])
        devices = parallel.select_devices(cfg.devices)
    except ValueError as e:
        raise config.UsageError(str(e)) from None
    ds = data.load(cfg.dataset, cfg.data_dir)
    split = experiment.training_split(cfg, ds)
    spec = config.spec_of(cfg, ds.num_classes)
    rec = record.RunDir.create(cfg.out_dir, name=f"sweep-{cfg.dataset}",
                               overwrite=cfg.overwrite)
    rec.write_config({**dataclasses.asdict(cfg), "thetas": thetas, "lrs": lrs})
    bar = tqdm(total=cfg.epochs, desc=f"sweep of {len(points)} models", unit="epoch")

    def on_epoch(report, state):
        bar.set_postfix(loss=f"{np.nanmean(report.metrics.layers.loss):.3f}")
        bar.update(1)

    try:
        result = driver.fit_grid(points, split.x_fit, split.y_fit, spec, epochs=cfg.epochs,
                                 batch_size=cfg.batch_size, optimizer=config.optimizer_of(cfg),
                                 devices=devices, on_epoch=on_epoch)
    finally:
        bar.close()

    predict = inference.make_predict(spec)
    x_val_dev = jax.device_put(split.x_val)
    last = result.history[-1].metrics.layers.loss  # (K, L)
    rows = []
    for k, p in enumerate(tqdm(points, desc="evaluating", leave=False)):
        st = driver.model_state(result.state, k)
        rp = st.readout.params if st.readout is not None else None
        pred = jax.device_get(predict(params_of(st), x_val_dev, rp))
        row = {"seed": p.seed, "theta": p.theta, "lr": p.lr,
               "validation_accuracy": inference.accuracy(pred.combined, split.y_val),
               "validation_accuracy_per_layer": [
                   inference.accuracy(pred.per_layer[:, i], split.y_val)
                   for i in range(len(cfg.hidden))],
               "final_layer_loss": [float(v) for v in last[k]],
               "diverged": bool(not np.all(np.isfinite(last[k])))}
        if pred.readout is not None:
            row["validation_accuracy_softmax"] = inference.accuracy(pred.readout,
                                                                    split.y_val)
        rows.append(row)
    summary = summarize(rows)
    sweep_record = {
        "models": len(points),
        "devices": result.num_devices,
        "train_seconds": result.train_seconds,
        "compile_seconds": result.compile_seconds,
        "models_per_second": len(points) / result.train_seconds,
        "epochs": cfg.epochs,
        **record.provenance(),
        "summary": summary,
        "runs": rows,
        "run_dir": str(rec.path),
    }
    record.write_json(rec.path / "sweep.json", sweep_record)
    header = (f"{len(points)} models ({cfg.dataset}, hidden {'x'.join(map(str, cfg.hidden))}, "
              f"{cfg.epochs} epochs) trained at once on {sweep_record['device']} in "
              f"{result.train_seconds:.1f} s (+ {result.compile_seconds:.1f} s compile); "
              f"validation split of {cfg.validation_size}.")
    (rec.path / "sweep.md").write_text(markdown(summary, header))
    with open(rec.path / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "theta", "lr", "validation_accuracy",
                                               "validation_accuracy_softmax", "diverged"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return sweep_record


def main(argv=None) -> int:
    def go():
        cfg, extra = config.parse_config_with(argv, DEFAULTS, __doc__.splitlines()[0],
                                              EXTRA)
        return run(cfg, extra["thetas"], extra["lrs"])

    result, code = experiment.guarded(go)
    if code:
        return code
    print(Path(result["run_dir"], "sweep.md").read_text())
    print(f"run directory: {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
