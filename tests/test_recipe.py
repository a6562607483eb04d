"""Properties of the reference-recipe pieces: softmax readout, hard negatives, peer norm."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ffjax import config, driver, epoch, inference, labels, network, optim, readout
from ffjax.spec import FFSpec
from tests.conftest import assert_gradients_are_local

SIZES = (12, 16, 16, 8)
C = 4
UNIFORM = FFSpec(hidden=SIZES[1:], num_classes=C, negatives="uniform", peer_strength=0.0,
                 readout=False)


def _net(seed=0):
    return network.init_network(jax.random.key(seed), FFSpec(hidden=SIZES[1:], input_shape=SIZES[:1],
                                            num_classes=C))


def _toy(n=64, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.randint(kx, (n, SIZES[0]), 0, 256).astype(jnp.uint8),
            jax.random.randint(ky, (n,), 0, C))


def test_readout_loss_sends_no_gradient_into_ff_layers():
    net = _net()
    x, y = _toy(8)
    rp = readout.init_readout(16 + 8, C)
    rp = rp._replace(w=jax.random.normal(jax.random.key(1), rp.w.shape))

    spec = FFSpec(hidden=SIZES[1:], num_classes=C, readout_layers=(1, 2))

    def loss_of_net(params):
        return readout.loss(rp, readout.features(params, x, spec), y)

    grads = jax.grad(loss_of_net)(net)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    assert float(jnp.abs(jax.grad(lambda r: readout.loss(
        r, readout.features(net, x, spec), y))(rp).w).max()) > 0


def test_training_the_readout_leaves_ff_training_unchanged():
    """Same keys, uniform negatives: the FF layers end identical with or without a
    readout trained beside them, while the readout itself is updated."""
    x, y = _toy()
    opt = optax.adam(1e-2)
    reading = dataclasses.replace(UNIFORM, readout=True)
    plain = epoch.init_train_state(jax.random.key(3), UNIFORM, SIZES[0], opt)
    ep_plain = jax.jit(epoch.make_train_epoch(UNIFORM, opt, batch_size=16))
    with_r = epoch.init_train_state(jax.random.key(3), reading, SIZES[0], opt,
                                    optax.adam(0.05))
    ep_r = jax.jit(epoch.make_train_epoch(reading, opt, optax.adam(0.05), batch_size=16))
    for e in range(3):
        plain, _ = ep_plain(plain, x, y, jax.random.fold_in(jax.random.key(4), e))
        with_r, m = ep_r(with_r, x, y, jax.random.fold_in(jax.random.key(4), e))
    for a, b in zip(jax.tree.leaves(epoch.params_of(plain)),
                    jax.tree.leaves(epoch.params_of(with_r))):
        np.testing.assert_array_equal(a, b)
    assert m.readout is not None and np.isfinite(float(m.readout.loss))
    assert float(jnp.abs(with_r.readout.params.w).max()) > 0.0  # started at zero
    assert with_r.readout.params.w.shape == (16 + 8, C)


def test_hard_negatives_never_true_and_follow_the_masked_softmax():
    logits = jnp.array([2.0, 0.0, 1.0, -1.0, 0.5])
    n = 100_000
    y = jnp.full((n,), 2)
    neg = labels.hard_wrong_labels(jax.random.key(0), jnp.tile(logits, (n, 1)), y)
    assert not bool(jnp.any(neg == y))
    freq = np.bincount(np.asarray(neg), minlength=5) / n
    expected = np.exp(np.where(np.arange(5) == 2, -np.inf, np.asarray(logits)))
    expected /= expected.sum()
    np.testing.assert_allclose(freq, expected, atol=0.006)


def test_all_wrong_labels():
    y = jnp.array([0, 3, 1])
    w = labels.all_wrong_labels(y, num_classes=4)
    assert w.shape == (3, 3)
    for row, t in zip(np.asarray(w), [0, 3, 1]):
        assert sorted(row.tolist()) == sorted(set(range(4)) - {t})


def test_peer_normalization_gradient_reaches_units_whose_relu_is_off():
    net = _net()
    dead = 3
    b0 = net[0].b.at[dead].set(-1e3)  # unit 3 of layer 0 never fires
    net = (net[0]._replace(b=b0),) + net[1:]
    x_pos, x_neg = jax.random.uniform(jax.random.key(1), (2, 6, SIZES[0]))

    def layer0_grad(strength):
        spec = dataclasses.replace(UNIFORM, peer_strength=strength)

        def obj(params):
            objs, _, _ = epoch.local_losses(params, x_pos, x_neg, spec)
            return objs[0]
        return jax.grad(obj)(net)[0]

    assert float(jnp.abs(layer0_grad(0.0).w[:, dead]).max()) == 0.0
    g = layer0_grad(0.03)
    assert float(jnp.abs(g.w[:, dead]).max()) > 0.0
    # The dead unit is below the layer's mean activity: descent raises its pre-activation.
    assert float(g.b[dead]) < 0.0


def test_peer_means_track_activity_and_hard_negative_epoch_runs():
    x, y = _toy()
    opt = optax.adam(1e-2)
    ro = optax.adam(0.05)
    spec = FFSpec(hidden=SIZES[1:], num_classes=C)  # hard negatives, peer norm 0.03
    st = epoch.init_train_state(jax.random.key(0), spec, SIZES[0], opt, ro)
    ep = jax.jit(epoch.make_train_epoch(spec, opt, ro, batch_size=16))
    st, m = ep(st, x, y, jax.random.key(1))
    assert all(not np.allclose(ls.peer_mean, epoch.PEER_INIT) for ls in st.layers)
    assert np.isfinite(np.asarray(m.layers.loss)).all()


def test_combined_predict_matches_one_pass_readout_predict():
    x, y = _toy(30)
    net = _net()
    rp = readout.init_readout(16 + 8, C)._replace(
        w=jax.random.normal(jax.random.key(2), (24, C)))
    spec = FFSpec(hidden=SIZES[1:], num_classes=C)
    both = inference.make_predict(spec, chunk_size=7)(net, x, rp)
    alone = inference.make_predict_readout(spec, chunk_size=11)(net, rp, x)
    np.testing.assert_array_equal(both.readout, alone)
    assert both.readout.shape == (30,)


def test_vmapped_seeds_equal_separate_runs():
    x, y = _toy(48)
    kwargs = dict(spec=FFSpec(hidden=SIZES[1:], num_classes=C), epochs=2, batch_size=16)
    # JAX 0.10's key-reuse checker reports a false "already consumed" for any
    # vmap(scan over split keys), even jax.vmap(lambda k: lax.scan(lambda c, k:
    # (c + uniform(k), None), 0., split(k, 4))); the unbatched runs below stay checked.
    with jax.debug_key_reuse(False):
        many = driver.fit(jax.random.key(7), x, y, num_seeds=2, **kwargs)
    assert many.history[-1].metrics.layers.loss.shape == (2, 3)
    for i in range(2):
        one = driver.fit(jax.random.split(jax.random.key(7), 2)[i], x, y, **kwargs)
        for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(many.state)):
            np.testing.assert_allclose(a, b[i], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(one.history[-1].metrics.layers.loss,
                                   many.history[-1].metrics.layers.loss[i], rtol=2e-5)


def test_hinton_preset_is_the_reference_recipe():
    """The values docs/recipe.md states for the author's code."""
    cfg = config.parse_config(["--preset", "hinton"], config.Config())
    assert cfg.hidden == (1000, 1000, 1000) and cfg.batch_size == 100
    assert cfg.norm == "rms_ref" and cfg.theta is None  # theta = layer width
    assert cfg.label_strength == 1.0 and cfg.loss_scale == 0.5  # half-size FF step
    assert cfg.objective == "logistic" and cfg.temperature == 1.0
    assert cfg.peer_strength == 0.03 and cfg.negatives == "hard" and cfg.readout
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("smoothed_sgd", 0.01, 0.001)
    assert cfg.decoupled_weight_decay and not cfg.readout_bias
    assert (cfg.readout_lr, cfg.readout_weight_decay) == (0.1, 0.003)
    assert cfg.lr_decay and cfg.lr_gain_per_epoch and cfg.lr_scaling == "none"
    assert cfg.lr_decay_start == 0.5
    assert cfg.readout_layers is None  # the readout skips layer 1, and so does scoring:
    assert config.score_layers(cfg) == (1, 2)
    assert epoch.PEER_INIT == 0.5
    # explicit flags still win over the preset
    cfg = config.parse_config(["--preset", "hinton", "--hidden", "50"],
                                  config.Config())
    assert cfg.hidden == (50,) and cfg.lr == 0.01
    cfg = config.parse_config(["--preset", "hinton", "--hidden", "8", "8", "8", "8"],
                                  config.Config())
    assert config.score_layers(cfg) == (1, 2, 3)
    assert config.score_layers(config.Config(hidden=(8, 8))) == (0, 1)


