"""Mask pytrees: creation, application, counting, dead units and validation.

A *masks* pytree mirrors a params pytree: every prunable leaf (by default a floating array of
rank >= 2 not named ``bias``, i.e. a kernel) has a boolean array of the same shape, every other
leaf ``None`` (the jaxpruner convention). Non-array leaves of params (``None`` from
``eqx.partition``, functions, ints) are tolerated: their mask is ``None`` and they pass through
untouched. Connections whose mask is False are *dormant*; the network computes with ``W * M``.
Walk masks with ``jax.tree.map(f, masks, params, is_leaf=is_none)``.

Unit axes (``layout=``). A kernel has one axis of input units and one of output units; the
others are spatial. A unit is a slice along one of them (output unit: all connections into it;
input unit: all connections out of it), spatial positions included. ``layout="flax"`` (the
default) is ``[..., in, out]`` (Flax linen/NNX ``Dense`` ``[in, out]``, ``Conv``
``[kh, kw, in, out]``); ``layout="torch"`` is ``[out, in, ...]`` (Equinox, PyTorch-style
``Linear`` ``[out, in]`` and ``Conv`` ``[out, in, kh, kw]``); a mapping ``{pattern: (in_axis,
out_axis)}`` sets them per leaf (unmatched leaves: "flax"), and a pytree like masks with
``(in_axis, out_axis)`` leaves (``None`` elsewhere) sets them leaf by leaf.

Leaves are named by their path, keys joined with "/" (e.g. ``params/Dense_0/kernel``); options
that select leaves (``prunable``, ``input_fed``, ``layout``) take fnmatch patterns over those
names, a predicate on them, or a boolean pytree. A name ending in ``/value`` (Flax NNX state,
``l1/kernel/value``) also matches without it (``*l1/kernel``). A pattern that matches no leaf
is an error.
"""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
LeafSelector = Callable[[str], bool] | Iterable[str] | None
Layout = Literal["flax", "torch"] | Mapping[str, tuple[int, int]] | PyTree
Axes = tuple[int, int]  # (in_axis, out_axis), non-negative


def is_none(x: Any) -> bool:
    """``is_leaf`` for walking masks pytrees, whose non-prunable leaves are ``None``."""
    return x is None


def is_array(x: Any) -> bool:
    """True for array leaves (jax/numpy arrays, tracers, ``ShapeDtypeStruct``)."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def path_str(path: tuple) -> str:
    """A leaf's path as keys joined by "/" (``params/Dense_0/kernel``)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_names(tree: PyTree) -> list[str]:
    """The path names of every leaf of ``tree``, ``None`` leaves included."""
    return [path_str(p) for p, _ in
            jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]]


def _match(name: str, pat: str) -> bool:
    if fnmatch.fnmatchcase(name, pat):
        return True
    return name.endswith("/value") and fnmatch.fnmatchcase(name[:-len("/value")], pat)


def _patterns(select: Any, what: str) -> tuple[str, ...]:
    if isinstance(select, str):
        select = (select,)
    patterns = tuple(select)
    for pat in patterns:
        if not isinstance(pat, str):
            raise ValueError(f"{what} must be fnmatch patterns (str), a predicate or None; "
                             f"got element {pat!r}")
    return patterns


def _check_matched(patterns: Iterable[str], names: list[str], what: str) -> None:
    for pat in patterns:
        if not any(_match(n, pat) for n in names):
            shown = names if len(names) <= 30 else names[:30] + [f"... ({len(names)} in all)"]
            raise ValueError(f"{what} pattern {pat!r} matches no leaf; the leaf paths are "
                             f"{shown}. Fix: write the pattern against one of these paths.")


def _selector(select: LeafSelector, what: str,
              names: list[str] | None = None) -> Callable[[str], bool]:
    """A predicate on leaf names; patterns must each match one of ``names`` (when given)."""
    if select is None:
        return lambda name: False
    if callable(select):
        return select
    patterns = _patterns(select, what)
    if names is not None:
        _check_matched(patterns, names, what)
    return lambda name: any(_match(name, pat) for pat in patterns)


def is_kernel(leaf: Any) -> bool:
    """A floating array of rank >= 2."""
    return (is_array(leaf) and leaf.ndim >= 2
            and jnp.issubdtype(getattr(leaf, "dtype", np.int32), jnp.floating))


