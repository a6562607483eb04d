"""Local FF training on the device: per-layer optimizer states, one minibatch step, one
scanned epoch. The host loop around it is ffjax.driver."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from ffjax import labels, layers, network, objective, readout
from ffjax import negatives as negatives_lib
from ffjax.negatives import Minibatch, with_labels
from ffjax.spec import FFSpec


class LayerState(NamedTuple):
    """One layer's parameters, its own optimizer state, and the running mean of each
    unit's activity on positive data (used by peer normalization)."""

    params: object  # the block's parameters
    opt_state: optax.OptState
    peer_mean: jax.Array  # the layer's per-example output shape


class ReadoutState(NamedTuple):
    """The softmax readout's parameters and its own optimizer state."""

    params: layers.DenseParams
    opt_state: optax.OptState


class TrainState(NamedTuple):
    """The whole training state: one LayerState per hidden layer (input layer first),
    the readout's state (None when no softmax readout is trained), and the per-layer
    linear probes' (a tuple of readout parameters, one per layer, and their optimizer
    state; None unless spec.trains_probes)."""

    layers: tuple
    readout: ReadoutState | None = None
    probes: ReadoutState | None = None


class Running(NamedTuple):
    """What a training pass measures for the layers' running statistics, one entry per
    layer: the updated peer-normalization means, and the positives' batch (mean, var)
    of each output (spec.output_norm "batch"; None otherwise)."""

    peer_means: tuple
    norm_stats: tuple


class ReadoutMetrics(NamedTuple):
    """Training cross-entropy and accuracy of the softmax readout (neutral-label pass)."""

    loss: jax.Array
    accuracy: jax.Array


class StepMetrics(NamedTuple):
    """Per-layer FF metrics ((L,) fields) and the readout's metrics (or None)."""

    layers: objective.LayerMetrics
    readout: ReadoutMetrics | None


PEER_INIT = 0.5  # initial running mean of every unit's activity (reference code)
DROPOUT_STREAM = 0x0D50  # folded into a step's key for spec.hidden_dropout's masks


def _per_layer(optimizer, n: int) -> tuple:
    """One GradientTransformation per layer (the same one repeated, or one each)."""
    if isinstance(optimizer, optax.GradientTransformation):
        return (optimizer,) * n
    optimizers = tuple(optimizer)
    if len(optimizers) != n or not all(
        isinstance(o, optax.GradientTransformation) for o in optimizers
    ):
        raise ValueError(
            f"optimizer must be an optax.GradientTransformation or a sequence of {n} of "
            f"them (one per hidden layer); got {optimizer!r}."
        )
    return optimizers


def init_train_state(key: jax.Array, spec: FFSpec, input_shape, optimizer,
                     readout_optimizer: optax.GradientTransformation | None = None
                     ) -> TrainState:
    """A fresh network for `spec` on inputs of per-example shape `input_shape` (an int
    D for flat features), and its optimizer states.

    Args:
      key: PRNG key for the weights (split into one key per layer).
      spec: the model (blocks, readout layers, classes).
      input_shape: one raw example's shape, e.g. 784 or (28, 28, 1); it must equal
        spec.input_shape when the spec has one.
      optimizer: an optax.GradientTransformation used independently for every layer
        (each layer gets its own state), or a sequence of L of them.
      readout_optimizer: the softmax readout's (its own state); needed exactly when
        spec.trains_readout.
    """
    _check_readout(spec, readout_optimizer)
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(input_shape)
    spec = spec.for_input(shape)
    net = network.init_network(key, spec)
    opts = _per_layer(optimizer, len(net))
    layer_states = tuple(
        LayerState(p, o.init(p), jnp.full(s, PEER_INIT, jnp.float32))
        for p, o, s in zip(net, opts, spec.layer_shapes))
    if readout_optimizer is None:
        return TrainState(layer_states, None)
    rparams = readout.init_readout(spec.readout_width, spec.num_classes)
    probes = None
    if spec.trains_probes:
        pparams = readout.init_probes(spec)
        probes = ReadoutState(pparams, readout_optimizer.init(pparams))
    return TrainState(layer_states, ReadoutState(rparams, readout_optimizer.init(rparams)),
                      probes)


