"""The command line's settings: the Config behind every flag, presets, parsing, checks."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import re
import sys
import typing

from ffjax import data, encodings, layers, negatives, objective, optim, record
from ffjax.driver import SCHEDULES, interleaved_epochs
from ffjax.spec import FFSpec

_SPEC, _OPT = FFSpec(), optim.OptimizerSpec()  # the library's defaults are the CLI's
_MASK = negatives.hybrid().generate, negatives.masked().generate


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one FF run. Every field is a command-line flag (--field-name)."""

    dataset: str = _field("mnist", "dataset: mnist, fashion_mnist or cifar10")
    data_dir: typing.Optional[str] = _field(
        None, f"folder holding mnist/ and fashion-mnist/ with the four IDX .gz files "
              f"(default: ${data.DATA_DIR_ENV}, else fetched with tensorflow-datasets)")
    epochs: int = _field(100, "passes over the training data")
    hidden: typing.Tuple[str, ...] = _field(
        _SPEC.hidden, "the hidden layers, " + layers.ARCH_HELP + "; e.g. --hidden 2000 "
                      "2000 2000 2000")
    batch_size: int = _field(100, "minibatch size (positives; as many negatives)")
    lr: float = _field(_OPT.lr, "peak learning rate (with --lr-scaling fan_in: of a layer "
                                "with 1000 inputs)")
    lr_scaling: str = _field(_OPT.lr_scaling, "fan_in: a layer with n inputs uses lr*1000/n "
                                              "(evens out the step across widths); none: "
                                              "lr for every layer")
    optimizer: str = _field(_OPT.name, "optimizer of every layer and of the readout: "
                                       f"{', '.join(optim.OPTIMIZERS)}")
    lr_decay: bool = _field(_OPT.lr_decay, "constant lr for half the run, then linear "
                                           "decay to 0")
    lr_decay_start: float = _field(
        _OPT.lr_decay_start, "with --lr-decay, the share of the run before the lr starts to "
                             "fall: 0.5 (the reference) the second half, 0 the whole run")
    lr_gain_per_epoch: bool = _field(
        _OPT.lr_gain_per_epoch, "with --lr-decay, set the decayed lr once per epoch (the "
                                "reference code) rather than every minibatch")
    weight_decay: float = _field(_OPT.weight_decay, "weight decay of the FF layers")
    decoupled_weight_decay: bool = _field(
        _OPT.decoupled_weight_decay, "apply the weight decay after the gradient smoothing "
                                     "and to weights only, not biases (the reference code); "
                                     "--no-decoupled-weight-decay adds it to the gradient")
    theta: typing.Optional[float] = _field(
        _SPEC.theta, "goodness threshold on the sum of squares (default: each layer's width)")
    norm: str = _field(_SPEC.norm, "length normalization before each layer: rms, rms_ref "
                                   "(the reference code's epsilon, outside the root), l2, "
                                   "centered (the mean subtracted, then rms_ref) or none")
    output_norm: str = _field(_SPEC.output_norm, "normalization of each layer's output "
                              "after the ReLU: none, or batch (per channel over the batch "
                              "and locations, with a trained scale and offset; running "
                              "statistics at test time)")
    output_norm_momentum: float = _field(_SPEC.output_norm_momentum, "decay of the running "
                                         "statistics of --output-norm batch")
    objective: str = _field(_SPEC.objective, "per-layer objective: "
                                             f"{', '.join(objective.OBJECTIVES)} (the "
                                             "class-group group_softmax needs "
                                             "--label-encoding none --negatives none)")
    temperature: float = _field(_SPEC.temperature, "temperature of the logistic, "
                                                   "hardest and collaborative objectives (p = "
                                                   "sigmoid((G - theta) / T)) and of "
                                                   "group_softmax (softmax(G_groups / T))")
    group_label_smoothing: float = _field(_SPEC.group_label_smoothing, "label smoothing of "
                                         "the group_softmax objective's targets (0: none)")
    symba_alpha: float = _field(_SPEC.symba_alpha, "alpha of the symba objective")
    loss_scale: float = _field(_SPEC.loss_scale, "multiplies every layer's FF loss (0.5: the "
                                                 "reference code's step, half the logistic "
                                                 "gradient)")
    label_encoding: str = _field(_SPEC.label_encoding, "how the label enters the input: "
                                 "first_features (the first C features are overwritten), "
                                 "channels (C label channels appended to the image; conv "
                                 "and local networks), none, or one a module added to "
                                 "ffjax.encodings.ENCODINGS")
    label_strength: float = _field(_SPEC.label_strength, "value of the one-hot label")
    schedule: str = _field("simultaneous", "simultaneous: every layer on every minibatch; "
                                           "greedy: layer by layer, epochs split equally; "
                                           "interleaved:E1,E2,...: layer i on every "
                                           "minibatch of the first Ei epochs only")
    negatives: str = _field(_SPEC.negatives, "negative data: uniform (the image with one "
                                             "of the C-1 wrong labels), hard (a wrong label "
                                             "from the softmax readout, true label masked; "
                                             "turns the readout on), all (every wrong "
                                             "label), hybrid (two images mixed through a "
                                             "blurred random mask; no labels: with "
                                             "--label-encoding none), masked (the image "
                                             "with contiguous patches zeroed; no labels), "
                                             "none (for the class-group objective), or one "
                                             "a module added to ffjax.negatives.GENERATORS")
    plugins: typing.Tuple[str, ...] = _field(
        (), "Python modules to import before the settings are read, e.g. ones that add "
            "to ffjax.negatives.GENERATORS or ffjax.encodings.ENCODINGS (their names then "
            "work as --negatives and --label-encoding); saved with the run, so --resume "
            "imports them again")
    mask_blur_steps: int = _field(_MASK[0].blur_steps, "how often the random mask of "
                                  "--negatives hybrid and masked is blurred with [1/4, 1/2, "
                                  "1/4] along each axis (more: larger regions)")
    mask_blur_steps_max: typing.Optional[int] = _field(
        _MASK[0].blur_steps_max, "draw each mask's blur count uniformly from "
        "--mask-blur-steps to this, so the negatives mix region sizes (default: every mask "
        "blurred --mask-blur-steps times)")
    mask_fraction: float = _field(_MASK[1].fraction, "share of the pixels "
                                  "--negatives masked zeroes")
    hybrid_partner: str = _field(_MASK[0].partner, "the second image of each --negatives "
                                 "hybrid mixture: shift (a random other image of the "
                                 "minibatch) or nearest (its nearest other image in pixel "
                                 "space)")
    hybrid_count: int = _field(_MASK[0].count, "--negatives hybrid mixtures per positive "
                               "image, each with its own mask (and partner, with --hybrid-"
                               "partner shift); the loss averages over them")
    peer_strength: float = _field(_SPEC.peer_strength, "peer normalization strength (0 "
                                                       "disables; the reference uses 0.03)")
    goodness_scope: str = _field(_SPEC.goodness_scope, "what the objective scores: layer "
                                 "(its whole activity) or location (each location's "
                                 "channels; conv and local layers)")
    input_noise: float = _field(_SPEC.input_noise, "std of Gaussian noise added to the "
                                                   "[0, 1]-scaled training inputs (0: none)")
    hidden_dropout: float = _field(_SPEC.hidden_dropout, "fraction of each hidden layer's "
                                   "units zeroed in the input the next layer trains on "
                                   "(0: none; never at test time or in the readout)")
    readout_label_smoothing: float = _field(_SPEC.readout_label_smoothing, "label smoothing "
                                            "of the softmax readout's training targets")
    readout: bool = _field(_SPEC.readout, "also train the one-pass softmax readout and "
                                          "report it (always on with --negatives hard)")
    readout_lr: float = _field(_OPT.readout_lr, "learning rate of the softmax readout (same "
                                                "optimizer as the layers)")
    readout_weight_decay: float = _field(_OPT.readout_weight_decay, "weight decay of the "
                                                                    "softmax readout")
    readout_bias: bool = _field(_OPT.readout_bias, "train the softmax readout's bias (the "
                                                   "reference code keeps it at 0)")
    readout_layers: typing.Optional[typing.Tuple[int, ...]] = _field(
        None, "0-based layers the softmax readout reads (default: all but the first)")
    score_layers: typing.Optional[typing.Tuple[int, ...]] = _field(
        None, "0-based layers whose goodness is summed at test time (default: all of "
              "them, or all but the first with --no-score-first-layer)")
    score_first_layer: bool = _field(
        True, "with the default --score-layers, sum the first layer's goodness too (the "
              "reference code, and --preset hinton, leave it out)")
    train_size: typing.Optional[int] = _field(
        None, "train on the first N training examples only (quick checks; with "
              "--validation-size the split is taken from those N)")
    validation_size: int = _field(
        0, "hold out the last N training examples for validation; per-epoch evaluation "
           "then uses them instead of the test set (choose hyperparameters on this)")
    eval_every: int = _field(10, "evaluate both readouts every N epochs and at the end, "
                                 "and the one-pass softmax readout (when trained) on the "
                                 "epochs between (0: only at the end)")
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
    time_limit: typing.Optional[str] = _field(
        None, "wall-clock budget of this process, e.g. 2h30m, 45m or 3600 (seconds): "
              "training stops after the last epoch that fits, saves a checkpoint and "
              "exits with code 124, for --resume in the next job")
    checkpoint_every: int = _field(
        10, "save a checkpoint (orbax, <run dir>/checkpoints) every N epochs and at the "
            "end (0: only at the end)")
    resume: typing.Optional[str] = _field(
        None, "continue the interrupted run in this run directory from its last "
              "checkpoint, with its saved settings (only --data-dir, --devices and "
              "--time-limit may be given too)")
    out_dir: typing.Optional[str] = _field(
        None, "run directory (default: runs/<dataset>-<date>-<time>)")
    overwrite: bool = _field(False, "allow writing into a run directory that has files")
    preset: typing.Optional[str] = _field(
        None, "start from a named set of settings (flags given explicitly still win; "
              "settings it does not name keep the entry point's defaults, e.g. "
              "experiments.fashion_mnist's input noise 0.1 and readout label smoothing "
              "0.1): "
              "hinton = the reference recipe of the author's code; hinton-unsupervised = "
              "its unsupervised FF (hybrid negatives, no label), 4 x 2000; "
              "hinton-unsupervised-local = the same with the paper's local receptive "
              "fields (three locally connected layers); mnist-conv = three "
              "batch-normalized conv layers with class-group competition; "
              "fashion-conv = four wider such layers for Fashion-MNIST, 20 epochs, "
              "no input noise; mnist-conv-wide = fashion-conv with hidden dropout 0.2, "
              "for MNIST; "
              "cifar10-conv = a conv network for CIFAR-10 (unmeasured)")