def _default_prunable(name: str, leaf: Any) -> bool:
    """Kernels (:func:`is_kernel`) not named ``bias`` (Equinox conv biases are ``[out, 1, 1]``)."""
    last = name[:-len("/value")] if name.endswith("/value") else name
    return is_kernel(leaf) and last.rsplit("/", 1)[-1] != "bias"


def init_masks(
    params: PyTree,
    *,
    density: float = 1.0,
    key: jax.Array | None = None,
    prunable: LeafSelector = None,
) -> PyTree:
    """Creates a masks pytree mirroring ``params``.

    Args:
      params: any pytree (Flax linen variables, NNX state, Equinox models or their
        ``eqx.partition`` halves, plain dicts); non-array leaves get no mask.
      density: fraction of active connections, a number in (0, 1]. Below 1 each connection is
        kept independently with this probability (a random sparse seed, as NeST starts from).
      key: a PRNG key; required when ``density < 1``.
      prunable: which leaves get masks: fnmatch patterns over leaf paths (each must match a
        leaf) or a predicate on the path string. Default: every floating array of rank >= 2
        (kernels) whose last path key is not ``bias``. Only array leaves are ever masked.

    Returns:
      A pytree like ``params`` with boolean arrays on prunable leaves and ``None`` elsewhere.
      Call :func:`apply_masks` once afterwards so that dormant weights are exactly 0.
    """
    if not isinstance(density, numbers.Real) or isinstance(density, bool) \
            or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be a number in (0, 1], got {density!r}. "
                         "Fix: pass e.g. density=0.1.")
    if density < 1.0 and key is None:
        raise ValueError("init_masks(density < 1) draws a random mask: "
                         "pass key=jax.random.key(seed)")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_none)
    if prunable is None:
        chosen = [_default_prunable(path_str(p), leaf) for p, leaf in flat]
    else:
        sel = _selector(prunable, "prunable", [path_str(p) for p, _ in flat])
        chosen = [bool(sel(path_str(p))) and is_array(leaf) for p, leaf in flat]
    out = []
    for i, ((_, leaf), c) in enumerate(zip(flat, chosen)):
        if not c:
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
    """``masks`` with every ``None`` replaced by an all-True array shaped like the param
    (``None`` where the param itself is ``None``)."""
    return jax.tree.map(
        lambda m, p: None if p is None else (jnp.ones(jnp.shape(p), bool) if m is None else m),
        masks, params, is_leaf=is_none)


def masked_leaves(masks: PyTree, *trees: PyTree) -> list[tuple[str, jax.Array, tuple]]:
    """``[(path, mask, (leaf of each tree...)), ...]`` for the masked leaves only."""
    mflat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    others = [treedef.flatten_up_to(t) for t in trees]
    return [(path_str(p), m, tuple(o[i] for o in others))
            for i, (p, m) in enumerate(mflat) if m is not None]


def merge_leaves(flat: list[Any], idx: list[int], new: list[Any]) -> list[Any]:
    """``flat`` with ``new[j]`` at ``idx[j]``; other numpy leaves become jax arrays (as a jitted
    update would return them; a train step then sees one signature), non-arrays pass through."""
    out = [jnp.asarray(x) if isinstance(x, np.ndarray) else x for x in flat]
    for i, x in zip(idx, new):
        out[i] = x
    return out


def check_bool_masks(masks: PyTree) -> None:
    """Raises ValueError, naming the leaf, unless every mask leaf is a boolean array."""
    for name, m, _ in masked_leaves(masks):
        if not is_array(m) or m.dtype != jnp.bool_:
            raise ValueError(f"mask at '{name}' has dtype {getattr(m, 'dtype', type(m))}, "
                             "expected bool. Fix: pass boolean masks (e.g. m.astype(bool)).")


def input_fed_flags(masks: PyTree, input_fed: LeafSelector | PyTree) -> list[bool]:
    """Which masked leaves the network input feeds: one flag per masked leaf, in
    :func:`masked_leaves` order.

    Args:
      masks: a masks pytree.
      input_fed: fnmatch patterns over leaf paths (each must match a leaf), a predicate on a
        leaf path, a pytree like ``masks`` of bools, or None (no leaf).
    """
    mflat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    if input_fed is not None and not callable(input_fed) and not isinstance(input_fed, str) \
            and jax.tree.structure(input_fed, is_leaf=is_none) == treedef:
        flags = treedef.flatten_up_to(input_fed)
        return [bool(f) for (_, m), f in zip(mflat, flags) if m is not None]
    sel = _selector(input_fed, "input_fed", [path_str(p) for p, _ in mflat])
    return [bool(sel(path_str(p))) for p, m in mflat if m is not None]


