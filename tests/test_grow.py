"""Growth (SPEC eq. 1) and epoch-averaged gradients: gpjax.grow, gpjax.accumulate_gradients."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PROPERTY, x64
from hypothesis import given
from hypothesis import strategies as st

import gpjax

grow_mod = importlib.import_module("gpjax.grow")

# Fixed shapes (one compilation), random values, masks and percentiles.
_SHAPES = {"a": {"kernel": (7, 5), "bias": (5,)}, "b": {"kernel": (2, 3, 4, 3)},
           "c": {"kernel": (5, 1)}}


def _tree(rng, shapes=_SHAPES, dtype=np.float32):
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s), dtype), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def _masks(rng, params, density):
    return jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < density)
                        if p.ndim >= 2 else None, params)


def _np(x):
    return np.asarray(x, np.float64)


def _ref_grow_sets(grads, masks, p, scope):
    """Numpy reference: dormant & |g| >= percentile(|G|, p) & g != 0, as {path: bool array}."""
    names = [("a", "kernel"), ("b", "kernel"), ("c", "kernel")]
    gs = {n: np.abs(np.asarray(grads[n[0]][n[1]], np.float32)).astype(np.float64)
          for n in names}
    if scope == "global":
        t = np.percentile(np.concatenate([g.ravel() for g in gs.values()]), p)
        ts = {n: t for n in names}
    else:
        ts = {n: np.percentile(gs[n], p) for n in names}
    return {n: ~np.asarray(masks[n[0]][n[1]]) & (gs[n] >= ts[n]) & (gs[n] > 0) for n in names}


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), p=st.integers(0, 100),
       density=st.sampled_from([0.0, 0.2, 0.5, 0.9]), scope=st.sampled_from(["layer", "global"]))
def test_grow_matches_numpy_reference_and_touches_only_dormant(seed, p, density, scope):
    init = "descent"  # init="patent" (the same set, the opposite sign): see the next test
    rng = np.random.default_rng(seed)
    params = _tree(rng)
    masks = _masks(rng, params, density)
    params = gpjax.apply_masks(params, masks)
    grads = _tree(rng)
    lr = 0.05
    new_p, new_m = gpjax.grow(params, masks, grads, percentile=p, learning_rate=lr, scope=scope,
                              init=init)
    want = _ref_grow_sets(grads, masks, p, scope)
    sign = -1.0 if init == "descent" else 1.0
    for (a, b), grown in want.items():
        m0, m1 = np.asarray(masks[a][b]), np.asarray(new_m[a][b])
        np.testing.assert_array_equal(m1, m0 | grown)
        assert m1.dtype == np.bool_
        w0, w1, g = (np.asarray(t[a][b]) for t in (params, new_p, grads))
        np.testing.assert_array_equal(w1[m0], w0[m0])  # active weights never change
        np.testing.assert_array_equal(w1[~m1], 0.0)  # still dormant: still exactly 0
        np.testing.assert_array_equal(w1[grown], np.float32(sign * lr) * g[grown])
    assert new_p["a"]["bias"] is params["a"]["bias"] or np.array_equal(
        new_p["a"]["bias"], params["a"]["bias"])
    assert new_m["a"]["bias"] is None


def _lsq():
    """A small least-squares problem y = x @ W* with a sparse starting mask."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
    w_true = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    y = x @ w_true
    params = {"w": jnp.zeros((8, 3)), "b": jnp.zeros(3)}
    masks = {"w": jnp.asarray(rng.random((8, 3)) < 0.3), "b": None}

    def loss(p, batch):
        bx, by = batch
        return jnp.mean((bx @ p["w"] + p["b"] - by) ** 2)

    batches = (x.reshape(4, 16, 8), y.reshape(4, 16, 3))
    return params, masks, loss, batches, (x, y)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_descent_growth_lowers_least_squares_loss_and_patent_flips_sign(scope):
    params, masks, loss, batches, full = _lsq()
    g = gpjax.accumulate_gradients(loss, params, masks, batches)
    before = float(loss(params, full))
    lr = 0.05
    p_d, m_d = gpjax.grow(params, masks, g, percentile=30, learning_rate=lr, scope=scope)
    p_p, m_p = gpjax.grow(params, masks, g, percentile=30, learning_rate=lr, scope=scope,
                          init="patent")
    assert int((m_d["w"] & ~masks["w"]).sum()) > 0
    np.testing.assert_array_equal(m_d["w"], m_p["w"])
    np.testing.assert_array_equal(np.asarray(p_p["w"]), -np.asarray(p_d["w"]))
    assert float(loss(p_d, full)) < before
    assert float(loss(p_p, full)) > before


