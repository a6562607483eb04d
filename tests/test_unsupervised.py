"""Unsupervised FF: label-free negatives (hybrid images, masked images), no label in the
input, the softmax readout as the prediction."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ffjax import driver, epoch as epoch_lib, inference, negatives, optim
from ffjax.negatives import Minibatch
from ffjax.spec import FFSpec
from tests.conftest import assert_gradients_are_local, quietly


def _neighbours_equal(mask):
    """Share of horizontally and vertically adjacent pixel pairs with the same value."""
    m = np.asarray(mask)
    return float(np.mean(np.concatenate([(m[:, 1:] == m[:, :-1]).ravel(),
                                         (m[:, :, 1:] == m[:, :, :-1]).ravel()])))


def test_hybrid_mask_takes_half_the_pixels_in_contiguous_regions():
    shape = (256, 28, 28)
    masks = {k: negatives.hybrid_mask(jax.random.key(k), shape, k) for k in (0, 2, 6, 12)}
    for k, m in masks.items():
        assert set(np.unique(np.asarray(m))) <= {0.0, 1.0}
        assert abs(float(m.mean()) - 0.5) < 0.03, (k, float(m.mean()))
    # Random bits agree with a neighbour half the time; blurring makes regions, larger
    # the more it is repeated.
    share = [_neighbours_equal(masks[k]) for k in (0, 2, 6, 12)]
    assert abs(share[0] - 0.5) < 0.02
    assert share[1] > 0.7 and share[1] < share[2] < share[3]


def test_masks_of_several_region_sizes_blur_each_image_its_own_number_of_times():
    """blur_steps_max: each image's mask is the same random bits blurred k times, k drawn
    per image from blur_steps..blur_steps_max (every k turns up in a minibatch), so the
    minibatch holds regions of several sizes; a maximum below the minimum is refused."""
    shape = (64, 28, 28)
    mixed = np.asarray(negatives.hybrid_mask(jax.random.key(7), shape, 0, 3))
    # blur_steps == blur_steps_max: every image blurred exactly that often, same bits.
    fixed = [np.asarray(negatives.hybrid_mask(jax.random.key(7), shape, k, k))
             for k in range(4)]
    picks = [[k for k in range(4) if np.array_equal(mixed[i], fixed[k][i])]
             for i in range(shape[0])]
    assert all(picks), "an image's mask is not its bits blurred 0-3 times"
    assert {p[0] for p in picks} == {0, 1, 2, 3}
    share = [_neighbours_equal(fixed[k]) for k in range(4)]
    assert share[0] < _neighbours_equal(mixed) < share[3]
    gen = negatives.hybrid(image_shape=(28, 28, 1), blur_steps=1, blur_steps_max=3)
    x = jax.random.uniform(jax.random.key(0), (16, 784))
    neg = gen.generate(jax.random.key(3), Minibatch(x, jnp.zeros(16, jnp.int32)), None)
    assert neg.shape == x.shape and bool(jnp.all(jnp.isfinite(neg)))
    with pytest.raises(ValueError, match="blur_steps_max=1 must be at least blur_steps"):
        negatives.hybrid(blur_steps=2, blur_steps_max=1)
    with pytest.raises(ValueError, match="blur_steps_max=0 must be at least blur_steps"):
        negatives.masked(blur_steps=1, blur_steps_max=0)


def test_a_hybrid_negative_is_exactly_the_mixture_of_two_different_images():
    x = jax.random.uniform(jax.random.key(0), (16, 28 * 28))
    gen = negatives.hybrid(image_shape=(28, 28, 1), blur_steps=6)
    neg = gen.generate(jax.random.key(3), Minibatch(x, jnp.zeros(16, jnp.int32)), None)
    assert neg.shape == x.shape and not gen.uses_labels
    mask_key, pair_key = jax.random.split(jax.random.key(3))  # the generator's draws
    mask = negatives.hybrid_mask(mask_key, (16, 28, 28), 6).reshape(16, -1)
    other = negatives.partner(pair_key, 16)
    assert not np.any(np.asarray(other) == np.arange(16))  # never an image with itself
    np.testing.assert_array_equal(neg, x * mask + x[other] * (1 - mask))
    from_a = np.isclose(neg, x) & ~np.isclose(neg, x[other])
    assert 0.4 < from_a.mean() < 0.6  # about half of each


def test_a_nearest_partner_hybrid_mixes_each_image_with_its_nearest_other_image(mnist):
    """--hybrid-partner nearest: the second image of each mixture is the closest other
    image of the minibatch in pixel space (a brute-force search agrees), never itself,
    and the mixture is exact; bad partner names are refused."""
    x = jnp.asarray(mnist.x_train[:64])
    gen = negatives.hybrid(image_shape=(28, 28, 1), blur_steps=1, partner="nearest")
    neg = gen.generate(jax.random.key(3), Minibatch(x, jnp.zeros(64, jnp.int32)), None)
    xs = np.asarray(x, np.float64)
    dist = ((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1) + np.diag(np.full(64, np.inf))
    other = dist.argmin(1)
    np.testing.assert_array_equal(negatives.nearest_partner(x), other)
    assert not np.any(other == np.arange(64))
    mask_key, _ = jax.random.split(jax.random.key(3))  # the generator's mask draw
    mask = negatives.hybrid_mask(mask_key, (64, 28, 28), 1).reshape(64, -1)
    np.testing.assert_array_equal(neg, x * mask + x[other] * (1 - mask))
    with pytest.raises(ValueError, match="choose one of shift, nearest"):
        negatives.hybrid(partner="closest")


def test_several_hybrid_negatives_per_positive_are_grouped_by_positive_and_train(mnist):
    """count=K: K mixtures per positive, grouped by positive (rows m*K .. m*K + K - 1
    belong to image m), mixture k made exactly as a one-negative generator with the k-th
    split of the key would make it, each with its own mask; a network trains on them with
    its gradients local; count < 1 is refused."""
    x = jnp.asarray(mnist.x_train[:32])
    batch = Minibatch(x, jnp.zeros(32, jnp.int32))
    neg = negatives.hybrid(image_shape=(28, 28, 1), count=3).generate(
        jax.random.key(5), batch, None)
    assert neg.shape == (96, 784)
    one = negatives.hybrid(image_shape=(28, 28, 1))
    for k, key in enumerate(jax.random.split(jax.random.key(5), 3)):
        np.testing.assert_array_equal(neg.reshape(32, 3, 784)[:, k],
                                      one.generate(key, batch, None))
    by_positive = np.asarray(neg).reshape(32, 3, 784)
    assert not np.array_equal(by_positive[:, 0], by_positive[:, 1])
    spec = FFSpec(hidden=(32, 16), num_classes=10, label_encoding="none", readout=True,
                  negatives=negatives.hybrid(image_shape=(28, 28, 1), count=2))
    r = driver.fit(jax.random.key(0), mnist.x_train[:1000], mnist.y_train[:1000], spec,
                   epochs=2, batch_size=100)
    loss = [float(np.mean(h.metrics.layers.loss)) for h in r.history]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
    params = epoch_lib.params_of(r.state)
    assert_gradients_are_local(lambda p: epoch_lib.local_losses(p, x, neg[:64], spec)[0],
                               params)
    with pytest.raises(ValueError, match="at least one negative"):
        negatives.hybrid(count=0)


def test_images_keep_their_shape_and_flat_inputs_need_one():
    x = jax.random.uniform(jax.random.key(0), (4, 6, 6, 2))
    neg = negatives.GENERATORS["hybrid"].generate(jax.random.key(1), Minibatch(x, None), None)
    assert neg.shape == x.shape
    with pytest.raises(ValueError, match="image shape"):
        negatives.GENERATORS["hybrid"].generate(jax.random.key(1),
                                                Minibatch(x.reshape(4, -1), None), None)


def test_masked_negatives_zero_about_the_fraction_in_patches():
    x = jnp.ones((64, 28, 28, 1))
    gen = negatives.masked(fraction=0.3, blur_steps=6)
    neg = np.asarray(gen.generate(jax.random.key(0), Minibatch(x, None), None))[..., 0]
    assert set(np.unique(neg)) <= {0.0, 1.0}
    assert abs(float((neg == 0).mean()) - 0.3) < 0.02
    assert _neighbours_equal(neg) > 0.8


UNSUP = dict(hidden=("conv:4:3", 16, 8), input_shape=(6, 6, 2), num_classes=4,
             label_encoding="none", negatives="hybrid")


@pytest.mark.parametrize("peer_strength", [0.0, 0.03])
def test_locality_holds_with_hybrid_negatives(peer_strength):
    spec = FFSpec(**UNSUP, readout=False, peer_strength=peer_strength)
    state = epoch_lib.init_train_state(jax.random.key(0), spec, spec.input_shape,
                                       optax.sgd(0.1))
    params = epoch_lib.params_of(state)
    x = jax.random.uniform(jax.random.key(1), (6, 6, 6, 2))
    x_neg = spec.negative_generator.generate(jax.random.key(2), Minibatch(x, None), spec)
    assert_gradients_are_local(lambda p: epoch_lib.local_losses(p, x, x_neg, spec)[0],
                               params)


def test_no_label_reaches_the_ff_layers(mnist):
    """Training on shuffled labels leaves every FF layer bit-identical; only the softmax
    readout, which reads the labels, differs."""
    spec = FFSpec(hidden=(32, 16), num_classes=10, label_encoding="none",
                  negatives=negatives.hybrid(image_shape=(28, 28, 1)), readout=True)
    x, y = mnist.x_train[:600], mnist.y_train[:600]
    shuffled = np.random.default_rng(0).permutation(y)
    runs = [driver.fit(jax.random.key(0), x, labels, spec, epochs=2, batch_size=100)
            for labels in (y, shuffled)]
    a, b = (epoch_lib.params_of(r.state) for r in runs)
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(runs[0].state.readout.params.w, runs[1].state.readout.params.w)


def test_goodness_readout_does_not_apply_without_a_label():
    spec = FFSpec(hidden=(8,), num_classes=10, input_shape=(784,), label_encoding="none",
                  negatives=negatives.hybrid(image_shape=(28, 28, 1)))
    with pytest.raises(ValueError, match="label"):
        inference.make_predict(spec)
    with pytest.raises(ValueError, match="label_encoding='none'"):
        FFSpec(hidden=(8,), num_classes=10, negatives="hybrid")
    with pytest.raises(ValueError, match="writes wrong labels"):
        FFSpec(hidden=(8,), num_classes=10, label_encoding="none", negatives="hard")


def test_unsupervised_ff_learns_features_on_mnist(mnist):
    """A short run: the readout on FF-trained layers beats the same readout on the
    layers as initialized (random features), on held-out images."""
    x, y = mnist.x_train[:12000], mnist.y_train[:12000]
    x_val, y_val = mnist.x_test[:2000], mnist.y_test[:2000]
    spec = FFSpec(hidden=(300, 300), num_classes=10, label_encoding="none",
                  negatives=negatives.hybrid(image_shape=(28, 28, 1)), readout=True,
                  readout_layers=(0, 1))
    accs = {}
    # The random-feature baseline: the layers' step is negligible, the readout's is not.
    for name, opt in (("trained", optim.OptimizerSpec()),
                      ("random", optim.OptimizerSpec(lr=1e-12, weight_decay=0.0))):
        r = driver.fit(jax.random.key(0), x, y, spec, epochs=3, batch_size=100,
                       optimizer=opt)
        p = inference.make_predict_readout(spec)(epoch_lib.params_of(r.state),
                                                 r.state.readout.params, x_val)
        accs[name] = inference.accuracy(p, y_val)
        if name == "trained":
            loss = [float(np.mean(h.metrics.layers.loss)) for h in r.history]
            assert loss[-1] < loss[0]
    assert accs["trained"] > 0.85 and accs["trained"] > accs["random"] + 0.015, accs


def test_each_layer_has_a_probe_and_the_last_ones_is_the_readout(mnist):
    """Without a label the per-layer figures are linear probes, trained beside the
    readout with its optimizer: on two layers the readout reads layer 2 alone, so the
    layer-2 probe is the readout, bit for bit, while the probes send no gradient to the
    FF layers (they train exactly as without probes)."""
    base = dict(hidden=(32, 16), num_classes=10, label_encoding="none",
                negatives=negatives.hybrid(image_shape=(28, 28, 1)))
    x, y = mnist.x_train[:400], mnist.y_train[:400]
    with_probes = driver.fit(jax.random.key(0), x, y, FFSpec(**base), epochs=1,
                             batch_size=100)
    without = driver.fit(jax.random.key(0), x, y, FFSpec(**base, layer_probes=False),
                         epochs=1, batch_size=100)
    assert without.state.probes is None and len(with_probes.state.probes.params) == 2
    np.testing.assert_array_equal(with_probes.state.probes.params[1].w,
                                  with_probes.state.readout.params.w)
    for a, b in zip(jax.tree.leaves(epoch_lib.params_of(with_probes.state)),
                    jax.tree.leaves(epoch_lib.params_of(without.state))):
        np.testing.assert_array_equal(a, b)
    spec = FFSpec(**base)
    pred = inference.make_predict_probes(spec)(epoch_lib.params_of(with_probes.state),
                                               with_probes.state.probes.params, x)
    assert pred.shape == (400, 2)
    with pytest.raises(ValueError, match="layer_probes=True"):
        FFSpec(**base, readout=False, layer_probes=True)


def test_an_unsupervised_run_resumes_bit_identically(data_dir, tmp_path):
    """The probes and the readout are part of the checkpointed state: a run stopped
    after epoch 1 and resumed ends exactly as the uninterrupted one."""
    import json
    import shutil
    from experiments import mnist
    from ffjax import experiment

    def main(argv):
        return quietly(experiment.main, mnist.DEFAULTS, "test", argv)[0]

    common = ["--data-dir", str(data_dir), "--hidden", "32", "16", "--epochs", "2",
              "--label-encoding", "none", "--negatives", "hybrid", "--train-size", "2000",
              "--checkpoint-every", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*common, "--out-dir", str(whole)]) == 0
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "2")  # as if stopped after epoch 1
    (cut / "results.json").unlink()
    assert main(["--resume", str(cut)]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, cut))
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["test_accuracy_per_layer"] == b["test_accuracy_per_layer"]
    assert len(a["test_accuracy_per_layer"]) == 2 and a["prediction"] == "softmax"


def test_the_local_preset_has_the_papers_geometry():
    """--preset hinton-unsupervised-local: the paper's unsupervised FF with its local
    receptive fields; 4x4, 3x3 and 2x2 grids of about 2000 units each, no label."""
    from ffjax import config, data
    cfg = config.parse_config(["--preset", "hinton-unsupervised-local"], config.Config())
    assert (cfg.label_encoding, cfg.negatives, cfg.epochs) == ("none", "hybrid", 100)
    spec = config.spec_of(cfg, 10, data.IMAGE_SHAPES["mnist"])
    assert list(spec.layer_shapes) == [(4, 4, 128), (3, 3, 220), (2, 2, 512)]
    assert not spec.goodness_readout_applies and spec.readout_layer_ids == (1, 2)