def test_smoothed_sgd_steps_follow_an_ema_of_the_gradient():
    opt = optim.make_optimizer("smoothed_sgd", lr=0.1, momentum=0.9)
    p = jnp.zeros(2)
    st = opt.init(p)
    steps = []
    for _ in range(3):
        u, st = opt.update(jnp.ones(2), st, p)
        steps.append(float(u[0]))
    np.testing.assert_allclose(steps, [-0.01, -0.019, -0.0271], rtol=1e-5)


def test_lr_schedules_start_their_decay_where_told():
    """The reference staircase (lr while e <= E/2, then lr (1 + 2 (E - e)) / E) is the
    decay_start=0.5 case, bit for bit; an earlier start falls over more epochs, towards 0
    at e = E + 1/2; the per-step schedule holds lr until its start, then falls linearly
    to 0 at the last step; a start outside [0, 1) is refused."""
    E, spe, lr = 10, 3, 0.01
    steps = jnp.arange(E * spe)
    e = (steps // spe + 1).astype(jnp.float32)
    reference = lr * jnp.where(e <= E / 2, 1.0, (1.0 + 2.0 * (E - e)) / E)
    half = jax.vmap(optim.epoch_gain_schedule(lr, epochs=E, steps_per_epoch=spe,
                                               decay_start=0.5))(steps)
    np.testing.assert_array_equal(half, reference)
    whole = jax.vmap(optim.epoch_gain_schedule(lr, epochs=E, steps_per_epoch=spe,
                                                decay_start=0.0))(steps)
    np.testing.assert_allclose(whole, lr * (1.0 + 2.0 * (E - e)) / (2.0 * E), rtol=1e-6)
    later = jax.vmap(optim.epoch_gain_schedule(lr, epochs=E, steps_per_epoch=spe,
                                                decay_start=0.3))(steps)
    np.testing.assert_allclose(later, jnp.where(e <= 3, lr, lr * (1 + 2 * (E - e)) / 14),
                               rtol=1e-6)
    per_step = optim.lr_schedule(lr, 100, decay=True, decay_start=0.0)
    np.testing.assert_allclose([per_step(0), per_step(50), per_step(100)], [lr, lr / 2, 0],
                               atol=1e-9)
    per_step = optim.lr_schedule(lr, 100, decay=True, decay_start=0.25)
    np.testing.assert_allclose([per_step(20), per_step(25), per_step(100)], [lr, lr, 0],
                               atol=1e-9)
    assert optim.lr_schedule(lr, 100, decay=False, decay_start=0.0) == lr
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="lr_decay_start"):
            optim.OptimizerSpec(lr_decay_start=bad)