def test_grow_edge_cases():
    rng = np.random.default_rng(1)
    params = _tree(rng)
    masks = _masks(rng, params, 0.5)
    params = gpjax.apply_masks(params, masks)
    zeros = jax.tree.map(jnp.zeros_like, params)
    # All-zero gradients: nothing grows, nothing becomes NaN, at any percentile.
    for p in (0, 50, 100):
        q, m = gpjax.grow(params, masks, zeros, percentile=p, learning_rate=0.1)
        chex.assert_trees_all_equal(m, masks)
        chex.assert_trees_all_equal(q, params)
        chex.assert_tree_all_finite(q)
    grads = _tree(rng)
    # Percentile 0: every dormant entry with a non-zero gradient grows.
    g0 = grads["a"]["kernel"].at[0, 0].set(0.0)
    grads0 = {**grads, "a": {**grads["a"], "kernel": g0}}
    _, m = gpjax.grow(params, masks, grads0, percentile=0, learning_rate=0.1)
    want = np.asarray(masks["a"]["kernel"]) | (np.asarray(g0) != 0)
    np.testing.assert_array_equal(m["a"]["kernel"], want)
    # Percentile 100: only the largest |g| of each tensor (if dormant).
    _, m = gpjax.grow(params, masks, grads, percentile=100, learning_rate=0.1)
    for k in ("a", "b", "c"):
        g = np.abs(np.asarray(grads[k]["kernel"]))
        grown = np.asarray(m[k]["kernel"] & ~masks[k]["kernel"])
        np.testing.assert_array_equal(grown, (g == g.max()) & ~np.asarray(masks[k]["kernel"]))
    # Nothing dormant (fully dense masks): a no-op.
    dense = gpjax.init_masks(params)
    q, m = gpjax.grow(params, dense, grads, percentile=10, learning_rate=0.1)
    chex.assert_trees_all_equal(q, params)
    chex.assert_trees_all_equal(m, dense)
    # A fully dormant tensor grows like any other.
    masks2 = {**masks, "c": {"kernel": jnp.zeros((5, 1), bool)}}
    params2 = gpjax.apply_masks(params, masks2)
    q, m = gpjax.grow(params2, masks2, grads, percentile=60, learning_rate=0.1)
    gc = np.abs(np.asarray(grads["c"]["kernel"], np.float64))
    np.testing.assert_array_equal(m["c"]["kernel"], gc >= np.percentile(gc, 60))


def test_grow_bfloat16_params():
    rng = np.random.default_rng(2)
    params = _tree(rng, dtype=jnp.bfloat16)
    masks = _masks(rng, params, 0.4)
    params = gpjax.apply_masks(params, masks)
    grads = _tree(rng, dtype=jnp.bfloat16)
    q, m = gpjax.grow(params, masks, grads, percentile=40, learning_rate=0.5)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(q))
    want = _ref_grow_sets(grads, masks, 40, "layer")
    for (a, b), grown in want.items():
        np.testing.assert_array_equal(np.asarray(m[a][b]), np.asarray(masks[a][b]) | grown)
        w = np.asarray(q[a][b].astype(jnp.float32))
        g = np.asarray(grads[a][b].astype(jnp.float32))
        np.testing.assert_allclose(w[grown], -0.5 * g[grown], rtol=1e-2)
    chex.assert_tree_all_finite(q)


