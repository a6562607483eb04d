"""How well a run's FF layers hold their own objective on images they never trained on.

For a finished run's last checkpoint, each layer's goodness G is computed for positives and
for the run's own negatives (its negative generator, fresh draws) on the same number of
training and held-out validation images (clean: a run's --input-noise is not added). Per
layer it reports the fraction of positives above theta and of negatives below it on both
splits. A layer whose positives pass far more often on the training images than on the
held-out ones has fitted its training positives, not what makes an image a positive.
Validation split only: the test set is never read.

    python -m benchmarks.goodness_gap RUN_DIR [--examples 10000] [--out PATH]
"""
from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import finished_run
from ffjax import labels, network, objective, readout, record
from ffjax.config import UsageError
from ffjax.negatives import Minibatch

CHUNK = 1000  # examples per forward pass; also the minibatch a generator draws partners from


def pass_rates(params, readout_params, x, y, spec, key) -> dict:
    """Per layer: the fraction of positives with G > theta and of the generator's
    negatives with G < theta, and the median G of each, over x in chunks of CHUNK.
    A generator that needs logits (hard negatives) gets the run's softmax readout's, as
    in training."""
    generator = spec.negative_generator

    @jax.jit
    def goodness(xb, yb, k):
        xf = labels.to_float(xb)
        logits = None
        if generator.needs_logits:
            feats = readout.select(readout.layer_features(params, xf, spec), spec)
            logits = readout.logits(readout_params, feats)
        x_neg = generator.generate(k, Minibatch(xf, yb, logits), spec)
        g = [jnp.stack([objective.goodness(h) for h in network.forward(params, xs, spec)])
             for xs in (spec.encoding.embed(xf, yb), x_neg)]
        return g[0], g[1]

    pos, neg = [], []
    for i, k in zip(range(0, len(x), CHUNK), jax.random.split(key, -(-len(x) // CHUNK))):
        gp, gn = jax.device_get(goodness(jnp.asarray(x[i:i + CHUNK]),
                                         jnp.asarray(y[i:i + CHUNK]), k))
        pos.append(gp)
        neg.append(gn)
    pos, neg = np.concatenate(pos, 1), np.concatenate(neg, 1)
    t = np.asarray(spec.thetas, np.float64)[:, None]
    return {"positives_above_theta": np.mean(pos > t, 1).tolist(),
            "negatives_below_theta": np.mean(neg < t, 1).tolist(),
            "median_goodness_positives": np.median(pos, 1).tolist(),
            "median_goodness_negatives": np.median(neg, 1).tolist()}


def parse_args(argv=None):
    p = finished_run.parser(__doc__)
    p.add_argument("--examples", type=int, default=10000,
                   help="images of each split: a multiple of 1000 up to the validation "
                        "split's size")
    p.add_argument("--seed", type=int, default=0, help="draws the negatives")
    return p.parse_args(argv)


def run(args) -> dict:
    cfg, spec, split, state, epoch = finished_run.load(args)
    if spec.uses_groups:
        raise UsageError(f"{args.run_dir} trained a class-group objective: it has no "
                         "threshold or negatives to measure.")
    if spec.goodness_scope != "layer":
        raise UsageError(f"{args.run_dir} scores goodness per location (--goodness-scope "
                         f"{spec.goodness_scope}); this benchmark reads whole-layer goodness.")
    if spec.negative_generator.needs_logits and state.readout is None:
        raise UsageError(f"--negatives {cfg.negatives} draws from the readout's logits, and "
                         f"{args.run_dir} trained no readout (--no-readout).")
    n, n_val = args.examples, len(split.y_val)
    if n < CHUNK or n % CHUNK or n > n_val:
        raise UsageError(f"--examples {n}: give a multiple of {CHUNK} up to the validation "
                         f"split's {n_val} images.")
    params = tuple(layer.params for layer in state.layers)
    key = jax.random.key(args.seed)
    rparams = None if state.readout is None else state.readout.params
    splits = {name: pass_rates(params, rparams, x[:n], y[:n], spec, k)
              for (name, x, y), k in zip((("training", split.x_fit, split.y_fit),
                                          ("validation", split.x_val, split.y_val)),
                                         jax.random.split(key))}
    print("| split | positives above theta, per layer | negatives below theta, per layer |")
    print("| --- | --- | --- |")
    for name, r in splits.items():
        print(f"| {name} | " + " / ".join(f"{100 * v:.2f}" for v in r["positives_above_theta"])
              + " % | " + " / ".join(f"{100 * v:.2f}" for v in r["negatives_below_theta"])
              + " % |")
    info = {"run_dir": str(args.run_dir), "checkpoint_epoch": epoch,
            "run_config": dataclasses.asdict(cfg),
            "examples_per_split": n, "seed": args.seed, "thetas": list(spec.thetas), **splits}
    record.write_benchmark("goodness_gap", info, args.out, suffix="goodness-gap")
    return info


def main(argv=None) -> int:
    return finished_run.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
