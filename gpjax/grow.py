"""Gradient-based growth: epoch-averaged gradients and connection growth (SPEC eq. 1, 2).

Gradient evaluation pauses parameter updates and averages, over every mini-batch of one epoch,
the gradient of the loss with respect to the *effective* weights ``W * M``. Dormant connections
therefore get a real gradient: the first-order change in loss were they switched on.

Growth then activates a dormant connection ``w`` iff ``|g_w| >= P_alpha(|G|)`` (the alpha-th
percentile of the gradient magnitudes of its tensor, or of all prunable tensors together with
``scope="global"``) and ``g_w != 0``, and starts it at a learning-rate-sized gradient step.
"""

from __future__ import annotations

import collections.abc
import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from gpjax import masks as M
from gpjax.select import select

PyTree = Any
Scope = Literal["layer", "global"]


def _acc_dtype(p: jax.Array) -> jnp.dtype:
    return jnp.promote_types(p.dtype, jnp.float32)


def _zeros_acc(params: PyTree) -> PyTree:
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _acc_dtype(p)), params)


def _add(acc: PyTree, g: PyTree) -> PyTree:
    return jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, g)


@functools.partial(jax.jit, static_argnames=("loss_fn", "vmap_size"))
def _accumulate_stacked(loss_fn, params, masks, batches, vmap_size):
    effective = M.apply_masks(params, masks)
    grad_fn = jax.grad(loss_fn)
    n = jax.tree.leaves(batches)[0].shape[0]
    if vmap_size > 1:
        # [n, ...] -> [n / v, v, ...]: v mini-batch gradients per scan step, in parallel.
        batches = jax.tree.map(lambda b: b.reshape((n // vmap_size, vmap_size) + b.shape[1:]),
                               batches)
        def grad_fn(w, group, _g=jax.grad(loss_fn)):  # noqa: E306
            gs = jax.vmap(_g, in_axes=(None, 0))(w, group)
            # Sum in the accumulator's dtype (float32, or float64 under x64), not float32.
            return jax.tree.map(lambda x: jnp.sum(x.astype(_acc_dtype(x)), 0), gs)

    def step(acc, batch):
        return _add(acc, grad_fn(effective, batch)), None

    total, _ = jax.lax.scan(step, _zeros_acc(params), batches)
    return jax.tree.map(lambda t: t / n, total)


@functools.partial(jax.jit, static_argnames=("loss_fn",), donate_argnums=(1,))
def _accumulate_one(loss_fn, acc, effective, batch):
    return _add(acc, jax.grad(loss_fn)(effective, batch))


_apply_masks_jit = jax.jit(M.apply_masks)


def _is_stream(batches: Any) -> bool:
    if isinstance(batches, collections.abc.Iterator):
        return True
    leaves = jax.tree.leaves(batches)
    return len(leaves) == 1 and leaves[0] is batches and not hasattr(batches, "shape")


def accumulate_gradients(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    masks: PyTree,
    batches: PyTree | Iterable[Any],
    *,
    vmap_size: int = 1,
) -> PyTree:
    r"""The epoch-mean gradient with respect to the effective weights, parameters frozen.

    .. math:: \bar G = \frac{1}{B} \sum_{b=1}^{B} \nabla_{W_e} L(W_e; \text{batch}_b),
              \qquad W_e = W \odot M

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the user's pure loss computed with the
        weights exactly as given. Define it once: it is a static argument of a jitted function,
        so a new function object compiles anew.
      params: params pytree of arrays (``None`` leaves allowed, as from ``eqx.partition``).
      masks: masks pytree (see :func:`gpjax.init_masks`).
      batches: either a pytree whose leaves have a leading axis of ``B`` mini-batches
        (``[B, batch, ...]``; one jitted ``lax.scan``, memory independent of ``B``) or an
        iterator of batches (streamed one jitted step each, for data that does not fit on the
        device). Pass ``iter(list_of_batches)`` to stream a list.
      vmap_size: with stacked batches, how many mini-batch gradients each scan step computes in
        parallel with ``vmap`` (must divide ``B``). 1 is best on CPU; larger can pay on GPUs.

    Returns:
      A pytree like params (float32 or wider) holding the mean gradient, dormant entries
      included.
    """
    M.check_masks(params, masks)
    for name, leaf in zip(M.leaf_names(params), jax.tree.leaves(params, is_leaf=M.is_none)):
        if leaf is not None and not M.is_array(leaf):
            raise ValueError(f"params leaf '{name}' is a {type(leaf).__name__}, not an array, "
                             "and accumulate_gradients differentiates every leaf. Fix: pass the "
                             "array part, e.g. params, static = eqx.partition(model, "
                             "eqx.is_array), with loss_fn recombining them.")
    if _is_stream(batches):
        effective = _apply_masks_jit(params, masks)
        acc, n = _zeros_acc(params), 0
        for batch in batches:
            acc = _accumulate_one(loss_fn, acc, effective, batch)
            n += 1
        if n == 0:
            raise ValueError("accumulate_gradients got an empty iterator of batches.")
        return jax.tree.map(lambda a: a / n, acc)
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise ValueError("accumulate_gradients got no batches.")
    n = leaves[0].shape[0]
    if any(x.shape[0] != n for x in leaves):
        raise ValueError("stacked batches need the same leading (mini-batch) axis on every leaf; "
                         f"got {[x.shape[0] for x in leaves]}.")
    if vmap_size < 1 or n % vmap_size:
        raise ValueError(f"vmap_size={vmap_size} must be >= 1 and divide the {n} mini-batches.")
    return _accumulate_stacked(loss_fn, params, masks, batches, vmap_size)


@functools.partial(jax.jit, static_argnames=("scope", "init", "skip_nonfinite"))
def _grow(pflat, mflat, gflat, percentile, learning_rate, scope, init, skip_nonfinite):
    """Grows the masked leaves (lists); also returns per-leaf finiteness of params and grads."""
    gs = []
    for g in gflat:
        g = g.astype(jnp.float32)
        gs.append(jnp.where(jnp.isfinite(g), g, 0.0) if skip_nonfinite else g)
    chosen = select(gs, [jnp.ones(g.shape, bool) for g in gs], percentile, scope=scope,
                    upper=True)
    sign = -1.0 if init == "descent" else 1.0
    new_p, new_m = [], []
    for p, m, g, g32, c in zip(pflat, mflat, gflat, gs, chosen):
        new = (~m) & c & (g32 != 0)
        # The new weight from the gradient as given (not its float32 copy: float64 stays exact).
        step = sign * learning_rate.astype(_acc_dtype(g)) * g
        new_p.append(jnp.where(new, step.astype(p.dtype), p))
        new_m.append(m | new)
    finite = [jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]) if xs else jnp.ones(0, bool)
              for xs in (pflat, gflat)]
    return new_p, new_m, finite


