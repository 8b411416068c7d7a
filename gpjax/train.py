"""Masked training, evaluation and growth gradients for any model: the one loop every phase uses.

A :class:`~gpjax.tasks.Task` (:mod:`gpjax.tasks`) says how to compute a model's loss and
per-example errors from ``(params, aux, batch)``. A :class:`TrainState` carries
``(params, masks, aux, opt_state, key)``. Data are pytrees of arrays with a leading example
axis (e.g. ``(images [N, 28, 28, 1], labels [N])``); an epoch is one jitted ``lax.scan`` over a
seeded permutation, so masks, learning rates and data values never trigger recompilation (a new
data *size* does, once).

Optimisers come from :func:`make_optimizer`: ``gpjax.masked`` around an optax chain whose last
step scales by a ``learning_rate`` passed at update time, so one compiled epoch serves any
schedule (the per-step rates are an array argument).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpjax.data import pipeline, stream
from gpjax.data.pipeline import DataConfig
from gpjax.fields import check_range, check_types
from gpjax.grow import accumulate_gradients
from gpjax.optim import masked
from gpjax.tasks import Task, classifier_task  # noqa: F401 - public here too

PyTree = Any
Batch = Any


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optimiser recipe (serialisable into configs and checkpoints).

    Attributes:
      name: "sgd" (with momentum, Nesterov optional) or "adam" (decoupled weight decay).
      momentum: SGD momentum.
      nesterov: Nesterov momentum for SGD.
      weight_decay: L2 (SGD) or decoupled (Adam) weight decay.
      clip_norm: clip each step's gradient to this global norm first (None: no clipping). A
        class-incremental round can start from a model whose loss on the merged data is ~100
        (it was just trained on one new class); at lr 0.1 its first steps diverge to NaN
        without clipping.
    """

    name: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        check_types(self)
        check_range(self, "momentum", 0, 1, high_open=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "clip_norm", 0, low_open=True)


def scale_by_learning_rate_arg() -> optax.GradientTransformationExtraArgs:
    """Scales updates by ``-learning_rate``, the rate being passed to ``update`` each step."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, learning_rate, **extra):
        del params, extra
        return jax.tree.map(lambda u: (-learning_rate * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(
        cfg: OptimizerConfig = OptimizerConfig()) -> optax.GradientTransformationExtraArgs:
    """``gpjax.masked`` optimiser from a recipe; call ``update(..., masks=, learning_rate=)``.

    Create it once per run: it is a static argument of the jitted epoch.
    """
    clip = () if cfg.clip_norm is None else (optax.clip_by_global_norm(cfg.clip_norm),)
    if cfg.name == "sgd":
        inner = optax.chain(*clip, optax.add_decayed_weights(cfg.weight_decay),
                            optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
                            scale_by_learning_rate_arg())
    elif cfg.name == "adam":
        inner = optax.chain(*clip, optax.scale_by_adam(),
                            optax.add_decayed_weights(cfg.weight_decay),
                            scale_by_learning_rate_arg())
    else:
        raise ValueError(f"optimizer name must be 'sgd' or 'adam', got {cfg.name!r}")
    return masked(inner)


class TrainState(NamedTuple):
    """Everything training carries from step to step.

    Attributes:
      params: trainable parameters (dormant entries exactly 0).
      masks: masks pytree.
      aux: non-trainable collections (batch statistics); ``{}`` when none.
      opt_state: the masked optimiser's state.
      key: PRNG key, split every epoch.
    """

    params: PyTree
    masks: PyTree
    aux: PyTree
    opt_state: PyTree
    key: jax.Array


def num_examples(data: PyTree) -> int:
    """Examples in ``data``: the leading axis of an array pytree, or a streamed split's length."""
    return stream.num_examples(data)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Mini-batches in one epoch over ``n`` examples (the remainder is dropped, min 1)."""
    return max(n // min(batch_size, n), 1)


def cosine_rates(lr: float, steps: int, *, start: int = 0, total: int | None = None) -> np.ndarray:
    """Per-step rates of a cosine decay from ``lr`` to 0 over ``total`` steps, from ``start``.

    Returns:
      float32 ``[steps]``.
    """
    total = steps if total is None else total
    t = (np.arange(start, start + steps) / max(total, 1)).clip(0, 1)
    return (lr * 0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def _epoch_keys(key: jax.Array, n: int, steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The next key, the epoch's permutation ``[n]`` and per-step keys ``[steps]``."""
    key, k_perm, k_steps = jax.random.split(key, 3)
    return key, jax.random.permutation(k_perm, n), jax.random.split(k_steps, steps)