# Named settings. "hinton" is the reference recipe of the author's MATLAB code
# (docs/recipe.md): 784-1000-1000-1000, RMS normalization with the epsilon outside the root,
# label strength 1, theta = width, the logistic at half its gradient, peer normalization
# 0.03, hard negatives from the softmax readout, smoothed SGD (lr 0.01, smoothing 0.9,
# weight decay 0.001 after the smoothing and on weights only; readout lr 0.1, weight
# decay 0.003, zero-initialized, bias never updated), a gain set once per epoch (1 for
# half the run, then falling linearly), batch 100, both readouts skip the first layer.
PRESETS = {
    "hinton": dict(hidden=(1000, 1000, 1000), epochs=100, batch_size=100,
                   optimizer="smoothed_sgd", lr=0.01, lr_scaling="none", lr_decay=True,
                   lr_decay_start=0.5, lr_gain_per_epoch=True, weight_decay=0.001,
                   decoupled_weight_decay=True,
                   theta=None, norm="rms_ref", label_strength=1.0, objective="logistic",
                   temperature=1.0, loss_scale=0.5, negatives="hard", peer_strength=0.03,
                   readout=True, readout_lr=0.1, readout_weight_decay=0.003,
                   readout_bias=False, readout_layers=None, score_layers=None,
                   score_first_layer=False, schedule="simultaneous"),
    # Three conv layers, channel-wise competition (class groups of each layer's channels,
    # no label in the input, no negatives), each layer's output batch-normalized per
    # channel, 50 epochs: the best of the MNIST conv screens on the validation split
    # (docs/blocks.md).
    "mnist-conv": dict(hidden=("conv:20:5:p2", "conv:80:3:p2", "conv:160:3"), epochs=50,
                       output_norm="batch",
                       batch_size=100, objective="group_softmax", temperature=1.0,
                       label_encoding="none", negatives="none", peer_strength=0.0,
                       optimizer="adam", lr=0.003, lr_scaling="none", weight_decay=0.0,
                       readout=True, readout_lr=0.003, readout_weight_decay=0.0,
                       readout_bias=True),
    # Unmeasured: channel-wise competition (class groups of each
    # conv layer's channels, no label in the input, no negatives) on four conv layers,
    # the geometry of the published channel-wise competitive FF network, with the
    # settings of the first MNIST conv screens (docs/blocks.md).
    "cifar10-conv": dict(hidden=("conv:20:3", "conv:80:3:p2", "conv:240:3", "conv:480:3:p2"),
                         epochs=50, batch_size=100, objective="group_softmax",
                         temperature=0.05, label_encoding="none", negatives="none",
                         peer_strength=0.0, optimizer="adam", lr=0.003, lr_scaling="none",
                         weight_decay=0.0, readout=True, readout_lr=0.003,
                         readout_weight_decay=0.0, readout_bias=True),
}