def _is_axes(x: Any) -> bool:
    return (isinstance(x, tuple) and len(x) == 2
            and all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in x))


def unit_axes(masks: PyTree, layout: Layout = "flax") -> list[Axes | None]:
    """``(in_axis, out_axis)`` (non-negative) per masked leaf, ``None`` for rank < 2.

    Args:
      masks: a masks pytree.
      layout: "flax", "torch", ``{pattern: (in_axis, out_axis)}`` or a pytree like masks with
        ``(in_axis, out_axis)`` leaves (see the module docstring).

    Returns:
      One entry per masked leaf, in :func:`masked_leaves` order.
    """
    leaves = masked_leaves(masks)
    if isinstance(layout, str):
        if layout not in ("flax", "torch"):
            raise ValueError(f"layout must be 'flax', 'torch', a mapping from leaf patterns to "
                             f"(in_axis, out_axis) or a pytree of those; got {layout!r}")
        given = [(-2, -1) if layout == "flax" else (1, 0)] * len(leaves)
    elif isinstance(layout, Mapping) and layout and all(
            isinstance(k, str) and _is_axes(v) for k, v in layout.items()):
        _check_matched(layout, leaf_names(masks), "layout")
        given = []
        for name, _, _ in leaves:
            hits = [v for k, v in layout.items() if _match(name, k)]
            given.append(hits[0] if hits else (-2, -1))
    else:
        treedef = jax.tree.structure(masks, is_leaf=is_none)
        is_leaf = lambda x: x is None or _is_axes(x)  # noqa: E731
        if jax.tree.structure(layout, is_leaf=is_leaf) != treedef:
            raise ValueError("layout must be 'flax', 'torch', a mapping {pattern: (in_axis, "
                             "out_axis)} or a pytree like masks with (in_axis, out_axis) leaves; "
                             f"got {type(layout).__name__} of another structure.")
        flat = treedef.flatten_up_to(layout)
        given = [a if a is not None else (-2, -1)
                 for a, m in zip(flat, jax.tree.leaves(masks, is_leaf=is_none)) if m is not None]
    out: list[Axes | None] = []
    for (name, m, _), axes in zip(leaves, given, strict=True):
        if m.ndim < 2:
            out.append(None)
            continue
        i, o = (int(a) % m.ndim if -m.ndim <= a < m.ndim else None for a in axes)
        if i is None or o is None or i == o:
            raise ValueError(f"layout gives (in_axis, out_axis)={tuple(axes)} for '{name}' of "
                             f"shape {tuple(m.shape)}: need two different axes of it. Fix: "
                             "layout='flax' for [..., in, out], 'torch' for [out, in, ...].")
        out.append((i, o))
    return out


def unit_view(x: jax.Array, axes: Axes | None = None) -> jax.Array:
    """A kernel as ``[spatial, in, out]``; ``axes=(in_axis, out_axis)``, default the last two
    (rank-2 kernels get a spatial axis of 1)."""
    if axes is not None and axes != (x.ndim - 2, x.ndim - 1):
        x = jnp.moveaxis(x, axes, (-2, -1)) if isinstance(x, jax.Array) \
            else np.moveaxis(x, axes, (-2, -1))
    return x.reshape((-1,) + x.shape[-2:])


def from_unit_view(v: jax.Array, shape: tuple[int, ...], axes: Axes | None = None) -> jax.Array:
    """The inverse of :func:`unit_view`: ``[spatial, in, out]`` back to the kernel ``shape``."""
    if axes is None or axes == (len(shape) - 2, len(shape) - 1):
        return v.reshape(shape)
    rest = [s for a, s in enumerate(shape) if a not in axes]
    moved = v.reshape(tuple(rest) + (shape[axes[0]], shape[axes[1]]))
    move = jnp.moveaxis if isinstance(v, jax.Array) else np.moveaxis
    return move(moved, (-2, -1), axes)


