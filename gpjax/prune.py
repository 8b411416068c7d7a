"""Magnitude-based pruning, recoverable or not (SPEC eq. 3).

An active connection ``w`` is removed (weight and mask set to exactly 0) iff

    |w| <= P_beta(|W_active|),

numpy's (linear) ``beta``-th percentile of the *active* magnitudes of its tensor
(``scope="layer"``) or of all masked tensors (``scope="global"``): dormant weights are zero and
would otherwise fill the low percentiles.

Recoverable pruning guarantees that no neuron is pruned: in every kernel each output unit
(column) keeps >= 1 input connection and each input unit (row) keeps >= 1 output connection,
spatial positions included for convolutions (so each conv output and input channel survives).
Where the threshold would empty a unit, its largest-magnitude active connection is kept. Network
inputs (pixels, audio features) are not neurons: rows of kernels marked ``input_fed`` may empty.
A unit that had no active connection before pruning cannot be saved by pruning; growth can.
Masked leaves of rank < 2 (selectable with ``init_masks(prunable=...)``) are not kernels: they
have no units to protect and are pruned by the threshold alone.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gpjax import masks as M
from gpjax.grow import Scope
from gpjax.select import thresholds

PyTree = Any


def _keep_best(keep: jax.Array, mask: jax.Array, mag: jax.Array, axis: int) -> jax.Array:
    """Restores, in each unit along ``axis`` that ``keep`` emptied, its largest active entry.

    ``keep``, ``mask``, ``mag`` are ``[spatial, in, out]``; ``axis`` is 2 for output units
    (columns) and 1 for input units (rows).
    """
    other = tuple(a for a in (0, 1, 2) if a != axis)
    emptied = mask.any(axis=other) & ~keep.any(axis=other)                 # [units]

    def restore(keep: jax.Array) -> jax.Array:
        score = jnp.moveaxis(jnp.where(mask, mag, -1.0), axis, -1)
        flat = score.reshape(-1, score.shape[-1])                           # [rest, units]
        best = jax.nn.one_hot(jnp.argmax(flat, axis=0), flat.shape[0], axis=0, dtype=bool)
        best = jnp.moveaxis(best.reshape(score.shape), -1, axis)
        return keep | (best & jnp.expand_dims(emptied, other))

    # Usually no unit empties (a few percent pruned per iteration): skip the full-size search.
    return jax.lax.cond(jnp.any(emptied), restore, lambda k: k, keep)


@functools.partial(jax.jit, static_argnames=("recoverable", "scope", "input_fed"))
def _prune(params, masks, percentile, recoverable, scope, input_fed):
    mflat, treedef = jax.tree.flatten(masks, is_leaf=M.is_none)
    pflat = treedef.flatten_up_to(params)
    idx = [i for i, m in enumerate(mflat) if m is not None]
    values = [pflat[i] for i in idx]
    valids = [mflat[i] for i in idx]
    cuts, counts = thresholds(values, valids, percentile, scope=scope, upper=False)
    for j, (i, t, n) in enumerate(zip(idx, cuts, counts)):
        m, p = mflat[i], pflat[i]
        mag = jnp.abs(p).astype(jnp.float32)
        keep = m & ((mag > t) | (n == 0))
        if recoverable and p.ndim >= 2:  # rank < 2 (a masked bias, say) has no units
            shape = keep.shape
            k3, m3, a3 = M.unit_view(keep), M.unit_view(m), M.unit_view(mag)
            k3 = _keep_best(k3, m3, a3, axis=2)
            if not input_fed[j]:
                k3 = _keep_best(k3, m3, a3, axis=1)
            keep = k3.reshape(shape)
        pflat[i] = jnp.where(keep, p, jnp.zeros((), p.dtype))
        mflat[i] = keep
    return treedef.unflatten(pflat), treedef.unflatten(mflat)


def prune(
    params: PyTree,
    masks: PyTree,
    *,
    percentile: float | jax.Array,
    recoverable: bool = True,
    scope: Scope = "layer",
    input_fed: M.LeafSelector | PyTree = None,
) -> tuple[PyTree, PyTree]:
    r"""Removes the smallest-magnitude active connections (SPEC eq. 3).

    Args:
      params: params pytree.
      masks: masks pytree.
      percentile: beta in [0, 100] over the active magnitudes (traced: no recompilation).
      recoverable: if True, no unit of any kernel loses its last connection (see module doc).
      scope: "layer" (a percentile per tensor) or "global" (one over all masked tensors).
      input_fed: kernels fed directly by the network's inputs, whose rows may empty: fnmatch
        patterns over leaf paths (models in :mod:`gpjax.models` give theirs as
        ``Model.input_kernels``), a predicate on the path, or a boolean pytree like masks.
        Unmarked, every kernel's rows and columns are protected.

    Returns:
      ``(params, masks)``; removed weights and masks are exactly 0.
    """
    M.check_masks(params, masks)
    M.check_percentile(percentile)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    fed = tuple(M._input_fed_flags(masks, input_fed))
    return _prune(params, masks, jnp.asarray(percentile, jnp.float32), bool(recoverable), scope,
                  fed)