# Fashion-MNIST: mnist-conv's objective and update on four conv layers at 1.5 times the
# channels of its layers (the fourth on a 3 x 3 grid), for 20 epochs, without input noise:
# the best of the Fashion-MNIST conv screens on the validation split (docs/blocks.md). It
# names input noise and readout label smoothing because the entry points' defaults for
# them differ (experiments.fashion_mnist: 0.1 and 0.1).
PRESETS["fashion-conv"] = dict(
    PRESETS["mnist-conv"], hidden=("conv:30:5:p2", "conv:120:3:p2", "conv:240:3:p2",
                                   "conv:480:3"),
    epochs=20, input_noise=0.0, readout_label_smoothing=0.1)

# MNIST: the fashion-conv network with hidden dropout 0.2 (each layer trains on its input
# with a fifth of the units below dropped; the image is never dropped, and readouts read
# every unit): the best of the MNIST conv screens on the validation split (docs/blocks.md).
PRESETS["mnist-conv-wide"] = dict(PRESETS["fashion-conv"], hidden_dropout=0.2)

# The paper's unsupervised FF: no label in the input, hybrid-image negatives, the
# softmax readout (on the normalized activities of the last three layers) as the
# prediction; 4 x 2000 for 100 epochs with the reference update otherwise.
PRESETS["hinton-unsupervised"] = dict(PRESETS["hinton"], hidden=(2000, 2000, 2000, 2000),
                                      label_encoding="none", negatives="hybrid")
