import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ffjax import epoch as epoch_lib
from ffjax import objective, optim
from ffjax.spec import FFSpec
from tests.conftest import assert_gradients_are_local

SIZES = (12, 16, 16, 8)
# The plain algorithm: uniform negatives, no peer normalization, no readout, the full
# gradient step of the logistic.
PLAIN = FFSpec(hidden=SIZES[1:], num_classes=4, negatives="uniform", peer_strength=0.0,
               readout=False, loss_scale=1.0)
# The same for every block type: dense, conv and locally connected layers on 6x6x2
# images (a network of each kind, and one that mixes them).
NETS = {
    "dense": dict(hidden=(16, 16, 8), input_shape=(12,)),
    "conv": dict(hidden=("conv:4:3", "conv:4:3:p2", 8), input_shape=(6, 6, 2)),
    "local": dict(hidden=("local:3:3", "local:2:3:s2:valid"), input_shape=(6, 6, 2)),
}


def _init(key, optimizer):
    return epoch_lib.init_train_state(key, PLAIN, SIZES[0], optimizer)


def _epoch(optimizer, batch_size=16):
    return jax.jit(epoch_lib.make_train_epoch(PLAIN, optimizer, batch_size=batch_size),
                   donate_argnums=0)


def _batch(seed, n=6, d=SIZES[0]):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, (n, d)), jax.random.uniform(k2, (n, d))


OBJECTIVES = [objective.logistic, objective.make_objective("symba", alpha=4.0),
              objective.make_objective("collaborative", temperature=2.0)]


# Every block type with the logistic, and every built-in objective on dense layers (layer
# collaboration reads the other layers' goodness, whatever the blocks), each with and
# without peer normalization.
LOCALITY_CASES = [(net, 0) for net in NETS] + [("dense", 1), ("dense", 2)]


@pytest.mark.parametrize("net, objective_index", LOCALITY_CASES,
                         ids=[f"{n}-{['logistic', 'symba', 'collaborative'][i]}"
                              for n, i in LOCALITY_CASES])
@pytest.mark.parametrize("peer_strength", [0.0, 0.03])
def test_locality_gradient_of_layer_k_reaches_layer_k_alone(net, objective_index,
                                                            peer_strength):
    """Layer k's objective sends gradient to layer k and to no other layer, for every
    block type, every built-in objective and with peer normalization."""
    objective_fn = OBJECTIVES[objective_index]
    spec = FFSpec(**NETS[net], num_classes=4, negatives="uniform", readout=False,
                  objective=objective_fn, peer_strength=peer_strength)
    state = epoch_lib.init_train_state(jax.random.key(0), spec, spec.input_shape,
                                       optax.sgd(0.1))
    params = epoch_lib.params_of(state)
    keys = jax.random.split(jax.random.key(1))
    x_pos, x_neg = (jax.random.uniform(k, (6,) + spec.network_input_shape) for k in keys)
    assert_gradients_are_local(
        lambda p: epoch_lib.local_losses(p, x_pos, x_neg, spec)[0], params)


def test_each_layer_has_its_own_optimizer_state():
    opts = (optax.sgd(0.5), optax.sgd(0.0), optax.adam(0.01))
    state = _init(jax.random.key(0), opts)
    assert isinstance(state.layers[2].opt_state[0], optax.ScaleByAdamState)
    x_pos, x_neg = _batch(2)
    new, metrics = epoch_lib.train_step(state, x_pos, x_neg, PLAIN, optimizer=opts)
    assert metrics.loss.shape == (3,)
    old_p, new_p = epoch_lib.params_of(state), epoch_lib.params_of(new)
    assert not np.allclose(old_p[0].w, new_p[0].w)
    np.testing.assert_array_equal(old_p[1].w, new_p[1].w)  # lr 0: untouched
    assert int(new.layers[2].opt_state[0].count) == 1