def _check_readout(spec: FFSpec, readout_optimizer) -> None:
    if spec.trains_readout and readout_optimizer is None:
        raise ValueError("this spec trains a softmax readout (readout=True or hard "
                         "negatives): pass a readout_optimizer.")
    if not spec.trains_readout and readout_optimizer is not None:
        raise ValueError("a readout_optimizer was given but the spec trains no readout "
                         "(readout=False with uniform or all negatives).")


def params_of(state: TrainState) -> layers.Network:
    """The network parameters held in a TrainState."""
    return tuple(ls.params for ls in state.layers)


def local_losses(params: layers.Network, x_pos: jax.Array, x_neg: jax.Array,
                 spec: FFSpec, *, thetas=None, peer_means=None, y=None, dropout_key=None):
    """Each layer's own FF loss on one minibatch, as `spec` defines it.

    x_pos (B, ...) and x_neg (M, ...) are encoded inputs (labels written in); they go
    through network.forward_activities as one (B + M, ...) batch. Every layer reads its
    input under stop_gradient, so layer k's loss depends on layer k's parameters alone:
    summing the losses and differentiating once gives every layer its local gradient
    and nothing else.

    spec.objective_fn() turns every layer's goodness into one loss per layer;
    spec.loss_scale multiplies it (0.5 gives the reference code's step, which is half
    the gradient of the logistic loss).

    Peer normalization (spec.peer_strength > 0): each unit's running mean activity on
    the positives, m, is updated (m <- momentum m + (1 - momentum) batch mean), and a
    term whose gradient with respect to each pre-activation is peer_strength * (m_j -
    mean(m)) is added to the objective. It acts on the pre-activation, not through the
    ReLU gate (straight-through), so units that never fire get pulled up and revive,
    and units busier than the layer's average get pulled down. It is not scaled by
    loss_scale.

    With a class-group objective (spec.uses_groups) there are no negatives (M = 0):
    each layer's loss is the objective's loss of its class-group goodness against `y`.
    With spec.goodness_scope "location", every location of a layer is scored as its own
    row of the objective and the layer's loss and metrics are means over them.

    Args:
      thetas: one threshold per layer, possibly traced (a grid); None: spec.thetas.
      peer_means: each layer's running means (TrainState's); None: the initial value.
      y: (B,) labels of the positives, needed by class-group objectives alone.
      dropout_key: draws spec.hidden_dropout's masks (network.forward_activities);
        needed exactly when spec.hidden_dropout > 0.

    With spec.output_norm "batch", every layer's output is normalized with the
    positives' batch statistics (network.forward_activities), which are returned for
    the running averages.

    Returns:
      objectives: (L,) what each layer minimizes (loss_scale * FF loss + peer term);
      metrics: LayerMetrics with (L,) fields (the FF loss unscaled, without the peer term);
      running: Running: the updated peer means (unchanged when disabled) and the
        output norms' batch statistics.
    """
    batch = x_pos.shape[0]
    if thetas is None:
        thetas = spec.thetas
    if (dropout_key is None) != (spec.hidden_dropout == 0):
        raise ValueError(f"hidden_dropout={spec.hidden_dropout}: pass a dropout_key exactly "
                         "when the spec's hidden_dropout is above 0.")
    acts = network.forward_activities(params, jnp.concatenate([x_pos, x_neg], axis=0), spec,
                                      dropout_key=dropout_key, stats_rows=batch)
    if peer_means is None:
        peer_means = tuple(jnp.full(a.h.shape[1:], PEER_INIT, jnp.float32) for a in acts)
    peer_terms, new_means = [], []
    for (z, h, _), m in zip(acts, peer_means):
        peer = jnp.zeros((), jnp.float32)
        if spec.peer_strength:
            m = spec.peer_momentum * m + (1.0 - spec.peer_momentum) * jax.lax.stop_gradient(
                jnp.mean(h[:batch], axis=0))
            push = jax.lax.stop_gradient(m - jnp.mean(m))
            peer = spec.peer_strength * jnp.sum(push * jnp.mean(z[:batch], axis=0))
        peer_terms.append(peer)
        new_means.append(m)
    obj = spec.objective_fn()
    if spec.uses_groups:
        if y is None:
            raise ValueError("a class-group objective needs the labels: pass y.")
        per_loc = [objective.location_group_goodness(a.h[:batch], spec.num_classes)
                   for a in acts]  # L × (B, P, C), P per layer
        # The whole layer's scores (objective.group_goodness): the metrics and the
        # prediction read these with either scope.
        scores = jnp.stack([jnp.mean(s, axis=1) for s in per_loc])  # (L, B, C)
        if spec.goodness_scope == "location":
            # Every (example, location) pair is a row of the layer's loss, labelled with
            # its example's class.
            ff = jnp.stack([obj.loss(s.reshape(-1, s.shape[-1]), jnp.repeat(y, s.shape[1]))
                            for s in per_loc])
        else:
            ff = jnp.stack([obj.loss(s, y) for s in scores])
        metrics = objective.group_metrics(scores, y, ff)
    elif spec.goodness_scope == "location":
        # Each layer's locations are rows of its own objective call (their counts differ
        # from layer to layer); a layer's loss and metrics are means over its locations.
        per_layer = []
        for a, th in zip(acts, thetas):
            g = objective.location_goodness(a.h).T  # (P, B + M)
            t = jnp.broadcast_to(jnp.asarray(th, jnp.float32), g.shape[:1])
            loss_p = obj(g[:, :batch], g[:, batch:], t)
            per_layer.append(jax.tree.map(jnp.mean, objective.layer_metrics(
                g[:, :batch], g[:, batch:], t, loss_p)))
        metrics = jax.tree.map(lambda *v: jnp.stack(v), *per_layer)
        ff = metrics.loss
    else:
        g = jnp.stack([objective.goodness(a.h) for a in acts])  # (L, B + M)
        t = jnp.stack([jnp.asarray(th, jnp.float32) for th in thetas])
        g_pos, g_neg = g[:, :batch], g[:, batch:]
        ff = obj(g_pos, g_neg, t)
        metrics = objective.layer_metrics(g_pos, g_neg, t, ff)
    stats = tuple(jax.lax.stop_gradient(a.stats) if a.stats is not None else None
                  for a in acts)
    return (spec.loss_scale * ff + jnp.stack(peer_terms), metrics,
            Running(tuple(new_means), stats))


