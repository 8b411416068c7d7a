"""Mask pytrees: creation, application, counting, dead units and validation.

A *masks* pytree mirrors a params pytree: every prunable leaf (by default a floating array of
rank >= 2, i.e. a kernel) has a boolean array of the same shape, every other leaf ``None`` (the
jaxpruner convention). Connections whose mask is False are *dormant*; the network computes with
``W * M``. Walk masks with ``jax.tree.map(f, masks, params, is_leaf=is_none)``.

Unit axes. For a kernel, the last axis indexes output units and axis -2 input units; leading
axes are spatial (Flax ``Dense``: ``[in, out]``; ``Conv``: ``[kh, kw, in, out]``). A unit of a
kernel is a column (output unit: all connections into it) or a row (input unit: all connections
out of it), spatial positions included.

Leaves are named by their path, keys joined with "/" (e.g. ``params/Dense_0/kernel``); options
that select leaves (``prunable``, ``input_fed``) take fnmatch patterns over those names, a
predicate on them, or a boolean pytree.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
LeafSelector = Callable[[str], bool] | Iterable[str] | None


def is_none(x: Any) -> bool:
    """``is_leaf`` for walking masks pytrees, whose non-prunable leaves are ``None``."""
    return x is None


def path_str(path: tuple) -> str:
    """A leaf's path as keys joined by "/" (``params/Dense_0/kernel``)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _selector(select: LeafSelector, what: str) -> Callable[[str], bool]:
    if select is None:
        return lambda name: False
    if callable(select):
        return select
    if isinstance(select, str):
        select = (select,)
    patterns = tuple(select)
    for pat in patterns:
        if not isinstance(pat, str):
            raise ValueError(f"{what} must be fnmatch patterns (str), a predicate or None; "
                             f"got element {pat!r}")
    return lambda name: any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def is_kernel(leaf: Any) -> bool:
    """Default prunable test: a floating array of rank >= 2."""
    return (hasattr(leaf, "ndim") and leaf.ndim >= 2
            and jnp.issubdtype(getattr(leaf, "dtype", np.int32), jnp.floating))


def init_masks(
    params: PyTree,
    *,
    density: float = 1.0,
    key: jax.Array | None = None,
    prunable: LeafSelector = None,
) -> PyTree:
    """Creates a masks pytree mirroring ``params``.

    Args:
      params: any pytree of arrays (Flax linen variables, NNX state, Equinox, plain dicts).
      density: fraction of active connections, in (0, 1]. Below 1 each connection is kept
        independently with this probability (a random sparse seed, as NeST starts from).
      key: a PRNG key; required when ``density < 1``.
      prunable: which leaves get masks: fnmatch patterns over leaf paths or a predicate on the
        path string. Default: every floating array of rank >= 2 (kernels).

    Returns:
      A pytree like ``params`` with boolean arrays on prunable leaves and ``None`` elsewhere.
      Call :func:`apply_masks` once afterwards so that dormant weights are exactly 0.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density < 1.0 and key is None:
        raise ValueError("init_masks(density < 1) draws a random mask: "
                         "pass key=jax.random.key(seed)")
    chooser = (lambda name, leaf: is_kernel(leaf)) if prunable is None else (
        lambda name, leaf, sel=_selector(prunable, "prunable"):
        sel(name) and hasattr(leaf, "shape"))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, leaf) in enumerate(flat):
        if not chooser(path_str(path), leaf):
            out.append(None)
        elif density >= 1.0:
            out.append(jnp.ones(leaf.shape, bool))
        else:
            out.append(jax.random.bernoulli(jax.random.fold_in(key, i), density, leaf.shape))
    return jax.tree_util.tree_unflatten(treedef, out)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``W * M`` on masked leaves (dormant entries become exactly 0); other leaves untouched.

    Raises ValueError, naming the leaf, unless ``masks`` fits ``params`` (see
    :func:`check_masks`; shape and dtype checks only, so it also runs under ``jit``).
    """
    check_masks(params, masks)
    return jax.tree.map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)),
        masks, params, is_leaf=is_none)


def full_masks(masks: PyTree, params: PyTree) -> PyTree:
    """``masks`` with every ``None`` replaced by an all-True array shaped like the param."""
    return jax.tree.map(
        lambda m, p: jnp.ones(jnp.shape(p), bool) if m is None else m,
        masks, params, is_leaf=is_none)


def masked_leaves(masks: PyTree, *trees: PyTree) -> list[tuple[str, jax.Array, tuple]]:
    """``[(path, mask, (leaf of each tree...)), ...]`` for the masked leaves only."""
    mflat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    others = [treedef.flatten_up_to(t) for t in trees]
    return [(path_str(p), m, tuple(o[i] for o in others))
            for i, (p, m) in enumerate(mflat) if m is not None]


