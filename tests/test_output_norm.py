"""Per-channel batch normalization of every layer's output (spec.output_norm "batch"):
the batch's statistics in training (the positives' alone), running averages of them at
inference, and the guarantees every configuration keeps."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ffjax import config, driver, epoch, inference, labels, layers, network
from ffjax.spec import FFSpec
from tests.conftest import assert_gradients_are_local, assert_resume_is_exact, quietly

IMG = (6, 6, 2)
C = 3
# A logistic network with negatives, and a class-group one (no negatives).
LOGISTIC = dict(hidden=("conv:4:3", "conv:6:3:p2", 9), input_shape=IMG, num_classes=C,
                negatives="uniform", readout=False, output_norm="batch")
GROUPS = dict(hidden=("conv:6:3", "conv:3:3:p2", 9), input_shape=IMG, num_classes=C,
              objective="group_softmax", label_encoding="none", negatives="none",
              readout=False, output_norm="batch", peer_strength=0.0)


def _data(spec, n=12, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.randint(kx, (n,) + spec.input_shape, 0, 256).astype(jnp.uint8)
    return x, jax.random.randint(ky, (n,), 0, C)


def _with_running(params, seed=5):
    """params with random running statistics (var > 0) and trained-looking scales."""
    out = []
    for i, p in enumerate(params):
        k = jax.random.split(jax.random.key(seed + i), 4)
        n = p.norm.mean.shape
        out.append(p._replace(norm=layers.BatchNormParams(
            scale=1.0 + 0.3 * jax.random.normal(k[0], n), offset=0.2 * jax.random.normal(k[1], n),
            mean=jax.random.uniform(k[2], n), var=0.5 + jax.random.uniform(k[3], n))))
    return tuple(out)


def test_training_standardizes_each_channel_over_the_positives_alone():
    spec = FFSpec(**LOGISTIC)
    params = _with_running(network.init_network(jax.random.key(0), spec))
    x, y = _data(spec)
    x_pos = spec.encoding.embed(labels.to_float(x), y)
    x_neg = spec.encoding.embed(labels.to_float(x), (y + 1) % C)
    run = jax.jit(lambda neg: network.forward_activities(
        params, jnp.concatenate([x_pos, neg]), spec, stats_rows=len(x_pos)))
    acts = run(x_neg)
    for a, p in zip(acts, params):
        h = (a.h[:len(x_pos)] - p.norm.offset) / p.norm.scale  # undo the affine part
        axes = tuple(range(h.ndim - 1))
        np.testing.assert_allclose(jnp.mean(h, axis=axes), 0.0, atol=2e-5)
        var = jnp.var(h, axis=axes)
        np.testing.assert_allclose(var, a.stats[1] / (a.stats[1] + layers.BATCH_NORM_EPS),
                                   rtol=1e-4)
        assert float(jnp.min(var)) > 0.5  # every channel of this data is active
    # Other negatives change the negatives' outputs, never the positives'.
    other = run(x_neg[::-1] * 0.5)
    for a, b in zip(acts, other):
        np.testing.assert_array_equal(a.h[:len(x_pos)], b.h[:len(x_pos)])
        assert not np.array_equal(a.h[len(x_pos):], b.h[len(x_pos):])


def test_inference_uses_the_running_statistics_one_example_at_a_time():
    spec = FFSpec(**GROUPS)
    params = _with_running(network.init_network(jax.random.key(1), spec))
    x, _ = _data(spec, n=5)
    xf = labels.to_float(x)
    plain = dataclasses.replace(spec, output_norm="none")
    whole = network.forward(params, xf, spec)
    h = xf
    for i, p in enumerate(params):  # by hand: the plain layer, then the running norm
        z = spec.blocks[i].apply(p.block, layers.normalize(h, norm=spec.norm))
        h = (jax.nn.relu(z) - p.norm.mean) / jnp.sqrt(p.norm.var + layers.BATCH_NORM_EPS)
        h = h * p.norm.scale + p.norm.offset
        np.testing.assert_allclose(whole[i], h, rtol=1e-5, atol=1e-5)
    for j in range(len(x)):  # an example's prediction does not depend on its batch
        alone = network.forward(params, xf[j:j + 1], spec)
        for a, b in zip(alone, whole):
            np.testing.assert_allclose(a[0], b[j], rtol=1e-5, atol=1e-6)
    # With the norm off, the same block parameters give relu(z) as before.
    bare = network.forward(tuple(p.block for p in params), xf, plain)
    z0 = spec.blocks[0].apply(params[0].block, layers.normalize(xf, norm=spec.norm))
    np.testing.assert_allclose(bare[0], jax.nn.relu(z0), rtol=1e-6)


def test_with_running_statistics_equal_to_the_batch_inference_is_training():
    """The goodness training scores is the goodness inference reads, once the running
    statistics are the batch's: one forward pass serves both."""
    spec = FFSpec(**GROUPS)
    params = network.init_network(jax.random.key(2), spec)
    x, y = _data(spec, n=6)
    xf = labels.to_float(x)
    _, metrics, running = epoch.local_losses(params, xf, xf[:0], spec, y=y)
    # Each layer's statistics depend on the layers below; set them layer by layer.
    for i in range(spec.num_layers):
        acts = network.forward_activities(params, xf, spec, stats_rows=len(xf))
        mean, var = acts[i].stats
        params = params[:i] + (params[i]._replace(
            norm=params[i].norm._replace(mean=mean, var=var)),) + params[i + 1:]
    g = inference.layer_goodness(params, x, spec)  # (B, L, C), running statistics
    np.testing.assert_allclose(
        metrics.acc_pos, jnp.mean(jnp.argmax(g, -1) == y[:, None], axis=0), rtol=1e-6)
    for a, b in zip(running.norm_stats, (a.stats for a in acts)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [LOGISTIC, GROUPS], ids=["logistic", "groups"])
