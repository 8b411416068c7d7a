"""The whole core API on anyone's pytree: a Flax linen params dict, a Flax NNX model's state
(nnx.split / nnx.merge) and a plain nested container of arrays; and the core without Flax."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gpjax


def _act(x):
    return jax.nn.leaky_relu(x, 0.01)


class _Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = _act(nn.Conv(4, (3, 3))(x)).reshape(x.shape[0], -1)
        h = _act(nn.Dense(8)(h))
        return nn.Dense(3)(h)


class _Nnx(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.hidden = nnx.Linear(100, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = _act(self.conv(x)).reshape(x.shape[0], -1)
        return self.out(_act(self.hidden(h)))


def _xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _linen():
    model = _Linen()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))

    def loss(p, batch):
        return _xent(model.apply(p, batch["x"]), batch["y"])

    return params, loss, ["params/Conv_0/kernel"], "params/Dense_1/kernel", "layer"


def _nnx():
    graphdef, params, rest = nnx.split(_Nnx(nnx.Rngs(0)), nnx.Param, ...)

    def loss(p, batch):
        return _xent(nnx.merge(graphdef, p, rest)(batch["x"]), batch["y"])

    return params, loss, ["conv/kernel*"], "out/kernel/value", "global"


def _plain():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"conv": {"w": 0.3 * jax.random.normal(k[0], (3, 3, 2, 4)), "b": jnp.zeros(4)},
              "mlp": [(0.1 * jax.random.normal(k[1], (100, 8)), jnp.zeros(8)),
                      (0.3 * jax.random.normal(k[2], (8, 3)), jnp.zeros(3))]}

    def loss(p, batch):
        h = jax.lax.conv_general_dilated(batch["x"], p["conv"]["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = _act(h + p["conv"]["b"]).reshape(batch["x"].shape[0], -1)
        (w1, b1), (w2, b2) = p["mlp"]
        return _xent(_act(h @ w1 + b1) @ w2 + b2, batch["y"])

    return params, loss, lambda name: name.startswith("conv/"), "mlp/1/0", "global"


_KINDS = {"linen": _linen, "nnx": _nnx, "plain": _plain}


def _data(seed, n_batches=4, bs=16):
    """Stacked batches and the same batches as a list (sliced in numpy: no eager compiles)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_batches, bs, 5, 5, 2)).astype(np.float32)
    y = ((x[..., 0].sum(axis=(2, 3)) > 0).astype(np.int32)
         + (x[..., 1].mean(axis=(2, 3)) > 0.2)).astype(np.int32)
    stacked = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    return stacked, [{"x": jnp.asarray(x[i]), "y": jnp.asarray(y[i])} for i in range(n_batches)]


@pytest.mark.parametrize("kind", list(_KINDS))
def test_whole_api_on_pytree(kind, compiles):
    # One growth/pruning scope per kind keeps compilations down (scopes are tested elsewhere).
    params, loss, input_fed, last_kernel, scope = _KINDS[kind]()
    masks = gpjax.init_masks(params, density=0.3, key=jax.random.key(1))
    # Kernels (conv + 2 dense) get masks, biases do not.
    count = gpjax.count_params(masks, params)
    assert len(count.per_tensor) == 3 and last_kernel in count.per_tensor
    assert count.dense == 72 + 800 + 24 and count.unmasked == 4 + 8 + 3
    assert gpjax.density(masks) == pytest.approx(count.active / count.dense)
    params = gpjax.apply_masks(params, masks)
    assert gpjax.dormant_is_zero(params, masks)
    assert type(params) is type(masks)

    data, batches = _data(0)
    loss_jit = jax.jit(loss)
    tx = gpjax.masked(optax.adam(1e-2))
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, masks, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)  # forward on W directly
        updates, state = tx.update(grads, state, params, masks=masks)
        return optax.apply_updates(params, updates), state, value

    def cycle(params, masks, state, grow_pct, prune_pct, scope):
        g = gpjax.accumulate_gradients(loss, params, masks, data)
        g_stream = gpjax.accumulate_gradients(
            loss, params, masks, iter(batches))
        chex.assert_trees_all_close(g, g_stream, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_equal_structs(g, params)
        new_p, new_m = gpjax.grow(params, masks, g, percentile=grow_pct, learning_rate=0.05,
                                  scope=scope)
        assert gpjax.count_params(new_m).active >= gpjax.count_params(masks).active
        losses = []
        for _ in range(3):
            for b in batches:
                new_p, state, v = train_step(new_p, state, new_m, b)
                losses.append(float(v))
        assert gpjax.dormant_is_zero(new_p, new_m)
        dead_before = gpjax.dead_units(new_m, input_fed=input_fed)
        new_p, new_m = gpjax.prune(new_p, new_m, percentile=prune_pct, scope=scope,
                                   input_fed=input_fed)
        assert gpjax.dormant_is_zero(new_p, new_m)
        # Recoverable pruning kills no unit (one dead since the random init stays dead).
        assert gpjax.dead_units(new_m, input_fed=input_fed) == dead_before
        return new_p, new_m, state, losses

    first = float(loss_jit(params, batches[0]))
    params, masks, state, _ = cycle(params, masks, state, 50.0, 10.0, scope)  # warm-up
    before = dict(gpjax.count_params(masks).per_tensor)
    with compiles:
        for gp, pp in [(30, 20), (70.0, 5), (40, 30)]:
            params, masks, state, losses = cycle(params, masks, state, gp, pp, scope)
    assert compiles.count == 0, f"{compiles.count} compilations after warm-up"
    assert train_step._cache_size() == 1
    assert gpjax.count_params(masks).per_tensor != before  # masks really changed
    assert np.mean(losses[-4:]) < first

    # The structure survives: params still plug into the user's model.
    if kind == "nnx":
        model = _Nnx(nnx.Rngs(3))
        nnx.update(model, params)
        out = nnx.jit(lambda m, x: m(x))(model, batches[0]["x"])
        assert out.shape == (16, 3)
        assert gpjax.dormant_is_zero(nnx.state(model, nnx.Param), masks)
    value = loss_jit(params, batches[0])
    assert np.isfinite(float(value))

    # Bad input names the leaf in this pytree's own path syntax.
    flat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda x: x is None)
    bad = [m if gpjax.masks.path_str(p) != last_kernel else m[..., :-1] for p, m in flat]
    bad = jax.tree_util.tree_unflatten(treedef, bad)
    with pytest.raises(ValueError, match=last_kernel.replace("/", "/")):
        gpjax.prune(params, bad, percentile=10)


def test_core_needs_no_flax():
    code = textwrap.dedent("""
        import sys
        import jax, jax.numpy as jnp, optax
        import gpjax
        p = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
        m = gpjax.init_masks(p, density=0.5, key=jax.random.key(0))
        p = gpjax.apply_masks(p, m)
        g = gpjax.accumulate_gradients(lambda q, x: jnp.sum((x @ q["w"] + q["b"]) ** 2), p, m,
                                       jnp.ones((2, 5, 4)))
        p, m = gpjax.grow(p, m, g, percentile=50, learning_rate=0.1)
        p, m = gpjax.prune(p, m, percentile=10)
        tx = gpjax.masked(optax.sgd(0.1))
        u, s = tx.update(g, tx.init(p), p, masks=m)
        gpjax.count_params(m, p); gpjax.density(m); gpjax.dead_units(m)
        loaded = sorted(k for k in sys.modules if k == "flax" or k.startswith("flax."))
        assert not loaded, loaded
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
