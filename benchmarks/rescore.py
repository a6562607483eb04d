"""Scores a finished run's last checkpoint on its validation split with every readout the
current code evaluates: `python -m benchmarks.rescore RUN_DIR [RUN_DIR ...]`.

It brings runs made before a readout existed (for example the joint readout of class
groups and the softmax readout) level with new runs, without training again: the same
evaluation as a run's own final one (experiment.make_evaluator), on the same split.
Only runs that held out a validation split (--validation-size) are accepted, and only
that split is scored: the test set is never read. The run directories are only read;
the record (one entry per run) goes to --out, by default
benchmarks/results/<device>-<date>-rescore.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax

from benchmarks import finished_run
from ffjax import experiment, record
from ffjax.config import UsageError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="finished runs' directories (they are only read)")
    p.add_argument("--data-dir", default=None, help="the data folder, if not the runs'")
    p.add_argument("--out", default=None, help="the record's path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def rescore(run_dir, data_dir=None) -> dict:
    """One run's validation figures: every readout, per layer, by score layers."""
    cfg, spec, split, state, epoch = finished_run.load_run(run_dir, data_dir)
    ev = experiment.make_evaluator(spec, 1)(state, jax.device_put(split.x_val),
                                            split.y_val)
    ev.pop("pred")
    return {"run_dir": str(run_dir), "checkpoint_epoch": epoch,
            "run_config": dataclasses.asdict(cfg),
            **experiment.split_results("validation", ev, 1)}


def _line(r: dict) -> str:
    pct = lambda a: f"{100 * a:.2f} %"  # noqa: E731
    parts = [f"goodness {pct(r['validation_accuracy'])}"]
    parts += [f"{name.replace('_', ' ')} {pct(a)}"
              for name, a in r["validation_accuracy_by_score_layers"].items() if name != "all"]
    if "validation_accuracy_softmax" in r:
        parts.append(f"softmax {pct(r['validation_accuracy_softmax'])}")
    parts += [f"joint ({name.replace('_', ' ')}) {pct(a)}" for name, a in
              r.get("validation_accuracy_joint_by_score_layers", {}).items()]
    return f"{r['run_dir']} (epoch {r['checkpoint_epoch']}): " + ", ".join(parts)


def run(args) -> dict:
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; give another path or --overwrite.")
    runs = []
    for run_dir in args.run_dirs:
        runs.append(rescore(run_dir, args.data_dir))
        print(_line(runs[-1]), flush=True)
    info = {"runs": runs}
    record.write_benchmark("rescore", info, args.out, suffix="rescore")
    return info


def main(argv=None) -> int:
    return finished_run.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