def test_batch_normalized_layers_stay_local(kw):
    """The batch statistics depend on the layer's own input and parameters alone, and
    its scale and offset learn from its own loss."""
    spec = FFSpec(**kw)
    params = network.init_network(jax.random.key(3), spec)
    x, y = _data(spec)
    xp = spec.encoding.embed(labels.to_float(x), y)
    xn = xp if spec.uses_groups else spec.encoding.embed(labels.to_float(x), (y + 1) % C)
    if spec.uses_groups:
        xn = xn[:0]
    assert_gradients_are_local(lambda p: epoch.local_losses(p, xp, xn, spec, y=y)[0], params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(epoch.local_losses(p, xp, xn, spec, y=y)[0])))(
        params)
    for g in grads:  # the trained affine part gets gradient, the running part none
        assert float(jnp.abs(g.norm.scale).sum()) > 0
        assert float(jnp.abs(g.norm.mean).sum()) == 0 == float(jnp.abs(g.norm.var).sum())


def test_a_step_moves_the_running_statistics_by_the_momentum_and_nothing_else():
    spec = FFSpec(**GROUPS, output_norm_momentum=0.8)
    x, y = _data(spec)
    xf = labels.to_float(x)
    opt = optax.adamw(0.1, weight_decay=0.5)  # decays every leaf, the statistics too
    state = epoch.init_train_state(jax.random.key(4), spec, IMG, opt)
    state = state._replace(layers=tuple(ls._replace(params=p) for ls, p in zip(
        state.layers, _with_running(epoch.params_of(state)))))
    before = epoch.params_of(state)
    acts = network.forward_activities(before, xf, spec, stats_rows=len(xf))
    after, _ = epoch.train_step(state, xf, xf[:0], spec, optimizer=opt, y=y,
                                trainable=(0, 2))
    for i, (a, b, act) in enumerate(zip(before, epoch.params_of(after), acts)):
        if i == 1:  # not trainable: every leaf as it was
            chex.assert_trees_all_equal(a, b)
            continue
        np.testing.assert_allclose(b.norm.mean, 0.8 * a.norm.mean + 0.2 * act.stats[0],
                                   rtol=1e-6)
        np.testing.assert_allclose(b.norm.var, 0.8 * a.norm.var + 0.2 * act.stats[1],
                                   rtol=1e-6)
        assert not np.allclose(b.norm.scale, a.norm.scale)  # trained by the optimizer


