"""The experiment runner behind `python -m experiments.*`: config, CLI flags, run directory."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import time
import typing
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from ffjax import (checkpoint, data, inference, labels, layers, objective, optim, parallel,
                   plots, train, trainer)


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one FF run. Every field is a command-line flag (--field-name)."""

    dataset: str = _field("mnist", "dataset: mnist or fashion_mnist")
    data_dir: typing.Optional[str] = _field(
        None, f"folder holding mnist/ and fashion-mnist/ with the four IDX .gz files "
              f"(default: ${data.DATA_DIR_ENV}, else fetched with tensorflow-datasets)")
    epochs: int = _field(60, "passes over the training data")
    hidden: typing.Tuple[int, ...] = _field(
        (2000, 2000, 2000, 2000), "hidden layer widths, e.g. --hidden 2000 2000 2000 2000")
    batch_size: int = _field(100, "minibatch size (positives; as many negatives)")
    lr: float = _field(0.01, "peak learning rate (with --lr-scaling fan_in: of a layer "
                            "with 1000 inputs)")
    lr_scaling: str = _field("none", "fan_in: a layer with n inputs uses lr*1000/n (use "
                                     "with adam); none: lr for every layer")
    optimizer: str = _field("smoothed_sgd", "optimizer of every layer and of the readout: "
                                            f"{', '.join(optim.OPTIMIZERS)}")
    lr_decay: bool = _field(True, "constant lr for half the run, then linear decay to 0")
    lr_gain_per_epoch: bool = _field(
        False, "with --lr-decay, set the decayed lr once per epoch (the reference code) "
               "rather than every minibatch")
    weight_decay: float = _field(0.001, "weight decay of the FF layers")
    decoupled_weight_decay: bool = _field(
        False, "apply the weight decay after the gradient smoothing and to weights only, "
               "not biases (the reference code); default: added to the gradient")
    theta: typing.Optional[float] = _field(
        None, "goodness threshold on the sum of squares (default: each layer's width)")
    norm: str = _field("rms", "length normalization before each layer: rms, rms_ref (the "
                              "reference code's epsilon, outside the root) or l2")
    objective: str = _field("logistic", "per-layer objective: "
                                        f"{', '.join(objective.OBJECTIVES)}")
    temperature: float = _field(1.0, "temperature of the logistic and collaborative "
                                     "objectives: p = sigmoid((G - theta) / T)")
    symba_alpha: float = _field(4.0, "alpha of the symba objective")
    loss_scale: float = _field(1.0, "multiplies every layer's FF loss (0.5: the "
                                    "reference code's step, half the logistic gradient)")
    label_strength: float = _field(
        labels.DEFAULT_STRENGTH, "value of the one-hot label written into the first C "
                                 "input features")
    schedule: str = _field("simultaneous", "simultaneous: every layer on every minibatch; "
                                           "greedy: layer by layer, epochs split equally")
    negatives: str = _field("hard", "negative labels: uniform (over the C-1 wrong ones), "
                                       "hard (from the softmax readout, true label masked; "
                                       "turns the readout on), all (every wrong label)")
    peer_strength: float = _field(0.03, "peer normalization strength (0 disables; the "
                                       "reference recipe uses 0.03)")
    readout: bool = _field(True, "also train the one-pass softmax readout and report it "
                                 "(always on with --negatives hard)")
    readout_lr: float = _field(0.1, "learning rate of the softmax readout (same optimizer "
                                      "as the layers)")
    readout_weight_decay: float = _field(0.003, "weight decay of the softmax readout")
    readout_bias: bool = _field(True, "train the softmax readout's bias (the reference "
                                      "code keeps it at 0)")
    readout_layers: typing.Optional[typing.Tuple[int, ...]] = _field(
        None, "0-based layers the softmax readout reads (default: all but the first)")
    score_layers: typing.Optional[typing.Tuple[int, ...]] = _field(
        None, "0-based layers whose goodness is summed at test time (default: all of "
              "them, or all but the first with --no-score-first-layer)")
    score_first_layer: bool = _field(
        True, "with the default --score-layers, sum the first layer's goodness too (the "
              "reference code, and --preset hinton, leave it out)")
    validation_size: int = _field(
        0, "hold out the last N training examples for validation; per-epoch evaluation "
           "then uses them instead of the test set (choose hyperparameters on this)")
    eval_every: int = _field(1, "evaluate every N epochs (0: only at the end)")
    evaluate_test: typing.Optional[bool] = _field(
        None, "score the test set at the end (default: only when no --validation-size "
              "is given, so settings chosen on the validation split never see it)")
    seed: int = _field(0, "random seed (initialization, shuffling, negative labels)")
    seeds: int = _field(1, "train this many seeds at once in one compiled program (vmap) "
                           "and report mean and std over them")
    devices: typing.Optional[int] = _field(
        None, "split every minibatch over the first N local devices (data parallelism; "
              "default: all of them); --batch-size must divide by N")
    coordinator: typing.Optional[str] = _field(
        None, "multi-host runs: host:port of process 0 (jax.distributed.initialize); "
              "give --num-processes and --process-id too")
    num_processes: int = _field(1, "multi-host runs: number of processes")
    process_id: int = _field(0, "multi-host runs: this process's index")
    checkpoint_every: int = _field(
        10, "save a checkpoint (orbax, <run dir>/checkpoints) every N epochs and at the "
            "end (0: only at the end)")
    resume: typing.Optional[str] = _field(
        None, "continue the interrupted run in this run directory from its last "
              "checkpoint, with its saved settings (only --data-dir and --devices may "
              "be given too)")
    out_dir: typing.Optional[str] = _field(
        None, "run directory (default: runs/<dataset>-<date>-<time>)")
    overwrite: bool = _field(False, "allow writing into a run directory that has files")
    preset: typing.Optional[str] = _field(
        None, "start from a named set of settings (flags given explicitly still win): "
              "hinton = the reference recipe of the author's code")


