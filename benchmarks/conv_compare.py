"""A conv FF network against the same network trained by backprop, in one run:
`python -m benchmarks.conv_compare --help`.

Both train on the same examples for the same epochs in the same scanned-epoch loop
structure: FF as the FF flags given say (the experiments' CLI flags, e.g. --hidden
conv:20:5:p2 conv:80:3:p2 --objective group_softmax ...), backprop on baselines.BlockNet
(the same blocks, normalization and shapes, the same output batch normalization when the
FF flags ask for it, a dense softmax layer on the last one, Adam).
After every epoch both are scored on the validation split (the last 10k training images;
--test scores the test set instead): FF by its goodness (or class-group) readout and its
softmax readout. Reports the median seconds per epoch (compilation apart), their ratio,
and the accuracies per epoch; writes benchmarks/results/<device>-<date>-conv-compare.json.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
import optax

from benchmarks import baselines
from ffjax import config, data, driver, inference, record
from ffjax.epoch import params_of

DEFAULTS = config.Config(hidden=("conv:20:5:p2", "conv:80:3:p2", "conv:160:3"), epochs=3)
EXTRA = {"bp_lr": dict(type=float, default=1e-3, help="Adam learning rate of backprop"),
         "test": dict(action="store_true", help="score the test set, not validation"),
         "out": dict(default=None, help="output JSON")}


def main(argv=None):
    cfg, extra = config.parse_config_with(argv, DEFAULTS, __doc__.splitlines()[0], EXTRA)
    config.check_config(cfg)
    name = data.canonical_name(cfg.dataset)
    ds = data.load(cfg.dataset, cfg.data_dir)
    spec = config.spec_of(cfg, ds.num_classes, data.IMAGE_SHAPES[name])
    x_fit, y_fit, x_val, y_val = data.split_validation(ds.x_train, ds.y_train, 10_000)
    if extra["test"]:
        x_fit, y_fit, x_val, y_val = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    if cfg.train_size is not None:  # --train-size: the first N of the examples trained on
        x_fit, y_fit = x_fit[:cfg.train_size], y_fit[:cfg.train_size]
    split = "test" if extra["test"] else "validation"
    shaped = lambda a: a.reshape((len(a),) + spec.input_shape)  # noqa: E731
    rows = {"ff": [], "bp": []}

    program = driver.make_program(jax.random.key(cfg.seed), shaped(x_fit), y_fit, spec,
                                  epochs=cfg.epochs, batch_size=cfg.batch_size,
                                  optimizer=config.optimizer_of(cfg))
    t0 = time.perf_counter()
    ff_epoch = program.epochs[0].lower(program.state, program.x, program.y,
                                       program.epoch_key(0)).compile()
    ff_compile = time.perf_counter() - t0
    predict = inference.make_predict(spec)
    state, xv = program.state, jax.device_put(shaped(x_val))
    for e in range(cfg.epochs):
        t0 = time.perf_counter()
        state, m = ff_epoch(state, program.x, program.y, program.epoch_key(e))
        jax.block_until_ready(m)
        seconds = time.perf_counter() - t0
        p = predict(params_of(state), xv, state.readout.params if state.readout else None)
        row = {"epoch": e + 1, "seconds": seconds,
               "accuracy": inference.accuracy(p.combined, y_val),
               "accuracy_per_layer": [inference.accuracy(p.per_layer[:, i], y_val)
                                      for i in range(spec.num_layers)]}
        if p.readout is not None:
            row["accuracy_softmax"] = inference.accuracy(p.readout, y_val)
        rows["ff"].append(row)
        print(f"ff epoch {e + 1}: {seconds:.1f}s, {split} {100 * row['accuracy']:.2f} %"
              + (f" (softmax {100 * row['accuracy_softmax']:.2f} %)"
                 if "accuracy_softmax" in row else ""), flush=True)

    model = baselines.BlockNet(spec)
    opt = optax.adam(extra["bp_lr"])
    bp_state = baselines.init_state(jax.random.key(cfg.seed), model,
                                    int(np.prod(spec.input_shape)), opt)
    bp_epoch = baselines.make_bp_epoch(model, opt, batch_size=cfg.batch_size)
    bp_predict = baselines.make_bp_predict(model)
    xf, yf = jax.device_put(x_fit), jax.device_put(y_fit)
    key = jax.random.key(cfg.seed + 1)
    t0 = time.perf_counter()
    bp_compiled = bp_epoch.lower(bp_state, xf, yf, jax.random.fold_in(key, 0)).compile()
    bp_compile = time.perf_counter() - t0
    for e in range(cfg.epochs):
        t0 = time.perf_counter()
        bp_state, m = bp_compiled(bp_state, xf, yf, jax.random.fold_in(key, e))
        jax.block_until_ready(m)
        seconds = time.perf_counter() - t0
        acc = inference.accuracy(bp_predict(bp_state.variables, jax.device_put(x_val)), y_val)
        rows["bp"].append({"epoch": e + 1, "seconds": seconds, "accuracy": acc})
        print(f"bp epoch {e + 1}: {seconds:.1f}s, {split} {100 * acc:.2f} %", flush=True)

    ff_s = statistics.median(r["seconds"] for r in rows["ff"])
    bp_s = statistics.median(r["seconds"] for r in rows["bp"])
    info = {"split": split,
            "hidden": [str(b) for b in spec.blocks], "layer_shapes": spec.layer_shapes,
            "epochs": cfg.epochs, "ff_config": {k: v for k, v in vars(cfg).items()},
            "bp_optimizer": f"adam({extra['bp_lr']})",
            "ff_compile_seconds": ff_compile, "bp_compile_seconds": bp_compile,
            "ff_seconds_per_epoch_median": ff_s, "bp_seconds_per_epoch_median": bp_s,
            "ff_over_bp_epoch_time": ff_s / bp_s, "ff": rows["ff"], "bp": rows["bp"]}
    print(f"FF {ff_s:.1f} s/epoch, backprop {bp_s:.1f} s/epoch: FF / BP = {ff_s / bp_s:.2f}; "
          f"after {cfg.epochs} epochs {split} accuracy FF {100 * rows['ff'][-1]['accuracy']:.2f}"
          f" %, backprop {100 * rows['bp'][-1]['accuracy']:.2f} %")
    record.write_benchmark("conv_compare", info, extra["out"], suffix="conv-compare")


if __name__ == "__main__":
    main()
