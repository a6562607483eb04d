import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import inference, labels, layers, objective
from ffjax.spec import FFSpec

SIZES = (20, 16, 12, 8)


def _spec(c, **kw):
    return FFSpec(hidden=SIZES[1:], num_classes=c, **kw)


@pytest.fixture(scope="module")
def net():
    return layers.init_network(jax.random.key(0), SIZES)


def test_vmapped_label_scores_equal_a_python_loop(net):
    c = 5
    x = jax.random.randint(jax.random.key(1), (7, SIZES[0]), 0, 256).astype(jnp.uint8)
    g = inference.layer_goodness(net, x, num_classes=c, label_strength=2.0)
    assert g.shape == (7, len(net), c)
    xf = labels.to_float(x)
    for label in range(c):
        xl = labels.embed_label(xf, jnp.full((7,), label), num_classes=c, strength=2.0)
        for i, h in enumerate(layers.forward(net, xl)):
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


def test_predict_on_60k_examples_in_bounded_chunks():
    small = layers.init_network(jax.random.key(3), (784, 32, 32))
    x = jnp.zeros((60_000, 784), jnp.uint8)
    pred = inference.make_predict(FFSpec(hidden=(32, 32)), chunk_size=2000)
    out = pred(small, x)
    assert out.combined.shape == (60_000,)
    assert inference.accuracy(out.combined, out.combined) == 1.0
