import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import layers, network
from ffjax.spec import FFSpec


def test_rms_normalize_gives_mean_square_one():
    x = jax.random.normal(jax.random.key(0), (5, 37)) * 7.0
    y = layers.normalize(x, norm="rms")
    np.testing.assert_allclose(jnp.mean(y**2, axis=-1), 1.0, rtol=1e-5)


def test_rms_ref_is_the_reference_form_and_scales_up_nearly_silent_rows():
    x = jnp.array([[3.0, 4.0, 0.0, 1.0], [1e-6, 0.0, 2e-6, 0.0], [0.0, 0.0, 0.0, 0.0]])
    ref = layers.normalize(x, norm="rms_ref")
    xs = np.asarray(x, np.float64)
    expected = xs / (np.exp(-50.0) + np.sqrt(np.mean(xs ** 2, axis=-1, keepdims=True)))
    np.testing.assert_allclose(ref, expected, rtol=1e-6)
    np.testing.assert_allclose(jnp.mean(ref[:2] ** 2, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(ref[2], 0.0)
    rms = layers.normalize(x, norm="rms")
    np.testing.assert_allclose(rms[0], ref[0], rtol=1e-6)  # ordinary rows: the same
    assert float(jnp.mean(rms[1] ** 2)) < 0.01  # the epsilon under the root keeps it small


def test_l2_normalize_gives_unit_length():
    x = jax.random.normal(jax.random.key(1), (5, 37)) * 0.01
    y = layers.normalize(x, norm="l2")
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 1.0, rtol=1e-5)


def test_centered_normalize_gives_mean_zero_and_mean_square_one_and_has_no_scale():
    x = jax.random.uniform(jax.random.key(2), (4, 3, 3, 5)) * 3.0  # non-negative, as ReLUs
    y = layers.normalize(x, norm="centered").reshape(4, -1)
    np.testing.assert_allclose(jnp.mean(y, axis=-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.mean(y**2, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(layers.normalize(jnp.full((1, 4), 2.0), norm="centered"), 0.0)
    with pytest.raises(ValueError, match="no single factor"):
        layers.norm_scale(x.reshape(4, -1), norm="centered")


def test_no_norm_passes_the_input_on_and_is_accepted_by_spec_and_cli():
    from ffjax import config
    from ffjax.spec import FFSpec
    x = jax.random.normal(jax.random.key(3), (4, 2, 2, 3)) * 5.0
    np.testing.assert_array_equal(layers.normalize(x, norm="none"), x)
    np.testing.assert_array_equal(layers.norm_scale(x.reshape(4, -1), norm="none"), 1.0)
    assert FFSpec(hidden=(8,), norm="none").norm == "none"
    cfg = config.parse_config(["--norm", "none", "--hidden", "8"], config.Config())
    config.check_config(cfg)  # no refusal


def test_normalize_keeps_direction_and_zero_rows():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    y = layers.normalize(x, norm="l2")
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])


def test_normalize_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm='layer'"):
        layers.normalize(jnp.ones((1, 3)), norm="layer")


def test_dense_layer_is_normalize_dense_relu():
    spec = FFSpec(hidden=(4,), input_shape=(6,), num_classes=2)
    (p,) = network.init_network(jax.random.key(2), spec)
    x = jax.random.normal(jax.random.key(3), (3, 6))
    expected = jnp.maximum(layers.normalize(x, norm="rms_ref") @ p.w + p.b, 0.0)
    np.testing.assert_allclose(network.forward((p,), x, spec)[0], expected, rtol=1e-6)


def test_init_network_shapes_and_independent_layer_keys():
    net = network.init_network(jax.random.key(0), FFSpec(hidden=(8, 8), input_shape=(8,),
                                                         num_classes=2))
    assert [p.w.shape for p in net] == [(8, 8), (8, 8)]
    assert not np.allclose(net[0].w, net[1].w)  # a separate key per layer
    assert all(float(jnp.abs(p.b).max()) == 0.0 for p in net)
    # N(0, 1/fan_in): variance close to 1/8 over a large layer
    big = layers.init_dense(jax.random.key(1), 400, 300)
    assert abs(float(jnp.var(big.w)) * 400 - 1.0) < 0.05


@pytest.mark.parametrize("hidden, msg", [
    ((), "one or more blocks"), ((784, 0), "positive integer"), ((-3, 10), "positive"),
    (("conv:8",), "channels and a kernel"), (("pool:2:2",), "unknown block"),
    (("conv:8:3:x",), "unknown option"), (("local:8:3:g2",), "unknown option"),
    (("conv:10:3:g4",), "multiple of its groups=4"),
    (("conv:10:3", "conv:20:3:g4"), "10 input channels, not a multiple of its 4 groups"),
])
def test_bad_blocks_are_refused(hidden, msg):
    with pytest.raises(ValueError, match=msg):
        FFSpec(hidden=hidden, input_shape=(28, 28, 1))