# The same with local receptive fields (no weight sharing), in the geometry the paper's
# text gives: a 4 x 4 grid of 10 x 10 fields at stride 6 with 128 channels; a 3 x 3 grid
# with 220 channels, each location reading all channels of 2 x 2 adjacent locations
# below; a 2 x 2 grid with 512 channels (about 2000 units per layer).
PRESETS["hinton-unsupervised-local"] = dict(
    PRESETS["hinton-unsupervised"],
    hidden=("local:128:10:s6:valid", "local:220:2:valid", "local:512:2:valid"))


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


RESUME_FLAGS = ("--resume", "--data-dir", "--devices", "--time-limit")

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in "2h30m", "45m", "90s", "1h5m30s" or a plain number of seconds;
    UsageError for anything else."""
    text = str(text).strip()
    try:
        seconds = float(text)
    except ValueError:
        m = _DURATION.fullmatch(text)
        if not text or m is None or not any(m.groups()):
            raise UsageError(f"--time-limit {text}: give a duration such as 2h30m, 45m, "
                             "90s or a number of seconds.") from None
        h, mi, se = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + se
    if not seconds > 0 or not math.isfinite(seconds):
        raise UsageError(f"--time-limit {text}: must be a positive duration.")
    return seconds


def config_from_dict(saved: dict) -> Config:
    """The Config of a saved settings dict (a run's config.json, or a record's "config"):
    fields it does not know are skipped, and a field added after it was saved takes its
    default, which keeps the behaviour the run had (JSON lists become tuples)."""
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in saved.items() if k in known})


def saved_config(run_dir) -> Config:
    """The Config saved in run_dir/config.json (config_from_dict); UsageError when there
    is none or it is not a readable ffjax config."""
    saved = record.RunDir(run_dir).read_config()
    try:
        return config_from_dict(saved)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--resume {run_dir}: its {record.CONFIG} is not a readable "
                         f"ffjax config ({e}).") from None


def _resumed_config(argv, run_dir: str, data_dir: str | None,
                    devices: int | None, time_limit: str | None = None) -> Config:
    """The Config saved in run_dir/config.json, to continue that run (with this job's
    --time-limit, if any: the saved one was the earlier job's)."""
    given = sorted({a.split("=")[0] for a in argv if a.startswith("--")} - set(RESUME_FLAGS))
    if given:
        raise UsageError(f"--resume continues a run with the settings saved in its "
                         f"config.json; drop {', '.join(given)} (only --data-dir, "
                         "--devices and --time-limit may change).")
    cfg = saved_config(run_dir)
    return dataclasses.replace(cfg, resume=str(run_dir), out_dir=str(run_dir),
                               data_dir=data_dir or cfg.data_dir, overwrite=False,
                               devices=devices if devices is not None else cfg.devices,
                               time_limit=time_limit)


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
    pre.add_argument("--time-limit", default=None)
    known = pre.parse_known_args(argv)[0]
    if known.resume is not None and "-h" not in argv and "--help" not in argv:
        if extra:
            raise UsageError("--resume is not available here.")
        return _resumed_config(argv, known.resume, known.data_dir, known.devices,
                               known.time_limit), {}
    name = known.preset
    defaults = apply_preset(defaults, name)
    parser = make_parser(defaults, description)
    for dest, kwargs in extra.items():
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, **kwargs)
    values = {k: tuple(v) if isinstance(v, list) else v
              for k, v in vars(parser.parse_args(argv)).items()}
    values["hidden"] = tuple(int(t) if str(t).isdigit() else t for t in values["hidden"])
    extras = {k: values.pop(k) for k in extra}
    return dataclasses.replace(defaults, **values), extras


