"""The extension points: blocks (dense, conv, local, a flax module of one's own), label
encodings and negative generators, and the one forward pass they all go through."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ffjax import (driver, encodings, epoch, inference, labels, layers, negatives, network,
                   optim, readout)
from ffjax.spec import FFSpec
from tests.conftest import assert_gradients_are_local, assert_resume_is_exact

IMG = (6, 6, 2)
C = 3
NETS = {
    "dense": dict(hidden=(16, 8), input_shape=(12,)),
    "conv": dict(hidden=("conv:4:3", "conv:5:3:p2", 8), input_shape=IMG),
    "local": dict(hidden=("local:3:3", "local:2:3:s2:valid"), input_shape=IMG),
    "conv-channels": dict(hidden=("conv:4:3:p2", "local:3:3"), input_shape=IMG,
                          label_encoding="channels"),
}


def _spec(net, **kw):
    return FFSpec(**NETS[net], num_classes=C, negatives="uniform", readout=False, **kw)


def _data(spec, n=24, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.randint(kx, (n,) + spec.input_shape, 0, 256).astype(jnp.uint8)
    return x, jax.random.randint(ky, (n,), 0, C)


@pytest.mark.parametrize("net", list(NETS))
def test_training_and_inference_compute_the_same_activities(net):
    """The goodness the training loss sees for the positives is the goodness the C-label
    readout computes for the true label: one forward pass serves both."""
    spec = _spec(net)
    params = network.init_network(jax.random.key(1), spec)
    x, y = _data(spec, n=5)
    x_pos = spec.encoding.embed(labels.to_float(x), y)
    _, metrics, _ = jax.jit(lambda p, a: epoch.local_losses(p, a, a, spec))(params, x_pos)
    g = jax.jit(lambda p, a: inference.layer_goodness(p, a, spec))(params, x)  # (B, L, C)
    g_true = jnp.take_along_axis(g, y[:, None, None], axis=2)[..., 0]  # (B, L)
    np.testing.assert_allclose(metrics.goodness_pos, g_true.mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize("net", ["conv", "local", "conv-channels"])
def test_vmapped_label_goodness_equals_a_loop(net):
    spec = _spec(net)
    params = network.init_network(jax.random.key(2), spec)
    x, _ = _data(spec, n=4)
    g = inference.layer_goodness(params, x, spec)
    forward = jax.jit(lambda p, a: network.forward(p, a, spec))  # one label at a time
    for c in range(C):
        xl = spec.encoding.embed(labels.to_float(x), jnp.full((4,), c))
        for i, h in enumerate(forward(params, xl)):
            np.testing.assert_allclose(g[:, i, c], jnp.sum(h ** 2, axis=(1, 2, 3))
                                       if h.ndim == 4 else jnp.sum(h ** 2, -1), rtol=1e-5)


def test_conv_and_local_blocks_are_flax_conv_and_conv_local_after_normalizing():
    x = jax.random.uniform(jax.random.key(3), (2,) + IMG)
    xn = layers.normalize(x, norm="rms")
    for block, module in [(layers.Conv(4, 3, pool=2), nn.Conv(4, (3, 3))),
                          (layers.Local(3, 3, stride=2, padding="VALID"),
                           nn.ConvLocal(3, (3, 3), strides=(2, 2), padding="VALID"))]:
        p = block.init(jax.random.key(4), IMG)
        z = module.apply({"params": p}, xn)
        if block.pool > 1:
            z = nn.max_pool(z, (2, 2), strides=(2, 2))
        np.testing.assert_allclose(block.apply(p, xn), z, rtol=1e-5, atol=1e-6)
        assert block.apply(p, xn).shape[1:] == block.out_shape(IMG)
    # A locally connected filter differs at every location; a conv filter is shared.
    local = layers.Local(3, 3).init(jax.random.key(5), IMG)
    assert local["kernel"].shape == (6, 6, 18, 3)  # (H_out, W_out, k*k*C_in, C_out)
    assert not np.allclose(local["kernel"][0, 0], local["kernel"][0, 1])
    # N(0, 1/fan_in) with fan-in k*k*C_in = 18 for both.
    big = layers.Local(64, 3).init(jax.random.key(6), (8, 8, 2))["kernel"]
    assert abs(float(jnp.var(big)) * 18 - 1.0) < 0.05


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, "SAME"), (3, 2, "SAME"),
                                                   (4, 3, "SAME"), (5, 1, "SAME"),
                                                   (2, 1, "VALID"), (3, 3, "VALID")])
def test_conv_and_local_patches_match_flax_across_geometries(kernel, stride, padding):
    # The blocks build their patches from strided slices; flax's modules are the reference,
    # including SAME's uneven padding (even kernels, strides that do not divide the size).
    x = jax.random.normal(jax.random.key(7), (2, 7, 6, 3))
    for block, module in [
            (layers.Conv(4, kernel, stride, padding), nn.Conv(4, (kernel,) * 2, stride,
                                                             padding=padding)),
            (layers.Local(2, kernel, stride, padding), nn.ConvLocal(2, (kernel,) * 2, stride,
                                                                   padding=padding))]:
        p = module.init(jax.random.key(8), x)["params"]
        np.testing.assert_allclose(block.apply(p, x), module.apply({"params": p}, x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,pool", [(3, 1, "SAME", 1), (2, 2, "VALID", 1),
                                                        (3, 1, "SAME", 2)])
def test_grouped_conv_is_flax_conv_with_feature_groups(kernel, stride, padding, pool):
    x = jax.random.normal(jax.random.key(9), (2, 8, 7, 6))
    block = layers.parse_block(f"conv:9:{kernel}:s{stride}:{padding.lower()}:p{pool}:g3")
    assert block == layers.Conv(9, kernel, stride, padding, pool, groups=3)
    assert layers.parse_block(str(block)) == block
    module = nn.Conv(9, (kernel,) * 2, stride, padding=padding, feature_group_count=3)
    p = block.init(jax.random.key(10), x.shape[1:])
    assert p["kernel"].shape == (kernel, kernel, 2, 9)  # 6 inputs in 3 groups
    assert block.fan_in(x.shape[1:]) == kernel * kernel * 2
    z = module.apply({"params": p}, x)
    if pool > 1:
        z = nn.max_pool(z, (pool, pool), strides=(pool, pool))
    np.testing.assert_allclose(block.apply(p, x), z, rtol=1e-5, atol=1e-5)
    assert block.apply(p, x).shape[1:] == block.out_shape(x.shape[1:])
    # Group g's outputs (channels 3g..3g+2) do not move when another group's inputs do.
    x2 = x.at[..., 0:2].add(1.0)
    changed = np.abs(np.asarray(block.apply(p, x2) - block.apply(p, x))).max(axis=(0, 1, 2))
    assert changed[:3].max() > 0 and changed[3:].max() == 0


def test_a_flax_module_of_ones_own_is_a_block():
    class TwoConvs(nn.Module):  # any module: here a conv with a 1x1 conv after it
        @nn.compact
        def __call__(self, x):
            return nn.Conv(3, (1, 1))(nn.relu(nn.Conv(6, (3, 3))(x)))

    spec = FFSpec(hidden=(layers.from_flax(TwoConvs(), in_rank=3), 8), input_shape=IMG,
                  num_classes=C, negatives="uniform", readout=False)
    assert spec.layer_shapes == ((6, 6, 3), (8,))
    x, y = _data(spec, n=40)
    result = driver.fit(jax.random.key(0), x, y, spec, epochs=2, batch_size=10,
                        optimizer=optax.adam(1e-3))
    assert np.isfinite(result.history[-1].metrics.layers.loss).all()


def test_a_flax_nnx_module_of_ones_own_is_a_block():
    """from_nnx: the block computes what the nnx module computes with the same key, its
    parameters are a plain dict, it trains with gradients local to it, and a module with
    state beside its parameters is refused."""
    from flax import nnx

    class TwoConvs(nnx.Module):  # built for its input shape, as nnx layers are
        def __init__(self, in_shape, rngs):
            self.a = nnx.Conv(in_shape[-1], 6, (3, 3), rngs=rngs)
            self.b = nnx.Conv(6, 3, (1, 1), rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    block = layers.from_nnx(TwoConvs, in_rank=3)
    x = jax.random.uniform(jax.random.key(2), (4,) + IMG)
    params = block.init(jax.random.key(1), IMG)
    assert jax.tree.map(jnp.shape, params)["a"] == {"bias": (6,), "kernel": (3, 3, 2, 6)}
    np.testing.assert_array_equal(jax.jit(block.apply)(params, x),
                                  TwoConvs(IMG, nnx.Rngs(jax.random.key(1)))(x))
    spec = FFSpec(hidden=(block, 8), input_shape=IMG, num_classes=C, negatives="uniform",
                  readout=False)
    assert spec.layer_shapes == ((6, 6, 3), (8,))
    xs, ys = _data(spec, n=40)
    result = driver.fit(jax.random.key(0), xs, ys, spec, epochs=2, batch_size=10,
                        optimizer=optax.adam(1e-3))
    loss = result.history[-1].metrics.layers.loss
    assert np.isfinite(loss).all() and (loss < result.history[0].metrics.layers.loss).any()
    net = network.init_network(jax.random.key(3), spec)
    xe = spec.encoding.embed(xs[:8].astype(jnp.float32) / 255.0, ys[:8])
    assert_gradients_are_local(
        lambda ps: [jnp.sum(h ** 2) for h in network.forward(ps, xe, spec)], net)

    class Counting(nnx.Module):
        def __init__(self, in_shape, rngs):
            self.dense = nnx.Linear(in_shape[-1], 4, rngs=rngs)
            self.norm = nnx.BatchNorm(4, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.dense(x))

    with pytest.raises(ValueError, match=r"other than nnx.Param \(\['norm'\]\)"):
        layers.from_nnx(Counting).init(jax.random.key(0), (5,))


def test_channels_encoding_appends_label_planes():
    enc = encodings.Channels(num_classes=3, strength=2.0)
    x = jnp.ones((2, 4, 4, 1)) * 0.5
    out = enc.embed(x, jnp.array([2, 0]))
    assert out.shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(out[..., 0], 0.5)  # the image is kept whole
    np.testing.assert_array_equal(out[0, ..., 1:], jnp.broadcast_to(jnp.array([0, 0, 2.0]),
                                                                     (4, 4, 3)))
    np.testing.assert_allclose(enc.neutral(x)[..., 1:], 2.0 / 3)
    with pytest.raises(ValueError, match="needs image inputs"):
        enc.encoded_shape((784,))


def test_first_features_encoding_on_images_writes_the_first_pixels():
    enc = encodings.FirstFeatures(num_classes=3, strength=1.0)
    x = jnp.zeros((1, 2, 2, 1))
    np.testing.assert_array_equal(enc.embed(x, jnp.array([1])).reshape(-1), [0, 1, 0, 0])


def test_a_label_free_generator_of_ones_own_trains_and_sees_no_labels():
    """A negative generator in a few lines: the minibatch's images with their pixels
    shuffled (no label). With label_encoding none, the labels never reach the FF
    layers: changing them leaves the layers bit-identical."""

    def shuffled_pixels(key, batch, spec):
        flat = batch.x.reshape(batch.x.shape[0], -1)
        perm = jax.random.permutation(key, flat.shape[1])
        return flat[:, perm].reshape(batch.x.shape)

    gen = negatives.NegativeGenerator(shuffled_pixels, uses_labels=False)
    spec = FFSpec(hidden=("conv:4:3:p2", 8), input_shape=IMG, num_classes=C,
                  label_encoding="none", negatives=gen, readout=True)
    x, y = _data(spec, n=40)
    opt = optim.OptimizerSpec(name="adam", lr=1e-3)
    runs = [driver.fit(jax.random.key(0), x, yy, spec, epochs=2, batch_size=10,
                       optimizer=opt) for yy in (y, (y + 1) % C)]
    for a, b in zip(jax.tree.leaves(epoch.params_of(runs[0].state)),
                    jax.tree.leaves(epoch.params_of(runs[1].state))):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0].state.readout.params.w, runs[1].state.readout.params.w)
    with pytest.raises(ValueError, match="goodness readout .* gives no label"):
        inference.make_predict(spec)
    pred = inference.make_predict_readout(spec)(epoch.params_of(runs[0].state),
                                                runs[0].state.readout.params, x)
    assert pred.shape == (40,)


def test_the_epoch_traces_once_for_a_conv_network():
    spec = _spec("conv")
    x, y = _data(spec, n=40)
    opt = optax.adam(1e-3)
    state = epoch.init_train_state(jax.random.key(0), spec, IMG, opt)
    ep = jax.jit(chex.assert_max_traces(epoch.make_train_epoch(spec, opt, batch_size=10),
                                        n=1), donate_argnums=0)
    for e in range(3):
        state, m = ep(state, x, y, jax.random.fold_in(jax.random.key(1), e))
    assert m.layers.loss.shape == (3,)
    chex.clear_trace_counter()


def test_local_biases_get_no_weight_decay():
    p = layers.Local(2, 3).init(jax.random.key(0), IMG)
    assert p["bias"].ndim == 3  # one bias per location and channel
    assert optim.vectors(p) == {"bias": True, "kernel": False}
    dense = layers.init_dense(jax.random.key(1), 4, 2)
    assert optim.vectors(dense) == layers.DenseParams(w=False, b=True)


def test_readout_reads_flattened_conv_activities():
    spec = FFSpec(hidden=("conv:4:3:p2", "conv:2:3"), input_shape=IMG, num_classes=C,
                  readout_layers=(0, 1))
    assert spec.readout_width == 3 * 3 * 4 + 3 * 3 * 2
    params = network.init_network(jax.random.key(0), spec)
    x, _ = _data(spec, n=5)
    assert readout.features(params, x, spec).shape == (5, spec.readout_width)


@pytest.mark.parametrize("kw, msg", [
    (dict(hidden=("conv:4:9:valid",), input_shape=IMG), "kernel is larger than its 6x6"),
    (dict(hidden=("conv:4:3:p8",), input_shape=IMG), "pooling 8x8 does not fit"),
    (dict(hidden=(8, "conv:4:3"), input_shape=IMG), "takes inputs of rank 3"),
    (dict(hidden=("conv:4:3",)), "need the input's shape"),
    (dict(hidden=("conv:4:3",), input_shape=(36,)), "takes inputs of rank 3"),
    (dict(hidden=(8,), input_shape=(36,), label_encoding="channels"),
     "needs image inputs"),
    (dict(hidden=(8,), label_encoding="none"), "writes wrong labels"),
    (dict(hidden=(8,), label_encoding="braille"), "label_encoding='braille'"),
    (dict(hidden=(8,), negatives="hybrid"), "negatives='hybrid'"),
    (dict(hidden=(8,), input_shape=(2,)), "fewer than num_classes=10"),
])
def test_specs_that_cannot_work_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FFSpec(**kw)


def test_theta_defaults_to_each_layers_number_of_units():
    spec = FFSpec(hidden=("conv:4:3:p2", "local:2:3:valid", 7), input_shape=IMG)
    assert spec.layer_shapes == ((3, 3, 4), (1, 1, 2), (7,))
    assert spec.thetas == (36.0, 2.0, 7.0)
    assert spec.layer_fan_ins == (18, 36, 2)
    assert dataclasses.replace(spec, theta=5.0).thetas == (5.0,) * 3


GROUPS = dict(hidden=("conv:6:3", "conv:3:3:p2", 9), input_shape=IMG, num_classes=C,
              objective="group_softmax", label_encoding="none", negatives="none",
              readout=False)


def test_class_group_objective_is_local_and_reads_the_class_off_one_pass():
    spec = FFSpec(**GROUPS)
    params = network.init_network(jax.random.key(0), spec)
    x, y = _data(spec, n=6)
    xf = labels.to_float(x)
    assert_gradients_are_local(lambda p: epoch.local_losses(p, xf, xf[:0], spec, y=y)[0], params)
    g, h, (_, metrics, _) = jax.jit(lambda p: (  # (B, L, C) from one pass
        inference.layer_goodness(p, x, spec),
        network.forward(p, xf, spec)[0],  # (B, 6, 6, 6): channels 2c, 2c+1 are class c
        epoch.local_losses(p, xf, xf[:0], spec, y=y)))(params)
    np.testing.assert_allclose(g[:, 0, 1], jnp.mean(h[..., 2:4] ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics.acc_pos, jnp.mean(
        jnp.argmax(g, -1) == y[:, None], axis=0), rtol=1e-6)


def test_class_group_objective_learns_mnist(mnist):
    """Channel-wise competition with no label in the input and no negatives: two dense
    layers of 10 groups of 20 units, 2 epochs on 10k MNIST images, read off one pass."""
    spec = FFSpec(hidden=(200, 200), input_shape=(784,), objective="group_softmax",
                  temperature=0.05, label_encoding="none", negatives="none",
                  peer_strength=0.0)
    r = driver.fit(jax.random.key(0), mnist.x_train[:10_000], mnist.y_train[:10_000], spec,
                   epochs=2, optimizer=optim.OptimizerSpec(name="adam", lr=3e-3))
    pred = inference.make_predict(spec)(epoch.params_of(r.state), mnist.x_train[50_000:52_000],
                                        r.state.readout.params)
    y = mnist.y_train[50_000:52_000]
    assert inference.accuracy(pred.combined, y) > 0.88
    assert all(inference.accuracy(pred.per_layer[:, i], y) > 0.85 for i in range(2))
    # The joint readout: each chosen layer's class log-probabilities plus the softmax
    # readout's, from the goodness and logits this one prediction already holds.
    joint = np.asarray(inference.joint_scores(pred.goodness, pred.readout_logits, (1,), spec))
    g = np.asarray(pred.goodness[:, 1, :]) / 0.05
    expect = (g - np.log(np.sum(np.exp(g - g.max(-1, keepdims=True)), -1, keepdims=True))
              - g.max(-1, keepdims=True)
              + np.asarray(jax.nn.log_softmax(pred.readout_logits, -1)))
    np.testing.assert_allclose(joint, expect, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(np.argmax(np.asarray(pred.readout_logits), -1), pred.readout)
    assert inference.accuracy(np.argmax(joint, -1), y) > 0.88
    no_readout = dataclasses.replace(spec, readout=False)
    assert not inference.joint_applies(no_readout)
    with pytest.raises(ValueError, match="joint readout needs .* a trained softmax readout"):
        inference.joint_scores(pred.goodness, pred.readout_logits, (1,), no_readout)


@pytest.mark.parametrize("kw, msg", [
    (dict(negatives="hard"), "uses no negative data; set negatives='none'"),
    (dict(label_encoding="first_features"), "must not hold the label"),
    (dict(hidden=("conv:4:3",)), "4 channels .* cannot be split into 3"),
    (dict(objective="logistic"), "nothing to contrast"),
])
def test_class_group_settings_that_cannot_work_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FFSpec(**{**GROUPS, **kw})


def test_location_scoped_class_groups_score_every_location_against_the_label():
    """goodness_scope="location" with class groups: the layer's loss is the mean over
    locations of the group softmax of each location's groups, labelled with its
    example's class; the metrics read the whole layer; a dense layer (one location)
    scores as with goodness_scope="layer"; gradients stay local."""
    spec = FFSpec(**{**GROUPS, "goodness_scope": "location"})
    params = network.init_network(jax.random.key(0), spec)
    x = jax.random.uniform(jax.random.key(1), (4,) + spec.network_input_shape)
    y = jnp.array([0, 2, 1, 2])
    objs, metrics, _ = epoch.local_losses(params, x, x[:0], spec, y=y)
    acts = network.forward(params, x, spec)
    for k in range(2):
        h = acts[k].reshape(4, -1, C, acts[k].shape[-1] // C)  # (B, P, C, K)
        logits = jnp.mean(h ** 2, -1) / spec.temperature  # (B, P, C)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None, None], -1)
        np.testing.assert_allclose(metrics.loss[k], jnp.mean(ce), rtol=1e-5)
        assert h.shape[1] > 1
    whole = dataclasses.replace(spec, goodness_scope="layer")
    objs_w, metrics_w, _ = epoch.local_losses(params, x, x[:0], whole, y=y)
    np.testing.assert_allclose(objs[2], objs_w[2], rtol=1e-6)
    np.testing.assert_array_equal(metrics.acc_pos, metrics_w.acc_pos)
    assert not np.allclose(objs[:2], objs_w[:2])
    assert_gradients_are_local(lambda p: epoch.local_losses(p, x, x[:0], spec, y=y)[0],
                               params)


def test_per_location_goodness_scores_each_location():
    """goodness_scope="location": each location's channels form one goodness term with
    theta = channels; the layer's loss is the mean over locations. A dense layer has one
    location, so there it equals the whole-layer objective."""
    spec = FFSpec(hidden=("conv:4:3:p2", 8), input_shape=IMG, num_classes=C,
                  negatives="uniform", readout=False, goodness_scope="location",
                  peer_strength=0.0)
    assert spec.thetas == (4.0, 8.0)
    params = network.init_network(jax.random.key(0), spec)
    keys = jax.random.split(jax.random.key(1))
    x_pos, x_neg = (jax.random.uniform(k, (5,) + spec.network_input_shape) for k in keys)
    objs, metrics, _ = epoch.local_losses(params, x_pos, x_neg, spec)
    h_pos, h_neg = (network.forward(params, x, spec)[0] for x in (x_pos, x_neg))
    g_pos, g_neg = (jnp.sum(h ** 2, -1).reshape(5, -1) for h in (h_pos, h_neg))  # (B, 9)
    expected = jnp.mean(jnp.mean(jax.nn.softplus(4.0 - g_pos), 0)
                        + jnp.mean(jax.nn.softplus(g_neg - 4.0), 0))
    np.testing.assert_allclose(metrics.loss[0], expected, rtol=1e-5)
    whole = dataclasses.replace(spec, goodness_scope="layer")
    np.testing.assert_allclose(objs[1], epoch.local_losses(params, x_pos, x_neg, whole)[0][1],
                               rtol=1e-5)
    assert_gradients_are_local(lambda p: epoch.local_losses(p, x_pos, x_neg, spec)[0], params)
    with pytest.raises(ValueError, match="goodness_scope='location' scores every location"):
        dataclasses.replace(spec, objective="collaborative")
    with pytest.raises(ValueError, match="goodness_scope='pixel'"):
        dataclasses.replace(spec, goodness_scope="pixel")


def test_a_conv_run_resumed_from_its_checkpoint_ends_bit_identical(tmp_path):
    """Conv and local parameters (flax-style dicts) round-trip through the orbax
    checkpoint, and the resumed run repeats the uninterrupted one exactly."""
    spec = FFSpec(hidden=("conv:4:3:p2", "local:3:3:valid"), input_shape=IMG,
                  num_classes=C)
    x, y = _data(spec, n=40)
    assert_resume_is_exact(tmp_path, x, y, spec, batch_size=10)


def test_a_registered_generator_is_a_command_line_choice(monkeypatch):
    from ffjax import config
    gen = negatives.NegativeGenerator(lambda key, batch, spec: batch.x[::-1],
                                      uses_labels=False)
    monkeypatch.setitem(negatives.GENERATORS, "reversed", gen)
    cfg = config.parse_config(["--negatives", "reversed", "--label-encoding", "none",
                               "--hidden", "8"], config.Config())
    config.check_config(cfg)
    assert config.spec_of(cfg, 10).negative_generator is gen
