"""The experiment behind `python -m experiments.*`: load, train, evaluate, record one run."""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from ffjax import checkpoint, config, data, driver, inference, objective, parallel, record
from ffjax.config import (Config, UsageError, check_config, optimizer_of, parse_config,
                          spec_of)
from ffjax.epoch import check_negatives, params_of
from ffjax.spec import FFSpec

__all__ = ["Config", "run", "main", "guarded", "TrainingStopped"]


class TrainingStopped(RuntimeError):
    """Training ended before its last epoch (Ctrl-C, divergence); the message says what
    was kept and how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Split(NamedTuple):
    """The training data, and the held-out validation data (None without a split)."""

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None


def training_split(cfg: Config, ds: data.Dataset) -> Split:
    """The training set (its first --train-size examples) less the last
    --validation-size examples, and those; checked against --batch-size."""
    x_fit, y_fit, x_val, y_val = ds.x_train, ds.y_train, None, None
    if cfg.train_size is not None:
        x_fit, y_fit = x_fit[:cfg.train_size], y_fit[:cfg.train_size]
    if cfg.validation_size:
        if cfg.validation_size >= len(y_fit):
            raise UsageError(f"--validation-size {cfg.validation_size} leaves no training "
                             f"data ({len(y_fit)} examples).")
        x_fit, y_fit, x_val, y_val = data.split_validation(x_fit, y_fit, cfg.validation_size)
    if cfg.batch_size > len(y_fit):
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training set "
                         f"({len(y_fit)} examples).")
    return Split(x_fit, y_fit, x_val, y_val)


class _StopNow(KeyboardInterrupt):
    """A second stop signal: stop at once, without saving."""

    def __init__(self, exit_code: int):
        super().__init__()
        self.exit_code = exit_code


class _StopRequest:
    """Within `with`, the first Ctrl-C (SIGINT) or SIGTERM (what SLURM, Kubernetes and
    Colab send before they preempt a job) asks training to stop after the current epoch
    and save a checkpoint; a second one stops at once without saving. request() asks
    the same for another reason (--time-limit)."""

    SIGNALS = {signal.SIGINT: ("Ctrl-C", 130), signal.SIGTERM: ("SIGTERM", 143)}

    def __init__(self):
        self.reason, self.exit_code = None, None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str, exit_code: int) -> None:
        if self.reason is None:
            self.reason, self.exit_code = reason, exit_code

    def agreed(self) -> bool:
        """Whether any process asked to stop; every process of a multi-process run
        calls this after the same epoch and gets the same answer (and exit code)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        codes = np.asarray(multihost_utils.process_allgather(
            np.array([self.exit_code or 0], np.int32))).ravel()
        if codes.any() and not self.requested:
            self.request("another process asked to stop", int(codes[codes > 0][0]))
        return bool(codes.any())

    def _handle(self, signum, frame):
        name, code = self.SIGNALS[signum]
        if self.requested:
            raise _StopNow(code)
        self.request(name, code)
        tqdm.write(f"{name}: finishing this epoch, then saving a checkpoint (send it "
                   "again to stop at once without saving).")

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False


