import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
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
    g_pos, g_neg = jnp.array([5.0, 1.0]), jnp.array([0.0, 4.0])
    m = objective.layer_metrics(g_pos, g_neg, 2.0, objective.ff_loss(g_pos, g_neg, 2.0))
    assert float(m.acc_pos) == 0.5 and float(m.acc_neg) == 0.5
    assert float(m.goodness_pos) == 3.0 and float(m.goodness_neg) == 2.0
    both = objective.layer_metrics(jnp.stack([g_pos, g_pos]), jnp.stack([g_neg, g_neg]),
                                   jnp.array([2.0, 4.5]), jnp.zeros(2))  # one row a layer
    np.testing.assert_array_equal(both.acc_pos, [0.5, 0.5])
    np.testing.assert_array_equal(both.acc_neg, [0.5, 1.0])


def test_resolve_thetas():
    assert objective.resolve_thetas(None, [500, 300]) == (500.0, 300.0)
    assert objective.resolve_thetas(2.0, [500, 300]) == (2.0, 2.0)
    assert objective.resolve_thetas([1, 3], [500, 300]) == (1.0, 3.0)
    with pytest.raises(ValueError, match="one per layer"):
        objective.resolve_thetas([1, 2, 3], [500, 300])
    with pytest.raises(ValueError, match="positive"):
        objective.resolve_thetas(-1.0, [500])


def _goodness(seed, rows, cols):
    return jax.random.uniform(jax.random.key(seed), (rows, cols), minval=0.0, maxval=30.0)


def test_logistic_is_ff_loss_per_layer():
    g_pos, g_neg, thetas = _goodness(0, 3, 5), _goodness(1, 3, 5), jnp.array([8.0, 16.0, 4.0])
    per_layer = objective.logistic(g_pos, g_neg, thetas)
    for l in range(3):
        np.testing.assert_allclose(per_layer[l], objective.ff_loss(g_pos[l], g_neg[l],
                                                                   thetas[l]), rtol=1e-6)
    hot = objective.logistic(g_pos, g_neg, thetas, temperature=2.0)
    np.testing.assert_allclose(hot[1], objective.ff_loss(g_pos[1] / 2, g_neg[1] / 2, 8.0),
                               rtol=1e-6)


def test_symba_pairs_each_positive_with_its_own_negatives():
    g_pos = jnp.array([[10.0, 20.0]])
    g_neg = jnp.array([[4.0, 30.0, 18.0, 25.0]])  # two negatives per positive, grouped
    got = objective.symba(g_pos, g_neg, jnp.array([2.0]), alpha=0.3)
    gaps = np.array([10 - 4, 10 - 30, 20 - 18, 20 - 25])
    np.testing.assert_allclose(got, [np.mean(np.log1p(np.exp(-0.3 * gaps)))], rtol=1e-6)
    with pytest.raises(ValueError, match="paired"):
        objective.symba(g_pos, g_neg[:, :3], jnp.array([2.0]))


def test_hardest_scores_each_positive_against_its_highest_goodness_negative():
    g_pos = jnp.array([[10.0, 20.0], [3.0, 1.0]])
    g_neg = jnp.array([[4.0, 30.0, 18.0, 12.0], [2.0, 0.5, 5.0, 6.0]])  # 2 per positive
    thetas = jnp.array([15.0, 2.0])
    got = objective.hardest(g_pos, g_neg, thetas, temperature=2.0)
    want = objective.logistic(g_pos, jnp.array([[30.0, 18.0], [2.0, 6.0]]), thetas,
                              temperature=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the gradient reaches each positive's hardest negative and no other one
    grad = jax.grad(lambda g: objective.hardest(g_pos, g, thetas)[0])(g_neg)
    assert np.array_equal(np.asarray(grad != 0), [[False, True, True, False],
                                                  [False, False, False, False]])
    # with one negative per positive it is the logistic
    np.testing.assert_allclose(objective.hardest(g_pos, g_neg[:, :2], thetas),
                               objective.logistic(g_pos, g_neg[:, :2], thetas), rtol=1e-6)
    with pytest.raises(ValueError, match="paired"):
        objective.hardest(g_pos, g_neg[:, :3], thetas)


def test_hardest_with_one_negative_per_positive_is_refused():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 20)).astype(np.uint8)
    y = rng.integers(0, 4, size=40)
    spec = ffjax.FFSpec(hidden=(8,), num_classes=4, objective="hardest")  # uniform: 1 each
    for spec in (spec, dataclasses.replace(spec, objective=objective.make_objective(
            "hardest", temperature=2.0))):  # by name or as a function
        with pytest.raises(ValueError, match="objective 'hardest' .* made one per positive"):
            ffjax.fit(jax.random.key(0), x, y, spec, epochs=1, batch_size=20)


