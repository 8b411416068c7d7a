"""Magnitude-based pruning, recoverable or not (SPEC eq. 3).

An active connection ``w`` is removed (weight and mask set to exactly 0) iff

    |w| <= P_beta(|W_active|),

numpy's (linear) ``beta``-th percentile of the *active* magnitudes of its tensor
(``scope="layer"``) or of all masked tensors (``scope="global"``): dormant weights are zero and
would otherwise fill the low percentiles.

Ties at the threshold are broken by position, so that exactly ``floor(q) + 1`` connections
(the numpy count without ties) are removed, not every weight tied at the threshold.

Recoverable pruning guarantees that no neuron is pruned: in every kernel each output unit keeps
>= 1 input connection and each input unit keeps >= 1 output connection, spatial positions
included for convolutions (so each conv output and input channel survives); which axes hold
the units is ``layout=`` (:mod:`gpjax.masks`).
Two ways to keep them (``protection=``): "restore" selects the percentile over all active
connections and gives back, in each unit the selection would empty, its largest-magnitude active
connection (so an iteration removes fewer than ``beta`` % when units empty); "exclude" never
offers each unit's largest active connection as a candidate and takes the percentile over the
others, so every iteration removes ``beta`` % of what may be removed. Once most units of a
sparse model are down to one small connection, "restore" removes almost nothing per iteration
(e.g. one weight) while "exclude" goes on removing ``beta`` % of the rest. Network
inputs (pixels, audio features) are not neurons: input units of kernels marked ``input_fed``
may empty.
A unit that had no active connection before pruning cannot be saved by pruning; growth can.
Masked leaves of rank < 2 (selectable with ``init_masks(prunable=...)``) are not kernels: they
have no units to protect and are pruned by the threshold alone.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from gpjax import masks as M
from gpjax.grow import Scope
from gpjax.select import select

PyTree = Any
Protection = Literal["restore", "exclude"]
PROTECTIONS = ("restore", "exclude")


def _best_of_units(mask: jax.Array, mag: jax.Array, axis: int) -> jax.Array:
    """Each unit's largest-magnitude active entry (one per unit that has any), as a mask.

    ``mask``, ``mag`` are ``[spatial, in, out]``; ``axis`` is 2 for output units (columns) and 1
    for input units (rows).
    """
    score = jnp.moveaxis(jnp.where(mask, mag, -1.0), axis, -1)
    flat = score.reshape(-1, score.shape[-1])                               # [rest, units]
    best = jax.nn.one_hot(jnp.argmax(flat, axis=0), flat.shape[0], axis=0, dtype=bool)
    return jnp.moveaxis(best.reshape(score.shape), -1, axis) & mask


def _keep_best(keep: jax.Array, mask: jax.Array, mag: jax.Array, axis: int) -> jax.Array:
    """Restores, in each unit along ``axis`` that ``keep`` emptied, its largest active entry.

    ``keep``, ``mask``, ``mag`` are ``[spatial, in, out]``; ``axis`` as in
    :func:`_best_of_units`.
    """
    other = tuple(a for a in (0, 1, 2) if a != axis)
    emptied = mask.any(axis=other) & ~keep.any(axis=other)                 # [units]

    def restore(keep: jax.Array) -> jax.Array:
        return keep | (_best_of_units(mask, mag, axis) & jnp.expand_dims(emptied, other))

    # Usually no unit empties (a few percent pruned per iteration): skip the full-size search.
    return jax.lax.cond(jnp.any(emptied), restore, lambda k: k, keep)


def _protected(mask: jax.Array, mag: jax.Array, axes, input_fed: bool) -> jax.Array:
    """The connections recoverable pruning may not remove under ``protection="exclude"``: each
    output unit's and (unless the kernel is input-fed) each input unit's largest active one."""
    m3, a3 = M.unit_view(mask, axes), M.unit_view(mag, axes)
    keep = _best_of_units(m3, a3, axis=2)
    if not input_fed:
        keep = keep | _best_of_units(m3, a3, axis=1)
    return M.from_unit_view(keep, mask.shape, axes)


@functools.partial(jax.jit, static_argnames=("recoverable", "protection", "scope", "input_fed",
                                             "axes"))
def _prune(values, valids, percentile, recoverable, protection, scope, input_fed, axes):
    """Prunes the masked leaves (lists); also returns whether each weight leaf was finite."""
    units = [recoverable and a is not None for a in axes]  # rank < 2 (a masked bias) has none
    mags = [jnp.abs(p).astype(jnp.float32) for p in values]
    candidates = list(valids)
    if protection == "exclude":
        candidates = [m & ~_protected(m, a, axes[j], input_fed[j]) if units[j] else m
                      for j, (m, a) in enumerate(zip(valids, mags))]
    chosen = select(values, candidates, percentile, scope=scope, upper=False)
    new_p, new_m = [], []
    for j, (p, m, drop) in enumerate(zip(values, valids, chosen)):
        keep = m & ~drop
        if units[j] and protection == "restore":
            k3, m3, a3 = (M.unit_view(x, axes[j]) for x in (keep, m, mags[j]))
            k3 = _keep_best(k3, m3, a3, axis=2)
            if not input_fed[j]:
                k3 = _keep_best(k3, m3, a3, axis=1)
            keep = M.from_unit_view(k3, keep.shape, axes[j])
        new_p.append(jnp.where(keep, p, jnp.zeros((), p.dtype)))
        new_m.append(keep)
    finite = jnp.stack([jnp.all(jnp.isfinite(p)) for p in values]) if values else jnp.ones(0, bool)
    return new_p, new_m, finite


def prune(
    params: PyTree,
    masks: PyTree,
    *,
    percentile: float | jax.Array,
    recoverable: bool = True,
    protection: Protection = "restore",
    scope: Scope = "layer",
    input_fed: M.LeafSelector | PyTree = None,
    layout: M.Layout = "flax",
) -> tuple[PyTree, PyTree]:
    r"""Removes the smallest-magnitude active connections (SPEC eq. 3).

    Exactly ``floor(q) + 1`` active connections are removed before unit protection, with
    ``q = beta / 100 * (n - 1)`` over the ``n`` active ones: numpy's ``{|w| <= P_beta}``, and
    when several magnitudes tie at the threshold, the ties with the lowest positions (tensor,
    then flat index) go first (see :func:`gpjax.select.select`).

    Args:
      params: params pytree (non-array leaves pass through); masked weights must be finite.
      masks: masks pytree.
      percentile: beta, a number in [0, 100] over the active magnitudes (may be traced: no
        recompilation; a traced value is clamped to [0, 100] and NaN prunes nothing).
      recoverable: a bool; if True, no unit of any kernel loses its last connection (see module
        doc).
      protection: how recoverable pruning keeps units (see module doc): "restore" (select the
        percentile over all active connections, then give back each emptied unit's largest)
        or "exclude" (each unit's largest active connection is never a candidate; the
        percentile is over the others, so an iteration removes that share of them even when
        many units are down to one connection). Ignored when ``recoverable`` is False.
      scope: "layer" (a percentile per tensor) or "global" (one over all masked tensors).
      input_fed: kernels fed directly by the network's inputs, whose input units may empty:
        fnmatch patterns over leaf paths (each must match a leaf; models in
        :mod:`gpjax.models` give theirs as ``Model.input_kernels``), a predicate on the path,
        or a boolean pytree like masks. Unmarked, every kernel's units are protected.
      layout: which kernel axes are inputs and outputs: "flax" (``[..., in, out]``), "torch"
        (``[out, in, ...]``, Equinox) or per leaf (see :mod:`gpjax.masks`).

    Returns:
      ``(params, masks)``; removed weights and masks are exactly 0.

    Raises:
      ValueError: on bad arguments, or when a masked weight is NaN or inf (a diverged run:
        pruning would hide it). This check syncs with the device once per call.
    """
    M.check_masks(params, masks)
    M.check_percentile(percentile)
    M.check_bool("recoverable", recoverable)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if protection not in PROTECTIONS:
        raise ValueError(f"protection must be one of {PROTECTIONS}, got {protection!r}. "
                         "Fix: pass one of those.")
    fed = tuple(M.input_fed_flags(masks, input_fed))
    axes = tuple(M.unit_axes(masks, layout))
    mflat, treedef = jax.tree.flatten(masks, is_leaf=M.is_none)
    pflat = treedef.flatten_up_to(params)
    idx = [i for i, m in enumerate(mflat) if m is not None]
    new_p, new_m, finite = _prune([pflat[i] for i in idx], [mflat[i] for i in idx],
                                  jnp.asarray(percentile, jnp.float32), bool(recoverable),
                                  protection, scope, fed, axes)
    if not isinstance(finite, jax.core.Tracer):
        for (name, _, _), ok in zip(M.masked_leaves(masks), np.asarray(finite)):
            if not ok:
                raise M.nonfinite_error("params", name, "the run diverged before pruning "
                                        "(lower the learning rate, check the loss)")
    return (treedef.unflatten(M.merge_leaves(pflat, idx, new_p)),
            treedef.unflatten(M.merge_leaves(mflat, idx, new_m)))
