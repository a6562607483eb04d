"""Refits a finished run's softmax readout on its frozen features, on the validation split:
`python -m benchmarks.refit_readout RUN_DIR [--layers 1 2] [--weight-decay 0 0.01]`.

It answers whether a run's prediction is limited by its readout or by its features: a
zero-initialized linear softmax is trained, after the FF layers and apart from them, on
the normalized activities of the chosen layers of the run's last checkpoint (the features
the run's own readout reads), for --epochs passes over the run's training split, with SGD
and momentum (or Adam), its learning rate falling linearly to 0, optionally with dropout
on the features. Several values of --epochs, --lr, --weight-decay, --label-smoothing and
--dropout give one refit per combination, on features computed once. --from-own starts
each refit from the run's own readout rather than from zero weights.

Where the run's objective has class groups, the joint readout (each layer's class
log-probabilities times the softmax readout's) is scored with the run's own readout and
with each refitted one: the features are the same, so they differ by the readout alone.

Only runs that held out a validation split (--validation-size) are accepted, and only
that split is scored: the test set is never read. The run directory is only read; the
record goes to --out, by default benchmarks/results/<device>-<date>-refit-readout.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import finished_run
from ffjax import inference, readout, record
from ffjax.config import UsageError


@dataclasses.dataclass(frozen=True)
class Refit:
    """How the readout is refitted (the command line's flags)."""
    layers: tuple  # 0-based layers read
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    batch_size: int
    seed: int
    standardize: bool  # each feature to zero mean, unit variance on the training split
    dropout: float  # fraction of the features zeroed in each training step (0: none)
    optimizer: str  # "sgd" (with momentum) or "adam", either with the falling lr


class Fitted(NamedTuple):
    """What a refit gives: the validation accuracy after each epoch, the final training
    accuracy, and the final readout's (N_val, C) validation logits (for the joint readout)."""
    curve: list
    train_accuracy: float
    val_logits: np.ndarray


def layer_features(params, x, spec, *, keep=None, chunk: int = 1000) -> list:
    """Every layer's (N, F_i) normalized activities (readout.layer_features), in chunks;
    None in place of the layers not in `keep` (default: all), whose features of a conv
    network would take gigabytes for nothing."""
    keep = tuple(range(spec.num_layers)) if keep is None else tuple(keep)
    feats = jax.jit(lambda xb: tuple(f if i in keep else None for i, f in
                                     enumerate(readout.layer_features(params, xb, spec))))
    parts = [jax.device_get(feats(jnp.asarray(x[i:i + chunk])))
             for i in range(0, len(x), chunk)]
    return [np.concatenate([p[i] for p in parts]) if i in keep else None
            for i in range(spec.num_layers)]


def _accuracy(rparams, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(readout.logits(rparams, x)), 1) == y))


def joint_accuracies(goodness_NxLxC, logits_NxC, y, spec) -> dict:
    """Accuracy of the joint readout (inference.joint_scores) with these readout logits,
    over all layers' class groups and over all but the first, as the runs record it."""
    sels = {"all": tuple(range(spec.num_layers)),
            "all_but_first": tuple(range(1, spec.num_layers))}
    return {name: inference.accuracy(np.argmax(np.asarray(inference.joint_scores(
        goodness_NxLxC, logits_NxC, sel, spec)), -1), y) for name, sel in sels.items()}


def refit(feats_fit: list, y_fit, feats_val: list, y_val, how: Refit,
          num_classes: int, start=None) -> Fitted:
    """A linear softmax fitted on the concatenated features of `how.layers`, from zero
    weights, or from `start` (a readout's DenseParams for these features)."""
    x = np.concatenate([feats_fit[i] for i in how.layers], 1)
    xv = np.concatenate([feats_val[i] for i in how.layers], 1)
    if how.standardize:  # the training split's statistics for both splits
        mean, std = x.mean(0), x.std(0) + 1e-3  # (+1e-3: units that never fire stay 0)
        x, xv = (x - mean) / std, (xv - mean) / std
    x = jnp.asarray(x)
    y = jnp.asarray(y_fit)
    steps = len(y_fit) // how.batch_size
    lr = optax.linear_schedule(how.lr, 0.0, how.epochs * steps)
    opt = optax.chain(optax.add_decayed_weights(how.weight_decay),
                      optax.adam(lr) if how.optimizer == "adam"
                      else optax.sgd(lr, momentum=how.momentum))

    def loss(p, xb, yb, key):
        if how.dropout:  # inverted dropout: the expected input is unchanged
            keep = jax.random.bernoulli(key, 1.0 - how.dropout, xb.shape)
            xb = jnp.where(keep, xb / (1.0 - how.dropout), 0.0)
        targets = optax.smooth_labels(jax.nn.one_hot(yb, num_classes), how.label_smoothing)
        return jnp.mean(optax.softmax_cross_entropy(readout.logits(p, xb), targets))

    # x and y are arguments, not closed over: a closure would copy the features into the
    # compiled program as constants (gigabytes for conv layers).
    @jax.jit
    def one_epoch(p, opt_state, key, x, y):
        key, drop_key = jax.random.split(key)
        order = jax.random.permutation(key, len(y_fit))[:steps * how.batch_size]

        def step(carry, idx_and_key):
            p, s = carry
            idx, k = idx_and_key
            updates, s = opt.update(jax.grad(loss)(p, x[idx], y[idx], k), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (p, opt_state), (order.reshape(steps, -1),
                                                   jax.random.split(drop_key, steps)))[0]

    p = readout.init_readout(x.shape[1], num_classes) if start is None else start
    opt_state = opt.init(p)
    curve = []
    for key in jax.random.split(jax.random.key(how.seed), how.epochs):
        p, opt_state = one_epoch(p, opt_state, key, x, y)
        curve.append(_accuracy(p, xv, y_val))
    return Fitted(curve, _accuracy(p, x, y_fit), np.asarray(readout.logits(p, xv)))


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def parse_args(argv=None):
    p = finished_run.parser(__doc__)
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="0-based layers to read (default: the run's readout layers)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="SGD with momentum, or Adam (try --lr 0.003 with it); the learning "
                        "rate falls linearly to 0 with either")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum")
    p.add_argument("--batch-size", type=_positive(int), default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standardize", action="store_true",
                   help="scale each feature to zero mean and unit variance (statistics of "
                        "the training split) before fitting; try a smaller --lr with it")
    p.add_argument("--from-own", action="store_true",
                   help="start from the run's own readout instead of zero weights (it "
                        "goes on training that readout on the final features)")
    # Several values of these five: one refit for each combination, on features
    # computed once.
    p.add_argument("--epochs", type=_positive(int), nargs="+", default=[10])
    p.add_argument("--lr", type=_positive(float), nargs="+", default=[0.1])
    p.add_argument("--weight-decay", type=float, nargs="+", default=[0.003])
    p.add_argument("--label-smoothing", type=float, nargs="+", default=[0.0])
    p.add_argument("--dropout", type=float, nargs="+", default=[0.0],
                   help="fraction of the features zeroed in each training step (0: none)")
    return p.parse_args(argv)


