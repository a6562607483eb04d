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
import datetime
import json
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from ffjax import data, experiment, inference, parallel, sweep, train

DEFAULTS = experiment.Config(dataset="mnist", hidden=(1000, 1000, 1000), epochs=10,
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


def run(cfg: experiment.Config, thetas, lrs) -> dict:
    experiment.check_config(cfg)
    if not cfg.validation_size:
        raise experiment.UsageError("a sweep chooses hyperparameters on the validation "
                                    "split: give --validation-size N (> 0).")
    if cfg.schedule != "simultaneous":
        raise experiment.UsageError("the sweep trains with --schedule simultaneous only.")
    try:
        points = sweep.make_grid(range(cfg.seed, cfg.seed + cfg.seeds),
                                 thetas or [cfg.theta], lrs or [cfg.lr])
        devices = parallel.select_devices(cfg.devices)
    except ValueError as e:
        raise experiment.UsageError(str(e)) from None
    ds = data.load(cfg.dataset, cfg.data_dir)
    x_fit, y_fit, x_val, y_val = experiment.training_split(cfg, ds)
    run_dir = experiment.prepare_run_dir(cfg)
    (run_dir / "config.json").write_text(json.dumps(
        {**dataclasses.asdict(cfg), "thetas": thetas, "lrs": lrs}, indent=2))
    _, readout_optimizer = experiment.make_optimizers(cfg, ds.x_train.shape[1],
                                                      len(y_fit) // cfg.batch_size)

    bar = tqdm(total=cfg.epochs, desc=f"sweep of {len(points)} models", unit="epoch")

    def on_epoch(report):
        bar.set_postfix(loss=f"{np.nanmean(report.metrics.layers.loss):.3f}")
        bar.update(1)

    try:
        result = sweep.fit_grid(
            points, x_fit, y_fit, hidden=cfg.hidden, epochs=cfg.epochs,
            num_classes=ds.num_classes, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
            lr_scaling=cfg.lr_scaling, lr_decay=cfg.lr_decay, weight_decay=cfg.weight_decay,
            readout_optimizer=readout_optimizer, readout_layers=cfg.readout_layers,
            norm=cfg.norm, label_strength=cfg.label_strength, negatives=cfg.negatives,
            peer_strength=cfg.peer_strength, objective_fn=experiment.objective_of(cfg),
            loss_scale=cfg.loss_scale,
            optimizer_settings=experiment.optimizer_settings(cfg, len(y_fit) // cfg.batch_size),
            devices=devices, on_epoch=on_epoch)
    finally:
        bar.close()

    predict = inference.make_predict(num_classes=ds.num_classes,
                                     label_strength=cfg.label_strength, norm=cfg.norm,
                                     score_layers=experiment.score_layers(cfg),
                                     readout_layers=cfg.readout_layers)
    x_val_dev = jax.device_put(x_val)
    last = result.history[-1].metrics.layers.loss  # (K, L)
    rows = []
    for k, p in enumerate(tqdm(points, desc="evaluating", leave=False)):
        st = sweep.point_state(result.state, k)
        rp = st.readout.params if st.readout is not None else None
        pred = jax.device_get(predict(train.params_of(st), x_val_dev, rp))
        row = {"seed": p.seed, "theta": p.theta, "lr": p.lr,
               "validation_accuracy": inference.accuracy(pred.combined, y_val),
               "validation_accuracy_per_layer": [
                   inference.accuracy(pred.per_layer[:, i], y_val)
                   for i in range(len(cfg.hidden))],
               "final_layer_loss": [float(v) for v in last[k]],
               "diverged": bool(not np.all(np.isfinite(last[k])))}
        if pred.readout is not None:
            row["validation_accuracy_softmax"] = inference.accuracy(pred.readout, y_val)
        rows.append(row)
    summary = summarize(rows)
    record = {
        "models": len(points),
        "devices": result.num_devices,
        "train_seconds": result.train_seconds,
        "compile_seconds": result.compile_seconds,
        "models_per_second": len(points) / result.train_seconds,
        "epochs": cfg.epochs,
        "device": experiment.device_description(),
        "jax_version": jax.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": experiment.command_line(),
        "summary": summary,
        "runs": rows,
        "run_dir": str(run_dir),
    }
    (run_dir / "sweep.json").write_text(json.dumps(record, indent=2))
    header = (f"{len(points)} models ({cfg.dataset}, hidden {'x'.join(map(str, cfg.hidden))}, "
              f"{cfg.epochs} epochs) trained at once on {record['device']} in "
              f"{result.train_seconds:.1f} s (+ {result.compile_seconds:.1f} s compile); "
              f"validation split of {cfg.validation_size}.")
    (run_dir / "sweep.md").write_text(markdown(summary, header))
    with open(run_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "theta", "lr", "validation_accuracy",
                                               "validation_accuracy_softmax", "diverged"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return record


def main(argv=None) -> int:
    def go():
        cfg, extra = experiment.parse_config_with(argv, DEFAULTS, __doc__.splitlines()[0],
                                                  EXTRA)
        return run(cfg, extra["thetas"], extra["lrs"])

    record, code = experiment.guarded(go)
    if code:
        return code
    print((Path(record["run_dir"]) / "sweep.md").read_text())
    print(f"run directory: {record['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
