"""``masked(inner)``: any optax optimiser, with dormant weights held at exactly zero.

Used as::

    tx = gpjax.masked(optax.adam(1e-3))
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
    params = optax.apply_updates(params, updates)

Masks are arguments at update time, never captured, so changing them does not recompile.

On each update:

1. entries whose mask turned on since the previous update (newly grown) get fresh optimiser
   state: every part of the inner state shaped like params (momentum, Adam's moments, ...) is
   reset to 0 there;
2. the inner optimiser sees ``g * M``, so dormant entries accumulate no state;
3. the update is ``u * M`` on active entries and ``-w`` on dormant ones, so that after
   ``apply_updates`` every dormant weight is exactly 0 (``W * M == W``), whatever it was.

Masks changed *between* updates by code that does not see the optimiser state (``gpjax.prune``)
are told to it with :func:`sync_masks`; otherwise an entry pruned and grown again before the
next update would look unchanged and keep its old momentum.

Because of that invariant a train step may compute the forward pass with ``W`` directly: the
gradient with respect to the effective weights ``W * M`` equals the plain gradient with respect
to ``W``, and the mask is needed only here, fused into the optimiser step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gpjax import masks as M

PyTree = Any


class MaskedState(NamedTuple):
    """State of :func:`masked`.

    Attributes:
      inner_state: the inner optimiser's state.
      previous_masks: boolean pytree like params: the masks at the last update (all True for
        unmasked leaves and before the first update).
    """

    inner_state: optax.OptState
    previous_masks: PyTree


def _reset_where(state: PyTree, newly_on: PyTree, params_def: jax.tree_util.PyTreeDef) -> PyTree:
    """Zeroes ``newly_on`` entries of every sub-tree of ``state`` that is shaped like params."""

    def params_shaped(x: Any) -> bool:
        return x is not None and jax.tree.structure(x) == params_def

    def reset(sub: Any) -> Any:
        if not params_shaped(sub):
            return sub
        return jax.tree.map(
            lambda s, n: jnp.where(n, jnp.zeros((), s.dtype), s)
            if hasattr(s, "shape") and s.shape == n.shape else s, sub, newly_on)

    return jax.tree.map(reset, state, is_leaf=params_shaped)


def masked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that dormant weights stay exactly 0 and grown ones start fresh.

    Args:
      inner: any optax gradient transformation (SGD, momentum, Adam, chains...).

    Returns:
      A transformation whose ``update(grads, state, params, masks=masks)`` requires ``params``
      and ``masks`` (a masks pytree, ``None`` on unmasked leaves). Other extra arguments are
      passed to ``inner``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> MaskedState:
        ones = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)  # None stays None
        return MaskedState(inner.init(params), ones)

    def update_fn(updates, state, params=None, *, masks=None, **extra):
        if masks is None or params is None:
            raise ValueError("gpjax.masked(...).update needs params and masks: "
                             "tx.update(grads, state, params, masks=masks)")
        M.check_masks(params, masks)  # structure, shapes, bool dtype: trace-time only
        full = M.full_masks(masks, params)
        newly_on = jax.tree.map(lambda m, prev: m & ~prev, full, state.previous_masks)
        inner_state = _reset_where(state.inner_state, newly_on, jax.tree.structure(params))
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros((), g.dtype)), updates, full)
        new_updates, inner_state = inner.update(grads, inner_state, params, **extra)
        new_updates = jax.tree.map(
            lambda u, m, p: jnp.where(m, u, -p).astype(u.dtype), new_updates, full, params)
        return new_updates, MaskedState(inner_state, full)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sync_masks(state: MaskedState, masks: PyTree) -> MaskedState:
    """Tells a :func:`masked` optimiser state about masks changed outside an update.

    Entries dormant in ``masks`` lose their optimiser state (zeroed in every params-shaped part
    of the inner state) and count as off, so that if they are grown again before the next
    update they start fresh there, as newly grown entries do. Call it after pruning:
    ``opt_state = gpjax.sync_masks(opt_state, masks)``. Entries turned on in ``masks`` are
    left to the next update, which resets them as it always does. Jittable; masks are values.

    Args:
      state: the :class:`MaskedState`.
      masks: the current masks pytree (``None`` on unmasked leaves).

    Returns:
      The state with dormant entries' optimiser state zeroed and ``previous_masks`` off there.

    Raises:
      ValueError: naming the leaf, when ``masks`` do not fit the state's params (structure,
        shape or dtype; trace-time checks only).
    """
    if not isinstance(state, MaskedState):
        raise ValueError(f"sync_masks needs the state of a gpjax.masked optimiser, got "
                         f"{type(state).__name__}. Fix: pass the state from tx.init/tx.update.")
    M.check_masks(state.previous_masks, masks, against="the optimiser state",
                  fix="pass the masks of the params this state was built from (tx.init(params))")
    params_def = jax.tree.structure(state.previous_masks)
    full = M.full_masks(masks, state.previous_masks)
    off = jax.tree.map(lambda m: ~m, full)
    inner_state = _reset_where(state.inner_state, off, params_def)
    previous = jax.tree.map(lambda p, m: p & m, state.previous_masks, full)
    return MaskedState(inner_state, previous)
