"""Magnitude pruning (SPEC eq. 3), recoverable or not: gpjax.prune and gpjax.dead_units."""

from __future__ import annotations

import importlib
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PROPERTY
from hypothesis import given, settings
from hypothesis import strategies as st

import gpjax

prune_mod = importlib.import_module("gpjax.prune")

# A few fixed pytrees (one compilation each): dense [in, out] and conv [kh, kw, in, out] kernels.
_CONFIGS = [
    {"d0": {"kernel": (6, 4), "bias": (4,)}, "d1": {"kernel": (4, 3)},
     "c0": {"kernel": (3, 3, 2, 5)}},
    {"c0": {"kernel": (2, 1, 3, 2)}, "c1": {"kernel": (1, 1, 4, 4)}, "d0": {"kernel": (1, 7)},
     "d1": {"kernel": (9, 2)}},
]
_INPUT_FED = ["d0/kernel"]


def _params(rng, shapes, dtype=np.float32):
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s), dtype), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def _masks(rng, params, density):
    return jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < density)
                        if p.ndim >= 2 else None, params)


def _named(tree, masks):
    return {name: (m, leaf[0]) for name, m, leaf in
            importlib.import_module("gpjax.masks").masked_leaves(masks, tree)}


def _ref_prune_sets(params, masks, p, scope):
    """Numpy reference: the floor(q) + 1 smallest active |w| (q = p / 100 (n - 1)) per tensor
    or over all, ties taken in order of position (a stable argsort). Without ties that is
    numpy's ``active & |w| <= percentile(|W_active|, p)``, which is asserted on the way."""
    leaves = {k: (np.asarray(m), np.abs(np.asarray(w, np.float32)).astype(np.float64))
              for k, (m, w) in _named(params, masks).items()}
    groups = [list(leaves)] if scope == "global" else [[k] for k in leaves]
    out = {}
    for g in groups:
        m = np.concatenate([leaves[k][0].ravel() for k in g])
        a = np.concatenate([leaves[k][1].ravel() for k in g])
        removed = np.zeros(m.size, bool)
        pos = np.flatnonzero(m)
        if pos.size:
            k = int(Fraction(p) * (pos.size - 1) // 100)
            removed[pos[np.argsort(a[pos], kind="stable")[:k + 1]]] = True
            t = np.percentile(a[pos], p)
            assert (m & (a < t) <= removed).all() and (removed <= (m & (a <= t))).all()
        for k in g:
            n = leaves[k][0].size
            out[k], removed = removed[:n].reshape(leaves[k][0].shape), removed[n:]
    return out


@PROPERTY
@given(cfg=st.sampled_from(range(len(_CONFIGS))), seed=st.integers(0, 2**31 - 1),
       p=st.integers(0, 100), density=st.sampled_from([0.1, 0.5, 1.0]),
       scope=st.sampled_from(["layer", "global"]))
def test_nonrecoverable_prune_matches_numpy_reference(cfg, seed, p, density, scope):
    rng = np.random.default_rng(seed)
    masks = _masks(rng, _params(rng, _CONFIGS[cfg]), density)
    params = gpjax.apply_masks(_params(rng, _CONFIGS[cfg]), masks)
    q, m = gpjax.prune(params, masks, percentile=p, recoverable=False, scope=scope)
    want = _ref_prune_sets(params, masks, p, scope)
    old, new = _named(params, masks), _named(q, m)
    for k, removed in want.items():
        m0, w0 = (np.asarray(x) for x in old[k])
        m1, w1 = (np.asarray(x) for x in new[k])
        assert m1.dtype == np.bool_
        np.testing.assert_array_equal(m1, m0 & ~removed)
        np.testing.assert_array_equal(w1[m1], w0[m1])  # survivors untouched
        np.testing.assert_array_equal(w1[~m1], 0.0)  # removed and dormant: exactly 0
    assert np.array_equal(q["d0"]["bias"], params["d0"]["bias"]) if "bias" in q["d0"] else True


def _check_recoverable_step(params, masks, q, m, p, scope):
    """Touches only active entries; removes a subset of eq. 3's set; kept extras are unit maxima."""
    want = _ref_prune_sets(params, masks, p, scope)
    old, new = _named(params, masks), _named(q, m)
    for k, removed in want.items():
        m0, w0 = (np.asarray(x) for x in old[k])
        m1, w1 = (np.asarray(x) for x in new[k])
        assert not (m1 & ~m0).any()  # nothing dormant is switched on
        np.testing.assert_array_equal(m1 | removed, m0)  # only eq. 3 candidates are removed
        np.testing.assert_array_equal(w1[m1], w0[m1])
        np.testing.assert_array_equal(w1[~m1], 0.0)
        spared = m1 & removed
        if spared.any():
            # Every spared candidate is the largest active magnitude of a column or a row.
            a = np.where(m0, np.abs(w0.astype(np.float32)), -1.0)
            a3 = a.reshape((-1,) + a.shape[-2:])
            col_max = a3.max(axis=(0, 1), keepdims=True)
            row_max = a3.max(axis=(0, 2), keepdims=True)
            is_max = ((a3 == col_max) | (a3 == row_max)).reshape(a.shape)
            assert is_max[spared].all()


@settings(PROPERTY, max_examples=15)
@given(cfg=st.sampled_from(range(len(_CONFIGS))), seed=st.integers(0, 2**31 - 1),
       steps=st.lists(st.integers(0, 100), min_size=3, max_size=8))
def test_recoverable_prune_never_kills_a_unit(cfg, seed, steps):
    # One scope per configuration keeps compilations down; both scopes are covered.
    steps = [(p, ("layer", "global")[cfg]) for p in steps]
    rng = np.random.default_rng(seed)
    params = _params(rng, _CONFIGS[cfg])
    masks = gpjax.init_masks(params)
    for p, scope in steps:
        q, m = gpjax.prune(params, masks, percentile=p, scope=scope, input_fed=_INPUT_FED)
        _check_recoverable_step(params, masks, q, m, p, scope)
        dead = gpjax.dead_units(m, input_fed=_INPUT_FED)
        assert all(d == gpjax.DeadUnits(0, 0) for d in dead.values()), dead
        # Unmarked, every kernel's rows survive too.
        if "d0" in m:
            assert gpjax.dead_units(m)["d0/kernel"].outputs == 0
        params, masks = q, m
    # After pruning at 100% the input-fed kernel's rows may all be gone but not its columns.
    q, m = gpjax.prune(params, masks, percentile=100, input_fed=_INPUT_FED)
    d0 = np.asarray(m["d0"]["kernel"])
    assert d0.any(axis=0).all()
    assert d0.sum() == d0.shape[1]  # one connection per output unit is all it keeps
    others = gpjax.dead_units(m, input_fed=_INPUT_FED)
    assert all(d == gpjax.DeadUnits(0, 0) for d in others.values())


def _ref_protected(m, w, input_fed):
    """Numpy reference of ``protection="exclude"``'s spared set: each column's (output unit's)
    and, unless input-fed, each row's largest active magnitude (spatial positions included)."""
    a3 = np.where(m, np.abs(w.astype(np.float32)), -1.0).reshape((-1,) + m.shape[-2:])
    keep = np.zeros(a3.shape, bool)
    for axis in ((2,) if input_fed else (2, 1)):
        moved = np.moveaxis(a3, axis, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        best = np.zeros(flat.shape, bool)
        best[np.argmax(flat, axis=0), np.arange(flat.shape[1])] = True
        keep |= np.moveaxis(best.reshape(moved.shape), -1, axis)
    return keep.reshape(m.shape) & m


@settings(PROPERTY, max_examples=15)
@given(cfg=st.sampled_from(range(len(_CONFIGS))), seed=st.integers(0, 2**31 - 1),
       steps=st.lists(st.integers(0, 100), min_size=2, max_size=6),
       density=st.sampled_from([0.3, 1.0]))
def test_exclude_protection_prunes_the_percentile_of_the_unprotected(cfg, seed, steps, density):
    scope = ("layer", "global")[cfg]
    rng = np.random.default_rng(seed)
    params = _params(rng, _CONFIGS[cfg])
    masks = gpjax.connect_units(_masks(rng, params, density), seed=seed, input_fed=_INPUT_FED)
    params = gpjax.apply_masks(params, masks)
    for p in steps:
        q, m = gpjax.prune(params, masks, percentile=p, scope=scope, input_fed=_INPUT_FED,
                           protection="exclude")
        old = _named(params, masks)
        spared = {k: _ref_protected(np.asarray(mk), np.asarray(w), k in _INPUT_FED)
                  for k, (mk, w) in old.items()}
        candidates = jax.tree.map(lambda x: x, masks)
        for k, (mk, _) in old.items():
            path = k.split("/")
            candidates[path[0]][path[1]] = jnp.asarray(np.asarray(mk) & ~spared[k])
        want = _ref_prune_sets(params, candidates, p, scope)
        for k, (m1, w1) in _named(q, m).items():
            m0, w0 = (np.asarray(x) for x in old[k])
            np.testing.assert_array_equal(np.asarray(m1), m0 & ~want[k])
            np.testing.assert_array_equal(np.asarray(w1)[~np.asarray(m1)], 0.0)
        dead = gpjax.dead_units(m, input_fed=_INPUT_FED)
        assert all(d == gpjax.DeadUnits(0, 0) for d in dead.values()), dead
        params, masks = q, m


def test_exclude_protection_keeps_pruning_where_restore_stalls():
    # Output units 0-29 hang on one small connection each; units 30-39 are dense and large.
    rng = np.random.default_rng(0)
    w = np.zeros((40, 40), np.float32)
    w[np.arange(30), np.arange(30)] = 0.01 * (1 + rng.random(30))
    w[:, 30:] = 1.0 + rng.random((40, 10))
    params, masks = {"w": jnp.asarray(w)}, {"w": jnp.asarray(w != 0)}
    removed = {}
    for protection in ("restore", "exclude"):
        _, m = gpjax.prune(params, masks, percentile=5, protection=protection)
        removed[protection] = int(masks["w"].sum() - m["w"].sum())
        assert gpjax.dead_units(m)["w"] == gpjax.DeadUnits(0, 0)
    # restore: the 5% smallest (22 of 430) are all singletons, so every one is given back.
    assert removed["restore"] == 0
    # exclude: 5% of the unprotected (floor(q) + 1 of them).
    n = int((np.asarray(masks["w"]) & ~_ref_protected(np.asarray(masks["w"]), w, False)).sum())
    assert n > 300 and removed["exclude"] == int(0.05 * (n - 1)) + 1


def test_recoverable_keeps_the_largest_magnitude_connection_of_an_emptied_unit():
    w = jnp.asarray([[0.1, -0.2, 0.3],
                     [-0.9, 0.4, 0.05],
                     [0.2, 0.15, -0.6]], jnp.float32)
    params, masks = {"w": w}, {"w": jnp.ones((3, 3), bool)}
    _, m = gpjax.prune(params, masks, percentile=100)
    # Column maxima: -0.9 (col 0), 0.4 (col 1), -0.6 (col 2); row 0 is then empty and keeps
    # its own largest, 0.3.
    want = np.array([[0, 0, 1], [1, 1, 0], [0, 0, 1]], bool)
    np.testing.assert_array_equal(m["w"], want)
    _, m = gpjax.prune(params, masks, percentile=100, input_fed=["w"])
    np.testing.assert_array_equal(m["w"], np.array([[0, 0, 0], [1, 1, 0], [0, 0, 1]], bool))
    w2 = w.at[0, 2].set(-0.95)  # row 0 keeps -0.95 via column 2; row 2 is emptied -> keeps -0.6
    _, m = gpjax.prune({"w": w2}, masks, percentile=100)
    want2 = np.array([[0, 0, 1], [1, 1, 0], [0, 0, 1]], bool)
    np.testing.assert_array_equal(m["w"], want2)
    _, m = gpjax.prune({"w": w2}, masks, percentile=100, input_fed=["w"])
    np.testing.assert_array_equal(m["w"], np.array([[0, 0, 1], [1, 1, 0], [0, 0, 0]], bool))


def test_nonrecoverable_may_empty_units_and_dead_units_reports_them():
    rng = np.random.default_rng(0)
    params = _params(rng, _CONFIGS[0])
    masks = gpjax.init_masks(params)
    q, m = gpjax.prune(params, masks, percentile=100, recoverable=False)
    assert gpjax.count_params(m).active == 0
    assert gpjax.dormant_is_zero(q, m)
    dead = gpjax.dead_units(m)
    assert dead == {"c0/kernel": gpjax.DeadUnits(2, 5), "d0/kernel": gpjax.DeadUnits(6, 4),
                    "d1/kernel": gpjax.DeadUnits(4, 3)}
    # A partial non-recoverable step: make column 0 of d1 tiny, prune at 40%.
    d1 = params["d1"]["kernel"].at[:, 0].set(1e-6)
    params2 = {**params, "d1": {"kernel": d1}}
    _, m = gpjax.prune(params2, masks, percentile=40, recoverable=False)
    assert gpjax.dead_units(m)["d1/kernel"].outputs >= 1
    _, m = gpjax.prune(params2, masks, percentile=40, recoverable=True)
    assert gpjax.dead_units(m)["d1/kernel"] == gpjax.DeadUnits(0, 0)


def test_prune_edge_cases():
    rng = np.random.default_rng(1)
    params = _params(rng, _CONFIGS[0])
    masks = _masks(rng, params, 0.6)
    params = gpjax.apply_masks(params, masks)
    # Percentile 0 removes exactly the smallest active magnitude of each tensor.
    _, m = gpjax.prune(params, masks, percentile=0, recoverable=False)
    for k, (m0, w) in _named(params, masks).items():
        a = np.abs(np.asarray(w))
        smallest = np.asarray(m0) & (a == a[np.asarray(m0)].min())
        np.testing.assert_array_equal(np.asarray(_named(params, m)[k][0]), m0 & ~smallest)
    # A fully dormant tensor: nothing to rank, nothing changes, no NaN (layer and global).
    masks2 = {**masks, "d1": {"kernel": jnp.zeros((4, 3), bool)}}
    params2 = gpjax.apply_masks(params, masks2)
    for scope in ("layer", "global"):
        for rec in (True, False):
            q, m = gpjax.prune(params2, masks2, percentile=50, scope=scope, recoverable=rec)
            assert not np.asarray(m["d1"]["kernel"]).any()
            chex.assert_tree_all_finite(q)
    # Every tensor fully dormant.
    none = jax.tree.map(lambda x: jnp.zeros(x.shape, bool) if x.ndim >= 2 else None, params)
    q, m = gpjax.prune(gpjax.apply_masks(params, none), none, percentile=50, scope="global")
    chex.assert_trees_all_equal(m, none)
    # Nothing dormant (fully dense masks) works like any other mask.
    dense = gpjax.init_masks(params)
    _, m = gpjax.prune(params, dense, percentile=30, recoverable=False)
    want = _ref_prune_sets(params, dense, 30, "layer")
    for k, removed in want.items():
        np.testing.assert_array_equal(np.asarray(_named(params, m)[k][0]), ~removed)


def test_prune_bfloat16():
    rng = np.random.default_rng(2)
    params = _params(rng, _CONFIGS[0], dtype=jnp.bfloat16)
    masks = _masks(rng, params, 0.7)
    params = gpjax.apply_masks(params, masks)
    q, m = gpjax.prune(params, masks, percentile=30, recoverable=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(q))
    want = _ref_prune_sets(params, masks, 30, "layer")
    for k, removed in want.items():
        m0 = np.asarray(_named(params, masks)[k][0])
        np.testing.assert_array_equal(np.asarray(_named(q, m)[k][0]), m0 & ~removed)
    q, m = gpjax.prune(params, masks, percentile=90, input_fed=_INPUT_FED)
    assert gpjax.dormant_is_zero(q, m)


def test_prune_bad_input():
    rng = np.random.default_rng(3)
    params = _params(rng, _CONFIGS[0])
    masks = gpjax.init_masks(params)
    for p in (-0.5, 101, float("inf")):
        with pytest.raises(ValueError, match="percentile"):
            gpjax.prune(params, masks, percentile=p)
    with pytest.raises(ValueError, match="scope"):
        gpjax.prune(params, masks, percentile=5, scope="all")
    bad = {**masks, "c0": {"kernel": jnp.ones((3, 3, 2, 4), bool)}}
    with pytest.raises(ValueError, match=r"c0/kernel.*shape"):
        gpjax.prune(params, bad, percentile=5)
    bad = {**masks, "d1": {"kernel": masks["d1"]["kernel"].astype(jnp.float32)}}
    with pytest.raises(ValueError, match=r"d1/kernel.*bool"):
        gpjax.prune(params, bad, percentile=5)


def test_changing_masks_never_recompiles_prune(compiles):
    rng = np.random.default_rng(4)
    params = _params(rng, _CONFIGS[1])
    mask_list = [_masks(rng, params, d) for d in (1.0, 0.2, 0.5, 0.8)]
    gpjax.prune(params, mask_list[0], percentile=5.0, input_fed=_INPUT_FED)  # warm-up
    size = prune_mod._prune._cache_size()
    with compiles:
        for m, p in zip(mask_list[1:], (10, 50.0, 99)):
            q, m2 = gpjax.prune(params, m, percentile=p, input_fed=_INPUT_FED)
            gpjax.prune(q, m2, percentile=p, input_fed=_INPUT_FED)
        jax.block_until_ready(m2)
    assert compiles.count == 0
    assert prune_mod._prune._cache_size() == size


def test_masked_rank1_leaf_is_pruned_by_threshold_without_unit_protection():
    # prunable patterns may select a bias; it has no units, and recoverable pruning must not fail.
    params = {"k": jnp.arange(12.0).reshape(3, 4) - 5.5, "b": jnp.arange(4.0) - 1.0}
    masks = gpjax.init_masks(params, prunable=["*"])
    for rec in (True, False):
        q, m = gpjax.prune(params, masks, percentile=50, recoverable=rec)
        # |b| = [1, 0, 1, 2]: floor(0.5 * 3) + 1 = 2 removed, the tie at 1 by position.
        np.testing.assert_array_equal(m["b"], [False, False, True, True])
        assert gpjax.dormant_is_zero(q, m)
    q, m = gpjax.prune(params, masks, percentile=100)
    assert not np.asarray(m["b"]).any()
    assert gpjax.dead_units(m) == {"b": gpjax.DeadUnits(0, 0), "k": gpjax.DeadUnits(0, 0)}


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), p=st.integers(0, 100), levels=st.sampled_from([1, 2, 4]),
       scope=st.sampled_from(["layer", "global"]))