def test_grow_bad_input_names_the_leaf():
    rng = np.random.default_rng(3)
    params = _tree(rng)
    masks = _masks(rng, params, 0.5)
    grads = _tree(rng)
    kw = dict(percentile=30, learning_rate=0.1)
    bad = {**grads, "b": {"kernel": jnp.ones((2, 3, 4, 4))}}
    with pytest.raises(ValueError, match=r"grads at 'b/kernel'.*shape"):
        gpjax.grow(params, masks, bad, **kw)
    bad = {"a": grads["a"], "b": grads["b"]}
    with pytest.raises(ValueError, match=r"grads.*c/kernel"):
        gpjax.grow(params, masks, bad, **kw)
    bad_m = {**masks, "a": {"kernel": masks["a"]["kernel"].astype(jnp.int32), "bias": None}}
    with pytest.raises(ValueError, match=r"a/kernel.*bool"):
        gpjax.grow(params, bad_m, grads, **kw)
    for p in (-1, 100.5, float("nan")):
        with pytest.raises(ValueError, match="percentile"):
            gpjax.grow(params, masks, grads, percentile=p, learning_rate=0.1)
    with pytest.raises(ValueError, match="scope"):
        gpjax.grow(params, masks, grads, scope="net", **kw)
    with pytest.raises(ValueError, match="init"):
        gpjax.grow(params, masks, grads, init="random", **kw)
    for v in (np.nan, np.inf, -np.inf):
        nf = {**grads, "b": {"kernel": grads["b"]["kernel"].at[1, 2, 3, 0].set(v)}}
        with pytest.raises(ValueError, match=r"grads at 'b/kernel'.*(NaN|inf)"):
            gpjax.grow(params, masks, nf, **kw)


def test_nonfinite_skip_never_grows_those_entries():
    rng = np.random.default_rng(4)
    params = _tree(rng)
    masks = jax.tree.map(lambda p: jnp.zeros(p.shape, bool) if p.ndim >= 2 else None, params)
    params = gpjax.apply_masks(params, masks)
    grads = _tree(rng)
    gb = grads["b"]["kernel"].at[0, 0, 0, 0].set(jnp.nan).at[1, 1, 1, 1].set(jnp.inf)
    gb = gb.at[1, 2, 3, 2].set(-jnp.inf)
    grads = {**grads, "b": {"kernel": gb}}
    for scope in ("layer", "global"):
        q, m = gpjax.grow(params, masks, grads, percentile=0, learning_rate=0.1, scope=scope,
                          nonfinite="skip")
        mb = np.asarray(m["b"]["kernel"])
        assert not mb[0, 0, 0, 0] and not mb[1, 1, 1, 1] and not mb[1, 2, 3, 2]
        assert mb.sum() == mb.size - 3
        chex.assert_tree_all_finite(q)
    with pytest.raises(ValueError, match="nonfinite"):
        gpjax.grow(params, masks, grads, percentile=0, learning_rate=0.1, nonfinite="zero")


@pytest.mark.parametrize("shape,p", [((4, 35501), 67), ((32, 5185), 79)])
def test_grow_percentile_rank_exact_on_a_large_tensor(shape, p):
    """n = 142004, p = 67: q = 95142.67; n = 165920, p = 79: q = 131076.01 (both < 2**24 / 100).

    numpy grows exactly the entries >= x_(ceil q); gpjax currently grows one more.
    """
    n = shape[0] * shape[1]
    g = np.random.default_rng(5).permutation(n).astype(np.float32) + 1.0
    params = {"w": jnp.zeros(shape)}
    masks = {"w": jnp.zeros(shape, bool)}
    _, m = gpjax.grow(params, masks, {"w": jnp.asarray(g.reshape(shape))}, percentile=p,
                      learning_rate=0.1)
    ref = g >= np.percentile(g.astype(np.float64), p)
    np.testing.assert_array_equal(np.asarray(m["w"]).ravel(), ref)


# ------------------------------------------------------------------ accumulate_gradients