def grow(
    params: PyTree,
    masks: PyTree,
    grads: PyTree,
    *,
    percentile: float | jax.Array,
    learning_rate: float | jax.Array,
    scope: Scope = "layer",
    init: Literal["descent", "patent"] = "descent",
    nonfinite: Literal["raise", "skip"] = "raise",
) -> tuple[PyTree, PyTree]:
    r"""Activates the dormant connections with the largest gradients (SPEC eq. 1).

    A dormant connection ``w`` (mask False) is grown iff

    .. math:: |g_w| \ge P_\alpha(|G|) \quad\text{and}\quad g_w \ne 0,

    where :math:`P_\alpha` is numpy's (linear) ``alpha``-th percentile over every entry of the
    tensor's gradient ``G`` (``scope="layer"``) or of all masked tensors (``scope="global"``).
    The set ``{|g| >= P_alpha}`` holds exactly ``n - ceil(q)`` entries (``q = alpha / 100 *
    (n - 1)``) even when gradients tie at the threshold: ties with the highest positions
    (tensor, then flat index) are taken (:func:`gpjax.select.select`).
    A grown weight starts at :math:`-\eta g_w` (``init="descent"``, the default: one gradient
    descent step from zero, lowering the loss to first order) or :math:`+\eta g_w`
    (``init="patent"``: the source's literal wording). Active weights never change; zero
    gradients never grow anything.

    Args:
      params: params pytree (non-array leaves pass through); dormant weights should be 0 and
        masked weights must be finite.
      masks: masks pytree.
      grads: pytree like params, e.g. from :func:`accumulate_gradients`.
      percentile: alpha, a number in [0, 100]; may be traced, so changing it does not
        recompile (a traced value is clamped to [0, 100] and NaN grows nothing).
      learning_rate: eta, the current learning rate, a finite number (may be traced; a traced
        value is not checked).
      scope: "layer" (a percentile per tensor) or "global" (one over all masked tensors).
      init: "descent" or "patent" (see above).
      nonfinite: what to do with NaN/inf gradient entries: "raise" (ValueError naming the
        leaf) or "skip" (they never grow). Non-finite params always raise.

    Returns:
      ``(params, masks)`` with the grown connections switched on.

    Raises:
      ValueError: on bad arguments or non-finite params or gradients (checked in one device
        sync per call, after the jitted update).
    """
    M.check_masks(params, masks)
    M.check_like_params("grads", grads, params)
    M.check_percentile(percentile)
    M.check_number("learning_rate", learning_rate)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if init not in ("descent", "patent"):
        raise ValueError(f"init must be 'descent' or 'patent', got {init!r}")
    if nonfinite not in ("raise", "skip"):
        raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
    mflat, treedef = jax.tree.flatten(masks, is_leaf=M.is_none)
    pflat, gflat = treedef.flatten_up_to(params), treedef.flatten_up_to(grads)
    idx = [i for i, m in enumerate(mflat) if m is not None]
    new_p, new_m, (p_ok, g_ok) = _grow(
        [pflat[i] for i in idx], [mflat[i] for i in idx], [gflat[i] for i in idx],
        jnp.asarray(percentile, jnp.float32), jnp.asarray(learning_rate, jnp.float32), scope,
        init, nonfinite == "skip")
    if not isinstance(p_ok, jax.core.Tracer):
        names = [name for name, _, _ in M.masked_leaves(masks)]
        p_ok, g_ok = jax.device_get((p_ok, g_ok))
        for name, ok in zip(names, p_ok):
            if not ok:
                raise M.nonfinite_error("params", name, "the run diverged before growth "
                                        "(lower the learning rate, check the loss)")
        for name, ok in zip(names, g_ok):
            if not ok and nonfinite == "raise":
                raise M.nonfinite_error("grads", name, "find the source of the non-finite "
                                        "loss, or pass nonfinite='skip' to treat those entries "
                                        "as zero")
    return (treedef.unflatten(M.merge_leaves(pflat, idx, new_p)),
            treedef.unflatten(M.merge_leaves(mflat, idx, new_m)))