def train_step(state: TrainState, x_pos: jax.Array, x_neg: jax.Array, spec: FFSpec, *,
               optimizer, thetas=None, trainable: Sequence[int] | None = None, y=None,
               dropout_key=None):
    """Updates every layer once from its own local loss (local_losses with `spec`).
    Returns (state, LayerMetrics).

    x_pos and x_neg are encoded inputs: B positives and M negatives (usually M = B;
    M = (C - 1) B with all wrong labels). `trainable` (default: all) names the layers
    updated; the others keep their state exactly (greedy layer-by-layer training). The
    readout state, if any, is passed through unchanged (see readout_step). `y`, the
    positives' labels, is needed by class-group objectives alone; `dropout_key`, by
    spec.hidden_dropout alone.
    """
    params = params_of(state)
    peer_means = tuple(ls.peer_mean for ls in state.layers)

    def total(ps):
        objs, metrics, running = local_losses(ps, x_pos, x_neg, spec, thetas=thetas,
                                              peer_means=peer_means, y=y,
                                              dropout_key=dropout_key)
        return jnp.sum(objs), (metrics, running)

    grads, (metrics, running) = jax.grad(total, has_aux=True)(params)
    new_layers = []
    opts = _per_layer(optimizer, len(params))
    for i, (ls, g, m, stats, opt) in enumerate(zip(state.layers, grads, running.peer_means,
                                                   running.norm_stats, opts)):
        if trainable is not None and i not in trainable:
            new_layers.append(ls)
            continue
        updates, opt_state = opt.update(g, ls.opt_state, ls.params)
        new_params = optax.apply_updates(ls.params, updates)
        if stats is not None:
            new_params = _with_running_stats(new_params, ls.params, stats, spec)
        new_layers.append(LayerState(new_params, opt_state, m))
    return state._replace(layers=tuple(new_layers)), metrics