def _pct(values) -> str:
    return " / ".join(f"{100 * v:.2f} %" for v in values)


def run(args) -> dict:
    cfg, spec, split, state, epoch = finished_run.load(args)
    if state.readout is None:
        raise UsageError(f"{args.run_dir} trained no softmax readout (--no-readout), so "
                         "there are no readout layers to compare with.")
    layers = tuple(args.layers) if args.layers else tuple(spec.readout_layer_ids)
    bad = [i for i in layers if not 0 <= i < spec.num_layers]
    if bad:
        raise UsageError(f"--layers {' '.join(map(str, bad))}: the run has "
                         f"{spec.num_layers} layers (0 to {spec.num_layers - 1}).")
    if args.batch_size > len(split.y_fit):
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training "
                         f"split ({len(split.y_fit)} examples).")
    if args.from_own and (layers != tuple(spec.readout_layer_ids) or args.standardize):
        raise UsageError("--from-own goes on training the run's own readout: it reads the "
                         "run's readout layers, unstandardized (leave out --layers and "
                         "--standardize).")
    for name in ("dropout", "label_smoothing"):
        if not all(0 <= v < 1 for v in getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} "
                             f"{' '.join(map(str, getattr(args, name)))}: give fractions "
                             "in [0, 1).")
    if min(args.weight_decay) < 0:
        raise UsageError("--weight-decay: give values >= 0.")
    hows = [Refit(layers, e, lr, args.momentum, wd, ls, args.batch_size, args.seed,
                  args.standardize, d, args.optimizer)
            for e, lr, wd, ls, d in itertools.product(args.epochs, args.lr,
                                                      args.weight_decay,
                                                      args.label_smoothing, args.dropout)]
    params = tuple(layer.params for layer in state.layers)
    feats_fit = layer_features(params, split.x_fit, spec, keep=layers)
    feats_val = layer_features(params, split.x_val, spec,
                               keep=set(layers) | set(spec.readout_layer_ids))
    y_fit, y_val = np.asarray(split.y_fit), np.asarray(split.y_val)
    own_logits = np.asarray(readout.logits(state.readout.params,
                                           readout.select(feats_val, spec)))
    own = inference.accuracy(np.argmax(own_logits, 1), y_val)
    info = {"run_dir": str(args.run_dir), "checkpoint_epoch": epoch,
            "run_config": dataclasses.asdict(cfg), "from_own_readout": args.from_own,
            "own_readout_layers": list(spec.readout_layer_ids),
            "own_readout_validation_accuracy": own, "refits": []}
    print(f"validation accuracy of the run's own readout (layers "
          f"{' '.join(map(str, spec.readout_layer_ids))}): {100 * own:.2f} %")
    # The joint readout (where it applies) with either readout, from the same goodness.
    g = (np.asarray(jax.device_get(inference.make_predict(spec)(
        params, jnp.asarray(split.x_val)).goodness))
         if inference.joint_applies(spec) else None)
    if g is not None:
        info["own_joint_validation_accuracy"] = joint_accuracies(g, own_logits, y_val, spec)
        print("joint readout (all / all but the first layer's class groups) with it: "
              + _pct(info["own_joint_validation_accuracy"].values()))
    for how in hows:
        fitted = refit(feats_fit, y_fit, feats_val, y_val, how, spec.num_classes,
                       start=state.readout.params if args.from_own else None)
        one = {"refit": dataclasses.asdict(how), "validation_accuracy": fitted.curve[-1],
               "validation_accuracy_per_epoch": fitted.curve,
               "train_accuracy": fitted.train_accuracy}
        line = (f"refit on layers {' '.join(map(str, layers))}, {how.optimizer}, "
                f"{how.epochs} epochs, lr "
                f"{how.lr}, weight decay {how.weight_decay}, label smoothing "
                f"{how.label_smoothing}, dropout {how.dropout}: {100 * fitted.curve[-1]:.2f} "
                f"% (training {100 * fitted.train_accuracy:.2f} %)")
        if g is not None:
            one["joint_validation_accuracy"] = joint_accuracies(g, fitted.val_logits,
                                                                y_val, spec)
            line += "; joint " + _pct(one["joint_validation_accuracy"].values())
        info["refits"].append(one)
        print(line, flush=True)
    record.write_benchmark("refit_readout", info, args.out, suffix="refit-readout")
    return info


def main(argv=None) -> int:
    return finished_run.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
