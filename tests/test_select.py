"""Exact percentile selection (gpjax.select) against an independent numpy reference.

Reference semantics: numpy's default ("linear") percentile, computed in float64 on the
float32 magnitudes; growth selects ``{|x| >= P}``, pruning ``{|x| <= P}``.
Domain: integer percentiles with ``p * (n - 1) < 2**24`` (where select's float32 rank is exact).
Inputs are padded to fixed shapes (padding marked invalid) so that one compilation serves every
example.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PROPERTY
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpjax import select

_PAD = 512
_FLOATS = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


def _pad(x, valid=None):
    x = np.asarray(x, np.float32).reshape(-1)
    v = np.ones(x.shape, bool) if valid is None else np.asarray(valid).reshape(-1)
    xp = np.zeros(_PAD, np.float32)
    vp = np.zeros(_PAD, bool)
    xp[: x.size], vp[: x.size] = x, v
    return xp, vp


@jax.jit
def _cuts(x, v, p):
    n = jnp.sum(v, dtype=jnp.int32)
    up = select.kth_smallest_abs([x], select.percentile_rank(p, n, upper=True), [v])
    lo = select.kth_smallest_abs([x], select.percentile_rank(p, n, upper=False), [v])
    return up, lo


@jax.jit
def _kth(x, v, k):
    return select.kth_smallest_abs([x], k, [v])


def _ref_sets(x, p):
    a = np.abs(np.asarray(x, np.float32)).astype(np.float64)
    t = np.percentile(a, p)
    return a >= t, a <= t


def _gp_sets(x, p, valid=None):
    a = np.abs(np.asarray(x, np.float32))
    up, lo = _cuts(*_pad(x, valid), jnp.float32(p))
    return a >= np.float32(up), a <= np.float32(lo)


@PROPERTY
@given(x=hnp.arrays(np.float32, st.integers(1, 300), elements=_FLOATS), p=st.integers(0, 100))
def test_percentile_sets_match_numpy(x, p):
    ge, le = _gp_sets(x, p)
    rge, rle = _ref_sets(x, p)
    np.testing.assert_array_equal(ge, rge)
    np.testing.assert_array_equal(le, rle)


@PROPERTY
@given(x=hnp.arrays(np.float32, st.integers(1, 200),
                    elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 1e-30, 3.5])),
       p=st.integers(0, 100))
def test_percentile_sets_with_many_ties(x, p):
    ge, le = _gp_sets(x, p)
    rge, rle = _ref_sets(x, p)
    np.testing.assert_array_equal(ge, rge)
    np.testing.assert_array_equal(le, rle)


@PROPERTY
@given(data=st.data(), n=st.integers(1, 300), p=st.integers(0, 100))
def test_percentile_over_valid_entries_only(data, n, p):
    x = data.draw(hnp.arrays(np.float32, n, elements=_FLOATS))
    v = data.draw(hnp.arrays(np.bool_, n))
    v[data.draw(st.integers(0, n - 1))] = True
    ge, le = _gp_sets(x, p, v)
    rge, rle = _ref_sets(x[v], p)
    np.testing.assert_array_equal(ge[v], rge)
    np.testing.assert_array_equal(le[v], rle)


@PROPERTY
@given(x=hnp.arrays(np.float32, st.integers(1, 500), elements=_FLOATS), data=st.data())
def test_kth_smallest_is_the_sorted_value(x, data):
    k = data.draw(st.integers(0, x.size - 1))
    assert np.float32(_kth(*_pad(x), k)) == np.sort(np.abs(x))[k]


def test_kth_smallest_special_values():
    x = np.float32([np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).tiny, 1e-45, 3e38, -1.0])
    s = np.sort(np.abs(x))
    for k in range(x.size):
        assert np.float32(_kth(*_pad(x), k)) == s[k]


def test_kth_smallest_bfloat16_and_float16():
    rng = np.random.default_rng(0)
    for dt in (jnp.bfloat16, jnp.float16):
        x = jnp.asarray(rng.normal(size=257), dt)
        s = np.sort(np.abs(np.asarray(x.astype(jnp.float32))))
        kth = jax.jit(lambda x, k: select.kth_smallest_abs([x], k))
        for k in (0, 1, 77, 128, 255, 256):
            assert np.float32(kth(x, k)) == s[k]


_SLOTS, _SIDE = 4, 12


@functools.partial(jax.jit, static_argnames=("scope", "upper"))
def _thresholds(xs, vs, p, scope, upper):
    return select.thresholds(list(xs), list(vs), p, scope=scope, upper=upper)


def _slots(seed, shapes, density):
    """Up to 4 tensors of random shapes, each padded into a 12x12 slot (padding invalid)."""
    rng = np.random.default_rng(seed)
    xs = np.zeros((_SLOTS, _SIDE, _SIDE), np.float32)
    vs = np.zeros((_SLOTS, _SIDE, _SIDE), bool)
    for i, (r, c) in enumerate(shapes):
        xs[i, :r, :c] = rng.standard_normal((r, c))
        vs[i, :r, :c] = rng.random((r, c)) < density
    if not vs.any():
        vs[0, 0, 0] = True
    return xs, vs


_SHAPES = st.lists(st.tuples(st.integers(1, _SIDE), st.integers(1, _SIDE)), min_size=1,
                   max_size=_SLOTS)


@PROPERTY
@given(shapes=_SHAPES, p=st.integers(0, 100), seed=st.integers(0, 2**31 - 1))
def test_global_thresholds_match_concatenated_numpy(shapes, p, seed):
    xs, vs = _slots(seed, shapes, 0.7)
    allv = np.abs(xs[vs]).astype(np.float64)
    rt = np.percentile(allv, p)
    for upper in (True, False):
        ts, ns = _thresholds(tuple(xs), tuple(vs), jnp.float32(p), "global", upper)
        assert all(int(n) == allv.size for n in ns)
        for x, v, t in zip(xs, vs, ts):
            a = np.abs(x[v])
            got = a >= np.float32(t) if upper else a <= np.float32(t)
            np.testing.assert_array_equal(got, a >= rt if upper else a <= rt)


@PROPERTY
@given(shapes=_SHAPES, p=st.integers(0, 100), seed=st.integers(0, 2**31 - 1))
def test_layer_thresholds_match_numpy_per_tensor(shapes, p, seed):
    xs, vs = _slots(seed, shapes, 0.7)
    for upper in (True, False):
        ts, ns = _thresholds(tuple(xs), tuple(vs), jnp.float32(p), "layer", upper)
        for x, v, t, n in zip(xs, vs, ts, ns):
            assert int(n) == v.sum()
            if not v.any():
                continue
            a = np.abs(x[v])
            rt = np.percentile(a.astype(np.float64), p)
            got = a >= np.float32(t) if upper else a <= np.float32(t)
            np.testing.assert_array_equal(got, a >= rt if upper else a <= rt)


@pytest.mark.parametrize("n", [1, 2, 3, 101, 1000, 99_999,
                               132_400, 167_000, 2_000_001])
def test_percentile_rank_matches_exact_integer_arithmetic(n):
    # q = p (n - 1) / 100 exactly; floor and ceil must be exact in the documented domain.
    ps = jnp.arange(101, dtype=jnp.float32)
    num = np.arange(101) * (n - 1)
    for upper, want in ((False, num // 100), (True, -(-num // 100))):
        rank = jax.jit(jax.vmap(lambda p, n, u=upper: select.percentile_rank(p, n, upper=u),
                                in_axes=(0, None)))
        np.testing.assert_array_equal(np.asarray(rank(ps, n)), want)


def test_percentile_rank_is_jittable_and_traced():
    f = jax.jit(lambda p, n: select.percentile_rank(p, n, upper=True))
    assert int(f(50.0, 11)) == 5
    assert int(f(51.0, 11)) == 6
    assert f._cache_size() == 1


# ----------------------------------------------------------------------------- exact sets, ties

@functools.partial(jax.jit, static_argnames=("scope", "upper"))
def _select(xs, vs, p, scope, upper):
    return select.select(list(xs), list(vs), p, scope=scope, upper=upper)


def _ref_select(xs, vs, p, scope, upper):
    """Stable-argsort reference: the floor(q) + 1 lowest (or n - ceil(q) highest) ranks of
    (|x|, position) over each tensor or all of them; positions are tensor, then flat index."""
    groups = [list(range(len(xs)))] if scope == "global" else [[i] for i in range(len(xs))]
    out = [np.zeros(x.shape, bool) for x in xs]
    for g in groups:
        a = np.concatenate([np.abs(xs[i]).ravel() for i in g])
        v = np.concatenate([vs[i].ravel() for i in g])
        pos = np.flatnonzero(v)
        order = pos[np.argsort(a[pos], kind="stable")]
        n = pos.size
        num = p * max(n - 1, 0)
        k = num // 100 + (1 if upper and num % 100 else 0)
        chosen = np.zeros(a.size, bool)
        chosen[order[k:] if upper else order[:k + 1]] = True
        for i in g:
            out[i], chosen = chosen[:xs[i].size].reshape(xs[i].shape), chosen[xs[i].size:]
    return out


@PROPERTY
@given(shapes=_SHAPES, p=st.integers(0, 100), seed=st.integers(0, 2**31 - 1),
       levels=st.sampled_from([1, 2, 3, 50]), scope=st.sampled_from(["layer", "global"]))
def test_select_exact_count_with_many_ties(shapes, p, seed, levels, scope):
    xs, vs = _slots(seed, shapes, 0.7)
    xs = np.round(xs * levels / 3) / levels  # few distinct magnitudes: many ties, signs mixed
    for upper in (True, False):
        got = _select(tuple(xs), tuple(vs), jnp.float32(p), scope, upper)
        want = _ref_select(xs, vs, p, scope, upper)
        for g, w, v in zip(got, want, vs):
            np.testing.assert_array_equal(np.asarray(g), w)
            assert not (np.asarray(g) & ~v).any()
        n = [int(v.sum()) for v in vs] if scope == "layer" else [int(vs.sum())]
        count = [int(np.asarray(g).sum()) for g in got]
        count = count if scope == "layer" else [sum(count)]
        for c, m in zip(count, n):  # exactly the numpy count, ties or not
            k = (p * max(m - 1, 0) + (99 if upper else 0)) // 100
            assert c == ((m - k) if upper else min(k + 1, m))


def test_select_traced_percentile_is_clamped_and_nan_selects_nothing():
    x = jnp.asarray(np.arange(12.0, dtype=np.float32).reshape(3, 4))
    v = jnp.ones((3, 4), bool)
    for upper in (True, False):
        hi, = _select((x,), (v,), jnp.float32(150.0), "layer", upper)
        top, = _select((x,), (v,), jnp.float32(100.0), "layer", upper)
        np.testing.assert_array_equal(hi, top)
        nan, = _select((x,), (v,), jnp.float32(np.nan), "layer", upper)
        assert not np.asarray(nan).any()