def _with_running_stats(new: layers.NormedParams, old: layers.NormedParams, stats,
                        spec: FFSpec) -> layers.NormedParams:
    """new with its output norm's running mean and var moved from old's towards the
    batch's `stats`; whatever the optimizer did to them (weight decay) is dropped."""
    k = spec.output_norm_momentum
    mean, var = (k * r + (1.0 - k) * b for r, b in zip((old.norm.mean, old.norm.var), stats))
    return new._replace(norm=new.norm._replace(mean=mean, var=var))


def _training_loss(logits_BxC, y_B, spec: FFSpec):
    """A readout's (or probe's) training loss: the cross-entropy against the labels,
    smoothed by spec.readout_label_smoothing."""
    if not spec.readout_label_smoothing:
        return readout.cross_entropy(logits_BxC, y_B)
    targets = optax.smooth_labels(jax.nn.one_hot(y_B, logits_BxC.shape[-1]),
                                  spec.readout_label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits_BxC, targets))


def readout_step(state: TrainState, feats_BxF: jax.Array, y_B: jax.Array, spec: FFSpec,
                 *, readout_optimizer: optax.GradientTransformation):
    """One update of the softmax readout on features it cannot send gradient through,
    its targets smoothed by spec.readout_label_smoothing. Returns (state, ReadoutMetrics) measured
    before the update (the cross-entropy against the hard labels)."""
    rs = state.readout

    def loss_fn(rp):
        lg = readout.logits(rp, feats_BxF)
        correct = (jnp.argmax(lg, -1) == y_B).astype(jnp.float32)
        ce = readout.cross_entropy(lg, y_B)
        loss = _training_loss(lg, y_B, spec) if spec.readout_label_smoothing else ce
        return loss, (ce, jnp.mean(correct))

    (_, (ce, acc)), g = jax.value_and_grad(loss_fn, has_aux=True)(rs.params)
    updates, opt_state = readout_optimizer.update(g, rs.opt_state, rs.params)
    new = ReadoutState(optax.apply_updates(rs.params, updates), opt_state)
    return state._replace(readout=new), ReadoutMetrics(ce, acc)


def probes_step(state: TrainState, layer_feats: tuple, y_B: jax.Array, spec: FFSpec, *,
                readout_optimizer: optax.GradientTransformation) -> TrainState:
    """One update of every layer's linear probe on that layer's features alone (the
    readout's optimizer, with the probes' own state; each probe's gradient is its own
    cross-entropy's, as the probes share no parameters)."""
    ps = state.probes

    def loss_fn(pp):
        return sum(_training_loss(readout.logits(p, f), y_B, spec)
                   for p, f in zip(pp, layer_feats))

    g = jax.grad(loss_fn)(ps.params)
    updates, opt_state = readout_optimizer.update(g, ps.opt_state, ps.params)
    return state._replace(probes=ReadoutState(optax.apply_updates(ps.params, updates),
                                              opt_state))