def _mlp_problem(dtype):
    rng = np.random.default_rng(6)
    params = {"l1": {"kernel": jnp.asarray(rng.standard_normal((5, 4)), dtype),
                     "bias": jnp.asarray(rng.standard_normal(4), dtype)},
              "l2": {"kernel": jnp.asarray(rng.standard_normal((4, 2)), dtype)}}
    masks = {"l1": {"kernel": jnp.asarray(rng.random((5, 4)) < 0.5), "bias": None},
             "l2": {"kernel": jnp.asarray(rng.random((4, 2)) < 0.5)}}
    xs = jnp.asarray(rng.standard_normal((6, 8, 5)), dtype)
    ys = jnp.asarray(rng.standard_normal((6, 8, 2)), dtype)

    def loss(p, batch):
        h = jnp.tanh(batch["x"] @ p["l1"]["kernel"] + p["l1"]["bias"])
        return jnp.mean((h @ p["l2"]["kernel"] - batch["y"]) ** 2)

    return params, masks, loss, {"x": xs, "y": ys}


def _reference_mean_grad(loss, params, masks, batches):
    eff = gpjax.apply_masks(params, masks)
    n = batches["x"].shape[0]
    grad = jax.jit(jax.grad(loss))  # one compilation instead of one per eager op
    gs = [grad(eff, {"x": batches["x"][i], "y": batches["y"][i]}) for i in range(n)]
    return jax.tree.map(lambda *g: sum(g) / n, *gs)


def test_accumulate_gradients_float64_equals_mean_of_per_batch_grads():
    with x64():
        params, masks, loss, batches = _mlp_problem(jnp.float64)
        ref = _reference_mean_grad(loss, params, masks, batches)
        assert ref["l1"]["kernel"].dtype == jnp.float64
        stacked = gpjax.accumulate_gradients(loss, params, masks, batches)
        chex.assert_trees_all_close(stacked, ref, rtol=1e-12, atol=1e-14)
        chex.assert_trees_all_equal_dtypes(stacked, ref)
        for v in (2, 3, 6):
            got = gpjax.accumulate_gradients(loss, params, masks, batches, vmap_size=v)
            chex.assert_trees_all_equal_dtypes(got, ref)
            chex.assert_trees_all_close(got, ref, rtol=1e-12, atol=1e-14)
        it = ({"x": batches["x"][i], "y": batches["y"][i]} for i in range(6))
        streamed = gpjax.accumulate_gradients(loss, params, masks, it)
        chex.assert_trees_all_close(streamed, ref, rtol=1e-12, atol=1e-14)
        # The gradient is taken at W * M: not the gradient at W.
        at_w = _reference_mean_grad(loss, params, gpjax.init_masks(params), batches)
        assert not np.allclose(at_w["l2"]["kernel"], ref["l2"]["kernel"])
    assert jnp.zeros(()).dtype == jnp.float32  # x64 did not leak


def test_accumulate_gradients_float32_and_bfloat16():
    params, masks, loss, batches = _mlp_problem(jnp.float32)
    ref = _reference_mean_grad(loss, params, masks, batches)
    got = gpjax.accumulate_gradients(loss, params, masks, batches, vmap_size=2)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)
    pb = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    bb = jax.tree.map(lambda x: x.astype(jnp.bfloat16), batches)
    gb = gpjax.accumulate_gradients(loss, pb, masks, bb)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(gb))  # accumulated in float32
    chex.assert_trees_all_close(gb, ref, rtol=0.1, atol=0.05)


def test_dormant_connection_gets_a_real_gradient_that_lowers_the_loss():
    params, masks, loss, batches, full = _lsq()
    masks = {"w": jnp.zeros((8, 3), bool).at[0, 0].set(True), "b": None}
    g = gpjax.accumulate_gradients(loss, params, masks, batches)
    gw = np.asarray(g["w"])
    assert np.count_nonzero(gw[~np.asarray(masks["w"])]) == 23
    # Switching one dormant connection on, a small step against its gradient lowers the loss.
    i, j = np.unravel_index(np.argmax(np.abs(gw) * ~np.asarray(masks["w"])), gw.shape)
    base = float(loss(params, full))
    stepped = {**params, "w": params["w"].at[i, j].set(-1e-2 * gw[i, j])}
    assert float(loss(stepped, full)) < base
    # accumulate_gradients changes no parameter.
    chex.assert_trees_all_equal(params, _lsq()[0])


