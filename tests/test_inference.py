import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import inference, labels, network, objective
from ffjax.spec import FFSpec

SIZES = (20, 16, 12, 8)


def _spec(c, **kw):
    return FFSpec(hidden=SIZES[1:], input_shape=SIZES[:1], num_classes=c, **kw)


@pytest.fixture(scope="module")
def net():
    return network.init_network(jax.random.key(0), _spec(5))


def test_vmapped_label_scores_equal_a_python_loop(net):
    c = 5
    x = jax.random.randint(jax.random.key(1), (7, SIZES[0]), 0, 256).astype(jnp.uint8)
    spec = _spec(c, label_strength=2.0)
    g = inference.layer_goodness(net, x, spec)
    assert g.shape == (7, len(net), c)
    xf = labels.to_float(x)
    for label in range(c):
        xl = labels.embed_label(xf, jnp.full((7,), label), num_classes=c, strength=2.0)
        for i, h in enumerate(network.forward(net, xl, spec)):
            np.testing.assert_allclose(g[:, i, label], objective.goodness(h), rtol=1e-5)
    scores = inference.label_scores(net, x, _spec(c, score_layers=(1, 2),
                                                  label_strength=2.0))
    np.testing.assert_allclose(scores, g[:, 1, :] + g[:, 2, :], rtol=1e-5)
    every = inference.label_scores(net, x, _spec(c, label_strength=2.0))  # all layers
    np.testing.assert_allclose(every, g.sum(axis=1), rtol=1e-5)


def test_layer_selections_default_and_checks():
    spec = FFSpec(hidden=(8, 8, 8, 8))
    assert spec.score_layer_ids == (0, 1, 2, 3)  # the goodness readout sums every layer
    assert spec.readout_layer_ids == (1, 2, 3)  # the softmax readout skips the first
    assert FFSpec(hidden=(8,)).readout_layer_ids == (0,)
    assert FFSpec(hidden=(8, 8, 8), score_layers=[2, 0, 2]).score_layer_ids == (0, 2)
    with pytest.raises(ValueError, match="score_layers"):
        FFSpec(hidden=(8, 8, 8), score_layers=[3])


def test_chunked_predict_equals_unchunked_for_any_size(net):
    x = jax.random.uniform(jax.random.key(2), (23, SIZES[0]))
    spec = _spec(4, score_layers=(0, 2))
    full = jnp.argmax(inference.label_scores(net, x, spec), -1)
    for chunk in (1, 5, 23, 100):
        pred = inference.make_predict(spec, chunk_size=chunk)
        out = pred(net, x)
        np.testing.assert_array_equal(out.combined, full)
        assert out.per_layer.shape == (23, 3)
    np.testing.assert_array_equal(
        inference.predict(net, x, spec), full)



def test_readout_and_probe_predictions_are_the_same_in_any_chunking(net):
    """The one-pass readout and the per-layer probes run in chunks too (a whole split at
    once does not fit a GPU for the conv presets); chunking changes no prediction."""
    from ffjax import layers, readout
    spec = _spec(4)
    x = jax.random.uniform(jax.random.key(5), (23, SIZES[0]))
    keys = jax.random.split(jax.random.key(6), 4)

    def random_dense(k, d_in):
        kw, kb = jax.random.split(k)
        return layers.DenseParams(jax.random.normal(kw, (d_in, 4)), jax.random.normal(kb, (4,)))

    rp = random_dense(keys[0], sum(spec.layer_sizes[i] for i in spec.readout_layer_ids))
    probes = tuple(random_dense(k, n) for k, n in zip(keys[1:], spec.layer_sizes))
    want_ro = jnp.argmax(readout.logits(rp, readout.features(net, x, spec)), -1)
    want_pr = jnp.stack([jnp.argmax(readout.logits(p, f), -1) for p, f in
                         zip(probes, readout.layer_features(net, x, spec))], -1)
    for chunk in (1, 5, 23, 100):
        np.testing.assert_array_equal(
            inference.make_predict_readout(spec, chunk_size=chunk)(net, rp, x), want_ro)
        np.testing.assert_array_equal(
            inference.make_predict_probes(spec, chunk_size=chunk)(net, probes, x), want_pr)
    for make in (inference.make_predict, inference.make_predict_readout,
                 inference.make_predict_probes):
        with pytest.raises(ValueError, match="chunk_size=0 must be a positive integer"):
            make(spec, chunk_size=0)

def test_predict_on_60k_examples_in_bounded_chunks():
    spec = FFSpec(hidden=(32, 32), input_shape=(784,))
    small = network.init_network(jax.random.key(3), spec)
    # A numpy array, as users pass them (and numpy's generator: threefry over 47M values
    # takes seconds on a CPU at the tests' optimization level 0).
    x = np.random.default_rng(4).integers(0, 256, (60_000, 784), dtype=np.uint8)
    out = inference.make_predict(spec, chunk_size=2000)(small, x)
    assert out.combined.shape == (60_000,)
    # The chunked program gives the examples' own predictions, in order.
    some = np.r_[0:5, 1999:2003, 59_995:60_000]
    np.testing.assert_array_equal(
        out.combined[some], jnp.argmax(inference.label_scores(small, x[some], spec), -1))


@pytest.mark.parametrize("norm", ["rms_ref", "rms", "l2"])
@pytest.mark.parametrize("strength", [1.0, 3.0])
def test_shared_first_layer_equals_the_c_pass_readout(norm, strength):
    """With the label over the first C features and a dense first layer, one matmul for
    all labels gives the goodness of C separate passes."""
    spec = FFSpec(hidden=(16, 12, 8), input_shape=(20,), num_classes=5, norm=norm,
                  label_strength=strength, theta=1.0 if norm == "l2" else None)
    assert inference.shares_first_layer(spec)
    net = network.init_network(jax.random.key(5), spec)
    x = jax.random.randint(jax.random.key(6), (9, 20), 0, 256).astype(jnp.uint8)
    shared = inference.layer_goodness_shared(net, x, spec)
    plain = inference.layer_goodness_per_label(net, x, spec)
    np.testing.assert_allclose(shared, plain, rtol=2e-5, atol=1e-5)
    np.testing.assert_array_equal(jnp.argmax(shared.sum(1), -1), jnp.argmax(plain.sum(1), -1))


def test_layers_that_cannot_share_the_first_layer_take_c_passes():
    conv = FFSpec(hidden=("conv:2:3", 4), input_shape=(4, 4, 1), num_classes=3)
    chans = FFSpec(hidden=("conv:2:3",), input_shape=(4, 4, 1), num_classes=3,
                   label_encoding="channels")
    assert not inference.shares_first_layer(conv)
    assert not inference.shares_first_layer(chans)
    assert not inference.shares_first_layer(FFSpec(hidden=(4,), num_classes=3,
                                                   norm="centered"))
    with pytest.raises(ValueError, match="dense first block"):
        inference.layer_goodness_shared(None, jnp.zeros((1, 4, 4, 1)), conv)