def make_evaluator(spec: FFSpec, seeds: int):
    """`evaluate(state, x_dev, y, *, full=True) -> dict`.

    full: accuracy of the goodness readout (combined, per layer, and by other choices of
    summed layers, read from the same passes) and of the softmax readout when trained.
    full=False: the softmax readout alone, one pass per example (the cheap per-epoch
    progress; {} without a trained readout). With several seeds the mean, std and
    per-seed values.

    Without a label in the input (and no class groups) the goodness readout does not
    apply: the softmax readout is the prediction, its accuracy is "accuracy", and the
    per-layer figures are the layers' linear probes (when trained)."""
    goodness = spec.goodness_readout_applies
    predict = inference.make_predict(spec) if goodness else None
    predict_readout = inference.make_predict_readout(spec)
    predict_probes = inference.make_predict_probes(spec)
    choices = {"all": tuple(range(spec.num_layers))} if goodness else {}
    if goodness and spec.num_layers > 1:
        choices["all_but_first"] = tuple(range(1, spec.num_layers))
    joint = inference.joint_applies(spec)

    def one(st, x_dev, y):
        if not goodness:
            p = jax.device_get(predict_readout(params_of(st), st.readout.params, x_dev))
            acc = inference.accuracy(p, y)
            per_layer = []
            if st.probes is not None:
                pp = jax.device_get(predict_probes(params_of(st), st.probes.params, x_dev))
                per_layer = [inference.accuracy(pp[:, i], y) for i in range(pp.shape[1])]
            return {"accuracy": acc, "accuracy_softmax": acc, "pred": p,
                    "accuracy_per_layer": per_layer, "by_score_layers": {}}
        rparams = st.readout.params if st.readout is not None else None
        p = jax.device_get(predict(params_of(st), x_dev, rparams))
        out = {"accuracy": inference.accuracy(p.combined, y), "pred": p.combined,
               "accuracy_per_layer": [inference.accuracy(p.per_layer[:, i], y)
                                      for i in range(spec.num_layers)],
               "by_score_layers": {name: inference.accuracy_of_layers(p.goodness, y, sel)
                                   for name, sel in choices.items()}}
        if p.readout is not None:
            out["accuracy_softmax"] = inference.accuracy(p.readout, y)
        if joint:
            out["joint_by_score_layers"] = {
                name: inference.accuracy(np.argmax(np.asarray(inference.joint_scores(
                    p.goodness, p.readout_logits, sel, spec)), -1), y)
                for name, sel in choices.items()}
        return out

    def one_readout(st, x_dev, y):
        if st.readout is None:
            return {}
        p = jax.device_get(predict_readout(params_of(st), st.readout.params, x_dev))
        return {"accuracy_softmax": inference.accuracy(p, y)}

    def evaluate(state, x_dev, y, *, full: bool = True) -> dict:
        t0 = time.perf_counter()
        runs = [(one if full else one_readout)(
                    state if seeds == 1 else jax.tree.map(lambda a, i=i: a[i], state),
                    x_dev, y) for i in range(seeds)]
        out = {}
        if full:
            out = {"pred": runs[0]["pred"],
                   "prediction": "goodness" if goodness else "softmax",
                   "accuracy_per_layer": np.mean([r["accuracy_per_layer"] for r in runs],
                                                 axis=0).tolist(),
                   "accuracy_by_score_layers": {
                       name: float(np.mean([r["by_score_layers"][name] for r in runs]))
                       for name in choices}}
            if joint:
                out["accuracy_joint_by_score_layers"] = {
                    name: float(np.mean([r["joint_by_score_layers"][name] for r in runs]))
                    for name in choices}
        for k in ("accuracy", "accuracy_softmax"):
            if k in runs[0]:
                vals = [r[k] for r in runs]
                out[k], out[k + "_std"], out[k + "_seeds"] = (
                    float(np.mean(vals)), float(np.std(vals)), vals)
        out["seconds"] = time.perf_counter() - t0
        return out

    return evaluate


def epoch_row(report: driver.EpochReport, seeds: int) -> dict:
    """metrics.jsonl's training part of one epoch (the mean over seeds)."""
    m = report.metrics
    if seeds > 1:
        m = jax.tree.map(lambda a: np.mean(a, axis=0), m)
    row = {"epoch": report.epoch + 1, "seconds": round(report.seconds, 4)}
    row.update({f"layer_{k}": [round(float(v), 6) for v in np.atleast_1d(getattr(m.layers, k))]
                for k in objective.LayerMetrics._fields})
    if m.readout is not None:
        row.update(readout_loss=float(m.readout.loss),
                   readout_train_accuracy=float(m.readout.accuracy))
    return row


def eval_row(split: str, ev: dict) -> dict:
    """metrics.jsonl's evaluation part of one epoch (the softmax readout alone on the
    epochs between full evaluations)."""
    row = {"eval_split": split, "eval_seconds": round(ev["seconds"], 4)}
    if "accuracy" in ev:
        row.update(eval_prediction=ev["prediction"], eval_accuracy=ev["accuracy"],
                   eval_accuracy_per_layer=ev["accuracy_per_layer"],
                   eval_accuracy_by_score_layers=ev["accuracy_by_score_layers"])
    if "accuracy_softmax" in ev:
        row["eval_accuracy_softmax"] = ev["accuracy_softmax"]
    if "accuracy_joint_by_score_layers" in ev:
        row["eval_accuracy_joint_by_score_layers"] = ev["accuracy_joint_by_score_layers"]
    return row


