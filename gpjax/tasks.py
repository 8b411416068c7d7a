"""Tasks: what training needs to know about a model, for classification and for speech.

A :class:`Task` says how to compute a model's loss and per-example errors from
``(params, aux, batch)``; ``aux`` holds non-trainable collections (batch norm statistics).
Every phase, epoch and evaluation of :mod:`gpjax.train` and :mod:`gpjax.incremental` works on
any task. Beside it, a task kind has *test metrics*: the figures a result row or a model
version reports (``test_error`` in percent; speech adds ``test_cer``).

Task kinds are looked up by name in :data:`TASKS` (``"classifier"``, ``"speech"``);
:func:`make_task` returns the task and its metrics for a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    """

    init: Callable
    loss: Callable
    frozen_loss: Callable
    example_errors: Callable
    input_kernels: tuple[str, ...] = ()


def _split_variables(variables: dict) -> tuple[PyTree, PyTree]:
    variables = dict(variables)
    return variables.pop("params"), variables


def classifier_task(
    model: Any,
    *,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Task:
    """A :class:`Task` for a Flax linen classifier called as ``model.apply(vars, x, train=...)``.

    Args:
      model: a Flax linen module taking ``(x, train: bool)`` and returning logits ``[B, K]``.
      augment: optional ``augment(key, x) -> x`` applied to training batches (jittable).

    Returns:
      A task over batches ``(x [B, ...], labels int [B])`` with softmax cross-entropy loss.
    """

    # One compiled program for the whole init: eager, every initializer compiles on its own
    # (a small ResNet-18: 35 s against 21 s jitted, on 2 cores; the same values bit for bit).
    init_fn = jax.jit(lambda key, x: model.init({"params": key, "dropout": key}, x, train=False))

    def init(key: jax.Array, batch: Batch) -> tuple[PyTree, PyTree]:
        return _split_variables(init_fn(key, batch[0][:1]))

    def loss(params, aux, batch, key):
        x, y = batch
        k_aug, k_drop = jax.random.split(key)
        if augment is not None:
            x = augment(k_aug, x)
        mutable = list(aux.keys()) or False
        out = model.apply({"params": params, **aux}, x, train=True, rngs={"dropout": k_drop},
                          mutable=mutable)
        logits, new_aux = out if mutable else (out, aux)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return jnp.mean(ce), dict(new_aux)

    def frozen_loss(params, aux, batch):
        x, y = batch
        logits = model.apply({"params": params, **aux}, x, train=False)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), y))

    def example_errors(params, aux, batch):
        x, y = batch
        logits = model.apply({"params": params, **aux}, x, train=False)
        return (jnp.argmax(logits, -1) != y).astype(jnp.float32)

    return Task(init, loss, frozen_loss, example_errors,
                tuple(getattr(model, "input_kernels", ())))


def speech_task(model: Any) -> Task:
    """A :class:`Task` for a CTC speech model (:class:`gpjax.models.DeepSpeech2`).

    Batches are ``(features [B, T, F], feature paddings [B, T], labels int [B, L], label
    paddings [B, L])``; the per-example error is the character error rate of the greedy
    decoding (jittable: the validation measure of the stopping rule).
    """
    from gpjax.metrics import masked_edit_distance
    from gpjax.models import BLANK_ID, ctc_loss

    init_fn = jax.jit(lambda key, f, p: model.init({"params": key, "dropout": key}, f, p))

    def init(key, batch):
        return _split_variables(init_fn(key, batch[0][:1], batch[1][:1]))

    def loss(params, aux, batch, key):
        feats, pads, labels, lpads = batch
        logits, lp = model.apply({"params": params, **aux}, feats, pads, train=True,
                                 rngs={"dropout": key})
        return ctc_loss(logits.astype(jnp.float32), lp, labels, lpads), aux

    def frozen_loss(params, aux, batch):
        feats, pads, labels, lpads = batch
        logits, lp = model.apply({"params": params, **aux}, feats, pads, train=False)
        return ctc_loss(logits.astype(jnp.float32), lp, labels, lpads)

    def example_errors(params, aux, batch):
        feats, pads, labels, lpads = batch
        logits, lp = model.apply({"params": params, **aux}, feats, pads, train=False)
        best = jnp.argmax(logits, -1)
        prev = jnp.concatenate([jnp.full_like(best[:, :1], -1), best[:, :-1]], 1)
        valid = (best != BLANK_ID) & (best != prev) & (lp < 0.5)
        ref_len = jnp.sum(1.0 - lpads, 1).astype(jnp.int32)
        dist = jax.vmap(masked_edit_distance)(best, valid, labels, ref_len)
        return dist / jnp.maximum(ref_len, 1).astype(jnp.float32)

    return Task(init, loss, frozen_loss, example_errors, tuple(model.input_kernels))


def classifier_metrics(task: Task, batch_size: int) -> Metrics:
    """``metrics(params, aux, data) -> {"test_error": percent}`` of a classifier."""

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
    apply = jax.jit(lambda p, a, f, q: model.apply({"params": p, **a}, f, q, train=False))

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


def _speech(model, *, augment, eval_batch_size):
    if augment is not None:
        raise ValueError("the speech task has no augmentation: set augment=False")
    return speech_task(model), speech_metrics(model, eval_batch_size)


TASKS: dict[str, Callable[..., tuple[Task, Metrics]]] = {
    "classifier": _classifier,
    "speech": _speech,
}
"""Task kinds by name: ``TASKS[kind](model, augment=, eval_batch_size=) -> (task, metrics)``."""


def make_task(kind: str, model: Any, *, augment: Callable | None = None,
              eval_batch_size: int = 1000) -> tuple[Task, Metrics]:
    """The task of kind ``kind`` for ``model`` and its test metrics.

    Args:
      kind: a key of :data:`TASKS` ("classifier" or "speech").
      model: the Flax module.
      augment: ``augment(key, x) -> x`` for training batches (classifier only).
      eval_batch_size: batch size of the test-metrics pass.
    """
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}; choose from {', '.join(sorted(TASKS))}")
    return TASKS[kind](model, augment=augment, eval_batch_size=eval_batch_size)


__all__ = ["TASKS", "Metrics", "Task", "classifier_metrics", "classifier_task", "make_task",
           "speech_metrics", "speech_task"]
