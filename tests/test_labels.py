import jax
import jax.numpy as jnp
import numpy as np

from ffjax import labels


def test_embed_label_overwrites_first_c_features_only():
    x = jnp.full((2, 12), 0.5)
    out = labels.embed_label(x, jnp.array([3, 0]), num_classes=10, strength=2.0)
    expected = np.full((2, 12), 0.5)
    expected[:, :10] = 0.0
    expected[0, 3] = expected[1, 0] = 2.0
    np.testing.assert_array_equal(out, expected)


def test_embed_neutral():
    out = labels.embed_neutral(jnp.zeros((1, 5)), num_classes=4, strength=1.0)
    np.testing.assert_allclose(out, [[0.25, 0.25, 0.25, 0.25, 0.0]])


def test_to_float_scales_uint8_only():
    np.testing.assert_allclose(labels.to_float(jnp.array([0, 255], jnp.uint8)), [0.0, 1.0])
    np.testing.assert_allclose(labels.to_float(jnp.array([3.5])), [3.5])


def test_negative_labels_never_true_and_uniform_over_wrong_classes():
    c, n = 10, 200_000
    y = jax.random.randint(jax.random.key(0), (n,), 0, c)
    y_neg = labels.uniform_wrong_labels(jax.random.key(1), y, num_classes=c)
    assert not bool(jnp.any(y_neg == y))
    assert int(y_neg.min()) >= 0 and int(y_neg.max()) < c
    # For true label 3, the nine others each appear ~1/9 of the time.
    counts = np.bincount(np.asarray(y_neg[y == 3]), minlength=c)
    assert counts[3] == 0
    freq = counts[np.arange(c) != 3] / counts.sum()
    np.testing.assert_allclose(freq, 1 / 9, atol=0.01)


def test_negative_labels_two_classes():
    y = jnp.array([0, 1, 1, 0])
    np.testing.assert_array_equal(
        labels.uniform_wrong_labels(jax.random.key(2), y, num_classes=2), [1, 0, 0, 1])