def _masked_step(carry, masks, data, i, lr, k, task: Task, tx, batch_sharding):
    """One masked step on the batch ``data[i]``; returns ``(carry, loss)``."""
    params, aux, opt_state = carry
    batch = jax.tree.map(lambda d: jnp.take(d, i, axis=0), data)
    if batch_sharding is not None:  # data parallel: each device gets a slice of the batch
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    (loss, aux), g = jax.value_and_grad(task.loss, has_aux=True)(params, aux, batch, k)
    updates, opt_state = tx.update(g, opt_state, params, masks=masks, learning_rate=lr)
    return (optax.apply_updates(params, updates), aux, opt_state), loss


def _scan_steps(carry, masks, data, idx, rates, step_keys, task: Task, tx, batch_sharding):
    """Masked steps on the batches ``data[idx[s]]``, one per row of ``idx`` (``lax.scan``)."""

    def step(carry, inp):
        i, lr, k = inp
        return _masked_step(carry, masks, data, i, lr, k, task, tx, batch_sharding)

    carry, losses = jax.lax.scan(step, carry, (idx, rates, step_keys))
    return carry, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames=("task", "tx", "batch_sharding"),
                   donate_argnums=(0,))
def _train_step(carry, masks, data, i, lr, k, task: Task, tx, batch_sharding=None):
    return _masked_step(carry, masks, data, i, lr, k, task, tx, batch_sharding)


def _python_steps(carry, masks, data, idx, rates, step_keys, task: Task, tx, batch_sharding):
    """As :func:`_scan_steps`, one jitted call per step (see :func:`scan_pays`)."""
    total = jnp.zeros((), jnp.float32)
    for s in range(len(idx)):
        carry, loss = _train_step(carry, masks, data, idx[s], rates[s], step_keys[s], task, tx,
                                  batch_sharding)
        total = total + loss
    return carry, total / len(idx)


_SCAN_PAYS: dict[Task, bool] = {}
_SLOW_IN_CPU_LOOPS = frozenset({"conv_general_dilated", "scan", "while"})