def test_train_step_lowers_every_layer_loss():
    opt = optax.adam(1e-2)
    state = _init(jax.random.key(3), opt)
    x_pos, x_neg = _batch(4)
    before, *_ = epoch_lib.local_losses(epoch_lib.params_of(state), x_pos, x_neg, PLAIN)
    for _ in range(20):
        state, _ = epoch_lib.train_step(state, x_pos, x_neg, PLAIN, optimizer=opt)
    after, *_ = epoch_lib.local_losses(epoch_lib.params_of(state), x_pos, x_neg, PLAIN)
    assert bool(jnp.all(after < before))


def test_one_step_regression_value():
    """Pins one SGD step on fixed data; a change here changes training results."""
    opt = optax.sgd(1e-3)
    state = _init(jax.random.key(42), opt)
    x = jnp.linspace(0.0, 1.0, 6 * SIZES[0]).reshape(6, SIZES[0])
    x_pos, x_neg = x, x[::-1]
    state, m = epoch_lib.train_step(state, x_pos, x_neg, PLAIN, optimizer=opt)
    losses, *_ = epoch_lib.local_losses(epoch_lib.params_of(state), x_pos, x_neg, PLAIN)
    np.testing.assert_allclose(m.loss, [12.72972, 13.05376, 6.58952], rtol=1e-3)
    np.testing.assert_allclose(losses, [12.57737, 12.86305, 6.50036], rtol=1e-3)


def _toy_data(n=64, d=SIZES[0], c=4, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.randint(kx, (n, d), 0, 256).astype(jnp.uint8)
    y = jax.random.randint(ky, (n,), 0, c)
    return x, y


def test_epoch_traces_once_over_several_epochs():
    x, y = _toy_data()
    opt = optax.adam(1e-3)
    counted = chex.assert_max_traces(epoch_lib.make_train_epoch(PLAIN, opt, batch_size=16),
                                     n=1)
    epoch = jax.jit(counted, donate_argnums=0)
    real = _epoch(opt)
    s1 = _init(jax.random.key(0), opt)
    s2 = _init(jax.random.key(0), opt)
    data_key = jax.random.key(1)
    for e in range(4):
        s1, m1 = epoch(s1, x, y, jax.random.fold_in(data_key, e))
        s2, m2 = real(s2, x, y, jax.random.fold_in(data_key, e))
    assert m1.layers.loss.shape == (3,) and m1.readout is None
    if hasattr(real, "_cache_size"):
        assert real._cache_size() == 1
    chex.clear_trace_counter()


def test_same_seed_same_results_and_different_seed_differs():
    x, y = _toy_data()

    def run(seed):
        opt = optim.make_optimizer("adam", lr=1e-2, total_steps=12)
        st = _init(jax.random.key(seed), opt)
        ep = _epoch(opt)
        out = []
        for e in range(3):
            st, m = ep(st, x, y, jax.random.fold_in(jax.random.key(seed + 100), e))
            out.append(np.asarray(m.layers.loss))
        return np.stack(out), np.asarray(epoch_lib.params_of(st)[0].w)

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_epoch_rejects_batch_larger_than_data():
    x, y = _toy_data(n=8)
    opt = optax.sgd(0.1)
    ep = _epoch(opt)
    st = _init(jax.random.key(0), opt)
    with pytest.raises(ValueError, match="batch_size=16 is larger than the dataset"):
        ep(st, x, y, jax.random.key(1))


def test_optimizer_count_mismatch_is_reported():
    with pytest.raises(ValueError, match="one per hidden layer"):
        _init(jax.random.key(0), (optax.sgd(0.1),))


def test_layer_learning_rates_scale_with_fan_in():
    assert optim.layer_learning_rates(0.002, [500, 2000]) == (0.004, 0.001)
    assert optim.layer_learning_rates(0.002, [500, 2000], scaling="none") == (0.002, 0.002)
    with pytest.raises(ValueError, match="lr scaling"):
        optim.layer_learning_rates(0.002, [500], scaling="muP")