def make_train_step(spec: FFSpec, optimizer,
                    readout_optimizer: optax.GradientTransformation | None = None, *,
                    trainable: Sequence[int] | None = None, batch_sharding=None):
    """Builds `step(state, x_BxD, y_B, key, thetas, y_neg=None) -> (state, StepMetrics)`,
    one minibatch of local training (pure; make_train_epoch scans it).

    The step runs the neutral-label pass (when a readout is trained), picks the
    negative labels as spec.negatives says, updates every FF layer from its local loss
    and then the readout: all three passes use the weights from before the update.
    `key` draws the negatives (spec.negative_generator); `y_neg` (B,) or (B * K,)
    wrong labels grouped by positive, written into the images with spec.encoding,
    replaces them when given. `thetas` holds one threshold per layer (spec.thetas, or traced
    values for a sweep).

    Args:
      spec: the model and its objective.
      optimizer: optax.GradientTransformation (or one per layer), as given to
        init_train_state; readout_optimizer likewise.
      trainable: layers updated (default: all, simultaneous training); e.g. (k,) for
        phase k of greedy layer-by-layer training.
      batch_sharding: a jax.sharding.Sharding for the minibatch rows (data
        parallelism, see ffjax.parallel): every minibatch is laid out with it and jit
        propagates the layout, so each device computes its slice of the batch and the
        gradients are summed across devices. None: wherever the inputs are.
    """
    _check_readout(spec, readout_optimizer)
    if trainable is not None:
        trainable = tuple(sorted({int(i) for i in trainable}))
    generator = spec.negative_generator

    def place(a):
        return a if batch_sharding is None else jax.lax.with_sharding_constraint(
            a, batch_sharding)

    def step(st: TrainState, x_raw, y, key, thetas, y_neg=None):
        x = labels.to_float(place(x_raw))
        y = place(y)
        if spec.input_noise:  # the same noisy image for every pass of this minibatch
            key, noise_key = jax.random.split(key)
            x = x + spec.input_noise * jax.random.normal(noise_key, x.shape, x.dtype)
        # A stream of its own (key itself stays as it was), so turning dropout on
        # changes nothing else the step draws: the negatives are the same.
        dropout_key = jax.random.fold_in(key, DROPOUT_STREAM) if spec.hidden_dropout else None
        read = readout_optimizer is not None
        feats = logits = layer_feats = None
        if read:
            layer_feats = readout.layer_features(params_of(st), x, spec)
            feats = readout.select(layer_feats, spec)
            logits = readout.logits(st.readout.params, feats)
        if y_neg is not None:  # given by the caller
            x_neg = with_labels(x, place(y_neg), spec)
        else:
            x_neg = generator.generate(key, Minibatch(x, y, logits), spec)
        x_pos = spec.encoding.embed(x, y)
        _check_negatives(x_pos, x_neg, spec)
        st, layer_metrics = train_step(st, x_pos, x_neg, spec, optimizer=optimizer,
                                       thetas=thetas, trainable=trainable, y=y,
                                       dropout_key=dropout_key)
        read_metrics = None
        if read:
            if st.probes is not None:  # the probes read the pre-update features too
                st = probes_step(st, layer_feats, y, spec,
                                 readout_optimizer=readout_optimizer)
            st, read_metrics = readout_step(st, feats, y, spec,
                                            readout_optimizer=readout_optimizer)
        return st, StepMetrics(layer_metrics, read_metrics)

    return step


def _check_negatives(x_pos, x_neg, spec: FFSpec) -> None:
    """Refuses, at trace time, negatives the layers cannot read beside the positives:
    each must have an encoded positive's shape, and there must be a whole number of them
    per positive (more than one for the objective that picks the hardest of them)."""
    name = negatives_lib.name_of(spec.negatives)
    if x_neg.shape[0] and x_neg.shape[1:] != x_pos.shape[1:]:
        enc = spec.label_encoding
        enc = enc if isinstance(enc, str) else type(enc).__name__
        raise ValueError(
            f"negatives {name!r} made examples of shape {tuple(x_neg.shape[1:])}, but "
            f"label_encoding {enc!r} makes positives of shape {tuple(x_pos.shape[1:])}: a "
            "generator returns inputs encoded as the spec's label encoding encodes them; "
            "choose the encoding the generator is made for.")
    if x_neg.shape[0] % x_pos.shape[0]:
        raise ValueError(f"negatives {name!r} made {x_neg.shape[0]} negatives for "
                         f"{x_pos.shape[0]} positives: a generator returns a whole number "
                         "of negatives per positive, grouped by positive.")
    if (getattr(spec.objective_fn(), "fn", None) is objective.hardest
            and x_neg.shape[0] == x_pos.shape[0]):
        raise ValueError(f"objective 'hardest' scores each positive against the hardest of "
                         f"its negatives, but negatives {name!r} made one per positive, so "
                         "it would be the logistic: make several per positive (e.g. "
                         "--hybrid-count 4) or use objective 'logistic'.")


