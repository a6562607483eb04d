"""Real learning on real MNIST, small enough for a 2-core CPU."""

import time

import jax

import ffjax


def test_small_network_learns_mnist(mnist):
    """784-256-256 on 20k training images, 6 epochs of the default recipe: >= 92 % test
    accuracy."""
    n = 20_000
    t0 = time.perf_counter()
    spec = ffjax.FFSpec(hidden=(256, 256))  # the experiments' recipe
    result = ffjax.fit(jax.random.key(0), mnist.x_train[:n], mnist.y_train[:n], spec,
                       epochs=6)
    pred = ffjax.predict(ffjax.params_of(result.state), mnist.x_test, spec)
    acc = ffjax.accuracy(pred, mnist.y_test)
    elapsed = time.perf_counter() - t0
    assert acc >= 0.92, f"test accuracy {acc:.4f} after 6 epochs on {n} images"
    # every layer separates positives from negatives on its own
    last = result.history[-1].metrics.layers
    assert (last.acc_pos > 0.85).all() and (last.acc_neg > 0.85).all()
    assert len(result.history) == 6 and result.compile_seconds > 0
    print(f"test accuracy {acc:.4f} in {elapsed:.1f}s")