def connect_units(masks: PyTree, *, seed: int | jax.Array = 0,
                  input_fed: LeafSelector | PyTree = None, layout: Layout = "flax") -> PyTree:
    """Switches on one random connection for every unit a sparse mask left unconnected.

    A random mask at low density leaves some units with no input or no output connection (a
    16-unit layer feeding 10 outputs at density 0.3 has one with probability ~40%). Such a
    neuron is dead from the start, and growth cannot revive it (a unit without outputs gets no
    gradient into its inputs); recoverable pruning would then keep it dead for good. Call this
    after :func:`init_masks` with ``density < 1``.

    Args:
      masks: masks pytree (see :func:`init_masks`).
      seed: an int or a PRNG key choosing the connections (host-side numpy draws).
      input_fed: kernels fed by the network's inputs (as in :func:`gpjax.prune`): their input
        units (pixels, features) are not neurons and may stay unconnected.
      layout: which kernel axes are inputs and outputs: "flax" (``[..., in, out]``), "torch"
        (``[out, in, ...]``, Equinox) or per leaf (see the module docstring).

    Returns:
      masks where every output unit of every kernel has an active input connection and every
      input unit of a kernel not fed by the network's inputs has an output connection. Units
      already connected are untouched.
    """
    check_bool_masks(masks)
    if isinstance(seed, jax.Array):
        seed = np.asarray(jax.random.key_data(seed) if jnp.issubdtype(
            seed.dtype, jax.dtypes.prng_key) else seed, np.uint32).ravel()
    rng = np.random.default_rng(seed)
    flags = input_fed_flags(masks, input_fed)
    axes_all = unit_axes(masks, layout)
    fixed = []
    for (_, m, _), fed, axes in zip(masked_leaves(masks), flags, axes_all, strict=True):
        if axes is None:  # not a kernel: no units
            fixed.append(m)
            continue
        v = np.array(unit_view(np.asarray(m), axes))  # [spatial, in, out]
        s_, n_in, n_out = v.shape
        for o in np.flatnonzero(~v.any(axis=(0, 1))):
            v[rng.integers(s_), rng.integers(n_in), o] = True
        if not fed:
            for i in np.flatnonzero(~v.any(axis=(0, 2))):
                v[rng.integers(s_), i, rng.integers(n_out)] = True
        fixed.append(jnp.asarray(from_unit_view(v, m.shape, axes)))
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


