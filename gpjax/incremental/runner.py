"""The round runner: one update of the method, on any model, from a policy's plan.

:func:`update` is the only code that turns a :class:`~gpjax.incremental.policies.RoundPlan` into
phases. It builds the start state (:func:`start_state`: inherit, fresh dense, or a fresh sparse
seed in which every neuron is connected), runs the phases of
:mod:`gpjax.incremental.phases` on the round's data, counts the cost from the
:class:`~gpjax.incremental.phases.PhaseLog` each phase returns, and records the recoverable
pruning curve (active parameters with validation and, when a ``measure`` is given, test error of
the model before pruning and after every held iteration). The simulation
(:func:`gpjax.incremental.run`), the model store (:class:`gpjax.incremental.ModelStore`) and
the experiment scripts call it.

Interruptions: ``snapshot(state, carry, progress)`` is called after every phase, and inside
phases every ``checkpoint_every`` epochs of a growth/training phase and every
``prune_checkpoint_every`` held pruning iterations, but not sooner than ``checkpoint_interval_s``
seconds after the previous snapshot (a save costs ~0.1 s; on small data an epoch takes less);
``progress`` is a JSON-able dict. Calling :func:`update` again with
that state, carry and ``resume=progress`` continues where it was and gives the same result as an
uninterrupted call (every draw comes from the state's key; the data order from the data).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax

import gpjax
from gpjax.incremental.cost import Cost
from gpjax.incremental.phases import (
    ITERATION_FIELDS,
    PhaseLog,
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.incremental.policies import PhaseSpec, RoundPlan
from gpjax.train import TrainState, num_examples

PyTree = Any
Snapshot = Callable[[TrainState, "dict | None", dict], None]


@dataclasses.dataclass(frozen=True)
class RoundData:
    """The data of one update.

    Attributes:
      new: the examples that just arrived (arrays ``[N_new, ...]`` or a streamed split).
      all: every training example available now, the new ones included (``[N_all, ...]``).
      validation: held-out examples of the stopping rule.
    """

    new: PyTree
    all: PyTree
    validation: PyTree

    def sizes(self) -> dict[str, int]:
        return {"new": num_examples(self.new), "all": num_examples(self.all)}


@dataclasses.dataclass
class UpdateLog:
    """What one update did.

    Attributes:
      start: how the start state was made (the plan's ``start``).
      cost: normalised epochs (over ``all``), raw epochs, examples and wall time, per phase too,
        and the same under the paper's reading (``epochs_paper``).
      phases: the phases' logs, in order, each with its passes (``train_epochs``,
        ``grad_passes``) and, for pruning, one event per iteration (a resumed update restores
        the logs of what ran before the interruption from its snapshot).
      events: per pruning phase, ``{"iterations": n, "reference_error": e}``.
      prune_curve: ``[{"active", "val_error", **measure}]`` (errors in percent): the model
        before recoverable pruning and after every iteration whose model the phase kept; the
        last one is the result.
      stopped: why each pruning phase (and each phase a cap ended early) ended, by phase name.
      grow_limit: the active connections past which growth steps are skipped (the plan's
        ``grow_max_ratio`` times the start model's); None: no limit.
    """

    start: str
    cost: Cost
    phases: list[PhaseLog] = dataclasses.field(default_factory=list)
    events: dict = dataclasses.field(default_factory=dict)
    prune_curve: list[dict] = dataclasses.field(default_factory=list)
    stopped: dict = dataclasses.field(default_factory=dict)
    grow_limit: int | None = None


def _copy(tree: PyTree) -> PyTree:
    """A deep copy of the arrays (training donates its input buffers)."""
    return jax.tree.map(lambda x: x.copy(), tree)


def model_of(state: TrainState) -> dict:
    """The model a state holds: ``{"params", "masks", "aux"}`` (copied)."""
    return _copy({"params": state.params, "masks": state.masks, "aux": state.aux})


def start_state(trainer: Trainer, plan: RoundPlan, key: jax.Array, example_batch: PyTree,
                carry: dict | None = None) -> TrainState:
    """The state a plan starts from, with a fresh optimiser state.

    Args:
      trainer: the task and optimiser.
      plan: ``plan.start`` says how: "inherit" / "carry_dense" (the ``carry`` model's params,
        masks and aux), "fresh_dense" (random init, every connection), "fresh_sparse" (random
        init, masks at ``plan.seed_density`` with every neuron given an input and an output
        connection by :func:`gpjax.connect_units`).
      key: PRNG key of the init, the mask draw and the training key.
      example_batch: a batch the model is initialised on.
      carry: ``{"params", "masks", "aux"}`` of the model to inherit.

    Raises:
      ValueError: the plan inherits and ``carry`` is None.
    """
    if plan.start in ("inherit", "carry_dense"):
        if carry is None:
            raise ValueError(f"a {plan.start!r} round needs the previous model (carry=None): "
                             "the first round of a policy must start fresh")
        carry = _copy(carry)  # training donates buffers; the caller keeps its model
        return new_state(trainer, key, example_batch, params=carry["params"],
                         aux=carry["aux"], masks=carry["masks"])
    if plan.start == "fresh_sparse":
        return new_state(trainer, key, example_batch, density=plan.seed_density, connect=True)
    if plan.start == "fresh_dense":
        return new_state(trainer, key, example_batch)
    raise ValueError(f"unknown plan start {plan.start!r}")


def _resumed_log(name: str, progress: dict | None) -> PhaseLog:
    """The log of a phase interrupted at ``progress`` (a new one when None); snapshots written
    before the logs were saved whole hold only its epochs and examples."""
    part = (progress or {}).get("partial", {})
    return PhaseLog.from_dict({**part, "name": name})


def update(
    trainer: Trainer,
    plan: RoundPlan,
    data: RoundData,
    prune: PruneConfig,
    *,
    state: TrainState | None = None,
    key: jax.Array | None = None,
    example_batch: PyTree = None,
    carry: dict | None = None,
    place: Callable[[TrainState], TrainState] = lambda s: s,
    resume: dict | None = None,
    carry_next: dict | None = None,
    snapshot: Snapshot | None = None,
    checkpoint_every: int = 0,
    prune_checkpoint_every: int = 0,
    checkpoint_interval_s: float = 0.0,
    measure: Callable[[TrainState], dict] | None = None,
    on_epoch: Callable[[PhaseSpec, TrainState, dict, float], None] | None = None,
) -> tuple[TrainState, dict, UpdateLog]:
    """Runs one update: the plan's phases on ``data``, from its start state.

    Args:
      trainer: task, optimiser, batch sizes.
      plan: the policy's plan for this round (``policy.plan(r)``).
      data: the round's new / all / validation data.
      prune: the recoverable pruning rule of the plan's "prune" phases.
      state: the start state; None builds it with :func:`start_state` from ``key``,
        ``example_batch`` and ``carry`` and passes it through ``place`` (e.g. replication
        onto a device mesh).
      resume: the ``progress`` of a snapshot to continue from (with its state and carry).
      carry_next: the model the next round starts from when already fixed (resume only).
      snapshot: ``snapshot(state, carry_next, progress)`` saves a point to resume from.
      checkpoint_every: snapshot every this many epochs inside growth/training phases (0: after
        phases only).
      prune_checkpoint_every: snapshot every this many held pruning iterations.
      checkpoint_interval_s: skip a snapshot inside a phase when the previous snapshot of
        this update is less than this many seconds old (snapshots after phases always happen).
      measure: ``measure(state) -> {name: percent}`` added to every point of the pruning curve
        (e.g. test error).
      on_epoch: ``on_epoch(spec, state, event, cost_so_far)`` after every growth/training epoch
        (for learning curves); ``cost_so_far`` in normalised epochs.

    Returns:
      ``(state, carry_next, log)``: the final (recoverable) state, the model the next round
      starts from (``{"params", "masks", "aux"}``), and the :class:`UpdateLog`.
    """
    sizes = data.sizes()
    progress = dict(resume or {})
    cost = Cost.from_dict(progress["cost"]) if "cost" in progress else Cost(sizes["all"])
    log = UpdateLog(plan.start, cost, events=dict(progress.get("events", {})),
                    prune_curve=list(progress.get("curve", [])),
                    phases=[PhaseLog.from_dict(d) for d in progress.get("phases", [])],
                    stopped=dict(progress.get("stopped", {})))
    if state is None:
        state = place(start_state(trainer, plan, key, example_batch, carry))
    log.grow_limit = progress.get("grow_limit")
    if plan.grow_max_ratio is not None and "grow_limit" not in progress:
        log.grow_limit = int(plan.grow_max_ratio * gpjax.count_params(state.masks).active)
    first = int(progress.get("phase", 0))
    last_save = [time.perf_counter()]
    for p in range(first, len(plan.phases)):
        spec = plan.phases[p]
        inner = int(progress.get("inner", 0)) if p == first else 0
        here = progress if (p == first and inner) else None
        t0 = time.perf_counter()
        phase_log = _resumed_log(spec.name, here)

        def save(st, at, extra=None, p=p, t0=t0, phase_log=phase_log, cn=carry_next, spec=spec):
            if time.perf_counter() - last_save[0] < checkpoint_interval_s:
                return
            c = cost.to_dict()
            c["wall_time_s"] += time.perf_counter() - t0
            snapshot(st, cn, {**_progress(p, at, c, log), "phase_name": spec.name,
                              "partial": phase_log.to_dict(), **(extra or {})})
            last_save[0] = time.perf_counter()

        cap = cost.remaining(plan.max_epochs, sizes[spec.data])
        if spec.kind in ("grow", "train"):
            state = _grow_or_train(trainer, spec, state, data, inner, phase_log, cost,
                                   save if snapshot and checkpoint_every else None,
                                   checkpoint_every, on_epoch, cap, log.grow_limit)
        else:
            state = _prune(trainer, spec, state, data, prune, inner, phase_log, log,
                           here, save if snapshot and prune_checkpoint_every else None,
                           prune_checkpoint_every, measure, cap)
        cost.add(spec.name, phase_log.epochs, sizes[spec.data], phase_log.examples,
                 time.perf_counter() - t0, phase_log.paper_epochs())
        if phase_log.stopped:
            log.stopped[spec.name] = phase_log.stopped
        log.phases.append(phase_log)
        state = _copy(state)  # the phases donate buffers; keep this one intact
        if p == plan.carry_after:
            carry_next = model_of(state)
        if snapshot is not None:
            snapshot(state, carry_next, _progress(p + 1, 0, cost.to_dict(), log))
            last_save[0] = time.perf_counter()
    if carry_next is None:
        carry_next = model_of(state)
    return state, carry_next, log


def _progress(phase: int, inner: int, cost: dict, log: UpdateLog) -> dict:
    """What a snapshot records of an update at phase ``phase``, epoch/iteration ``inner``."""
    return {"phase": phase, "inner": inner, "cost": cost, "events": log.events,
            "curve": log.prune_curve, "phases": [pl.to_dict() for pl in log.phases],
            "stopped": log.stopped, "grow_limit": log.grow_limit}


def _grow_or_train(trainer, spec, state, data, start, phase_log, cost, save, every, on_epoch,
                   cap, grow_limit):
    n_all = cost.n_available
    n = num_examples(getattr(data, spec.data))
    before = phase_log.epochs

    def hook(st, ev):
        if on_epoch is not None:
            on_epoch(spec, st, ev, cost.epochs + (phase_log.epochs - before) * n / n_all)
        e = ev["epoch"] + 1
        if save is not None and e % every == 0 and e < spec.epochs:
            save(st, e)

    state, _ = grow_and_train(
        trainer, state, getattr(data, spec.data), epochs=spec.epochs,
        learning_rate=spec.learning_rate, grow_every=spec.grow_every,
        percentile=spec.percentile, scope=spec.scope, init=spec.init,
        grow=spec.kind == "grow", name=spec.name, on_epoch=hook, start_epoch=start,
        log=phase_log, max_epochs=cap, max_active=grow_limit)
    return state


def _point(state: TrainState, active: int, val_error: float, measure) -> dict:
    return {"active": int(active), "val_error": 100.0 * float(val_error),
            **(measure(state) if measure is not None else {})}


def _event_point(event: dict) -> dict:
    """The pruning-curve point of an iteration's event (errors in percent)."""
    return {"active": int(event["active"]), "val_error": 100.0 * float(event["val_error"]),
            **{k: v for k, v in event.items() if k not in ITERATION_FIELDS}}


def _prune(trainer, spec, state, data, rule, start, phase_log, log, here, save, every, measure,
           cap):
    ref = here.get("reference_error") if here else None
    if ref is None:
        ref = trainer.error(state, data.validation)
        log.prune_curve = [_point(state, gpjax.count_params(state.masks).active, ref, measure)]

    def hook(best, ev):
        if not ev["kept"]:
            return
        log.prune_curve.append(_event_point(ev))
        kept = sum(e["kept"] for e in phase_log.events if "kept" in e)
        if save is not None and kept % every == 0:
            save(best, ev["iteration"] + 1, {"reference_error": ref})

    state, plog = prune_and_retrain(trainer, state, data.all, data.validation, rule,
                                    name=spec.name, reference_error=ref, on_iteration=hook,
                                    start_iteration=start, log=phase_log, measure=measure,
                                    max_epochs=cap)
    iterations = max([start] + [e["iteration"] + 1 for e in plog.events if "iteration" in e])
    log.events[spec.name] = {"iterations": iterations, "reference_error": ref}
    return state


def iteration_record(event: dict) -> dict:
    """A pruning iteration's event as a result row records it: errors in percent."""
    out = dict(event)
    for k in ("val_error", "val_error_pruned"):
        if k in out:
            out[k] = 100.0 * float(out[k])
    return out


def _phase_record(pl: PhaseLog, pruning: bool) -> tuple[dict, list[dict]]:
    """A phase's passes (with its iterations' counts when ``pruning``) and iteration records."""
    iters = [e for e in pl.events if "iteration" in e]
    passes = {"epochs": pl.epochs, "train_epochs": pl.train_epochs,
              "grad_passes": pl.grad_passes, "stopped": pl.stopped}
    if pruning:
        passes.update(iterations=len(iters), held=sum(e["held"] for e in iters),
                      failed=sum(not e["held"] for e in iters))
    return passes, [iteration_record(e) for e in iters]


def update_record(log: UpdateLog, nonrec: PhaseLog | None = None) -> dict:
    """What a result row (and a store version's metrics) record of an update's cost and
    pruning, beside ``epochs`` / ``epochs_by_phase``.

    Returns:
      ``{"epochs_paper", "epochs_paper_by_phase"`` (normalised epochs under the paper's
      reading, :mod:`gpjax.incremental.cost`), ``"phase_passes"`` (per phase: ``epochs``,
      ``train_epochs`` and ``grad_passes`` over its own data; for pruning also
      ``iterations``, ``held``, ``failed``; ``stopped``), ``"prune_log"`` (per pruning phase,
      one :func:`iteration_record` per iteration), ``"prune_stopped"``, ``"grow_limit"``
      (:attr:`UpdateLog.grow_limit`)``}``; with ``nonrec`` (the non-recoverable phase's log)
      also ``"phase_passes_nonrecoverable"``, ``"prune_log_nonrecoverable"`` and
      ``"epochs_paper_nonrecoverable"``.
    """
    passes, prune_log = {}, {}
    for pl in log.phases:
        passes[pl.name], its = _phase_record(pl, pl.name in log.events)
        if pl.name in log.events:
            prune_log[pl.name] = its
    out = {"epochs_paper": log.cost.epochs_paper,
           "epochs_paper_by_phase": dict(log.cost.paper_by_phase),
           "phase_passes": passes, "prune_log": prune_log, "prune_stopped": dict(log.stopped),
           "grow_limit": log.grow_limit}
    if nonrec is not None:
        p, its = _phase_record(nonrec, True)
        out.update(phase_passes_nonrecoverable=p, prune_log_nonrecoverable=its,
                   epochs_paper_nonrecoverable=nonrec.paper_epochs())
    return out


def nonrecoverable(trainer: Trainer, state: TrainState, data: RoundData,
                   rule: PruneConfig, *, max_epochs: float | None = None
                   ) -> tuple[TrainState, PhaseLog]:
    """The non-recoverable model: ``rule`` with neurons allowed to go, from a copy of ``state``.

    Its stopping rule is measured from ``state``'s validation error. The result is for
    deployment: it is never inherited by a later update. ``max_epochs``: a cap in normalised
    epochs on its retraining (what an update's cap leaves, :meth:`Cost.remaining`).
    """
    rule = dataclasses.replace(rule, recoverable=False)
    return prune_and_retrain(trainer, _copy(state), data.all, data.validation, rule,
                             name="nonrecoverable", max_epochs=max_epochs)


__all__ = ["RoundData", "UpdateLog", "iteration_record", "model_of", "nonrecoverable",
           "start_state", "update", "update_record"]