# Named settings. "hinton" is the reference recipe of the author's MATLAB code (docs/
# recipe.md): 784-1000-1000-1000, RMS normalization with the epsilon outside the root,
# label strength 1, theta = width, the logistic at half its gradient, peer normalization
# 0.03, hard negatives from the softmax readout, smoothed SGD (lr 0.01, smoothing 0.9,
# weight decay 0.001 after the smoothing and on weights only; readout lr 0.1, weight
# decay 0.003, zero-initialized, bias never updated), a gain set once per epoch (1 for
# half the run, then falling linearly), batch 100, both readouts skip the first layer.
PRESETS = {
    "hinton": dict(hidden=(1000, 1000, 1000), epochs=100, batch_size=100,
                   optimizer="smoothed_sgd", lr=0.01, lr_scaling="none", lr_decay=True,
                   lr_gain_per_epoch=True, weight_decay=0.001, decoupled_weight_decay=True,
                   theta=None, norm="rms_ref", label_strength=1.0, objective="logistic",
                   temperature=1.0, loss_scale=0.5, negatives="hard", peer_strength=0.03,
                   readout=True, readout_lr=0.1, readout_weight_decay=0.003,
                   readout_bias=False, readout_layers=None, score_layers=None,
                   score_first_layer=False, schedule="simultaneous"),
}


class UsageError(ValueError):
    """A bad setting or input, reported to the user as one line."""


def _flag_type(hint):
    """(argparse kwargs) for a field's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        return _flag_type(next(a for a in args if a is not type(None)))
    if origin is tuple:
        return {"type": args[0], "nargs": "+"}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": hint}


def make_parser(defaults: Config, description: str) -> argparse.ArgumentParser:
    """Argument parser with one flag per Config field, defaults taken from `defaults`."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                            default=getattr(defaults, f.name), help=f.metadata["help"],
                            **_flag_type(hints[f.name]))
    return parser


def apply_preset(cfg: Config, name: str | None) -> Config:
    """cfg with the named preset's settings (None: unchanged)."""
    if name is None:
        return cfg
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return dataclasses.replace(cfg, preset=name, **PRESETS[name])