def test_greedy_schedule_trains_one_layer_per_phase():
    assert driver.phase_plan("greedy", 7, 3) == [((0,), 2), ((1,), 2), ((2,), 3)]
    assert driver.phase_plan("simultaneous", 7, 3) == [(None, 7)]
    x, y = _toy(48)
    snapshots = []
    driver.fit(jax.random.key(0), x, y, UNIFORM, epochs=3, batch_size=16, schedule="greedy",
               on_epoch=lambda r, st: snapshots.append(jax.tree.map(np.array, st.layers)))
    for phase in range(3):
        before = snapshots[phase - 1] if phase else None
        for k in range(3):
            if before is None:
                continue
            same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[k]),
                                                            jax.tree.leaves(snapshots[phase][k])))
            assert same == (k != phase), (phase, k)



def test_interleaved_schedule_stops_each_layer_after_its_epochs():
    assert driver.phase_plan("interleaved:2,3,5", 7, 3) == [
        ((0, 1, 2), 2), ((1, 2), 1), ((2,), 2), ((), 2)]
    assert driver.phase_plan("interleaved:3,3,3", 3, 3) == [((0, 1, 2), 3)]
    for bad, msg in [("interleaved:2,3", "2 layers' epochs for 3 layers"),
                     ("interleaved:2,3,8", r"in \[1, 7\]"), ("interleaved:0,1,2", r"in \[1, 7\]"),
                     ("interleaved", "one number of epochs per layer"),
                     ("interleaved:a,b,c", "one number of epochs per layer")]:
        with pytest.raises(ValueError, match=msg):
            driver.phase_plan(bad, 7, 3)
    x, y = _toy(48)
    snapshots = []
    spec = FFSpec(hidden=SIZES[1:], num_classes=C, negatives="uniform", peer_strength=0.0)
    # The lr falls linearly over each layer's own steps, so the span shows in epoch 1.
    opt = optim.OptimizerSpec(lr_decay_start=0.0, lr_gain_per_epoch=False)
    result = driver.fit(jax.random.key(0), x, y, spec, epochs=4, batch_size=16,
                        optimizer=opt, schedule="interleaved:1,3,3",
                        on_epoch=lambda r, st: snapshots.append(jax.tree.map(np.array, st)))

    def same(a, b):
        return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # Layer 0 is frozen after epoch 1, layers 1 and 2 after epoch 3; the readout goes on.
    assert [[same(snapshots[e - 1].layers[k], snapshots[e].layers[k]) for k in range(3)]
            for e in (1, 2, 3)] == [[True, False, False]] * 2 + [[True, True, True]]
    assert not same(snapshots[2].readout, snapshots[3].readout)
    # Layer 0's epoch is the one a 1-epoch run trains: its lr schedule spans its own epoch.
    alone = driver.fit(jax.random.key(0), x, y, spec, epochs=1, batch_size=16, optimizer=opt)
    assert same(result.state.layers[0], alone.state.layers[0])

