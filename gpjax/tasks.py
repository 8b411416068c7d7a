"""Tasks: what training needs to know about a model, for classification, regression and speech.

A task is built over the model's :class:`~gpjax.models.adapter.Adapter`, so one task serves
Flax linen, Flax NNX and Equinox models alike. A :class:`Task` says how to compute a model's
loss and per-example errors from ``(params, aux, batch)``; ``aux`` holds non-trainable
collections (batch norm statistics).
Every phase, epoch and evaluation of :mod:`gpjax.train` and :mod:`gpjax.incremental` works on
any task. Beside it, a task kind has *test metrics*: the figures a result row or a model
version reports (``test_error`` in percent; speech adds ``test_cer``).

Task kinds are looked up by name in :data:`TASKS` (``"classifier"``, ``"regression"``,
``"speech"``); :func:`make_task` returns the task and its metrics for a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpjax.models.adapter import as_adapter

PyTree = Any
Batch = Any
Metrics = Callable[[PyTree, PyTree, PyTree], dict[str, float]]


class Task(NamedTuple):
    """How to train and evaluate one model (hashable: it is a static jit argument).

    Attributes:
      init: ``init(key, example_batch) -> (params, aux)``.
      loss: ``loss(params, aux, batch, key) -> (scalar, new_aux)`` in training mode
        (dropout, batch statistics updated, augmentation applied).
      frozen_loss: ``frozen_loss(params, aux, batch) -> scalar`` in inference mode, for growth
        gradients (parameters and statistics frozen).
      example_errors: ``example_errors(params, aux, batch) -> [B]`` per-example error (0/1 for
        classification), averaged by :func:`gpjax.train.evaluate`.
      input_kernels: fnmatch patterns of kernels fed by the network input (see ``prune``).
      layout: the kernels' unit axes, "flax" (``[..., in, out]``) or "torch" (``[out, in,
        ...]``: Equinox), for ``prune``, ``connect_units`` and ``dead_units``.
      aggregate: ``aggregate(mean) -> error``: the error of a data set from the mean of its
        per-example errors (None: the mean itself; regression: its square root, the RMSE).
    """

    init: Callable
    loss: Callable
    frozen_loss: Callable
    example_errors: Callable
    input_kernels: tuple[str, ...] = ()
    layout: str = "flax"
    aggregate: Callable[[float], float] | None = None


def _first(inputs: Any) -> Any:
    """The first example of a batch's inputs (an array or a tuple of arrays), kept batched."""
    return jax.tree.map(lambda a: a[:1], inputs)


def classifier_task(
    model: Any,
    *,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Task:
    """A :class:`Task` for a classifier returning logits ``[B, K]``.

    Args:
      model: a Flax linen module taking ``(x, train: bool)``, a Flax NNX or Equinox module, or
        an :class:`~gpjax.models.adapter.Adapter` (see :mod:`gpjax.models.adapter`).
      augment: optional ``augment(key, x) -> x`` applied to training batches (jittable).

    Returns:
      A task over batches ``(x [B, ...], labels int [B])`` with softmax cross-entropy loss.
    """
    adapter = as_adapter(model)

    def init(key: jax.Array, batch: Batch) -> tuple[PyTree, PyTree]:
        return adapter.init(key, _first(batch[0]))

    def loss(params, aux, batch, key):
        x, y = batch
        k_aug, k_drop = jax.random.split(key)
        if augment is not None:
            x = augment(k_aug, x)
        logits, new_aux = adapter.apply(params, aux, x, train=True, key=k_drop)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return jnp.mean(ce), new_aux

    def frozen_loss(params, aux, batch):
        x, y = batch
        logits, _ = adapter.apply(params, aux, x, train=False)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), y))

    def example_errors(params, aux, batch):
        x, y = batch
        logits, _ = adapter.apply(params, aux, x, train=False)
        return (jnp.argmax(logits, -1) != y).astype(jnp.float32)

    return Task(init, loss, frozen_loss, example_errors, adapter.input_kernels, adapter.layout)