def _input_fed_flags(masks: PyTree, input_fed: LeafSelector | PyTree) -> list[bool]:
    """One flag per masked leaf (in :func:`masked_leaves` order)."""
    mflat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    if input_fed is not None and not callable(input_fed) and not isinstance(input_fed, str) \
            and jax.tree.structure(input_fed, is_leaf=is_none) == treedef:
        flags = treedef.flatten_up_to(input_fed)
        return [bool(f) for (_, m), f in zip(mflat, flags) if m is not None]
    sel = _selector(input_fed, "input_fed")
    return [sel(path_str(p)) for p, m in mflat if m is not None]


def unit_view(x: jax.Array) -> jax.Array:
    """A kernel as ``[spatial, in, out]`` (rank-2 kernels get a spatial axis of 1)."""
    return x.reshape((-1,) + x.shape[-2:])


def connect_units(masks: PyTree, *, seed: int | jax.Array = 0,
                  input_fed: LeafSelector | PyTree = None) -> PyTree:
    """Switches on one random connection for every unit a sparse mask left unconnected.

    A random mask at low density leaves some units with no input or no output connection (a
    16-unit layer feeding 10 outputs at density 0.3 has one with probability ~40%). Such a
    neuron is dead from the start, and growth cannot revive it (a unit without outputs gets no
    gradient into its inputs); recoverable pruning would then keep it dead for good. Call this
    after :func:`init_masks` with ``density < 1``.

    Args:
      masks: masks pytree (see :func:`init_masks`).
      seed: an int or a PRNG key choosing the connections (host-side numpy draws).
      input_fed: kernels fed by the network's inputs (as in :func:`gpjax.prune`): their rows
        (pixels, features) are not neurons and may stay unconnected.

    Returns:
      masks where every output unit of every kernel (``[..., in, out]``: columns; conv: output
      channels) has an active input connection and every input unit of a kernel not fed by the
      network's inputs has an output connection. Units already connected are untouched.
    """
    if isinstance(seed, jax.Array):
        seed = np.asarray(jax.random.key_data(seed) if jnp.issubdtype(
            seed.dtype, jax.dtypes.prng_key) else seed, np.uint32).ravel()
    rng = np.random.default_rng(seed)
    flags = _input_fed_flags(masks, input_fed)
    fixed = []
    for (_, m, _), fed in zip(masked_leaves(masks), flags, strict=True):
        if m.ndim < 2:  # not a kernel: no units
            fixed.append(m)
            continue
        v = np.array(unit_view(np.asarray(m)))  # [spatial, in, out]
        s_, n_in, n_out = v.shape
        for o in np.flatnonzero(~v.any(axis=(0, 1))):
            v[rng.integers(s_), rng.integers(n_in), o] = True
        if not fed:
            for i in np.flatnonzero(~v.any(axis=(0, 2))):
                v[rng.integers(s_), i, rng.integers(n_out)] = True
        fixed.append(jnp.asarray(v.reshape(m.shape)))
    it = iter(fixed)
    return jax.tree.map(lambda m: None if m is None else next(it), masks, is_leaf=is_none)


class DeadUnits(NamedTuple):
    """Units of one kernel that have lost every connection.

    Attributes:
      inputs: rows (input units) with no active connection; 0 for a kernel fed by the network's
        inputs (pixels, features are not neurons).
      outputs: columns (output units) with no active connection.
    """

    inputs: int
    outputs: int


def dead_units(masks: PyTree, *, input_fed: LeafSelector | PyTree = None) -> dict[str, DeadUnits]:
    """How many units each kernel has lost (a neuron is "pruned" when it has none left).

    Args:
      masks: a masks pytree.
      input_fed: kernels fed by the network's inputs (patterns, predicate or bool pytree); their
        rows are not counted.

    Returns:
      ``{path: DeadUnits(inputs, outputs)}`` for every masked leaf (``(0, 0)`` for masked
      leaves of rank < 2, which have no units).
    """
    flags = _input_fed_flags(masks, input_fed)
    out = {}
    for (name, m, _), fed in zip(masked_leaves(masks), flags):
        if m.ndim < 2:  # not a kernel (a masked bias, say): no units to lose
            out[name] = DeadUnits(0, 0)
            continue
        m3 = np.asarray(unit_view(m))
        dead_out = int(np.sum(~m3.any(axis=(0, 1))))
        dead_in = 0 if fed else int(np.sum(~m3.any(axis=(0, 2))))
        out[name] = DeadUnits(dead_in, dead_out)
    return out


class ParamCount(NamedTuple):
    """Connection counts.

    Attributes:
      active: active connections in masked leaves (the "#parameters" the paper reports).
      dense: all connections in masked leaves (the dense model's count).
      per_tensor: ``{path: (active, dense)}`` for each masked leaf.
      unmasked: size of the leaves without a mask (biases, norms); 0 when params is not given.
    """

    active: int
    dense: int
    per_tensor: dict[str, tuple[int, int]]
    unmasked: int = 0


