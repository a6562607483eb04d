"""`--preset hinton` against a plain-numpy transcription of the reference update.

The transcription below is written from the recipe (docs/recipe.md, "The reference
update"), in float64, with explicit per-example derivatives instead of autodiff: the
FF step (1 - p) h for positives and -p h for negatives (half the logistic's gradient),
the peer-normalization term 0.03 (mean(m) - m_j) added to every positive without the
ReLU gate, the smoothed gradient s <- 0.9 s + 0.1 g, then w <- w + lr gain (s - wc w)
with no decay on biases, the softmax readout from zero with its bias never updated, and
the gain set once per epoch. Both sides get the same negative labels, drawn here from
the readout's softmax with the true label masked (the hard negatives).
"""

import jax
import numpy as np

from ffjax import config, epoch

D, C, HIDDEN, B = 12, 4, (16, 16, 8), 6
EPOCHS, STEPS_PER_EPOCH = 4, 2
TINY = np.exp(-50.0)


def _norm(a):
    return a / (TINY + np.sqrt(np.mean(a * a, axis=-1, keepdims=True)))


def _with_label(x, label_rows):
    out = x.copy()
    out[:, :C] = label_rows
    return out


def _gain(epoch):  # epoch = 1..E
    return 1.0 if epoch <= EPOCHS / 2 else (1.0 + 2.0 * (EPOCHS - epoch)) / EPOCHS


def neutral_features(net, x_raw, *, strength=1.0):
    """(B, F): normalized activities of layers >= 2 for the neutral-label input."""
    x = x_raw.astype(np.float64) / 255.0
    h, feats = _with_label(x, np.full((len(x), C), strength / C)), []
    for i, (w, b) in enumerate(net):
        h = np.maximum(_norm(h) @ w + b, 0.0)
        if i >= 1:
            feats.append(_norm(h))
    return np.concatenate(feats, axis=1)


def hard_negatives(rng, logits, y):
    """A wrong label per example from softmax(logits - 1000 at the true label)."""
    masked = logits - 1000.0 * np.eye(C)[y]
    pr = np.exp(masked - masked.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    return np.array([rng.choice(C, p=row) for row in pr])


def reference_step(net, s, means, ro_w, ro_s, x_raw, y, y_neg, epoch, *, strength=1.0,
                   lr=0.01, wc=0.001, ro_lr=0.1, ro_wc=0.003, peer=0.03):
    """One minibatch of the reference update. net: [(w, b)], s: [(s_w, s_b)], means:
    [m]; all passes use the weights from before this minibatch."""
    x = x_raw.astype(np.float64) / 255.0
    feats = neutral_features(net, x_raw, strength=strength)
    gain = _gain(epoch)
    h_pos = _with_label(x, np.eye(C)[y] * strength)
    h_neg = _with_label(x, np.eye(C)[y_neg] * strength)
    new_net, new_s, new_means = [], [], []
    for (w, b), (sw, sb), m in zip(net, s, means):
        a_pos, a_neg = _norm(h_pos), _norm(h_neg)
        h_pos, h_neg = np.maximum(a_pos @ w + b, 0.0), np.maximum(a_neg @ w + b, 0.0)
        theta = w.shape[1]
        p_pos = 1.0 / (1.0 + np.exp(-(np.sum(h_pos ** 2, 1) - theta)))
        p_neg = 1.0 / (1.0 + np.exp(-(np.sum(h_neg ** 2, 1) - theta)))
        m = 0.9 * m + 0.1 * h_pos.mean(0)
        d_pos = (1.0 - p_pos)[:, None] * h_pos + peer * (m.mean() - m)[None, :]
        d_neg = -p_neg[:, None] * h_neg
        g_w = (a_pos.T @ d_pos + a_neg.T @ d_neg) / len(y)
        g_b = (d_pos.sum(0) + d_neg.sum(0)) / len(y)
        sw, sb = 0.9 * sw + 0.1 * g_w, 0.9 * sb + 0.1 * g_b
        new_net.append((w + lr * gain * (sw - wc * w), b + lr * gain * sb))
        new_s.append((sw, sb))
        new_means.append(m)

    logits = feats @ ro_w  # the readout's bias stays 0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ro_s = 0.9 * ro_s + 0.1 * feats.T @ (np.eye(C)[y] - probs) / len(y)
    ro_w = ro_w + ro_lr * gain * (ro_s - ro_wc * ro_w)
    return new_net, new_s, new_means, ro_w, ro_s


def test_hinton_preset_equals_the_numpy_transcription():
    cfg = config.parse_config(
        ["--preset", "hinton", "--hidden", *map(str, HIDDEN), "--epochs", str(EPOCHS),
         "--batch-size", str(B)], config.Config())
    spec, opt_spec = config.spec_of(cfg, C), config.optimizer_of(cfg)
    opt = opt_spec.layer_optimizers((D,) + HIDDEN[:-1], steps_per_epoch=STEPS_PER_EPOCH,
                                    epochs=EPOCHS)
    ro_opt = opt_spec.readout_optimizer(steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS)
    state = epoch.init_train_state(jax.random.key(0), spec, D, opt, ro_opt)
    step = jax.jit(epoch.make_train_step(spec, opt, ro_opt))
    thetas = spec.thetas

    net = [(np.asarray(ls.params.w, np.float64), np.asarray(ls.params.b, np.float64))
           for ls in state.layers]
    w0 = net[0][0].copy()
    s = [(np.zeros_like(w), np.zeros_like(b)) for w, b in net]
    means = [np.full(w.shape[1], 0.5) for w, _ in net]
    ro_w = np.zeros((HIDDEN[1] + HIDDEN[2], C))
    ro_s = np.zeros_like(ro_w)
    assert np.all(np.asarray(state.readout.params.w) == 0)

    rng = np.random.default_rng(0)
    for i in range(EPOCHS * STEPS_PER_EPOCH):
        x = rng.integers(0, 256, (B, D)).astype(np.uint8)
        y = rng.integers(0, C, B)
        y_neg = hard_negatives(rng, neutral_features(net, x) @ ro_w, y)
        assert not np.any(y_neg == y)
        net, s, means, ro_w, ro_s = reference_step(
            net, s, means, ro_w, ro_s, x, y, y_neg, epoch=i // STEPS_PER_EPOCH + 1)
        state, _ = step(state, x, y.astype(np.int32), jax.random.key(i), thetas,
                        y_neg.astype(np.int32))

    for (w, b), ls, m in zip(net, state.layers, means):
        np.testing.assert_allclose(ls.params.w, w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ls.params.b, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ls.peer_mean, m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.readout.params.w, ro_w, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(state.readout.params.b) == 0.0)
    # The weights and the readout moved far enough for the comparison to mean something.
    assert np.abs(net[0][0] - w0).max() > 1e-3
    assert np.abs(ro_w).max() > 1e-3