def split_results(split: str, ev: dict, seeds: int) -> dict:
    """results.json's entries for the final evaluation `ev` on `split` ("test" or
    "validation"): accuracy and error of both readouts, per layer, by score layers,
    and with several seeds the std and per-seed values."""
    out = {f"{split}_accuracy": ev["accuracy"], f"{split}_error": 1.0 - ev["accuracy"],
           f"{split}_accuracy_per_layer": ev["accuracy_per_layer"],
           f"{split}_accuracy_by_score_layers": ev["accuracy_by_score_layers"],
           f"{split}_eval_seconds": ev["seconds"]}
    if seeds > 1:
        out.update({"seeds": seeds, f"{split}_accuracy_std": ev["accuracy_std"],
                    f"{split}_accuracy_seeds": ev["accuracy_seeds"]})
    if "accuracy_joint_by_score_layers" in ev:
        out[f"{split}_accuracy_joint_by_score_layers"] = ev["accuracy_joint_by_score_layers"]
    if "accuracy_softmax" in ev:
        out[f"{split}_accuracy_softmax"] = ev["accuracy_softmax"]
        out[f"{split}_error_softmax"] = 1.0 - ev["accuracy_softmax"]
        if seeds > 1:
            out.update({f"{split}_accuracy_softmax_std": ev["accuracy_softmax_std"],
                        f"{split}_accuracy_softmax_seeds": ev["accuracy_softmax_seeds"]})
    return out


def open_record(cfg: Config) -> tuple:
    """(RunDir, Checkpoints, epochs already done): a new run directory holding the
    config, or, with --resume, the run to continue and its newest checkpoint."""
    primary = jax.process_index() == 0  # other processes write only checkpoints
    if not cfg.resume:
        rec = record.RunDir.create(cfg.out_dir, name=cfg.dataset, overwrite=cfg.overwrite,
                                   primary=primary)
        rec.write_config(dataclasses.asdict(
            dataclasses.replace(cfg, out_dir=str(rec.path), overwrite=False)))
        return rec, checkpoint.Checkpoints(rec.path), 0
    rec = record.RunDir(cfg.resume, primary=primary)
    ckpts = checkpoint.Checkpoints(rec.path)
    try:
        done, skipped = ckpts.newest_readable()
    except BaseException:
        ckpts.close()
        raise
    for message in skipped:
        print(f"warning: {message}; resuming from "
              + (f"the checkpoint of epoch {done}." if done else "nothing older."),
              file=sys.stderr)
    if not done:
        ckpts.close()
        raise UsageError(f"--resume {rec.path}: no readable checkpoint in "
                         f"{ckpts.directory}; the run stopped before its first one. Start "
                         "it again with --overwrite.")
    if done >= cfg.epochs and rec.has_results():
        ckpts.close()
        raise UsageError(f"--resume {rec.path}: that run already finished all "
                         f"{cfg.epochs} epochs (see its results.json).")
    return rec, ckpts, done


def _devices(cfg: Config):
    """The devices to split minibatches over (None: one device, no mesh)."""
    try:
        devices = parallel.select_devices(cfg.devices)
        if len(devices) > 1:
            parallel.check_batch_divides(cfg.batch_size, len(devices))
    except ValueError as e:
        raise UsageError(f"{e} (--batch-size {cfg.batch_size}, --devices "
                         f"{cfg.devices or 'all'})") from None
    return devices if len(devices) > 1 else None


