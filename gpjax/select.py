"""Exact percentile thresholds by radix selection: jittable, O(n), no sort.

``jnp.percentile`` sorts, which on CPU costs seconds for an 11.7M-parameter network. Growth and
pruning only need *which entries* lie above or below a percentile, and with numpy's default
("linear") interpolation that set is always bounded by one order statistic:

  with ``q = p / 100 * (n - 1)`` and ``x_(k)`` the k-th smallest (0-indexed),

  * ``{x : x >= percentile(x, p)} == {x : x >= x_(ceil q)}``   (growth, eq. 1)
  * ``{x : x <= percentile(x, p)} == {x : x <= x_(floor q)}``  (pruning, eq. 3)

because the interpolated percentile lies in ``(x_(floor q), x_(ceil q)]`` whenever q is not an
integer. So an exact k-th-smallest selection reproduces numpy's semantics exactly.

The selection itself is a two-pass radix select over the IEEE-754 bit patterns of non-negative
float32 values, whose integer order equals their float order: a 2^16-bin histogram of the high
bits locates the bin holding the k-th value, then a 2^15-bin histogram of the low bits inside
that bin finishes it. Both passes are scatter-adds, fused by XLA; the search works on several
tensors at once (their histograms add up), which gives the global (cross-tensor) threshold
without concatenating them.

:func:`select` turns a threshold into the exact set: when magnitudes tie at it, it keeps
numpy's count (the set's size without ties) and breaks the ties by position (tensor, then flat
index), as a stable sort would.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

_HI_BITS = 16
_LO_BITS = 15  # non-negative float32: the sign bit is 0, 31 bits remain
_LO_MASK = (1 << _LO_BITS) - 1


def _bits(x: jax.Array) -> jax.Array:
    """int32 bit patterns of |x| as float32; their integer order is the float order."""
    return jax.lax.bitcast_convert_type(jnp.abs(x).astype(jnp.float32), jnp.int32)


def _histogram(index: jax.Array, valid: jax.Array, size: int) -> jax.Array:
    index = jnp.where(valid, index, size).reshape(-1)  # invalid entries go to a dropped bin
    return jnp.zeros(size, jnp.int32).at[index].add(1, mode="drop")


def _locate(counts: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The bin holding the k-th (0-indexed) element, and how many elements lie below it."""
    cum = jnp.cumsum(counts)
    b = jnp.searchsorted(cum, k, side="right")
    below = jnp.where(b > 0, cum[jnp.maximum(b - 1, 0)], 0)
    return b, below


def kth_smallest_abs(
    xs: Sequence[jax.Array],
    k: jax.Array,
    valid: Sequence[jax.Array | None] | None = None,
) -> jax.Array:
    """The k-th smallest |x| (0-indexed) over the valid entries of several arrays together.

    Args:
      xs: arrays of any shapes and float dtypes; their absolute values are ranked.
      k: int scalar (may be traced), ``0 <= k < number of valid entries``; clipped otherwise.
      valid: optional boolean arrays shaped like ``xs``; only True entries are ranked.

    Returns:
      A float32 scalar, exactly equal to one of the ranked values ``|x|`` (cast to float32).
    """
    if valid is None:
        valid = [None] * len(xs)
    bits = [_bits(x) for x in xs]
    valid = [jnp.ones(b.shape, bool) if v is None else v for b, v in zip(bits, valid)]
    total = sum(jnp.sum(v, dtype=jnp.int32) for v in valid)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, jnp.maximum(total - 1, 0))
    hi = sum(_histogram(b >> _LO_BITS, v, 1 << _HI_BITS) for b, v in zip(bits, valid))
    hi_bin, below = _locate(hi, k)
    lo = sum(
        _histogram(b & _LO_MASK, v & ((b >> _LO_BITS) == hi_bin), 1 << _LO_BITS)
        for b, v in zip(bits, valid)
    )
    lo_bin, _ = _locate(lo, k - below)
    return jax.lax.bitcast_convert_type((hi_bin << _LO_BITS) | lo_bin, jnp.float32)


def percentile_rank(percentile: jax.Array, n: jax.Array, *, upper: bool) -> jax.Array:
    """The order-statistic index that bounds numpy's (linear) ``percentile`` set.

    Args:
      percentile: in [0, 100], may be traced.
      n: number of ranked values (int, may be traced).
      upper: True for ``{x >= percentile}`` (ceil), False for ``{x <= percentile}`` (floor).

    Returns:
      int32 index k with ``0 <= k <= max(n - 1, 0)``.
    """
    p = jnp.asarray(percentile, jnp.float32)
    n = jnp.asarray(n, jnp.int32)
    n1 = jnp.maximum(n - 1, 0)
    # Integer percentiles (the usual case) in exact int32 arithmetic: q = p (n - 1) / 100.
    p_int = jnp.round(p).astype(jnp.int32)
    num = p_int * n1                                    # exact while n - 1 < 2**31 / 100
    k_int = num // 100 + ((num % 100 != 0) & upper).astype(jnp.int32)
    # Anything else in float32 (XLA may turn / 100 into * 0.01: one rank off near integers).
    q = p * n1.astype(jnp.float32) / 100.0
    k_float = (jnp.ceil(q) if upper else jnp.floor(q)).astype(jnp.int32)
    exact = (p == p_int.astype(jnp.float32)) & (n1 < 21_474_836)
    return jnp.clip(jnp.where(exact, k_int, k_float), 0, n1)