def test_collaborative_reads_the_whole_network_margin():
    g_pos, g_neg, thetas = _goodness(2, 3, 4), _goodness(3, 3, 4), jnp.array([15.0] * 3)
    got = objective.collaborative(g_pos, g_neg, thetas)
    total_pos = jnp.sum(g_pos - 15.0, axis=0)
    total_neg = jnp.sum(g_neg - 15.0, axis=0)
    expected = jnp.mean(jax.nn.softplus(-total_pos)) + jnp.mean(jax.nn.softplus(total_neg))
    np.testing.assert_allclose(got, [expected] * 3, rtol=1e-6)
    # entry l's gradient reaches row l alone
    grad = jax.grad(lambda g: objective.collaborative(g, g_neg, thetas)[1])(g_pos)
    assert float(jnp.abs(grad[1]).sum()) > 0
    assert float(jnp.abs(grad[0]).sum()) == 0 and float(jnp.abs(grad[2]).sum()) == 0


def test_make_objective():
    fn = objective.make_objective("symba", alpha=2.0)
    assert fn == objective.make_objective("symba", alpha=2.0) and hash(fn)
    with pytest.raises(ValueError, match="not known"):
        objective.make_objective("hinge")


def test_group_softmax_label_smoothing_is_cross_entropy_with_smoothed_targets():
    scores = jnp.array([[4.0, 1.0, 0.0], [0.5, 2.0, 3.0]])
    y = jnp.array([0, 1])
    plain = objective.group_softmax(temperature=2.0, label_smoothing=0.0).loss(scores, y)
    logp = np.log(np.asarray(jax.nn.softmax(scores / 2.0)))
    np.testing.assert_allclose(plain, -np.mean(logp[[0, 1], [0, 1]]), rtol=1e-6)
    # log_probs is the distribution the unsmoothed loss is the cross-entropy of
    lp = objective.group_softmax(temperature=2.0, label_smoothing=0.3).log_probs(scores)
    np.testing.assert_allclose(lp, logp, rtol=1e-5, atol=1e-6)
    smooth = objective.group_softmax(temperature=2.0, label_smoothing=0.3).loss(scores, y)
    target = 0.7 * np.eye(3)[[0, 1]] + 0.1  # (1 - e) one-hot + e / C
    np.testing.assert_allclose(smooth, -np.mean(np.sum(target * logp, -1)), rtol=1e-6)
    # the smoothed loss is least at a finite gap: pushing the true group up stops paying
    gap = lambda d: objective.group_softmax(  # noqa: E731
        temperature=1.0, label_smoothing=0.3).loss(jnp.array([[d, 0.0, 0.0]]), y[:1])
    assert float(gap(10.0)) > float(gap(float(np.log(0.8 / 0.1))))


def test_spec_passes_group_label_smoothing_and_refuses_it_elsewhere():
    kw = dict(hidden=(20,), input_shape=(784,), objective="group_softmax",
              label_encoding="none", negatives="none", temperature=0.5)
    fn = ffjax.FFSpec(**kw, group_label_smoothing=0.1).objective_fn()
    assert fn.name == "group_softmax(temperature=0.5, label_smoothing=0.1)"
    with pytest.raises(ValueError, match="group_label_smoothing=0.1 smooths the targets"):
        ffjax.FFSpec(hidden=(20,), group_label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"group_label_smoothing=1.0 must be in \[0, 1\)"):
        ffjax.FFSpec(**kw, group_label_smoothing=1.0)