def test_prune_removes_exactly_the_numpy_count_with_many_ties(seed, p, levels, scope):
    rng = np.random.default_rng(seed)
    masks = _masks(rng, _params(rng, _CONFIGS[0]), 0.7)
    raw = jax.tree.map(lambda w: jnp.round(w * levels) / levels, _params(rng, _CONFIGS[0]))
    params = gpjax.apply_masks(raw, masks)
    q, m = gpjax.prune(params, masks, percentile=p, recoverable=False, scope=scope)
    want = _ref_prune_sets(params, masks, p, scope)
    old, new = _named(params, masks), _named(q, m)
    for k, removed in want.items():
        np.testing.assert_array_equal(np.asarray(new[k][0]), np.asarray(old[k][0]) & ~removed)
    groups = [list(want)] if scope == "global" else [[k] for k in want]
    for g in groups:  # the count itself, independently of the reference's choice of ties
        n = sum(int(np.asarray(old[k][0]).sum()) for k in g)
        gone = n - sum(int(np.asarray(new[k][0]).sum()) for k in g)
        assert gone == (min(p * (n - 1) // 100 + 1, n) if n else 0)


def test_prune_refuses_bad_input_in_one_line():
    params = {"w": jnp.asarray([[1.0, -2.0], [3.0, 0.5]]), "b": jnp.zeros(2)}
    masks = gpjax.init_masks(params)
    for kw, match in [({"recoverable": "no"}, "recoverable must be True or False"),
                      ({"recoverable": 1}, "recoverable must be True or False"),
                      ({"percentile": "50"}, "percentile must be a real number"),
                      ({"percentile": float("nan")}, "percentile must be a finite number"),
                      ({"percentile": 101}, r"in \[0, 100\]"),
                      ({"input_fed": ["x/kernel"]}, "input_fed pattern 'x/kernel' matches no")]:
        with pytest.raises(ValueError, match=match) as e:
            gpjax.prune(params, masks, **{"percentile": 10, **kw})
        assert "\n" not in str(e.value)
    nan = {**params, "w": params["w"].at[0, 1].set(jnp.nan)}
    with pytest.raises(ValueError, match="params at 'w' contains NaN or inf") as e:
        gpjax.prune(nan, masks, percentile=10)
    assert "\n" not in str(e.value)
    # Under jit a traced percentile is clamped and a NaN one prunes nothing.
    f = jax.jit(lambda p, m, pct: gpjax.prune(p, m, percentile=pct, recoverable=False))
    _, m = f(params, masks, jnp.float32(jnp.nan))
    assert np.asarray(m["w"]).all()
    _, m = f(params, masks, jnp.float32(250.0))
    assert not np.asarray(m["w"]).any()