def load_plugins(cfg: Config) -> None:
    """Imports the modules of --plugins (each once; Python caches them), so what they add
    to ffjax's registries is there before a name is looked up."""
    for name in cfg.plugins:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UsageError(f"--plugins {name}: cannot import it ({e}); give a module on "
                             "the Python path, e.g. experiments.self_contrastive.") from None


def _encoding(cfg: Config):
    """--label-encoding's object (10 classes: the checks read what kind it is, not C)."""
    return encodings.make_encoding(cfg.label_encoding, num_classes=10,
                                   strength=cfg.label_strength)


def check_config(cfg: Config) -> None:
    """Rejects impossible settings before any data is loaded or anything compiled (after
    importing --plugins, whose names it then knows)."""
    def bad(msg):
        raise UsageError(msg)

    load_plugins(cfg)

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
    if not cfg.hidden:
        bad("--hidden: give one or more layers.")
    for token in cfg.hidden:
        try:
            layers.parse_block(token)
        except ValueError as e:
            bad(f"--hidden {token}: {e}")
    if cfg.label_encoding not in encodings.ENCODINGS:
        bad(f"--label-encoding {cfg.label_encoding}: choose one of "
            f"{', '.join(encodings.ENCODINGS)}.")
    if cfg.batch_size <= 0:
        bad(f"--batch-size {cfg.batch_size}: must be a positive integer.")
    if not cfg.lr > 0:
        bad(f"--lr {cfg.lr}: must be positive.")
    if cfg.norm not in layers.NORMS:
        bad(f"--norm {cfg.norm}: choose one of {', '.join(layers.NORMS)}.")
    if cfg.output_norm not in layers.OUTPUT_NORMS:
        bad(f"--output-norm {cfg.output_norm}: choose one of "
            f"{', '.join(layers.OUTPUT_NORMS)}.")
    if not 0 <= cfg.output_norm_momentum < 1:
        bad(f"--output-norm-momentum {cfg.output_norm_momentum}: must be in [0, 1).")
    if cfg.theta is not None and not cfg.theta > 0:
        bad(f"--theta {cfg.theta}: must be positive.")
    if cfg.norm == "l2" and cfg.theta is None:
        bad("--norm l2 gives every activity vector unit length, so the default threshold "
            "(each layer's width, made for --norm rms) is out of reach and nothing is "
            "learned. Give --theta (and retune --lr) with l2.")
    if cfg.train_size is not None and cfg.train_size <= 0:
        bad(f"--train-size {cfg.train_size}: must be a positive integer.")
    if cfg.validation_size < 0:
        bad(f"--validation-size {cfg.validation_size}: must be >= 0.")
    if cfg.seeds < 1:
        bad(f"--seeds {cfg.seeds}: must be >= 1.")
    if not _encoding(cfg).carries_label and cfg.objective != "group_softmax":
        if not cfg.readout:
            bad(f"--no-readout: with --label-encoding {cfg.label_encoding} (no label) the "
                "softmax readout is the prediction (the goodness readout needs a label in "
                "the input); keep --readout.")
        if cfg.score_layers is not None:
            bad(f"--score-layers: the goodness readout needs a label in the input; with "
                f"--label-encoding {cfg.label_encoding} (no label) the softmax readout "
                "predicts (choose its layers with --readout-layers).")
    if cfg.mask_blur_steps < 0:
        bad(f"--mask-blur-steps {cfg.mask_blur_steps}: must be >= 0.")
    if cfg.mask_blur_steps_max is not None:
        if cfg.mask_blur_steps_max < cfg.mask_blur_steps:
            bad(f"--mask-blur-steps-max {cfg.mask_blur_steps_max}: must be at least "
                f"--mask-blur-steps ({cfg.mask_blur_steps}).")
        if cfg.negatives not in ("hybrid", "masked"):
            bad(f"--mask-blur-steps-max {cfg.mask_blur_steps_max}: sets the masks of "
                f"--negatives hybrid and masked, not of --negatives {cfg.negatives}.")
    if not 0 < cfg.mask_fraction < 1:
        bad(f"--mask-fraction {cfg.mask_fraction}: must be in (0, 1).")
    if cfg.hybrid_partner not in negatives.HYBRID_PARTNERS:
        bad(f"--hybrid-partner {cfg.hybrid_partner}: choose one of "
            f"{', '.join(negatives.HYBRID_PARTNERS)}.")
    if cfg.hybrid_partner != negatives.HYBRID_PARTNER and cfg.negatives != "hybrid":
        bad(f"--hybrid-partner {cfg.hybrid_partner}: chooses the second image of "
            f"--negatives hybrid, not of --negatives {cfg.negatives}.")
    if cfg.hybrid_count < 1:
        bad(f"--hybrid-count {cfg.hybrid_count}: give at least 1 negative per positive.")
    if cfg.hybrid_count != negatives.HYBRID_COUNT and cfg.negatives != "hybrid":
        bad(f"--hybrid-count {cfg.hybrid_count}: counts the mixtures of --negatives "
            f"hybrid, not the negatives of --negatives {cfg.negatives}.")
    if cfg.time_limit is not None:
        parse_duration(cfg.time_limit)
    if cfg.eval_every < 0:
        bad(f"--eval-every {cfg.eval_every}: must be >= 0.")
    if cfg.schedule.startswith("interleaved"):
        try:
            interleaved_epochs(cfg.schedule, cfg.epochs, len(cfg.hidden))
        except ValueError as e:
            bad(f"--schedule {cfg.schedule}: "
                + str(e).replace(f"schedule={cfg.schedule!r}", "").lstrip(": "))
    elif cfg.schedule not in SCHEDULES:
        bad(f"--schedule {cfg.schedule}: choose one of {', '.join(SCHEDULES)}, or "
            "interleaved:E1,E2,... (each layer's epochs).")
    if cfg.schedule == "greedy" and cfg.epochs < len(cfg.hidden):
        bad(f"--schedule greedy trains one layer per phase: --epochs must be at least the "
            f"number of layers ({len(cfg.hidden)}).")
    if cfg.negatives not in negatives.GENERATORS:  # read now: a module may have added one
        bad(f"--negatives {cfg.negatives}: choose one of {', '.join(negatives.GENERATORS)}.")
    if cfg.objective not in objective.OBJECTIVES:
        bad(f"--objective {cfg.objective}: choose one of {', '.join(objective.OBJECTIVES)}.")
    if cfg.preset is not None and cfg.preset not in PRESETS:
        bad(f"--preset {cfg.preset}: unknown; choose one of {', '.join(PRESETS)}.")
    try:
        spec_of(cfg, 10, data.IMAGE_SHAPES.get(data.canonical_name(cfg.dataset)))
        optimizer_of(cfg)
    except ValueError as e:  # the specs' own checks, phrased as flags
        msg = re.sub(r"^block \d+ \((\S+)\): ", r"--hidden \1: ", str(e))
        bad(re.sub(r"^(\w+)=(\S+) ", lambda m: f"--{m[1].replace('_', '-')} {m[2]}: ",
                   msg))