RESUME_FLAGS = ("--resume", "--data-dir", "--devices")


def _resumed_config(argv, run_dir: str, data_dir: str | None,
                    devices: int | None) -> Config:
    """The Config saved in run_dir/config.json, to continue that run."""
    given = sorted({a.split("=")[0] for a in argv if a.startswith("--")} - set(RESUME_FLAGS))
    if given:
        raise UsageError(f"--resume continues a run with the settings saved in its "
                         f"config.json; drop {', '.join(given)} (only --data-dir and "
                         "--devices may change).")
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no run there ({path} does not exist). Give "
                         "the run directory of the run to continue.")
    try:
        saved = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(Config)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                  if k in known}
        cfg = Config(**values)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--resume {run_dir}: {path} is not a readable ffjax config "
                         f"({e}).") from None
    return dataclasses.replace(cfg, resume=str(run_dir), out_dir=str(run_dir),
                               data_dir=data_dir or cfg.data_dir, overwrite=False,
                               devices=devices if devices is not None else cfg.devices)


def parse_config(argv, defaults: Config, description: str = "") -> Config:
    """Flags over (the preset's settings over) `defaults`; with --resume, the saved
    settings of that run."""
    return parse_config_with(argv, defaults, description)[0]


def parse_config_with(argv, defaults: Config, description: str = "",
                      extra: dict | None = None) -> tuple:
    """parse_config plus `extra` flags ({dest: argparse kwargs}) that are not Config
    fields: returns (Config, {dest: value})."""
    extra = extra or {}
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=defaults.preset)
    pre.add_argument("--resume", default=None)
    pre.add_argument("--data-dir", default=None)
    pre.add_argument("--devices", type=int, default=None)
    known = pre.parse_known_args(argv)[0]
    if known.resume is not None and "-h" not in argv and "--help" not in argv:
        if extra:
            raise UsageError("--resume is not available here.")
        return _resumed_config(argv, known.resume, known.data_dir, known.devices), {}
    name = known.preset
    defaults = apply_preset(defaults, name)
    parser = make_parser(defaults, description)
    for dest, kwargs in extra.items():
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, **kwargs)
    values = {k: tuple(v) if isinstance(v, list) else v
              for k, v in vars(parser.parse_args(argv)).items()}
    extras = {k: values.pop(k) for k in extra}
    return dataclasses.replace(defaults, **values), extras