def _primitives(jaxpr: Any) -> set[str]:
    """Names of the primitives of a jaxpr, sub-jaxprs (jit, custom_vjp, scan bodies) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def scan_pays(task: Task, params: PyTree, aux: PyTree, batch: Batch | Callable[[], Batch],
              key: jax.Array) -> bool:
    """Whether an epoch should be one ``lax.scan`` (True) or one jitted call per step.

    A scanned epoch saves a dispatch per step and is the choice on GPU/TPU. XLA's CPU backend,
    though, runs convolutions and nested loops (a recurrent ``scan``) inside a ``while`` loop
    far slower than on their own: a ResNet step at batch 16 took 1.27 s scanned vs 0.08 s per
    call on 2 cores, DeepSpeech2-H-LSTM 3x slower. So on CPU, tasks whose loss contains those
    step from Python; plain MLPs keep the scan (~20% faster there), and so do convolutions
    written as matrix multiplies (:mod:`gpjax.models.conv`: ResNet-18's im2col step is 1.06 s
    scanned vs 1.25 s per call at batch 32, ``benchmarks/README.md``). Decided once per task.

    Args:
      task, params, aux, key: what the loss is traced with.
      batch: one mini-batch, or a function making one (called only when not yet decided).
    """
    if jax.default_backend() != "cpu":
        return True
    if task not in _SCAN_PAYS:
        batch = batch() if callable(batch) else batch
        jaxpr = jax.make_jaxpr(task.loss)(params, aux, batch, key)
        _SCAN_PAYS[task] = not (_primitives(jaxpr.jaxpr) & _SLOW_IN_CPU_LOOPS)
    return _SCAN_PAYS[task]


@functools.partial(jax.jit, static_argnames=("task", "tx", "batch_size", "batch_sharding"),
                   donate_argnums=(0,))
def _train_epoch(carry, masks, key, data, rates, task: Task, tx, batch_size: int,
                 batch_sharding=None):
    # carry = (params, aux, opt_state) is donated; masks are not (callers keep them).
    n = jax.tree.leaves(data)[0].shape[0]
    bs = min(batch_size, n)
    steps = rates.shape[0]
    key, order, step_keys = _epoch_keys(key, n, steps)
    # Steps beyond one pass (rates longer than n // bs) wrap around the permutation.
    idx = jnp.take(order, jnp.arange(steps * bs) % n).reshape(steps, bs)
    carry, loss = _scan_steps(carry, masks, data, idx, rates, step_keys, task, tx,
                              batch_sharding)
    return carry, key, loss


@functools.partial(jax.jit, static_argnames=("task", "tx", "batch_sharding"),
                   donate_argnums=(0,))
def _train_block(carry, masks, block, rates, step_keys, task: Task, tx, batch_sharding=None):
    # A streamed block: its examples are the next ``steps`` batches, already in order.
    steps = rates.shape[0]
    n = jax.tree.leaves(block)[0].shape[0]
    idx = jnp.arange(n).reshape(steps, n // steps)
    return _scan_steps(carry, masks, block, idx, rates, step_keys, task, tx, batch_sharding)


def train_epoch(
    state: TrainState,
    data: PyTree,
    rates: np.ndarray | jax.Array,
    *,
    task: Task,
    tx: optax.GradientTransformationExtraArgs,
    batch_size: int,
    batch_sharding: jax.sharding.Sharding | None = None,
    data_config: DataConfig = DataConfig(),
    scan: bool | None = None,
) -> tuple[TrainState, jax.Array]:
    """One epoch of masked training: a jitted scan over a seeded permutation of ``data``.

    A streamed split (:mod:`gpjax.data.stream`: memory-mapped ``.npy``, ArrayRecord, ImageNet)
    is read through the Grain pipeline of :mod:`gpjax.data.pipeline` instead: the same
    permutation (drawn from the state's key), in blocks of whole mini-batches (made with the
    split's training augmentation, seeded from that key too), each block one jitted scan, the
    next blocks read by Grain's threads while the device runs the current one.

    Args:
      state: the training state; its params, aux and optimiser state are donated (do not
        reuse those arrays), its masks are not.
      data: pytree of arrays with leading example axis ``N``, or a streamed split of ``N``.
      rates: learning rate per step, ``[steps]`` (usually ``steps_per_epoch(N, batch_size)``).
      task: the model's :class:`Task`.
      tx: the optimiser from :func:`make_optimizer`.
      batch_size: mini-batch size ``B`` (clipped to ``N``).
      batch_sharding: optional sharding of each mini-batch (e.g. ``NamedSharding(mesh,
        P("batch"))``) for data parallelism: parameters replicated, the batch split, gradients
        all-reduced by XLA. ``None``: whatever the inputs' shardings imply.
      data_config: block size, threads and read-ahead of a streamed split.
      scan: run the steps as one ``lax.scan`` (True) or one jitted call each (False); None
        decides by :func:`scan_pays` (scan except on CPU for convolutional/recurrent losses).
        Both draw the same permutation and step keys.

    Returns:
      ``(state, mean training loss)``; the loss stays on device (check it for NaN when needed).
    """
    rates = jnp.asarray(rates, jnp.float32)
    carry = (state.params, state.aux, state.opt_state)
    n = num_examples(data)
    bs = min(batch_size, n)
    steps = int(rates.shape[0])
    streamed = stream.is_streamed(data)
    if scan is None:
        scan = scan_pays(task, state.params, state.aux, lambda: (
            data.examples(np.arange(bs)) if streamed else jax.tree.map(lambda d: d[:bs], data)),
            state.key)
    if not streamed and scan:
        carry, key, loss = _train_epoch(carry, state.masks, state.key, data, rates, task, tx,
                                        batch_size, batch_sharding)
        return _with(state, carry, key), loss
    if not streamed:
        data = jax.tree.map(jnp.asarray, data)
        key, order, step_keys = _epoch_keys(state.key, n, steps)
        idx = jnp.take(order, jnp.arange(steps * bs) % n).reshape(steps, bs)
        carry, loss = _python_steps(carry, state.masks, data, idx, rates, step_keys, task, tx,
                                    batch_sharding)
        return _with(state, carry, key), loss
    # The same draws as the in-memory epoch (so both give the same run when the split's
    # examples do not depend on rng); host augmentation has a key of its own.
    key, order, step_keys = _epoch_keys(state.key, n, steps)
    positions = pipeline.epoch_positions(order, steps, bs)
    block = pipeline.block_size(data, bs, data_config.block_bytes)
    blocks = pipeline.block_iterator(data, positions, block, data_config,
                                     seed=_key_bits(jax.random.fold_in(state.key, 1)))
    total = jnp.zeros((), jnp.float32)
    for s, part in zip(range(0, steps, block // bs), blocks, strict=True):
        k = num_examples(part) // bs
        if scan:
            carry, loss = _train_block(carry, state.masks, part, rates[s:s + k],
                                       step_keys[s:s + k], task, tx, batch_sharding)
        else:
            idx = jnp.arange(k * bs).reshape(k, bs)
            carry, loss = _python_steps(carry, state.masks, jax.device_put(part), idx,
                                        rates[s:s + k], step_keys[s:s + k], task, tx,
                                        batch_sharding)
        total = total + loss * k
    return _with(state, carry, key), total / steps


def _with(state: TrainState, carry: tuple, key: jax.Array) -> TrainState:
    params, aux, opt_state = carry
    return TrainState(params, state.masks, aux, opt_state, key)


def _key_bits(key: jax.Array) -> np.ndarray:
    """A PRNG key (typed or raw uint32) as host integers, to seed numpy."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32).ravel()


def _batched(data: PyTree, batch_size: int) -> tuple[PyTree, jax.Array]:
    """Pads ``data`` to a multiple of ``batch_size`` and stacks it ``[S, B, ...]``, + weights."""
    n = num_examples(data)
    bs = min(batch_size, n)
    steps = -(-n // bs)
    pad = steps * bs - n
    padded = jax.tree.map(lambda d: jnp.concatenate([d, jnp.repeat(d[:1], pad, 0)]) if pad else d,
                          data)
    stacked = jax.tree.map(lambda d: d.reshape((steps, bs) + d.shape[1:]), padded)
    weights = (jnp.arange(steps * bs) < n).astype(jnp.float32).reshape(steps, bs)
    return stacked, weights


@functools.partial(jax.jit, static_argnames=("task", "batch_size"))
def _evaluate(params, aux, data, task: Task, batch_size: int):
    stacked, weights = _batched(data, batch_size)

    def step(total, inp):
        batch, w = inp
        return total + jnp.sum(task.example_errors(params, aux, batch) * w), None

    total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), (stacked, weights))
    return total / jnp.sum(weights)


