"""What the benchmarks that read a finished run share: its command-line arguments (the run
directory, the data folder, where the record goes), the refusal to overwrite a record, and
loading the run's settings, split and last checkpoint without writing to the run."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import jax

from ffjax import checkpoint, config, data, driver, experiment
from ffjax.config import UsageError


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the run directory, --data-dir, --out and --overwrite."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="a finished run's directory (it is only read)")
    p.add_argument("--data-dir", default=None, help="the data folder, if not the run's")
    p.add_argument("--out", default=None, help="the record's path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def load(args):
    """load_run for the parsed arguments, after refusing an existing --out (unless
    --overwrite), so nothing is computed for a record that could not be written."""
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; give another path or --overwrite.")
    return load_run(args.run_dir, args.data_dir)


def load_run(run_dir, data_dir=None):
    """(cfg, spec, split, state, epoch): a single-model run's settings, its training and
    validation split, and the state of its last checkpoint. The run directory is not
    written to: the checkpoint is read from a temporary copy."""
    run_dir = Path(run_dir)
    cfg = config.saved_config(run_dir)
    cfg = dataclasses.replace(cfg, data_dir=data_dir or cfg.data_dir)
    if not cfg.validation_size:
        raise UsageError(f"{run_dir} held out no validation split (--validation-size): "
                         "these benchmarks score that split only, never on the test set.")
    if cfg.seeds and cfg.seeds > 1:
        raise UsageError(f"{run_dir} trained {cfg.seeds} seeds in one program: these "
                         "benchmarks read runs of one model (--seeds 1).")
    ds = data.load(cfg.dataset, cfg.data_dir)
    spec = config.spec_of(cfg, ds.num_classes,
                          data.IMAGE_SHAPES[data.canonical_name(cfg.dataset)])
    split = experiment.training_split(cfg, data.reshaped(ds, spec.input_shape))
    epoch = None
    if (run_dir / checkpoint.SUBDIR).is_dir():  # (the manager would create it)
        ckpts = checkpoint.Checkpoints(run_dir)
        try:
            epoch = ckpts.latest_epoch()
        finally:
            ckpts.close()
    if epoch is None:
        raise UsageError(f"{run_dir} has no checkpoint to read the features from.")
    # A freshly built program's state gives the checkpoint's structure, shapes and dtypes.
    n = cfg.batch_size
    like = driver.make_program(jax.random.key(0), split.x_fit[:n], split.y_fit[:n], spec,
                               epochs=cfg.epochs, batch_size=n,
                               optimizer=config.optimizer_of(cfg)).state
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(run_dir / checkpoint.SUBDIR / str(epoch),
                        Path(tmp) / checkpoint.SUBDIR / str(epoch))
        ckpts = checkpoint.Checkpoints(tmp)
        try:
            state = ckpts.restore(epoch, like)
        finally:
            ckpts.close()
    return cfg, spec.for_input(split.x_fit.shape[1:]), split, state, epoch


def main(run, args) -> int:
    """Runs run(args), turning a UsageError into its one-line message and exit code 2."""
    _, code = experiment.guarded(lambda: run(args))
    return code