def test_accumulate_gradients_bad_input():
    params, masks, loss, batches = _mlp_problem(jnp.float32)
    with pytest.raises(ValueError, match="vmap_size"):
        gpjax.accumulate_gradients(loss, params, masks, batches, vmap_size=4)
    with pytest.raises(ValueError, match="vmap_size"):
        gpjax.accumulate_gradients(loss, params, masks, batches, vmap_size=0)
    with pytest.raises(ValueError, match="empty"):
        gpjax.accumulate_gradients(loss, params, masks, iter([]))
    with pytest.raises(ValueError, match="leading"):
        gpjax.accumulate_gradients(loss, params, masks, {"x": batches["x"],
                                                         "y": batches["y"][:5]})


def test_changing_masks_never_recompiles_grow_or_accumulate(compiles):
    rng = np.random.default_rng(7)
    params, _, loss, batches = _mlp_problem(jnp.float32)
    mask_list = [_masks(rng, params, d) for d in (0.1, 0.5, 0.9, 0.3)]
    pct = [10.0, 50, 90, 0]

    def stream():
        return ({"x": batches["x"][i], "y": batches["y"][i]} for i in range(6))

    def round_(m, p):
        g = gpjax.accumulate_gradients(loss, params, m, batches)
        g2 = gpjax.accumulate_gradients(loss, params, m, stream())
        q, m2 = gpjax.grow(params, m, g, percentile=p, learning_rate=0.01)
        gpjax.grow(q, m2, g2, percentile=p, learning_rate=0.02, scope="global")
        return jax.block_until_ready(m2)

    round_(mask_list[0], pct[0])  # warm-up: compiles once
    sizes = (grow_mod._grow._cache_size(), grow_mod._accumulate_stacked._cache_size(),
             grow_mod._accumulate_one._cache_size())
    with compiles:
        for m, p in zip(mask_list[1:], pct[1:]):
            m = round_(m, p)
            round_(m, p)  # masks returned by grow itself: same avals
    assert compiles.count == 0
    assert (grow_mod._grow._cache_size(), grow_mod._accumulate_stacked._cache_size(),
            grow_mod._accumulate_one._cache_size()) == sizes


def test_grow_takes_exactly_the_numpy_count_with_ties():
    # 2 x 3 zeros... gradients with many ties: |g| in {0, 1, 2}.
    g = jnp.asarray([[1.0, -1.0, 2.0, 1.0], [0.0, 1.0, -1.0, 2.0], [1.0, 0.0, 1.0, -1.0]])
    params = {"w": jnp.zeros((3, 4))}
    masks = {"w": jnp.zeros((3, 4), bool)}
    for p in (0, 10, 25, 50, 75, 90, 100):
        n = 12
        k = (p * (n - 1) + 99) // 100  # ceil(q)
        _, m = gpjax.grow(params, masks, {"w": g}, percentile=p, learning_rate=0.1)
        a = np.abs(np.asarray(g)).ravel()
        order = np.argsort(a, kind="stable")
        want = np.zeros(n, bool)
        want[order[k:]] = True
        want &= a > 0  # zero gradients never grow
        np.testing.assert_array_equal(np.asarray(m["w"]).ravel(), want)
        assert np.asarray(m["w"]).sum() == min(n - k, int((a > 0).sum()))


def test_grow_refuses_nonfinite_params_and_learning_rate():
    params = {"w": jnp.zeros((2, 3))}
    masks = {"w": jnp.zeros((2, 3), bool)}
    grads = {"w": jnp.ones((2, 3))}
    for lr, match in [(float("nan"), "learning_rate must be a finite number"),
                      (float("inf"), "learning_rate must be a finite number"),
                      ("0.1", "learning_rate must be a real number")]:
        with pytest.raises(ValueError, match=match) as e:
            gpjax.grow(params, masks, grads, percentile=50, learning_rate=lr)
        assert "\n" not in str(e.value)
    bad = {"w": params["w"].at[1, 1].set(jnp.inf)}
    for nonfinite in ("raise", "skip"):
        with pytest.raises(ValueError, match="params at 'w' contains NaN or inf") as e:
            gpjax.grow(bad, masks, grads, percentile=50, learning_rate=0.1, nonfinite=nonfinite)
        assert "\n" not in str(e.value)