def check_config(cfg: Config) -> None:
    """Rejects impossible settings before any data is loaded or anything compiled."""
    def bad(msg):
        raise UsageError(msg)

    for f in dataclasses.fields(Config):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            bad(f"--{f.name.replace('_', '-')} {v}: must be a finite number.")
    if cfg.epochs <= 0:
        bad(f"--epochs {cfg.epochs}: must be a positive integer.")
    if not cfg.label_strength > 0:
        bad(f"--label-strength {cfg.label_strength}: must be positive (it is the value "
            "of the one-hot label features).")
    if cfg.devices is not None and cfg.devices < 1:
        bad(f"--devices {cfg.devices}: must be >= 1.")
    if cfg.num_processes < 1 or not 0 <= cfg.process_id < cfg.num_processes:
        bad(f"--process-id {cfg.process_id} must be in [0, --num-processes "
            f"{cfg.num_processes}).")
    if cfg.num_processes > 1 and not cfg.coordinator:
        bad("--num-processes > 1 needs --coordinator host:port (the address of process 0).")
    if cfg.num_processes > 1 and not (cfg.out_dir or cfg.resume):
        bad("multi-host runs need --out-dir: the same run directory for every process, on "
            "storage they share (checkpoints are written there by all of them).")
    if cfg.checkpoint_every < 0:
        bad(f"--checkpoint-every {cfg.checkpoint_every}: must be >= 0.")
    if not cfg.hidden or any(h <= 0 for h in cfg.hidden):
        bad(f"--hidden {' '.join(map(str, cfg.hidden))}: widths must be positive integers.")
    if cfg.batch_size <= 0:
        bad(f"--batch-size {cfg.batch_size}: must be a positive integer.")
    if not cfg.lr > 0:
        bad(f"--lr {cfg.lr}: must be positive.")
    if cfg.optimizer not in optim.OPTIMIZERS:
        bad(f"--optimizer {cfg.optimizer}: choose one of {', '.join(optim.OPTIMIZERS)}.")
    if cfg.lr_scaling not in optim.LR_SCALINGS:
        bad(f"--lr-scaling {cfg.lr_scaling}: choose one of {', '.join(optim.LR_SCALINGS)}.")
    if cfg.norm not in layers.NORMS:
        bad(f"--norm {cfg.norm}: choose one of {', '.join(layers.NORMS)}.")
    if cfg.theta is not None and not cfg.theta > 0:
        bad(f"--theta {cfg.theta}: must be positive.")
    if cfg.norm == "l2" and cfg.theta is None:
        bad("--norm l2 gives every activity vector unit length, so the default threshold "
            "(each layer's width, made for --norm rms) is out of reach and nothing is "
            "learned (measured: chance accuracy). Give --theta (and retune --lr) with l2.")
    if cfg.validation_size < 0:
        bad(f"--validation-size {cfg.validation_size}: must be >= 0.")
    if cfg.seeds < 1:
        bad(f"--seeds {cfg.seeds}: must be >= 1.")
    if cfg.eval_every < 0:
        bad(f"--eval-every {cfg.eval_every}: must be >= 0.")
    if cfg.schedule not in trainer.SCHEDULES:
        bad(f"--schedule {cfg.schedule}: choose one of {', '.join(trainer.SCHEDULES)}.")
    if cfg.schedule == "greedy" and cfg.epochs < len(cfg.hidden):
        bad(f"--schedule greedy trains one layer per phase: --epochs must be at least the "
            f"number of layers ({len(cfg.hidden)}).")
    if cfg.negatives not in train.NEGATIVES:
        bad(f"--negatives {cfg.negatives}: choose one of {', '.join(train.NEGATIVES)}.")
    if not cfg.peer_strength >= 0:
        bad(f"--peer-strength {cfg.peer_strength}: must be >= 0.")
    if cfg.objective not in objective.OBJECTIVES:
        bad(f"--objective {cfg.objective}: choose one of {', '.join(objective.OBJECTIVES)}.")
    for flag, v in (("--temperature", cfg.temperature), ("--symba-alpha", cfg.symba_alpha),
                    ("--loss-scale", cfg.loss_scale)):
        if not v > 0:
            bad(f"{flag} {v}: must be positive.")
    if cfg.preset is not None and cfg.preset not in PRESETS:
        bad(f"--preset {cfg.preset}: unknown; choose one of {', '.join(PRESETS)}.")
    if cfg.weight_decay < 0 or cfg.readout_weight_decay < 0:
        bad("--weight-decay and --readout-weight-decay must be >= 0.")
    if not cfg.readout_lr > 0:
        bad(f"--readout-lr {cfg.readout_lr}: must be positive.")
    for flag, sel in (("--score-layers", cfg.score_layers),
                      ("--readout-layers", cfg.readout_layers)):
        if sel is not None:
            try:
                layers.resolve_layer_selection(sel, len(cfg.hidden), what=flag)
            except ValueError as e:
                bad(str(e))


