import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import objective


def test_goodness_is_sum_of_squares():
    h = jnp.array([[1.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(objective.goodness(h), [5.0, 0.75])


def test_ff_loss_matches_definition_and_is_stable():
    g_pos, g_neg = jnp.array([3.0, 12.0]), jnp.array([1.0, 9.0])
    theta = 10.0
    naive = np.mean(np.log1p(np.exp(theta - np.array(g_pos)))
                    + np.log1p(np.exp(np.array(g_neg) - theta)))
    np.testing.assert_allclose(objective.ff_loss(g_pos, g_neg, theta), naive, rtol=1e-6)
    # Goodness of thousands (wide layers) must not overflow.
    huge = objective.ff_loss(jnp.array([0.0]), jnp.array([1e5]), 2000.0)
    assert np.isfinite(huge) and abs(float(huge) - (2000.0 + 1e5 - 2000.0)) < 1e-2


def test_layer_metrics_accuracies():
    m = objective.layer_metrics(jnp.array([5.0, 1.0]), jnp.array([0.0, 4.0]), 2.0)
    assert float(m.acc_pos) == 0.5 and float(m.acc_neg) == 0.5
    assert float(m.goodness_pos) == 3.0 and float(m.goodness_neg) == 2.0


def test_resolve_thetas():
    assert objective.resolve_thetas(None, [500, 300]) == (500.0, 300.0)
    assert objective.resolve_thetas(2.0, [500, 300]) == (2.0, 2.0)
    assert objective.resolve_thetas([1, 3], [500, 300]) == (1.0, 3.0)
    with pytest.raises(ValueError, match="one per layer"):
        objective.resolve_thetas([1, 2, 3], [500, 300])
    with pytest.raises(ValueError, match="positive"):
        objective.resolve_thetas(-1.0, [500])
