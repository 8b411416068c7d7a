"""The whole core API on Equinox models: ``eqx.partition`` params (``None`` leaves), the whole
model (function leaves) and ``[out, in, ...]`` kernels (``layout="torch"``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import PROPERTY
from hypothesis import given
from hypothesis import strategies as st

import gpjax

eqx = pytest.importorskip("equinox")

_MLP_FED = "layers/0/weight"
_CNN_FED = "conv/weight"


class _Cnn(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(2, 4, 3, padding=1, key=k1)  # weight [out, in, kh, kw]
        self.head = eqx.nn.Linear(4 * 5 * 5, 3, key=k2)       # weight [out, in]

    def __call__(self, x):  # x: [2, 5, 5]
        return self.head(jax.nn.leaky_relu(self.conv(x), 0.01).reshape(-1))


def _mlp(width=64):
    return eqx.nn.MLP(4, 10, width, 2, activation=lambda x: jax.nn.leaky_relu(x, 0.01),
                      key=jax.random.key(0))


def _kernels(masks):
    return {name: np.asarray(m) for name, m, _ in gpjax.masks.masked_leaves(masks)}


def _check_units(masks, fed, before=None):
    """Independent numpy check, in Equinox's own axes ([out, in, ...]): every output unit has an
    input connection, every input unit of a kernel not fed by the data an output one (only
    units that had one in ``before``, when given)."""
    had = _kernels(before) if before is not None else None
    for name, m in _kernels(masks).items():
        rest_out = tuple(a for a in range(m.ndim) if a != 0)
        rest_in = tuple(a for a in range(m.ndim) if a != 1)
        want_out = had[name].any(axis=rest_out) if had else True
        assert (m.any(axis=rest_out) >= want_out).all(), name
        if name != fed:
            want_in = had[name].any(axis=rest_in) if had else True
            assert (m.any(axis=rest_in) >= want_in).all(), name


def _data(seed, shape, classes, n_batches=4, bs=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_batches, bs) + shape).astype(np.float32)
    y = (x.reshape(n_batches, bs, -1)[..., :classes].argmax(-1)).astype(np.int32)
    return {"x": x, "y": y}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_whole_core_api_on_equinox(kind):
    model = _mlp(16) if kind == "mlp" else _Cnn(jax.random.key(0))
    fed = _MLP_FED if kind == "mlp" else _CNN_FED
    params, static = eqx.partition(model, eqx.is_array)
    if kind == "mlp":  # the reported case: activation functions partitioned out as None
        assert None in jax.tree.leaves(params, is_leaf=lambda x: x is None)

    # The user's report: apply_masks(p, init_masks(p)) on eqx.partition params.
    dense = gpjax.init_masks(params)
    params = gpjax.apply_masks(params, dense)
    count = gpjax.count_params(dense, params)
    shapes = [w.shape for w, _ in _weights(model)]
    assert count.dense == sum(int(np.prod(s)) for s in shapes)
    assert count.unmasked == sum(b.size for _, b in _weights(model))

    # A sparse seed with every neuron connected, in Equinox's axes.
    masks = gpjax.init_masks(params, density=0.1, key=jax.random.key(1))
    masks = gpjax.connect_units(masks, seed=0, input_fed=fed, layout="torch")
    _check_units(masks, fed)
    assert all(d == (0, 0) for d in gpjax.dead_units(masks, input_fed=fed,
                                                     layout="torch").values())
    params = gpjax.apply_masks(params, masks)

    xent = optax.softmax_cross_entropy_with_integer_labels

    def loss_fn(p, batch):
        net = eqx.combine(p, static)
        return xent(jax.vmap(net)(batch["x"]), batch["y"]).mean()

    np_data = _data(0, (4,) if kind == "mlp" else (2, 5, 5), 3 if kind == "cnn" else 10)
    data = jax.tree.map(jnp.asarray, np_data)
    tx = gpjax.masked(optax.adam(1e-2))
    state = tx.init(params)

    @jax.jit
    def step(p, s, m, batch):
        value, g = jax.value_and_grad(loss_fn)(p, batch)
        u, s = tx.update(g, s, p, masks=m)
        return optax.apply_updates(p, u), s, value

    batches = [{k: v[i] for k, v in np_data.items()} for i in range(4)]

    def epoch(p, s, m):
        for b in batches:
            p, s, v = step(p, s, m, b)
        return p, s, float(v)

    first = float(jax.jit(loss_fn)(params, batches[0]))
    g = gpjax.accumulate_gradients(loss_fn, params, masks, data)
    params, grown = gpjax.grow(params, masks, g, percentile=70, learning_rate=0.05)
    assert gpjax.count_params(grown).active > gpjax.count_params(masks).active
    masks = grown
    for _ in range(3):
        params, state, last = epoch(params, state, masks)
    assert gpjax.dormant_is_zero(params, masks) and last < first

    before = masks
    params, masks = gpjax.prune(params, masks, percentile=60, input_fed=fed, layout="torch")
    state = gpjax.sync_masks(state, masks)
    _check_units(masks, fed, before)
    assert all(d == (0, 0) for d in gpjax.dead_units(masks, input_fed=fed,
                                                     layout="torch").values())
    # Non-recoverable pruning may kill units, and dead_units counts them in Equinox's axes.
    _, harsh = gpjax.prune(params, masks, percentile=95, recoverable=False, layout="torch")
    dead = gpjax.dead_units(harsh, layout="torch")
    for name, m in _kernels(harsh).items():
        rest_out = tuple(a for a in range(m.ndim) if a != 0)
        rest_in = tuple(a for a in range(m.ndim) if a != 1)
        assert dead[name] == (int((~m.any(axis=rest_in)).sum()),
                              int((~m.any(axis=rest_out)).sum()))
    params, state, _ = epoch(params, state, masks)
    assert gpjax.dormant_is_zero(params, masks)
    net = eqx.combine(params, static)  # still the user's model
    assert jax.vmap(net)(batches[0]["x"]).shape[-1] == (10 if kind == "mlp" else 3)


def _weights(model):
    layers = model.layers if hasattr(model, "layers") else (model.conv, model.head)
    return [(layer.weight, layer.bias) for layer in layers]


def test_whole_equinox_model_with_function_leaves():
    model = _mlp(16)  # the shapes of test_whole_core_api_on_equinox[mlp]: its compilations
    masks = gpjax.init_masks(model, density=0.5, key=jax.random.key(0))
    model = gpjax.apply_masks(model, masks)
    q, m = gpjax.prune(model, masks, percentile=20, layout="torch", input_fed=_MLP_FED)
    assert q.activation is model.activation and isinstance(q, eqx.nn.MLP)
    grads = eqx.filter_grad(lambda mdl: jnp.sum(mdl(jnp.ones(4)) ** 2))(q)
    q, m = gpjax.grow(q, m, grads, percentile=50, learning_rate=0.1)
    assert gpjax.dormant_is_zero(q, m) and q.final_activation is model.final_activation
    with pytest.raises(ValueError, match="eqx.partition"):
        gpjax.accumulate_gradients(lambda p, b: 0.0, q, m, jnp.ones((2, 3)))


def test_reported_mlp_layout_figures():
    """The user's 4-64-64-10 figures: the flax layout on [out, in] kernels leaves units without
    an input; layout="torch" leaves none."""
    params, _ = eqx.partition(_mlp(), eqx.is_array)
    masks = gpjax.init_masks(params, density=0.1, key=jax.random.key(0))
    wrong = gpjax.connect_units(masks, seed=0, input_fed=_MLP_FED)  # layout="flax"
    w = _kernels(wrong)[_MLP_FED]  # [out=64, in=4]: flax reads 64 inputs (exempt), 4 outputs
    assert (~w.any(axis=1)).sum() > 5  # hidden units left without an input
    right = gpjax.connect_units(masks, seed=0, layout="torch", input_fed=_MLP_FED)
    _check_units(right, _MLP_FED)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), p=st.integers(0, 100),
       density=st.sampled_from([0.05, 0.3, 0.8]), scope=st.sampled_from(["layer", "global"]))
def test_recoverable_invariant_on_equinox_cnn(seed, p, density, scope):
    params, _ = eqx.partition(_Cnn(jax.random.key(seed % 7)), eqx.is_array)
    masks = gpjax.init_masks(params, density=density, key=jax.random.key(seed))
    params = gpjax.apply_masks(params, masks)
    q, m = gpjax.prune(params, masks, percentile=p, scope=scope, input_fed=_CNN_FED,
                       layout="torch")
    _check_units(m, _CNN_FED, masks)
    assert gpjax.dormant_is_zero(q, m)
    for name, m1 in _kernels(m).items():
        assert (m1 <= _kernels(masks)[name]).all()