def test_a_batch_normalized_run_traces_once_resumes_exactly_and_vmaps(tmp_path):
    # Batches of 20 and a 30-unit last layer: with 10 examples some units' batch
    # variance nears 0, and dividing by its root magnifies float rounding (different
    # in a vmapped program) into visible differences. SGD, as Adam does the same for
    # near-zero gradients.
    spec = dataclasses.replace(FFSpec(**GROUPS), readout=True,
                               hidden=("conv:6:3", "conv:6:3:p2", 30))
    x, y = _data(spec, n=40)
    opt = optax.sgd(0.05, momentum=0.9)
    common = dict(batch_size=20, optimizer=opt, readout_optimizer=opt)
    st = epoch.init_train_state(jax.random.key(0), spec, IMG, opt, opt)
    ep = jax.jit(chex.assert_max_traces(epoch.make_train_epoch(
        spec, opt, opt, batch_size=20), n=1), donate_argnums=0)
    for e in range(2):
        st, _ = ep(st, x, y, jax.random.fold_in(jax.random.key(1), e))
    chex.clear_trace_counter()

    whole = assert_resume_is_exact(tmp_path, x, y, spec, **common)
    running = [p.norm.mean for p in epoch.params_of(whole.state)]
    assert all(float(jnp.abs(m).sum()) > 0 for m in running)  # the statistics moved

    with jax.debug_key_reuse(False):  # see tests/test_recipe.py's vmapped-seeds test
        many = driver.fit(jax.random.key(7), x, y, spec, epochs=3, num_seeds=2, **common)
    for i in range(2):
        one = driver.fit(jax.random.split(jax.random.key(7), 2)[i], x, y, spec, epochs=3,
                         **common)
        for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(many.state)):
            np.testing.assert_allclose(a, b[i], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kw, msg", [
    (dict(output_norm="layer"), "output_norm='layer' is not supported"),
    (dict(output_norm_momentum=1.0), "output_norm_momentum=1.0 must be in"),
])
def test_bad_output_norms_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FFSpec(**{**GROUPS, **kw})


@pytest.mark.parametrize("args, msg", [
    (["--output-norm", "layer"], "--output-norm layer: choose one of none, batch"),
    (["--output-norm-momentum", "1.5"], "--output-norm-momentum 1.5: must be in"),
])
def test_bad_output_norm_flags_get_one_line(args, msg):
    from experiments import mnist
    from ffjax import experiment
    code, err = quietly(experiment.main, mnist.DEFAULTS, "test",
                        ["--preset", "mnist-conv", *args])
    assert code == 2 and msg in err and "Traceback" not in err, err