def prepare_run_dir(cfg: Config) -> Path:
    """Creates the run directory; refuses one that holds files unless --overwrite."""
    if cfg.out_dir:
        run_dir = Path(cfg.out_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{cfg.dataset}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out-dir {run_dir} exists and is not a directory.")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not cfg.overwrite:
        raise UsageError(f"run directory {run_dir} already holds files; choose another "
                         "--out-dir or pass --overwrite to write into it.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:  # the old run's checkpoints must not be resumed as this run's
        shutil.rmtree(run_dir / checkpoint.SUBDIR, ignore_errors=True)
    return run_dir


def device_description() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{d.platform} ({d.device_kind}) x{jax.device_count()}"


def device_slug() -> str:
    """device_description() as a file-name part, e.g. cpu-x86-64-2-cores."""
    return re.sub(r"[^a-z0-9]+", "-", device_description().lower()).strip("-")


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = f"python -m {spec.name}" if spec and spec.name else f"python {sys.argv[0]}"
    return " ".join([head] + sys.argv[1:])


def _layer_row(metrics: objective.LayerMetrics) -> dict:
    return {f"layer_{k}": [round(float(v), 6) for v in np.atleast_1d(getattr(metrics, k))]
            for k in objective.LayerMetrics._fields}


def training_split(cfg: Config, ds: data.Dataset):
    """(x_fit, y_fit, x_val, y_val): the training set less the last --validation-size
    examples, and those (None, None without a validation split); checked against
    --batch-size."""
    x_fit, y_fit, x_val, y_val = ds.x_train, ds.y_train, None, None
    if cfg.validation_size:
        if cfg.validation_size >= len(y_fit):
            raise UsageError(f"--validation-size {cfg.validation_size} leaves no training "
                             f"data ({len(y_fit)} examples).")
        x_fit, y_fit, x_val, y_val = data.split_validation(x_fit, y_fit, cfg.validation_size)
    if cfg.batch_size > len(y_fit):
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training set "
                         f"({len(y_fit)} examples).")
    return x_fit, y_fit, x_val, y_val


def score_layers(cfg: Config) -> tuple:
    """The layers the goodness readout sums: --score-layers, else all of them (all but
    the first with --no-score-first-layer, the reference code's choice). Summing
    all layers beat skipping the first (the reference code's choice) on the validation
    split in every setting measured (docs/recipe.md)."""
    if cfg.score_layers is not None:
        return tuple(sorted(set(cfg.score_layers)))
    if cfg.score_first_layer or len(cfg.hidden) == 1:
        return tuple(range(len(cfg.hidden)))
    return tuple(range(1, len(cfg.hidden)))


def make_optimizers(cfg: Config, num_inputs: int, steps_per_epoch: int):
    """(per-layer optimizers, readout optimizer or None) for a run of `cfg` on inputs of
    width `num_inputs` with `steps_per_epoch` minibatches per epoch."""
    # A layer's lr schedule spans the epochs in which it trains.
    layer_steps = max(n for _, n in trainer.phase_plan(cfg.schedule, cfg.epochs,
                                                       len(cfg.hidden))) * steps_per_epoch
    optimizer = optim.make_layer_optimizers(
        cfg.optimizer, lr=cfg.lr, sizes=(int(num_inputs),) + tuple(cfg.hidden),
        scaling=cfg.lr_scaling, total_steps=layer_steps, decay=cfg.lr_decay,
        weight_decay=cfg.weight_decay, **optimizer_settings(cfg, steps_per_epoch))
    if not (cfg.readout or cfg.negatives == "hard"):
        return optimizer, None
    return optimizer, optim.make_optimizer(
        cfg.optimizer, lr=cfg.readout_lr, total_steps=cfg.epochs * steps_per_epoch,
        decay=cfg.lr_decay, weight_decay=cfg.readout_weight_decay,
        train_biases=cfg.readout_bias, **optimizer_settings(cfg, steps_per_epoch))


def optimizer_settings(cfg: Config, steps_per_epoch: int) -> dict:
    """The optim.make_optimizer keywords that the layers and the readout share."""
    return dict(decoupled_decay=cfg.decoupled_weight_decay,
                steps_per_epoch=steps_per_epoch if cfg.lr_gain_per_epoch else None)


def objective_of(cfg: Config):
    """The per-layer objective function that `cfg` names, with its settings."""
    if cfg.objective == "symba":
        return objective.make_objective("symba", alpha=cfg.symba_alpha)
    return objective.make_objective(cfg.objective, temperature=cfg.temperature)


class TrainingStopped(RuntimeError):
    """Training ended before its last epoch (Ctrl-C, divergence); the message says what
    was kept and how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def resume_command(run_dir) -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec and spec.name else "experiments.mnist"
    return f"python -m {module} --resume {run_dir}"


class _StopRequest:
    """Within `with`, the first Ctrl-C asks training to stop after the current epoch (and
    save a checkpoint); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: finishing this epoch, then saving a checkpoint "
                   "(press Ctrl-C again to stop at once without saving).")

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def run(cfg: Config) -> dict:
    """Trains and evaluates one FF network as `cfg` says; returns results.json's content."""
    check_config(cfg)
    if cfg.coordinator:
        parallel.initialize_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    try:
        devices = parallel.select_devices(cfg.devices)
        if len(devices) > 1:
            parallel.check_batch_divides(cfg.batch_size, len(devices))
    except ValueError as e:
        raise UsageError(f"{e} (--batch-size {cfg.batch_size}, --devices "
                         f"{cfg.devices or 'all'})") from None
    mesh = parallel.data_mesh(devices) if len(devices) > 1 else None
    put = jax.device_put if mesh is None else (lambda a: parallel.replicate(a, mesh))
    ds = data.load(cfg.dataset, cfg.data_dir)
    x_fit, y_fit, x_val, y_val = training_split(cfg, ds)
    # With several processes, process 0 writes the run directory's files; all of them
    # take part in saving checkpoints (orbax coordinates them).
    primary = jax.process_index() == 0
    if cfg.resume:
        run_dir = Path(cfg.resume)
    elif not primary:
        run_dir = Path(cfg.out_dir)
    else:
        run_dir = prepare_run_dir(cfg)
        saved = dataclasses.replace(cfg, out_dir=str(run_dir), overwrite=False)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(saved), indent=2))
    ckpts = checkpoint.Checkpoints(run_dir)
    start_epoch = 0
    if cfg.resume:
        start_epoch = ckpts.latest_epoch() or 0
        if not start_epoch:
            raise UsageError(f"--resume {run_dir}: no checkpoint in {ckpts.directory}; the "
                             "run stopped before its first one. Start it again with "
                             "--overwrite.")
        if start_epoch >= cfg.epochs and (run_dir / "results.json").exists():
            raise UsageError(f"--resume {run_dir}: that run already finished all "
                             f"{cfg.epochs} epochs (see its results.json).")

    predict = inference.make_predict(num_classes=ds.num_classes,
                                     label_strength=cfg.label_strength, norm=cfg.norm,
                                     score_layers=score_layers(cfg),
                                     readout_layers=cfg.readout_layers)
    eval_split, x_eval, y_eval = (("validation", x_val, y_val) if cfg.validation_size
                                  else ("test", ds.x_test, ds.y_test))
    x_eval_dev = put(x_eval)

    def seed_states(state):
        if cfg.seeds == 1:
            return [state]
        return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(cfg.seeds)]

    # The goodness readout for other choices of summed layers, read from the same
    # passes (the choice is made at test time only, so every run reports it).
    score_choices = {"all": tuple(range(len(cfg.hidden)))}
    if len(cfg.hidden) > 1:
        score_choices["all_but_first"] = tuple(range(1, len(cfg.hidden)))

    def evaluate(state, x_dev, y) -> dict:
        """Accuracy of the goodness readout (combined and per layer) and, when trained,
        of the softmax readout: the mean over seeds, with the per-seed values and std."""
        t0 = time.perf_counter()
        runs = []
        for st in seed_states(state):
            rparams = st.readout.params if st.readout is not None else None
            p = jax.device_get(predict(train.params_of(st), x_dev, rparams))
            run = {"accuracy": inference.accuracy(p.combined, y),
                   "accuracy_per_layer": [inference.accuracy(p.per_layer[:, i], y)
                                          for i in range(len(cfg.hidden))],
                   "pred": p.combined,
                   "by_score_layers": {name: inference.accuracy_of_layers(p.goodness, y, sel)
                                       for name, sel in score_choices.items()}}
            if p.readout is not None:
                run["accuracy_softmax"] = inference.accuracy(p.readout, y)
            runs.append(run)
        out = {"pred": runs[0]["pred"],
               "accuracy_per_layer": np.mean([r["accuracy_per_layer"] for r in runs],
                                             axis=0).tolist(),
               "accuracy_by_score_layers": {
                   name: float(np.mean([r["by_score_layers"][name] for r in runs]))
                   for name in score_choices}}
        for k in ("accuracy", "accuracy_softmax"):
            if k in runs[0]:
                vals = [r[k] for r in runs]
                out[k], out[k + "_std"], out[k + "_seeds"] = (
                    float(np.mean(vals)), float(np.std(vals)), vals)
        out["seconds"] = time.perf_counter() - t0
        return out

    optimizer, readout_optimizer = make_optimizers(cfg, ds.x_train.shape[1],
                                                   len(y_fit) // cfg.batch_size)
    rows = []
    if start_epoch:  # keep the rows of the checkpointed epochs, redo the others
        old_rows = (run_dir / "metrics.jsonl").read_text().splitlines() if (
            run_dir / "metrics.jsonl").exists() else []
        rows = [r for r in map(json.loads, old_rows) if r["epoch"] <= start_epoch]
    metrics_file = open(run_dir / "metrics.jsonl" if primary else os.devnull, "w")
    for r in rows:
        metrics_file.write(json.dumps(r) + "\n")
    stop = _StopRequest()
    bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"FF {cfg.dataset}", unit="epoch",
               disable=not primary)

    def on_epoch(report: trainer.EpochReport, state):
        e = report.epoch + 1
        metrics = report.metrics  # with --seeds K, every field has a leading K axis
        if cfg.seeds > 1:
            metrics = jax.tree.map(lambda m: np.mean(m, axis=0), metrics)
        row = {"epoch": e, "seconds": round(report.seconds, 4), **_layer_row(metrics.layers)}
        if metrics.readout is not None:
            row.update(readout_loss=float(metrics.readout.loss),
                       readout_train_accuracy=float(metrics.readout.accuracy))
        if (cfg.eval_every and e % cfg.eval_every == 0) or e == cfg.epochs:
            ev = evaluate(state, x_eval_dev, y_eval)
            row.update(eval_split=eval_split, eval_accuracy=ev["accuracy"],
                       eval_accuracy_per_layer=ev["accuracy_per_layer"],
                       eval_accuracy_by_score_layers=ev["accuracy_by_score_layers"],
                       eval_seconds=round(ev["seconds"], 4))
            if "accuracy_softmax" in ev:
                row["eval_accuracy_softmax"] = ev["accuracy_softmax"]
        rows.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        postfix = {"loss": f"{float(np.mean(metrics.layers.loss)):.3f}"}
        if "eval_accuracy" in row:
            postfix[f"{eval_split[:4]}_acc"] = f"{100 * row['eval_accuracy']:.2f}%"
        if "eval_accuracy_softmax" in row:
            postfix["softmax"] = f"{100 * row['eval_accuracy_softmax']:.2f}%"
        bar.set_postfix(postfix)
        bar.update(1)
        if e == cfg.epochs or stop.requested or (
                cfg.checkpoint_every and e % cfg.checkpoint_every == 0):
            ckpts.save(e, state)
        return stop.requested

    def restore(template):
        return ckpts.restore(start_epoch, template)

    try:
        with stop:
            result = trainer.fit(
                jax.random.key(cfg.seed), x_fit, y_fit, hidden=cfg.hidden,
                epochs=cfg.epochs, num_classes=ds.num_classes, batch_size=cfg.batch_size,
                optimizer=optimizer, theta=cfg.theta, norm=cfg.norm,
                label_strength=cfg.label_strength, negatives=cfg.negatives,
                peer_strength=cfg.peer_strength, objective_fn=objective_of(cfg),
                loss_scale=cfg.loss_scale, readout_optimizer=readout_optimizer,
                readout_layers=cfg.readout_layers,
                num_seeds=cfg.seeds if cfg.seeds > 1 else None, schedule=cfg.schedule,
                on_epoch=on_epoch, resume_from=restore if start_epoch else None,
                start_epoch=start_epoch, devices=devices if mesh is not None else None)
    except trainer.DivergedError as err:
        last = ckpts.latest_epoch()
        kept = (f"the last good checkpoint (epoch {last}) is kept in {ckpts.directory}"
                if last else "no checkpoint had been saved yet")
        raise TrainingStopped(f"{err} Training stopped; {kept}.", exit_code=1) from None
    except KeyboardInterrupt:
        last = ckpts.latest_epoch()
        raise TrainingStopped(
            "stopped without saving" + (f"; resume from the checkpoint of epoch {last}: "
                                        f"{resume_command(run_dir)}" if last else "."),
            exit_code=130) from None
    finally:
        bar.close()
        metrics_file.close()
        ckpts.close()
    if result.epochs_completed < cfg.epochs:
        raise TrainingStopped(
            f"interrupted: saved a checkpoint after epoch {result.epochs_completed} of "
            f"{cfg.epochs}. Resume with: {resume_command(run_dir)}", exit_code=130)

    test_on = cfg.evaluate_test if cfg.evaluate_test is not None else not cfg.validation_size
    final_split, x_final, y_final = (("test", ds.x_test, ds.y_test) if test_on
                                     else ("validation", x_val, y_val))
    final = evaluate(result.state, put(x_final), y_final)
    results = {
        **split_results(final_split, final, cfg.seeds),
        "score_layers": list(score_layers(cfg)),
        "train_seconds": float(sum(r["seconds"] for r in rows)),
        "compile_seconds": result.compile_seconds,
        "seconds_per_epoch_median": float(np.median([r["seconds"] for r in rows])),
        "epochs": cfg.epochs,
        "num_train": int(len(y_fit)),
        "device": device_description(),
        "jax_version": jax.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
        "config": dataclasses.asdict(cfg),
        "run_dir": str(run_dir),
    }
    if cfg.validation_size and test_on:
        results["validation_accuracy"] = rows[-1]["eval_accuracy"]
        results["validation_accuracy_by_score_layers"] = rows[-1][
            "eval_accuracy_by_score_layers"]
        if "eval_accuracy_softmax" in rows[-1]:
            results["validation_accuracy_softmax"] = rows[-1]["eval_accuracy_softmax"]
    if not primary:
        return results
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))

    plots.plot_layer_losses(rows, run_dir / "loss.png")
    plots.plot_accuracy(rows, run_dir / "accuracy.png")
    plots.plot_predictions(x_final, y_final, final["pred"], ds.class_names,
                           run_dir / "predictions.png")
    return results


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
    if "accuracy_softmax" in ev:
        out[f"{split}_accuracy_softmax"] = ev["accuracy_softmax"]
        out[f"{split}_error_softmax"] = 1.0 - ev["accuracy_softmax"]
        if seeds > 1:
            out.update({f"{split}_accuracy_softmax_std": ev["accuracy_softmax_std"],
                        f"{split}_accuracy_softmax_seeds": ev["accuracy_softmax_seeds"]})
    return out


def guarded(fn):
    """(fn(), 0), or (None, exit code) after one line on stderr for bad input (2), a
    stopped run (1: diverged; 130: Ctrl-C) or an interruption: never a traceback."""
    try:
        return fn(), 0
    except TrainingStopped as e:
        print(f"error: {e}" if e.exit_code != 130 else str(e), file=sys.stderr)
        return None, e.exit_code
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was saved.", file=sys.stderr)
        return None, 130
    except (UsageError, data.DataError, ValueError) as e:
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
    if "seeds" in results:
        softmax += (f" (mean of {results['seeds']} seeds; goodness std "
                    f"{100 * results[f'{split}_accuracy_std']:.2f})")
    print(f"{split} accuracy {100 * results[f'{split}_accuracy']:.2f}% "
          f"(error {100 * results[f'{split}_error']:.2f}%){softmax}, "
          f"train {results['train_seconds']:.1f}s + compile {results['compile_seconds']:.1f}s "
          f"on {results['device']}; run directory: {results['run_dir']}")
    return 0