def score_layers(cfg: Config) -> tuple:
    """The layers the goodness readout sums: --score-layers, else all of them (all but
    the first with --no-score-first-layer, the reference code's choice; docs/recipe.md
    compares the two)."""
    if cfg.score_layers is not None:
        return tuple(sorted(set(cfg.score_layers)))
    if cfg.score_first_layer or len(cfg.hidden) == 1:
        return tuple(range(len(cfg.hidden)))
    return tuple(range(1, len(cfg.hidden)))




def takes_images(cfg: Config) -> bool:
    """Whether the network reads (H, W, C) images rather than flat feature vectors: its
    first block needs them (conv, local) or its label encoding does (channels)."""
    first = layers.parse_block(cfg.hidden[0])
    return 3 in (getattr(first, "in_rank", None), getattr(_encoding(cfg), "in_rank", None))


def input_shape_of(cfg: Config, image_shape) -> tuple | None:
    """One example's shape as the network reads it: the dataset's image shape (H, W, C)
    when takes_images(cfg), else the flattened image (H * W * C,); None if unknown."""
    if image_shape is None:
        return None
    return tuple(image_shape) if takes_images(cfg) else (math.prod(image_shape),)


def spec_of(cfg: Config, num_classes: int, image_shape=None) -> FFSpec:
    """The model and objective that `cfg` describes, for `num_classes` classes and
    images of shape `image_shape` (H, W, C) (needed for conv and local blocks). Imports
    --plugins first, so the names they add are known."""
    load_plugins(cfg)
    return FFSpec(
        hidden=tuple(cfg.hidden), input_shape=input_shape_of(cfg, image_shape),
        num_classes=num_classes, label_encoding=cfg.label_encoding,
        label_strength=cfg.label_strength,
        norm=cfg.norm, output_norm=cfg.output_norm,
        output_norm_momentum=cfg.output_norm_momentum, theta=cfg.theta,
        objective=cfg.objective,
        temperature=cfg.temperature, group_label_smoothing=cfg.group_label_smoothing,
        symba_alpha=cfg.symba_alpha,
        loss_scale=cfg.loss_scale, negatives=negatives_of(cfg, image_shape),
        peer_strength=cfg.peer_strength, goodness_scope=cfg.goodness_scope,
        input_noise=cfg.input_noise, hidden_dropout=cfg.hidden_dropout, readout=cfg.readout,
        readout_label_smoothing=cfg.readout_label_smoothing,
        readout_layers=cfg.readout_layers, score_layers=score_layers(cfg))