def count_params(masks: PyTree, params: PyTree | None = None) -> ParamCount:
    """Counts active and dense connections, per tensor and in total.

    Args:
      masks: a masks pytree.
      params: optional params pytree; when given, the size of unmasked leaves is counted too.

    Returns:
      A :class:`ParamCount`.
    """
    per = {name: (int(jnp.sum(m)), int(m.size)) for name, m, _ in masked_leaves(masks)}
    unmasked = 0
    if params is not None:
        check_masks(params, masks)
        unmasked = sum(int(np.size(p)) for _, m, p in _all_leaves(masks, params) if m is None)
    return ParamCount(sum(a for a, _ in per.values()), sum(d for _, d in per.values()), per,
                      unmasked)


def density(masks: PyTree) -> float:
    """Fraction of active connections over all masked leaves."""
    c = count_params(masks)
    return c.active / max(c.dense, 1)


def dormant_is_zero(params: PyTree, masks: PyTree) -> bool:
    """True iff every dormant weight is exactly 0 (the invariant ``W * M == W``)."""
    return all(bool(jnp.all(jnp.where(m, True, p == 0)))
               for _, m, (p,) in masked_leaves(masks, params))


# ----------------------------------------------------------------------------- validation

def _all_leaves(masks: PyTree, params: PyTree) -> list[tuple[str, Any, Any]]:
    mflat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    pflat = treedef.flatten_up_to(params)
    return [(path_str(path), m, p) for (path, m), p in zip(mflat, pflat)]


def _structure_error(what: str, tree: PyTree, params: PyTree) -> str:
    got = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]}
    want = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing, extra = sorted(want - got)[:5], sorted(got - want)[:5]
    return (f"{what} and params have different tree structures: missing in {what}: {missing}, "
            f"not in params: {extra}. Fix: build {what} from these params "
            f"(e.g. gpjax.init_masks(params)).")


def check_masks(params: PyTree, masks: PyTree) -> None:
    """Raises ValueError, naming the leaf, unless ``masks`` fits ``params``.

    Checks: same tree structure (``None`` standing for an unmasked leaf), same shapes, boolean
    dtype.
    """
    try:
        leaves = _all_leaves(masks, params)
    except ValueError:
        raise ValueError(_structure_error("masks", masks, params)) from None
    if jax.tree.structure(masks, is_leaf=is_none) != jax.tree.structure(params):
        raise ValueError(_structure_error("masks", masks, params))
    for name, m, p in leaves:
        if m is None:
            continue
        if not hasattr(m, "dtype") or m.dtype != jnp.bool_:
            raise ValueError(f"mask at '{name}' has dtype {getattr(m, 'dtype', type(m))}, "
                             "expected bool. Fix: pass boolean masks (e.g. m.astype(bool)).")
        if tuple(m.shape) != tuple(jnp.shape(p)):
            raise ValueError(f"mask at '{name}' has shape {tuple(m.shape)} but the param has "
                             f"{tuple(jnp.shape(p))}. Fix: rebuild masks for these params.")


def check_like_params(what: str, tree: PyTree, params: PyTree) -> None:
    """Raises ValueError, naming the leaf, unless ``tree`` has params' structure and shapes."""
    if jax.tree.structure(tree) != jax.tree.structure(params):
        raise ValueError(_structure_error(what, tree, params))
    for (path, t), p in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(params)):
        if tuple(jnp.shape(t)) != tuple(jnp.shape(p)):
            raise ValueError(f"{what} at '{path_str(path)}' has shape {tuple(jnp.shape(t))} but "
                             f"the param has {tuple(jnp.shape(p))}.")


def check_percentile(percentile: Any) -> None:
    """Raises ValueError unless a concrete percentile lies in [0, 100] (traced: unchecked)."""
    if isinstance(percentile, jax.core.Tracer):
        return
    p = float(np.asarray(percentile))
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p}.")


def check_finite(what: str, tree: PyTree, masks: PyTree) -> None:
    """Raises ValueError naming the first masked leaf of ``tree`` with a NaN or inf."""
    leaves = masked_leaves(masks, tree)
    if not leaves or any(isinstance(t, jax.core.Tracer) for _, _, (t,) in leaves):
        return
    finite = jax.device_get([jnp.all(jnp.isfinite(t)) for _, _, (t,) in leaves])
    for (name, _, _), ok in zip(leaves, finite):
        if not ok:
            raise ValueError(f"{what} at '{name}' contains NaN or inf. Fix: find the source of the "
                             "non-finite loss, or pass nonfinite='skip' to treat those entries "
                             "as zero.")