def train(cfg: Config, spec: FFSpec, split: Split, eval_data: tuple, rec: record.RunDir,
          ckpts: checkpoint.Checkpoints, start_epoch: int, devices, put,
          t_start: float) -> tuple:
    """Runs the epochs, logging each to metrics.jsonl and the progress bar and saving
    checkpoints; returns (FitResult, rows, the last epoch's full evaluation or None).
    Every --eval-every epochs and at the end both readouts are evaluated; on the epochs
    between, the one-pass softmax readout alone (when trained), so evaluation stays a
    small share of the run. Ctrl-C and divergence end in TrainingStopped naming what was
    kept."""
    eval_split, x_eval, y_eval = eval_data
    evaluate, x_eval_dev = make_evaluator(spec, cfg.seeds), put(x_eval)
    rows = rec.open_metrics(keep_through_epoch=start_epoch)
    stop = _StopRequest()
    bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"FF {cfg.dataset}",
               unit="epoch", disable=not rec.primary)
    last_eval = {}
    deadline = (t_start + config.parse_duration(cfg.time_limit)) if cfg.time_limit else None
    clock = {"last": time.perf_counter()}  # the previous epoch's end

    def on_epoch(report, state):
        row = epoch_row(report, cfg.seeds)
        e = row["epoch"]
        if (cfg.eval_every and e % cfg.eval_every == 0) or e == cfg.epochs:
            last_eval["ev"] = evaluate(state, x_eval_dev, y_eval)
            row.update(eval_row(eval_split, last_eval["ev"]))
        elif cfg.eval_every and state.readout is not None:
            row.update(eval_row(eval_split, evaluate(state, x_eval_dev, y_eval,
                                                     full=False)))
        rows.append(row)
        rec.log(row)
        postfix = {"loss": f"{float(np.mean(row['layer_loss'])):.3f}"}
        if "eval_accuracy" in row:
            postfix[f"{eval_split[:4]}_acc"] = f"{100 * row['eval_accuracy']:.2f}%"
        if "eval_accuracy_softmax" in row:
            postfix["softmax"] = f"{100 * row['eval_accuracy_softmax']:.2f}%"
        bar.set_postfix(postfix)
        bar.update(1)
        # Stop now when the next epoch (timed as this one was, evaluation and
        # checkpoint included) would not end within --time-limit.
        now = time.perf_counter()
        if deadline is not None and now + (now - clock["last"]) > deadline:
            stop.request(f"--time-limit {cfg.time_limit}", 124)
        stopping = stop.agreed() and e < cfg.epochs
        if e == cfg.epochs or stopping or (
                cfg.checkpoint_every and e % cfg.checkpoint_every == 0):
            ckpts.save(e, state)
        clock["last"] = time.perf_counter()
        return stopping

    try:
        with stop:
            result = driver.fit(
                jax.random.key(cfg.seed), split.x_fit, split.y_fit, spec, epochs=cfg.epochs,
                batch_size=cfg.batch_size, optimizer=optimizer_of(cfg),
                num_seeds=cfg.seeds if cfg.seeds > 1 else None, schedule=cfg.schedule,
                on_epoch=on_epoch, start_epoch=start_epoch, devices=devices,
                resume_from=(lambda t: ckpts.restore(start_epoch, t)) if start_epoch else None)
    except driver.DivergedError as err:
        last = ckpts.latest_epoch()
        kept = (f"the last good checkpoint (epoch {last}) is kept in {ckpts.directory}"
                if last else "no checkpoint had been saved yet")
        raise TrainingStopped(f"{err} Training stopped; {kept}.", exit_code=1) from None
    except KeyboardInterrupt as e:
        last = ckpts.latest_epoch()
        raise TrainingStopped(
            "stopped without saving" + (f"; resume from the checkpoint of epoch {last}: "
                                        f"{rec.resume_command()}" if last else "."),
            exit_code=getattr(e, "exit_code", 130)) from None
    finally:
        bar.close()
        rec.close()
        ckpts.close()
    if result.epochs_completed < cfg.epochs:
        raise TrainingStopped(
            f"stopped ({stop.reason}): saved a checkpoint after epoch "
            f"{result.epochs_completed} of {cfg.epochs}. Resume with: "
            f"{rec.resume_command()}", exit_code=stop.exit_code)
    return result, rows, last_eval.get("ev")