REGRESSION_SCALE = 100.0
"""A regression task's per-example error is ``(squared error / REGRESSION_SCALE**2)``: the
driver reports every error as 100 x the task's error (percent for classification), so the
reported figures of a regression (``val_error``, ``test_error``, ``prune.tolerance``) are the
RMSE in the targets' own units."""


def _squared_errors(outputs: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example mean squared error ``[B]`` of outputs ``[B]``/``[B, k]`` against targets of
    the same size per example."""
    diff = outputs.astype(jnp.float32).reshape(y.shape) - y.astype(jnp.float32)
    return jnp.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)


def regression_task(model: Any) -> Task:
    """A :class:`Task` for regression: float targets ``[N]`` or ``[N, k]``, mean squared error.

    Args:
      model: a linen/NNX/Equinox module or adapter returning ``[B]``, ``[B, 1]`` (targets
        ``[N]``) or ``[B, k]`` (targets ``[N, k]``).

    Returns:
      A task over batches ``(x [B, ...], y float [B] or [B, k])``. Its loss is the MSE. Its
      per-example error is the example's squared error (mean over the ``k`` outputs) divided by
      ``REGRESSION_SCALE**2``, and ``aggregate`` is the square root: :func:`gpjax.train.evaluate`
      averages the per-example errors over the data set first (the MSE), then takes the root,
      so a data set's error is its RMSE / 100 and every reported figure (100 x error) is the
      RMSE. The stopping rules compare these RMSEs (``tolerance`` in target units).
    """
    adapter = as_adapter(model)

    def init(key: jax.Array, batch: Batch) -> tuple[PyTree, PyTree]:
        return adapter.init(key, _first(batch[0]))

    def loss(params, aux, batch, key):
        x, y = batch
        out, new_aux = adapter.apply(params, aux, x, train=True, key=key)
        return jnp.mean(_squared_errors(out, y)), new_aux

    def frozen_loss(params, aux, batch):
        x, y = batch
        return jnp.mean(_squared_errors(adapter.apply(params, aux, x, train=False)[0], y))

    def example_errors(params, aux, batch):
        x, y = batch
        out, _ = adapter.apply(params, aux, x, train=False)
        return _squared_errors(out, y) / REGRESSION_SCALE**2

    return Task(init, loss, frozen_loss, example_errors, adapter.input_kernels, adapter.layout,
                math.sqrt)


def speech_task(model: Any) -> Task:
    """A :class:`Task` for a CTC speech model (:class:`gpjax.models.DeepSpeech2`).

    Batches are ``(features [B, T, F], feature paddings [B, T], labels int [B, L], label
    paddings [B, L])``; the model is called on ``(features, paddings)`` and returns ``(logits,
    output paddings)``; the per-example error is the character error rate of the greedy
    decoding (jittable: the validation measure of the stopping rule).
    """
    from gpjax.metrics import masked_edit_distance
    from gpjax.models import BLANK_ID, ctc_loss
    adapter = as_adapter(model)

    def init(key, batch):
        return adapter.init(key, _first((batch[0], batch[1])))

    def loss(params, aux, batch, key):
        feats, pads, labels, lpads = batch
        (logits, lp), new_aux = adapter.apply(params, aux, (feats, pads), train=True, key=key)
        return ctc_loss(logits.astype(jnp.float32), lp, labels, lpads), new_aux

    def frozen_loss(params, aux, batch):
        feats, pads, labels, lpads = batch
        (logits, lp), _ = adapter.apply(params, aux, (feats, pads), train=False)
        return ctc_loss(logits.astype(jnp.float32), lp, labels, lpads)

    def example_errors(params, aux, batch):
        feats, pads, labels, lpads = batch
        (logits, lp), _ = adapter.apply(params, aux, (feats, pads), train=False)
        best = jnp.argmax(logits, -1)
        prev = jnp.concatenate([jnp.full_like(best[:, :1], -1), best[:, :-1]], 1)
        valid = (best != BLANK_ID) & (best != prev) & (lp < 0.5)
        ref_len = jnp.sum(1.0 - lpads, 1).astype(jnp.int32)
        dist = jax.vmap(masked_edit_distance)(best, valid, labels, ref_len)
        return dist / jnp.maximum(ref_len, 1).astype(jnp.float32)

    return Task(init, loss, frozen_loss, example_errors, adapter.input_kernels, adapter.layout)


def classifier_metrics(task: Task, batch_size: int) -> Metrics:
    """``metrics(params, aux, data) -> {"test_error": 100 x error}`` of a task scored by its
    per-example errors alone: a classifier's error in percent, a regression's RMSE."""

    def metrics(params, aux, data):
        from gpjax.train import evaluate
        return {"test_error": 100.0 * evaluate(params, aux, data, task=task,
                                               batch_size=batch_size)}

    return metrics


def speech_metrics(model: Any, batch_size: int) -> Metrics:
    """``metrics(params, aux, data) -> {"test_error": WER %, "test_cer": CER %}``: corpus error
    rates of the greedy CTC decoding of ``data``, in one pass."""
    from gpjax.data.speech import decode_ids
    from gpjax.metrics import cer, greedy_ctc_decode, wer
    adapter = as_adapter(model)
    apply = jax.jit(lambda p, a, f, q: adapter.apply(p, a, (f, q), train=False)[0])

    def metrics(params, aux, data):
        feats, pads, labels, lpads = data
        refs, hyps = [], []
        for s in range(0, len(feats), batch_size):
            logits, lp = apply(params, aux, jnp.asarray(feats[s:s + batch_size]),
                               jnp.asarray(pads[s:s + batch_size]))
            hyps += [decode_ids(h) for h in greedy_ctc_decode(logits, lp)]
            for lab, lpad in zip(labels[s:s + batch_size], lpads[s:s + batch_size], strict=True):
                refs.append(decode_ids(lab[np.asarray(lpad) < 0.5]))
        return {"test_error": 100.0 * wer(refs, hyps), "test_cer": 100.0 * cer(refs, hyps)}

    return metrics


def _classifier(model, *, augment, eval_batch_size):
    task = classifier_task(model, augment=augment)
    return task, classifier_metrics(task, eval_batch_size)


def _regression(model, *, augment, eval_batch_size):
    if augment is not None:
        raise ValueError("the regression task has no augmentation (it distorts images for "
                         "classifiers); Fix: set augment=False")
    task = regression_task(model)
    return task, classifier_metrics(task, eval_batch_size)


def _speech(model, *, augment, eval_batch_size):
    if augment is not None:
        raise ValueError("the speech task has no augmentation: set augment=False")
    return speech_task(model), speech_metrics(model, eval_batch_size)


TASKS: dict[str, Callable[..., tuple[Task, Metrics]]] = {
    "classifier": _classifier,
    "regression": _regression,
    "speech": _speech,
}
"""Task kinds by name: ``TASKS[kind](model, augment=, eval_batch_size=) -> (task, metrics)``."""


def make_task(kind: str, model: Any, *, augment: Callable | None = None,
              eval_batch_size: int = 1000) -> tuple[Task, Metrics]:
    """The task of kind ``kind`` for ``model`` and its test metrics.

    Args:
      kind: a key of :data:`TASKS` ("classifier", "regression" or "speech").
      model: a Flax linen, Flax NNX or Equinox module, or an
        :class:`~gpjax.models.adapter.Adapter`.
      augment: ``augment(key, x) -> x`` for training batches (classifier only).
      eval_batch_size: batch size of the test-metrics pass.
    """
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}; choose from {', '.join(sorted(TASKS))}")
    return TASKS[kind](model, augment=augment, eval_batch_size=eval_batch_size)


__all__ = ["REGRESSION_SCALE", "TASKS", "Metrics", "Task", "classifier_metrics",
           "classifier_task", "make_task", "regression_task", "speech_metrics", "speech_task"]