def dead_units(masks: PyTree, *, input_fed: LeafSelector | PyTree = None,
               layout: Layout = "flax") -> dict[str, DeadUnits]:
    """How many units each kernel has lost (a neuron is "pruned" when it has none left).

    Args:
      masks: a masks pytree (boolean leaves; anything else is refused).
      input_fed: kernels fed by the network's inputs (patterns, predicate or bool pytree); their
        input units are not counted.
      layout: which kernel axes are inputs and outputs ("flax", "torch" or per leaf; see the
        module docstring).

    Returns:
      ``{path: DeadUnits(inputs, outputs)}`` for every masked leaf (``(0, 0)`` for masked
      leaves of rank < 2, which have no units).
    """
    check_bool_masks(masks)
    flags = input_fed_flags(masks, input_fed)
    axes_all = unit_axes(masks, layout)
    out = {}
    for (name, m, _), fed, axes in zip(masked_leaves(masks), flags, axes_all):
        if axes is None:  # not a kernel (a masked bias, say): no units to lose
            out[name] = DeadUnits(0, 0)
            continue
        m3 = unit_view(np.asarray(m), axes)
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
      masks: a masks pytree (boolean leaves; anything else is refused).
      params: optional params pytree; when given, the size of unmasked array leaves is counted
        too.

    Returns:
      A :class:`ParamCount`.
    """
    check_bool_masks(masks)
    per = {name: (int(jnp.sum(m)), int(m.size)) for name, m, _ in masked_leaves(masks)}
    unmasked = 0
    if params is not None:
        check_masks(params, masks)
        unmasked = sum(int(np.size(p)) for _, m, p in _all_leaves(masks, params)
                       if m is None and is_array(p))
    return ParamCount(sum(a for a, _ in per.values()), sum(d for _, d in per.values()), per,
                      unmasked)


def density(masks: PyTree) -> float:
    """Fraction of active connections over all masked leaves (boolean masks only)."""
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


def _structure_error(what: str, tree: PyTree, params: PyTree, against: str = "params",
                     fix: str | None = None) -> str:
    got, want = set(leaf_names(tree)), set(leaf_names(params))
    missing, extra = sorted(want - got)[:5], sorted(got - want)[:5]
    fix = fix or f"build {what} from these params (e.g. gpjax.init_masks(params))"
    return (f"{what} and {against} have different tree structures: missing in {what}: "
            f"{missing}, not in {against}: {extra}. Fix: {fix}.")


def check_masks(params: PyTree, masks: PyTree, *, against: str = "params",
                fix: str | None = None) -> None:
    """Raises ValueError, naming the leaf, unless ``masks`` fits ``params``.

    Checks: same tree structure (``None`` leaves of either standing for an unmasked leaf, so
    ``eqx.partition`` halves fit), same shapes, boolean dtype, masks only on array leaves.
    ``against`` and ``fix`` word the message for callers whose reference is not params.
    """
    if jax.tree.structure(masks, is_leaf=is_none) != jax.tree.structure(params, is_leaf=is_none):
        raise ValueError(_structure_error("masks", masks, params, against, fix))
    for name, m, p in _all_leaves(masks, params):
        if m is None:
            continue
        if not is_array(m) or m.dtype != jnp.bool_:
            raise ValueError(f"mask at '{name}' has dtype {getattr(m, 'dtype', type(m))}, "
                             "expected bool. Fix: pass boolean masks (e.g. m.astype(bool)).")
        if not is_array(p):
            raise ValueError(f"mask at '{name}' is on a leaf that is not an array "
                             f"({type(p).__name__}). Fix: rebuild masks for these {against}.")
        if tuple(m.shape) != tuple(jnp.shape(p)):
            raise ValueError(f"mask at '{name}' has shape {tuple(m.shape)} but the {against} "
                             f"leaf has {tuple(jnp.shape(p))}. Fix: rebuild masks for these "
                             f"{against}.")


def check_like_params(what: str, tree: PyTree, params: PyTree) -> None:
    """Raises ValueError, naming the leaf, unless ``tree`` has params' structure and shapes
    (``None`` leaves allowed where params has ``None`` or a non-array leaf)."""
    if jax.tree.structure(tree, is_leaf=is_none) != jax.tree.structure(params, is_leaf=is_none):
        raise ValueError(_structure_error(what, tree, params,
                                          fix=f"compute {what} from these params"))
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    for (path, t), p in zip(flat, jax.tree.leaves(params, is_leaf=is_none)):
        if is_array(p) and tuple(jnp.shape(t)) != tuple(jnp.shape(p)):
            raise ValueError(f"{what} at '{path_str(path)}' has shape {tuple(jnp.shape(t))} but "
                             f"the param has {tuple(jnp.shape(p))}.")


def check_number(what: str, value: Any, low: float | None = None,
                 high: float | None = None) -> None:
    """Raises ValueError unless a concrete ``value`` is a finite real number in [low, high].

    Traced values (under ``jit``) are not checked here.
    """
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool) or not (
            isinstance(value, numbers.Real) or (is_array(value) and np.size(value) == 1 and (
                jnp.issubdtype(value.dtype, jnp.floating)
                or jnp.issubdtype(value.dtype, jnp.integer)))):
        raise ValueError(f"{what} must be a real number, got {value!r} "
                         f"({type(value).__name__}). Fix: pass a float.")
    v = float(np.asarray(value))
    rng = f" in [{low:g}, {high:g}]" if low is not None and high is not None else ""
    if not np.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{what} must be a finite number{rng}, got {v}.")


def check_percentile(percentile: Any) -> None:
    """Raises ValueError unless a concrete percentile is a number in [0, 100].

    Traced percentiles (under ``jit``) cannot be checked on the host: the selection clamps them
    to [0, 100] and a NaN percentile selects nothing (see :func:`gpjax.select.select`).
    """
    check_number("percentile", percentile, 0.0, 100.0)


def check_bool(what: str, value: Any) -> None:
    """Raises ValueError unless ``value`` is a Python (or numpy) bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be True or False, got {value!r}. Fix: pass a bool.")


def nonfinite_error(what: str, name: str, fix: str) -> ValueError:
    """The one-line error for a NaN or inf in ``what`` at leaf ``name``."""
    return ValueError(f"{what} at '{name}' contains NaN or inf. Fix: {fix}.")


def check_finite(what: str, tree: PyTree, masks: PyTree, fix: str | None = None) -> None:
    """Raises ValueError naming the first masked leaf of ``tree`` with a NaN or inf."""
    leaves = masked_leaves(masks, tree)
    if not leaves or any(isinstance(t, jax.core.Tracer) for _, _, (t,) in leaves):
        return
    finite = jax.device_get([jnp.all(jnp.isfinite(t)) for _, _, (t,) in leaves])
    for (name, _, _), ok in zip(leaves, finite):
        if not ok:
            raise nonfinite_error(what, name, fix or (
                "find the source of the non-finite loss, or pass nonfinite='skip' to treat "
                "those entries as zero"))