def negatives_of(cfg: Config, image_shape=None):
    """--negatives as FFSpec(negatives=...) takes it: the name, or for the mask-based
    generators one built with the dataset's image shape and the mask settings."""
    if cfg.negatives == "hybrid":
        return negatives.hybrid(image_shape=image_shape, blur_steps=cfg.mask_blur_steps,
                                partner=cfg.hybrid_partner, count=cfg.hybrid_count,
                                blur_steps_max=cfg.mask_blur_steps_max)
    if cfg.negatives == "masked":
        return negatives.masked(image_shape=image_shape, fraction=cfg.mask_fraction,
                                blur_steps=cfg.mask_blur_steps,
                                blur_steps_max=cfg.mask_blur_steps_max)
    return cfg.negatives


def optimizer_of(cfg: Config) -> optim.OptimizerSpec:
    """The optimizer settings of `cfg`."""
    return optim.OptimizerSpec(
        name=cfg.optimizer, lr=cfg.lr, lr_scaling=cfg.lr_scaling, lr_decay=cfg.lr_decay,
        lr_decay_start=cfg.lr_decay_start, lr_gain_per_epoch=cfg.lr_gain_per_epoch,
        weight_decay=cfg.weight_decay, decoupled_weight_decay=cfg.decoupled_weight_decay,
        readout_lr=cfg.readout_lr, readout_weight_decay=cfg.readout_weight_decay,
        readout_bias=cfg.readout_bias)
