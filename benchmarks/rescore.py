"""Scores a finished run's last checkpoint on its validation split with every readout the
current code evaluates: `python -m benchmarks.rescore RUN_DIR [RUN_DIR ...]`.

It brings runs made before a readout existed (for example the joint readout of class
groups and the softmax readout) level with new runs, without training again: the same
evaluation as a run's own final one (experiment.make_evaluator), on the same split.
Only runs that held out a validation split (--validation-size) are accepted, and only
that split is scored: the test set is never read. The run directories are only read;
the record (one entry per run) goes to --out, by default
benchmarks/results/<device>-<date>-rescore.json.

--joint-weights W [W ...] also scores the joint readout with the softmax readout's
log-probabilities weighted by each W, over four choices of layers (all, all but the
first, the last two, the last). Weight 1 is the joint readout the runs record. A weight
on the readout is the same prediction as a temperature on the layers' class
log-probabilities (log_softmax(g / T) is g / T up to a per-example constant), so this one
axis covers both.

--recalibrate-bn also scores every readout after each layer's batch-norm statistics are
recomputed over the run's training split as inference computes the layers (no dropout;
network.recalibrate_batch_norm): the running averages of training describe inputs with
dropout, which inference never sees. Nothing is trained (the readout is the run's own).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from benchmarks import finished_run
from ffjax import experiment, inference, network, record
from ffjax.config import UsageError
from ffjax.epoch import params_of


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="finished runs' directories (they are only read)")
    p.add_argument("--data-dir", default=None, help="the data folder, if not the runs'")
    p.add_argument("--out", default=None, help="the record's path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--joint-weights", type=float, nargs="+", default=None, metavar="W",
                   help="also score the joint readout with the softmax readout's "
                        "log-probabilities weighted by each W (1: the recorded one)")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="also score with each layer's batch-norm statistics recomputed on "
                        "the run's training split as inference sees it (no dropout): "
                        "network.recalibrate_batch_norm")
    return p.parse_args(argv)


def joint_layer_choices(num_layers: int) -> dict:
    """The layers the weighted joint readout sums, by name."""
    return {"all": tuple(range(num_layers)), "all_but_first": tuple(range(1, num_layers)),
            "last_two": tuple(range(max(num_layers - 2, 0), num_layers)),
            "last": (num_layers - 1,)}


def rescore(run_dir, data_dir=None, joint_weights=None, recalibrate_bn=False) -> dict:
    """One run's validation figures: every readout, per layer, by score layers; with
    joint_weights, the weighted joint readouts as {layers: {weight: accuracy}}; with
    recalibrate_bn, the same figures again (under "recalibrated_bn") after the layers'
    batch-norm statistics are recomputed on the training split."""
    cfg, spec, split, state, epoch = finished_run.load_run(run_dir, data_dir)
    if joint_weights and not inference.joint_applies(spec):
        raise UsageError(f"{run_dir}: --joint-weights needs a run with class groups "
                         "(objective group_softmax) and a trained softmax readout.")
    if recalibrate_bn and spec.output_norm != "batch":
        raise UsageError(f"{run_dir}: --recalibrate-bn needs a batch-normalized run "
                         "(--output-norm batch).")
    x_val = jax.device_put(split.x_val)
    evaluate = experiment.make_evaluator(spec, 1)

    def figures(st) -> dict:  # the run's own final evaluation, without the predictions
        ev = evaluate(st, x_val, split.y_val)
        ev.pop("pred")
        return experiment.split_results("validation", ev, 1)

    out = {"run_dir": str(run_dir), "checkpoint_epoch": epoch,
           "run_config": dataclasses.asdict(cfg), **figures(state)}
    if joint_weights:
        p = jax.device_get(inference.make_predict(spec)(
            params_of(state), x_val, state.readout.params))
        # log_softmax(w * logits) is w * log_softmax(logits) up to a per-example constant,
        # so joint_scores of the scaled logits gives the weighted readout's argmax.
        out["validation_accuracy_joint_weighted"] = {
            name: {str(w): inference.accuracy(np.argmax(np.asarray(inference.joint_scores(
                p.goodness, w * np.asarray(p.readout_logits), sel, spec)), -1), split.y_val)
                for w in joint_weights}
            for name, sel in joint_layer_choices(spec.num_layers).items()}
    if recalibrate_bn:
        params = network.recalibrate_batch_norm(params_of(state), split.x_fit, spec)
        recal = state._replace(layers=tuple(ls._replace(params=p)
                                            for ls, p in zip(state.layers, params)))
        out["recalibrated_bn"] = figures(recal)
    return out


def _figures(r: dict) -> str:
    """The readouts' figures of one scoring (a run's, or its recalibrated one), in a line."""
    pct = lambda a: f"{100 * a:.2f} %"  # noqa: E731
    parts = [f"goodness {pct(r['validation_accuracy'])}"]
    parts += [f"{name.replace('_', ' ')} {pct(a)}"
              for name, a in r["validation_accuracy_by_score_layers"].items() if name != "all"]
    if "validation_accuracy_softmax" in r:
        parts.append(f"softmax {pct(r['validation_accuracy_softmax'])}")
    parts += [f"joint ({name.replace('_', ' ')}) {pct(a)}" for name, a in
              r.get("validation_accuracy_joint_by_score_layers", {}).items()]
    parts += [f"joint ({name.replace('_', ' ')}, readout x {w}) {pct(a)}"
              for name, by_w in r.get("validation_accuracy_joint_weighted", {}).items()
              for w, a in by_w.items()]
    return ", ".join(parts)


def _line(r: dict) -> str:
    line = f"{r['run_dir']} (epoch {r['checkpoint_epoch']}): {_figures(r)}"
    if "recalibrated_bn" in r:
        line += "\n  with recalibrated batch-norm statistics: " + _figures(r["recalibrated_bn"])
    return line


def run(args) -> dict:
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; give another path or --overwrite.")
    runs = []
    for run_dir in args.run_dirs:
        runs.append(rescore(run_dir, args.data_dir, args.joint_weights,
                            args.recalibrate_bn))
        print(_line(runs[-1]), flush=True)
    info = {"runs": runs}
    record.write_benchmark("rescore", info, args.out, suffix="rescore")
    return info


def main(argv=None) -> int:
    return finished_run.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