def check_negatives(spec: FFSpec, batch_size: int) -> None:
    """_check_negatives on shapes alone (jax.eval_shape: nothing is computed), for a
    minibatch of batch_size inputs of spec.input_shape: the command line calls it before
    the run directory is made, so a generator and an encoding that do not fit are
    refused at once."""
    if spec.input_shape is None:
        return
    b = int(batch_size)
    x = jax.ShapeDtypeStruct((b,) + tuple(spec.input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((b,), jnp.int32)
    logits = jax.ShapeDtypeStruct((b, spec.num_classes), jnp.float32)
    gen = spec.negative_generator

    def both(key, x, y, logits):
        return spec.encoding.embed(x, y), gen.generate(key, Minibatch(x, y, logits), spec)

    x_pos, x_neg = jax.eval_shape(both, jax.random.key(0), x, y, logits)
    _check_negatives(x_pos, x_neg, spec)


def make_train_epoch(spec: FFSpec, optimizer,
                     readout_optimizer: optax.GradientTransformation | None = None, *,
                     batch_size: int, trainable: Sequence[int] | None = None,
                     batch_sharding=None):
    """Builds the pure `epoch(state, x_NxD, y_N, key, thetas=None) -> (state,
    StepMetrics)`; jit it (donating the state) where it is called.

    One call is one pass over the data on the device: the examples are shuffled with
    `key`, split into N // batch_size minibatches (the remainder, different each epoch,
    is skipped), and `lax.scan` runs make_train_step's step over them. The metrics are
    the means over the epoch's minibatches. `thetas`, an (L,) array, replaces
    spec.thetas, so thresholds can vary across a jax.vmap (a sweep in one program).

    Args: as make_train_step, plus batch_size, the minibatch size B.
    """
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size={batch_size} must be a positive integer.")
    step = make_train_step(spec, optimizer, readout_optimizer, trainable=trainable,
                           batch_sharding=batch_sharding)

    def epoch(state: TrainState, x_NxD: jax.Array, y_N: jax.Array, key: jax.Array,
              thetas=None):
        if (state.readout is None) != (readout_optimizer is None):
            raise ValueError(
                "the training state and the epoch function disagree about the softmax "
                "readout: build both from the same spec and readout_optimizer.")
        train_params = params_of(state)
        network.check_input(train_params, x_NxD, spec)
        if jnp.shape(y_N) != (x_NxD.shape[0],):
            raise ValueError(f"y must have shape ({x_NxD.shape[0]},), one label per "
                             f"example of x; got {jnp.shape(y_N)}.")
        n = x_NxD.shape[0]
        steps = n // batch_size
        if steps == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n}).")
        perm_key, neg_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n)[: steps * batch_size]
        batches = order.reshape(steps, batch_size)
        neg_keys = jax.random.split(neg_key, steps)

        default_thetas = spec.for_input(x_NxD.shape[1:]).thetas
        if thetas is None:
            layer_thetas = default_thetas
        else:
            if jnp.shape(thetas) != (len(default_thetas),):
                raise ValueError(f"thetas must have shape ({len(default_thetas)},), one "
                                 f"per layer; got {jnp.shape(thetas)}.")
            layer_thetas = tuple(thetas[i] for i in range(len(default_thetas)))

        def body(st, inp):
            idx, k = inp
            return step(st, x_NxD[idx], y_N[idx], k, layer_thetas)

        state, metrics = jax.lax.scan(body, state, (batches, neg_keys))
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return epoch
