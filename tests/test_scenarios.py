"""Scenarios: seeded data-incremental chunks, class-incremental rounds, any data pytree."""

from __future__ import annotations

import numpy as np
import pytest

from gpjax.incremental.cost import Cost, normalised_epochs
from gpjax.incremental.scenarios import class_incremental, data_incremental, split_chunks


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4, 4, 1)).astype(np.float32), rng.integers(0, 10, n))


def test_chunks_partition_and_are_seeded():
    parts = split_chunks(103, 10, seed=3)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(103))
    assert {len(p) for p in parts} <= {10, 11}
    again = split_chunks(103, 10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = split_chunks(103, 10, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_data_incremental_rounds():
    train, val, test = _data(100), _data(20, 1), _data(30, 2)
    sc = data_incremental(train, val, test, chunks=10, initial=1, seed=0)
    assert sc.num_rounds == 10
    seen = np.zeros(0, int)
    for r, rd in enumerate(sc):
        assert rd.index == r
        assert rd.n_all == 10 * (r + 1) and rd.n_new == 10
        assert rd.fraction == pytest.approx((r + 1) / 10)
        # New data are new; all data are the old plus the new.
        if r:
            assert not np.isin(rd.new_indices, seen).any()
        assert set(rd.all_indices.tolist()) == set(seen.tolist()) | set(rd.new_indices.tolist())
        seen = rd.all_indices
        np.testing.assert_array_equal(rd.all[0], train[0][rd.all_indices])
        np.testing.assert_array_equal(rd.new[1], train[1][rd.new_indices])
        # Validation and test are the same every round.
        assert rd.validation is val and rd.test is test
    assert sc.round(9).n_all == 100


def test_data_incremental_initial_chunks_and_truncation():
    train = _data(40)
    sc = data_incremental(train, train, train, chunks=10, initial=4, seed=1)
    assert sc.num_rounds == 7
    r0 = sc.round(0)
    assert r0.n_all == 16 and r0.n_new == 16
    assert sc.round(1).n_new == 4 and sc.round(1).n_all == 20
    assert sc.truncated(3).num_rounds == 3
    with pytest.raises(IndexError):
        sc.round(7)
    with pytest.raises(ValueError):
        data_incremental(train, train, train, chunks=3, initial=4)


def test_any_pytree_with_leading_axis():
    n = 24
    train = {"features": np.arange(n * 6, dtype=np.float32).reshape(n, 3, 2),
             "paddings": np.zeros((n, 3), np.float32), "labels": np.arange(n)}
    sc = data_incremental(train, train, train, chunks=4, seed=0)
    rd = sc.round(2)
    assert rd.all["features"].shape == (18, 3, 2)
    np.testing.assert_array_equal(rd.all["labels"], rd.all_indices)


def test_class_incremental_like_fig5():
    x = np.zeros((60, 2), np.float32)
    y = np.repeat(np.arange(10), 6)
    yv = np.arange(10).repeat(2)
    sc = class_incremental((x, y), (x[:20], yv), (x[:20], yv), [[1, 2], [0], [6]])
    assert sc.num_rounds == 3
    r0, r1, r2 = sc
    assert set(r0.all[1].tolist()) == {1, 2} and r0.classes == (1, 2)
    assert set(r1.new[1].tolist()) == {0} and set(r1.all[1].tolist()) == {0, 1, 2}
    assert r2.classes == (1, 2, 0, 6) and r2.n_new == 6 and r2.n_all == 24
    # Evaluation restricted to classes seen so far.
    assert set(r1.validation[1].tolist()) == {0, 1, 2}
    assert set(r2.test[1].tolist()) == {0, 1, 2, 6}
    with pytest.raises(ValueError, match="two rounds"):
        class_incremental((x, y), (x, y), (x, y), [[1], [1]])
    with pytest.raises(ValueError, match="no training example"):
        class_incremental((x, y), (x, y), (x, y), [[11]])


def test_normalised_epochs_and_cost():
    assert normalised_epochs(15, 5_500, 55_000) == pytest.approx(1.5)
    # SPEC FIG. 6: 15 epochs on the new 10% + 20 on all data = 21.5 all-data epochs.
    c = Cost(55_000)
    c.add("new", 15, 5_500, examples=15 * 5_500)
    c.add("all", 20, 55_000, examples=20 * 55_000)
    assert c.epochs == pytest.approx(21.5)
    assert c.raw_epochs == 35
    assert c.by_phase == {"new": pytest.approx(1.5), "all": pytest.approx(20.0)}
    assert Cost.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        normalised_epochs(1, 1, 0)


def test_jitted_levenshtein_matches_reference():
    """The speech configs' per-utterance error (jitted edit distance over greedy CTC output)."""
    import jax
    import jax.numpy as jnp

    from gpjax.metrics import edit_distance
    from gpjax.metrics import masked_edit_distance as _levenshtein

    rng = np.random.default_rng(0)
    f = jax.jit(_levenshtein)
    for _ in range(20):
        t, L = 12, 8  # fixed shapes: one compilation
        hyp = rng.integers(0, 4, t)
        valid = rng.random(t) < 0.7
        ref = rng.integers(0, 4, L)
        ref_len = int(rng.integers(0, L + 1))
        want = edit_distance(ref[:ref_len].tolist(), hyp[valid].tolist())
        got = f(jnp.asarray(hyp), jnp.asarray(valid), jnp.asarray(ref), jnp.asarray(ref_len))
        assert float(got) == want