def test_the_backprop_baseline_normalizes_as_the_ff_network_does():
    """baselines.BlockNet given the FF network's block, scale and offset parameters and
    running statistics computes the FF forward pass: with the running statistics at
    inference, and in training with the batch's, which it then moves into its running
    averages as the FF step does (spec.output_norm_momentum)."""
    from benchmarks import baselines
    spec = FFSpec(**GROUPS)
    params = _with_running(network.init_network(jax.random.key(0), spec))
    model = baselines.BlockNet(spec)
    x = jax.random.uniform(jax.random.key(1), (12,) + IMG)
    flat = x.reshape(len(x), -1)
    dense = model.init(jax.random.key(2), flat[:1])["params"]["Dense_0"]
    variables = {
        "params": {"Dense_0": dense,
                   **{f"block_{i}": p.block for i, p in enumerate(params)},
                   **{f"norm_{i}": {"scale": p.norm.scale, "bias": p.norm.offset}
                      for i, p in enumerate(params)}},
        "batch_stats": {f"norm_{i}": {"mean": p.norm.mean, "var": p.norm.var}
                        for i, p in enumerate(params)}}

    def logits(h):
        h = layers.normalize(h.reshape(len(h), -1), norm=spec.norm)
        return h @ dense["kernel"] + dense["bias"]

    h_eval = network.forward(params, x, spec)[-1]
    np.testing.assert_allclose(model.apply(variables, flat), logits(h_eval),
                               rtol=1e-4, atol=1e-5)
    acts = network.forward_activities(params, x, spec, stats_rows=len(x))
    got, updated = model.apply(variables, flat, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(got, logits(acts[-1].h), rtol=1e-4, atol=1e-4)
    k = spec.output_norm_momentum
    for i, (a, p) in enumerate(zip(acts, params)):
        new = updated["batch_stats"][f"norm_{i}"]
        np.testing.assert_allclose(new["mean"], k * p.norm.mean + (1 - k) * a.stats[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["var"], k * p.norm.var + (1 - k) * a.stats[1],
                                   rtol=1e-4, atol=1e-5)


def test_a_backprop_step_moves_the_running_statistics_and_trains_the_rest():
    from benchmarks import baselines
    spec = FFSpec(**GROUPS)
    model, opt = baselines.BlockNet(spec), optax.adam(1e-3)
    state = baselines.init_state(jax.random.key(0), model, 72, opt)
    x = jax.random.uniform(jax.random.key(1), (8, 72))
    y = jnp.arange(8) % C
    new, (loss, acc) = jax.jit(baselines.make_bp_step(model, opt))(state, x, y)
    assert set(new.variables) == {"params", "batch_stats"} and np.isfinite(loss)
    for old_leaf, new_leaf in zip(jax.tree.leaves(state.variables),
                                  jax.tree.leaves(new.variables)):
        assert not np.array_equal(old_leaf, new_leaf)
    preds = baselines.make_bp_predict(model)(new.variables, x)
    assert preds.shape == (8,)


def test_recalibrated_statistics_standardize_each_channel_over_the_data_inference_sees():
    """recalibrate_batch_norm leaves every layer's inference output over x standardized
    per channel (before the affine part), whatever the running statistics were before;
    the chunking changes nothing; each layer's statistics depend on the layers below it
    only; scale and offset stay; a network without batch norm is refused."""
    spec = FFSpec(**GROUPS, hidden_dropout=0.3).for_input(IMG)
    params = _with_running(network.init_network(jax.random.key(0), spec))
    x, _ = _data(spec, n=40)
    recal = network.recalibrate_batch_norm(params, x, spec, chunk_size=7)
    acts = network.forward_activities(recal, spec.encoding.neutral(labels.to_float(x)), spec)
    for a, p, q in zip(acts, recal, params):
        h = (a.h - p.norm.offset) / p.norm.scale
        axes = tuple(range(h.ndim - 1))
        live = np.asarray(p.norm.var) > 1e-3  # (a channel that never fires stays 0)
        assert live.any()
        np.testing.assert_allclose(np.asarray(jnp.mean(h, axis=axes))[live], 0.0, atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(jnp.var(h, axis=axes))[live],
            (np.asarray(p.norm.var) / (np.asarray(p.norm.var) + layers.BATCH_NORM_EPS))[live],
            rtol=1e-3)
        chex.assert_trees_all_equal((p.norm.scale, p.norm.offset, p.block),
                                    (q.norm.scale, q.norm.offset, q.block))
    whole = network.recalibrate_batch_norm(params, x, spec, chunk_size=len(x))
    chex.assert_trees_all_close(whole, recal, rtol=1e-5, atol=1e-6)
    # Another top layer leaves the statistics of the layers below it unchanged.
    top = params[:-1] + (params[-1]._replace(block=jax.tree.map(lambda w: 2 * w + 0.1,
                                                                params[-1].block)),)
    other = network.recalibrate_batch_norm(top, x, spec, chunk_size=7)
    chex.assert_trees_all_equal(other[:-1], recal[:-1])
    assert not np.allclose(other[-1].norm.mean, recal[-1].norm.mean)
    plain = FFSpec(**{**GROUPS, "output_norm": "none"}).for_input(IMG)
    with pytest.raises(ValueError, match="output_norm='batch'"):
        network.recalibrate_batch_norm(network.init_network(jax.random.key(0), plain), x,
                                       plain)