def evaluate(params: PyTree, aux: PyTree, data: PyTree, *, task: Task,
             batch_size: int = 1000, data_config: DataConfig = DataConfig()) -> float:
    """Mean per-example error of the model on ``data`` (a fraction in [0, 1]), passed through
    ``task.aggregate`` when the task has one (regression: the root of the mean, the RMSE / 100).

    ``data``: a pytree of arrays ``[N, ...]`` (one jitted scan) or a streamed split (Grain
    blocks of whole batches of about ``data_config.block_bytes``, evaluation view, one scan
    each).
    """
    if not stream.is_streamed(data):
        mean = float(_evaluate(params, aux, data, task, batch_size))
    else:
        n = len(data)
        block = pipeline.block_size(data, min(batch_size, n), data_config.block_bytes)
        total = jnp.zeros((), jnp.float32)
        for part in pipeline.block_iterator(data, np.arange(n), block, data_config):
            total = total + _evaluate(params, aux, part, task, batch_size) * num_examples(part)
        mean = float(total) / n
    return mean if task.aggregate is None else task.aggregate(mean)


@functools.cache
def _frozen_pair_loss(task: Task) -> Callable:
    # One function object per task, so accumulate_gradients compiles once per task.
    def loss(pair, batch):
        params, aux = pair
        return task.frozen_loss(params, aux, batch)
    return loss


def growth_gradients(state: TrainState, data: PyTree, *, task: Task,
                     batch_size: int = 1000) -> PyTree:
    """The epoch-mean gradient of the frozen loss w.r.t. the effective weights (for ``grow``).

    Uses the largest convenient batch: the mean gradient does not depend on it. The remainder
    ``N mod B`` is left out of the mean. A streamed split is streamed batch by batch (evaluation
    view, read ahead by the Grain pipeline) through :func:`gpjax.accumulate_gradients`.

    Returns:
      A pytree like ``state.params``.
    """
    n = num_examples(data)
    bs = min(batch_size, n)
    steps = n // bs
    if stream.is_streamed(data):
        batches = pipeline.block_iterator(data, np.arange(steps * bs), bs, DataConfig())
    else:
        batches = jax.tree.map(lambda d: d[: steps * bs].reshape((steps, bs) + d.shape[1:]),
                               data)
    aux_masks = jax.tree.map(lambda _: None, state.aux)
    grads, _ = accumulate_gradients(_frozen_pair_loss(task), (state.params, state.aux),
                                    (state.masks, aux_masks), batches)
    return grads