def run(cfg: Config) -> dict:
    """Trains and evaluates one FF network as `cfg` says; returns results.json's content."""
    check_config(cfg)
    t_start = time.perf_counter()
    if cfg.coordinator:
        parallel.initialize_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    started = record.provenance()  # the code and machine as the run starts
    devices = _devices(cfg)
    mesh = parallel.data_mesh(devices) if devices else None
    put = jax.device_put if mesh is None else (lambda a: parallel.replicate(a, mesh))
    ds = data.load(cfg.dataset, cfg.data_dir)
    spec = spec_of(cfg, ds.num_classes, data.IMAGE_SHAPES[data.canonical_name(cfg.dataset)])
    # Shapes alone, before the run directory is made (check_config leaves JAX untouched:
    # a multi-process run initializes it above).
    check_negatives(spec, cfg.batch_size)
    ds = data.reshaped(ds, spec.input_shape)
    split = training_split(cfg, ds)
    rec, ckpts, start_epoch = open_record(cfg)
    eval_data = (("validation", split.x_val, split.y_val) if cfg.validation_size
                 else ("test", ds.x_test, ds.y_test))
    try:  # every exit path closes the checkpoint manager (and its threads)
        result, rows, last_eval = train(cfg, spec, split, eval_data, rec, ckpts,
                                        start_epoch, devices, put, t_start)
    finally:
        rec.close()
        ckpts.close()

    # The test set is scored once, at the end, and not at all for a run that holds out
    # a validation split (unless asked): settings are chosen on that split.
    test_on = cfg.evaluate_test if cfg.evaluate_test is not None else not cfg.validation_size
    final_split, x_final, y_final = (("test", ds.x_test, ds.y_test) if test_on
                                     else ("validation", split.x_val, split.y_val))
    final = (last_eval if last_eval is not None and final_split == eval_data[0] else
             make_evaluator(spec, cfg.seeds)(result.state, put(x_final), y_final))
    eval_seconds = sum(r.get("eval_seconds", 0.0) for r in rows[start_epoch:]) + (
        final["seconds"] if final is not last_eval else 0.0)
    results = {**split_results(final_split, final, cfg.seeds),
               "prediction": "goodness" if spec.goodness_readout_applies else "softmax",
               "score_layers": (list(spec.score_layer_ids) if spec.goodness_readout_applies
                                else None),
               "train_seconds": float(sum(r["seconds"] for r in rows)),
               "compile_seconds": result.compile_seconds,
               "seconds_per_epoch_median": float(np.median([r["seconds"] for r in rows])),
               # This process's share (a resumed run: since it resumed), so the share of
               # evaluation in the wall time is eval_seconds / wall_seconds.
               "wall_seconds": time.perf_counter() - t_start,
               "eval_seconds": float(eval_seconds),
               "epochs": cfg.epochs, "num_train": int(len(split.y_fit)),
               **started, "finished": record.provenance()["date"],
               "config": dataclasses.asdict(cfg),
               "run_dir": str(rec.path)}
    if cfg.validation_size and test_on:
        results.update({k.replace("eval_", "validation_"): rows[-1][k] for k in (
            "eval_accuracy", "eval_accuracy_by_score_layers", "eval_accuracy_softmax",
            "eval_accuracy_joint_by_score_layers") if k in rows[-1]})
    rec.write_results(results)
    images = np.asarray(x_final).reshape(
        (len(x_final),) + data.IMAGE_SHAPES[data.canonical_name(cfg.dataset)])
    rec.write_plots(rows, images, y_final, final["pred"], ds.class_names)
    return results


def guarded(fn):
    """(fn(), 0), or (None, exit code) after one line on stderr for bad input (2), a
    stopped run (1: diverged; 130: Ctrl-C; 143: SIGTERM; 124: --time-limit) or an
    interruption: never a traceback."""
    try:
        return fn(), 0
    except TrainingStopped as e:
        print(f"error: {e}" if e.exit_code == 1 else str(e), file=sys.stderr)
        return None, e.exit_code
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was saved.", file=sys.stderr)
        return None, 130
    except ValueError as e:  # UsageError, DataError, RecordError, CheckpointError, ...
        print(f"error: {e}", file=sys.stderr)
        return None, 2
    except OSError as e:  # unwritable run directory, full disk, ...
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return None, 2


def main(defaults: Config, description: str, argv=None) -> int:
    """CLI entry: parse flags, run, print a summary; bad input -> one line, exit code 2."""
    results, code = guarded(lambda: run(parse_config(argv, defaults, description)))
    if code:
        return code
    split = "test" if "test_accuracy" in results else "validation"
    softmax = (f", softmax readout {100 * results[f'{split}_accuracy_softmax']:.2f}%"
               if f"{split}_accuracy_softmax" in results else "")
    joint = results.get(f"{split}_accuracy_joint_by_score_layers", {})
    if joint:
        softmax += ", joint readout " + ", ".join(
            f"{100 * a:.2f}% ({name.replace('_', ' ')})" for name, a in joint.items())
    if results["prediction"] == "softmax":
        softmax = " by the softmax readout (no label in the input)"
    if "seeds" in results:  # the std is of the headline accuracy, whichever readout it is
        which = "" if results["prediction"] == "softmax" else "goodness "
        softmax += (f" (mean of {results['seeds']} seeds; {which}std "
                    f"{100 * results[f'{split}_accuracy_std']:.2f})")
    print(f"{split} accuracy {100 * results[f'{split}_accuracy']:.2f}% "
          f"(error {100 * results[f'{split}_error']:.2f}%){softmax}, "
          f"train {results['train_seconds']:.1f}s + compile {results['compile_seconds']:.1f}s "
          f"+ evaluation {results['eval_seconds']:.1f}s on {results['device']}; run "
          f"directory: {results['run_dir']}")
    return 0