def test_input_noise_and_readout_smoothing_act_in_training_only():
    """Noise changes training (deterministically per key) and nothing else; label
    smoothing changes the readout's update but its reported loss stays the hard CE."""
    x, y = _toy(32)
    opt, ro = optax.sgd(0.05), optax.sgd(0.5)
    base = FFSpec(hidden=SIZES[1:], num_classes=C)

    def one_step(spec):
        st = epoch.init_train_state(jax.random.key(0), spec, SIZES[0], opt, ro)
        step = jax.jit(epoch.make_train_step(spec, opt, ro))
        return step(st, x, y, jax.random.key(5), spec.thetas)

    (clean, m0), (noisy, _), (noisy2, _) = (one_step(base), one_step(
        dataclasses.replace(base, input_noise=0.1)), one_step(
        dataclasses.replace(base, input_noise=0.1)))
    w = lambda st: np.asarray(st.layers[0].params.w)  # noqa: E731
    assert not np.allclose(w(clean), w(noisy))
    np.testing.assert_array_equal(w(noisy), w(noisy2))
    smooth, m1 = one_step(dataclasses.replace(base, readout_label_smoothing=0.2))
    np.testing.assert_array_equal(w(clean), w(smooth))  # the FF layers do not see it
    assert not np.allclose(clean.readout.params.w, smooth.readout.params.w)
    np.testing.assert_allclose(m0.readout.loss, m1.readout.loss, rtol=1e-6)
    with pytest.raises(ValueError, match="input_noise=-0.1"):
        FFSpec(input_noise=-0.1)


def test_hidden_dropout_drops_hidden_inputs_in_training_only():
    """Dropout changes what the layers after the first train on (deterministically per
    key), and nothing else: the first layer, the negatives and the readout's update are
    bit-identical to a step without it, and the locality of the gradients holds."""
    x, y = _toy(32)
    opt, ro = optax.sgd(0.05), optax.sgd(0.5)
    base = FFSpec(hidden=SIZES[1:], num_classes=C)
    drop = dataclasses.replace(base, hidden_dropout=0.5)

    def one_step(spec, key=5):
        st = epoch.init_train_state(jax.random.key(0), spec, SIZES[0], opt, ro)
        step = jax.jit(epoch.make_train_step(spec, opt, ro))
        return step(st, x, y, jax.random.key(key), spec.thetas)[0]

    clean, dropped, again, other = (one_step(base), one_step(drop), one_step(drop),
                                    one_step(drop, key=6))
    w = lambda st, k: np.asarray(st.layers[k].params.w)  # noqa: E731
    np.testing.assert_array_equal(w(clean, 0), w(dropped, 0))
    np.testing.assert_array_equal(clean.readout.params.w, dropped.readout.params.w)
    for k in (1, 2):
        assert not np.allclose(w(clean, k), w(dropped, k))
        np.testing.assert_array_equal(w(dropped, k), w(again, k))
        assert not np.allclose(w(dropped, k), w(other, k))

    params = epoch.params_of(epoch.init_train_state(jax.random.key(0), drop, SIZES[0], opt,
                                                    ro))
    xs = labels.to_float(x)
    assert_gradients_are_local(lambda p: epoch.local_losses(
        p, xs, xs[::-1], drop, dropout_key=jax.random.key(1))[0], params)
    with pytest.raises(ValueError, match="pass a dropout_key exactly"):
        epoch.local_losses(params, xs, xs, drop)
    with pytest.raises(ValueError, match="hidden_dropout=1.0"):
        FFSpec(hidden_dropout=1.0)