def thresholds(
    values: Sequence[jax.Array],
    valid: Sequence[jax.Array],
    percentile: jax.Array,
    *,
    scope: str,
    upper: bool,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Order-statistic thresholds of ``|values|`` per tensor, or one shared by all of them.

    Args:
      values: arrays whose magnitudes are ranked.
      valid: boolean arrays like ``values``: which entries are ranked.
      percentile: in [0, 100] (traced).
      scope: "layer" (one threshold per array) or "global" (one over all arrays).
      upper: see :func:`percentile_rank`.

    Returns:
      ``(thresholds, counts)``: per array, the float32 threshold and the number of ranked
      entries it was taken over.
    """
    if scope == "global":
        n = sum(jnp.sum(v, dtype=jnp.int32) for v in valid)
        t = kth_smallest_abs(values, percentile_rank(percentile, n, upper=upper), valid)
        return [t] * len(values), [n] * len(values)
    ts, ns = [], []
    for x, v in zip(values, valid):
        n = jnp.sum(v, dtype=jnp.int32)
        ts.append(kth_smallest_abs([x], percentile_rank(percentile, n, upper=upper), [v]))
        ns.append(n)
    return ts, ns


def _abs32(x: jax.Array) -> jax.Array:
    """|x| as float32, exactly the values :func:`kth_smallest_abs` ranks."""
    return jnp.abs(x).astype(jnp.float32)


def select(
    values: Sequence[jax.Array],
    valid: Sequence[jax.Array],
    percentile: jax.Array,
    *,
    scope: str,
    upper: bool,
) -> list[jax.Array]:
    """The entries in numpy's percentile set of ``|values|``, exactly that many even with ties.

    Ranks the valid entries by ``(|x|, position)`` (``position``: the array's index, then the
    flat row-major index inside it), i.e. a stable ascending sort, and with
    ``q = percentile / 100 * (n - 1)`` returns

    * ``upper=False`` (pruning): the ``floor(q) + 1`` lowest ranks, i.e. ``{|x| <= P}`` when no
      two magnitudes tie at the threshold; tied entries with the lowest positions go first;
    * ``upper=True`` (growth): the ``n - ceil(q)`` highest ranks, i.e. ``{|x| >= P}`` without
      ties; tied entries with the highest positions go first.

    Without a tie at a threshold this costs one comparison and one sum per array more than
    :func:`thresholds`; the tie-breaking cumulative sum runs (``lax.cond``) only when there is
    one.

    Args:
      values: arrays whose magnitudes are ranked.
      valid: boolean arrays like ``values``: which entries are ranked.
      percentile: may be traced. Traced values are clamped to [0, 100] and NaN selects nothing
        (concrete ones are checked by the callers).
      scope: "layer" (a percentile per array) or "global" (one over all arrays together).
      upper: see above.

    Returns:
      One boolean array per input array (``False`` outside ``valid``).
    """
    if not values:
        return []
    p = jnp.asarray(percentile, jnp.float32)
    ok = ~jnp.isnan(p)
    p = jnp.clip(jnp.where(ok, p, 0.0), 0.0, 100.0)
    groups = [list(range(len(values)))] if scope == "global" else [[i] for i in range(len(values))]
    cut, want = [None] * len(values), [None] * len(values)
    near, excess = [], []
    for g in groups:
        vs = [valid[i] for i in g]
        n = sum(jnp.sum(v, dtype=jnp.int32) for v in vs)
        k = percentile_rank(p, n, upper=upper)
        t = kth_smallest_abs([values[i] for i in g], k, vs)
        w = (n - k) if upper else jnp.minimum(k + 1, n)
        for i in g:
            cut[i], want[i] = t, w
            a = _abs32(values[i])
            near.append(valid[i] & ((a >= t) if upper else (a <= t)))
        excess.append(sum(jnp.sum(near[i], dtype=jnp.int32) for i in g) > w)

    def untie(near: list[jax.Array]) -> list[jax.Array]:
        # |x| recomputed here, not captured: captured operands of a cond are materialized.
        strict = [v & ((_abs32(x) > t) if upper else (_abs32(x) < t))
                  for x, v, t in zip(values, valid, cut)]
        tie = [s & ~st for s, st in zip(near, strict)]
        n_strict = [jnp.sum(st, dtype=jnp.int32) for st in strict]
        n_tie = [jnp.sum(t, dtype=jnp.int32) for t in tie]
        # One cumulative sum over all arrays: 1-based ranks of the ties in position order.
        rank = jnp.cumsum(jnp.concatenate([t.reshape(-1) for t in tie]), dtype=jnp.int32)
        out, start, before = [], 0, jnp.int32(0)
        for g in groups:
            take = want[g[0]] - sum(n_strict[i] for i in g)
            total = sum(n_tie[i] for i in g)
            base = before  # ties in earlier groups
            for i in g:
                size = tie[i].size
                r = rank[start:start + size].reshape(tie[i].shape) - base
                out.append(strict[i] | (tie[i] & ((r > total - take) if upper else (r <= take))))
                start += size
            before = before + total
        return out

    chosen = jax.lax.cond(jnp.any(jnp.stack(excess)), untie, lambda near: list(near), near)
    return [c & ok for c in chosen]
