"""The one incremental loop: a scenario x a policy x a seed, round after round.

For each round the policy's :class:`~gpjax.incremental.policies.RoundPlan` says where the model
starts (inherited, fresh dense, fresh sparse, the carried dense model) and which phases run on
which data; this module runs them with :mod:`gpjax.incremental.phases`, counts the cost
(:mod:`gpjax.incremental.cost`), evaluates, optionally derives the non-recoverable model, and
writes one result row per round.

Checkpoints (:class:`~gpjax.incremental.checkpoint.RoundCheckpointer`): after every round, after
every phase, every ``checkpoint_every`` epochs inside growth/training phases and every
``prune_checkpoint_every`` held iterations inside pruning. A checkpoint holds the current
training state (params, masks, batch statistics, optimiser state, PRNG key), the model carried
to the next round, and JSON meta: position (round, phase, epoch or iteration), the cost so far,
the rows so far. Resuming restores the newest intact one and continues from that position; as
every random draw comes from the saved key and the data order from the seed, the resumed run
gives the same rows (wall time aside) and the same final model as an uninterrupted one.

A NaN/inf training loss raises :class:`~gpjax.incremental.phases.NonFiniteLossError` naming the
round, phase and epoch; nothing is saved after the last finite epoch, so a resume starts from
the last good checkpoint.

Data parallelism: all local devices (or ``devices``) form a 1-D ``jax.sharding.Mesh`` with axis
``"batch"``. Parameters and optimiser state are replicated; data arrays are split along their
example axis, each training mini-batch is constrained to ``P("batch")`` and XLA all-reduces the
gradients; the growth-gradient accumulation (a mean over sharded batches) likewise reduces
across devices. Multi-host: call ``jax.distributed.initialize()`` before ``run`` and pass
``devices=jax.devices()`` (global); every process runs the same program on its shard.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

import gpjax
from gpjax.data.stream import is_streamed
from gpjax.incremental.configs import Experiment, ExperimentConfig, build
from gpjax.incremental.cost import Cost
from gpjax.incremental.phases import (
    NonFiniteLossError,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.incremental.policies import Policy, RoundPlan, policy_to_dict
from gpjax.train import TrainState, make_optimizer, num_examples, steps_per_epoch

PyTree = Any


@functools.cache
def _optimizer(cfg):
    # One optimiser object per recipe: it is a static argument of the jitted epoch, so runs of
    # several policies in one process share compiled code.
    return make_optimizer(cfg)


def _copy(tree: PyTree) -> PyTree:
    """A deep copy of the arrays (training donates its input buffers)."""
    return jax.tree.map(lambda x: x.copy(), tree)


def run_dir(out: str | Path, policy: Policy, seed: int) -> Path:
    """Where one run (policy, seed) writes its checkpoints, rows and pictures."""
    return Path(out) / f"{policy.name}-seed{seed}"


@dataclasses.dataclass
class _Position:
    """Where a run is: in round ``round``, phase ``phase`` (``len(phases)`` = phases done), and
    inside it at epoch / iteration ``inner``."""

    round: int = 0
    phase: int = 0
    inner: int = 0
    round_done: bool = False


class _Run:
    def __init__(self, exp: Experiment, policy: Policy, seed: int, out: Path, *, resume: bool,
                 progress: bool, devices: Sequence[jax.Device] | None, max_to_keep: int,
                 callback=None):
        from gpjax.incremental.checkpoint import RoundCheckpointer

        self.exp, self.cfg, self.policy, self.seed = exp, exp.config, policy, seed
        self.callback = callback
        self.dir = out
        self.progress = progress
        devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.ndev = len(devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.split = NamedSharding(self.mesh, P("batch"))
        bs = self.cfg.batch_size
        batch_sharding = self.split if self.ndev > 1 and bs % self.ndev == 0 else None
        self.trainer = Trainer(exp.task, _optimizer(self.cfg.optimizer), bs,
                               self.cfg.eval_batch_size, progress, batch_sharding)
        self.run_config = {"experiment": self.cfg.to_dict(), "policy": policy_to_dict(policy),
                           "seed": seed}
        ckpt_dir = out / "checkpoints"
        if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
            raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass resume=True "
                                  "(--resume) to continue that run, or choose another --out")
        self.ckpt = RoundCheckpointer(ckpt_dir, config=self.run_config, max_to_keep=max_to_keep,
                                      async_save=False)
        self.step = 0
        self.rows: list[dict] = []
        self._device_cache: dict = {}

    # ---------------------------------------------------------------------------- placement
    def put(self, data: PyTree) -> PyTree:
        """Data on the mesh: split along the example axis when it divides, else replicated.

        A streamed split stays on the host: training sends it block by block, each mini-batch
        constrained to the batch sharding inside the jitted step.
        """
        if is_streamed(data):
            return data
        n = num_examples(data)
        sharding = self.split if self.ndev > 1 and n % self.ndev == 0 else self.replicated
        return jax.device_put(jax.tree.map(jnp.asarray, data), sharding)

    def replicate(self, tree: PyTree) -> PyTree:
        return jax.device_put(tree, self.replicated)

    def template(self) -> dict:
        key = jax.random.PRNGKey(0)
        st = new_state(self.trainer, key, self.exp.example_batch)
        st = self.replicate(st)
        return {"carry": {"params": st.params, "masks": st.masks, "aux": st.aux}, "state": st}

    # ---------------------------------------------------------------------------- saving
    def save(self, state: TrainState, carry: dict | None, pos: _Position, extra: dict) -> None:
        tree = {"carry": carry if carry is not None else
                {"params": state.params, "masks": state.masks, "aux": state.aux},
                "state": state}
        meta = {"round": pos.round, "phase": pos.phase, "inner": pos.inner,
                "round_done": pos.round_done, "has_carry": carry is not None,
                "policy": self.policy.name, "seed": self.seed, "rows": self.rows, **extra}
        self.step += 1
        self.ckpt.save(self.step, tree, meta, overwrite=True)

    # ---------------------------------------------------------------------------- one round
    def start_state(self, plan: RoundPlan, carry: dict | None, r: int) -> TrainState:
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), r)
        if plan.start in ("inherit", "carry_dense") and carry is not None:
            st = new_state(self.trainer, key, self.exp.example_batch, params=carry["params"],
                           aux=carry["aux"], masks=carry["masks"])
        elif plan.start in ("fresh_sparse",):
            k_init, k_mask, k_fix, k_run = jax.random.split(key, 4)
            params, aux = self.exp.task.init(k_init, self.exp.example_batch)
            masks = gpjax.init_masks(params, density=plan.seed_density, key=k_mask)
            masks = connect_seed(masks, self.exp.input_kernels,
                                 int(jax.random.randint(k_fix, (), 0, 2**31 - 1)))
            st = new_state(self.trainer, k_run, self.exp.example_batch, params=params, aux=aux,
                           masks=masks)
        else:
            st = new_state(self.trainer, key, self.exp.example_batch)
        return self.replicate(st)

    def run_round(self, r: int, carry: dict | None, state: TrainState | None,
                  pos: _Position, saved: dict, carry_next: dict | None) -> dict:
        """Runs round ``r`` from ``pos`` and returns the model the next round starts from.

        ``carry``: the previous round's model (used to build the start state when ``state`` is
        None); ``carry_next``: the next round's model when already fixed (NFT, restored).
        """
        rd = self.exp.scenario.round(r)
        plan = self.policy.plan(r)
        data = {"new": self.put(rd.new), "all": self.put(rd.all)}
        sizes = {"new": rd.n_new, "all": rd.n_all}
        val, test = self.put(rd.validation), self.put(rd.test)
        cost = Cost.from_dict(saved["cost"]) if "cost" in saved else Cost(rd.n_all)
        events: dict = saved.get("events", {})
        if state is None:
            # Not saved: a resume recomputes it from the previous round's checkpoint.
            state = self.start_state(plan, carry, r)
            if self.callback is not None:
                self.callback("round_start", r, state, carry)
        for p in range(pos.phase, len(plan.phases)):
            spec = plan.phases[p]
            start = pos.inner if p == pos.phase else 0
            n = sizes[spec.data]
            bs = min(self.cfg.batch_size, n)
            steps = steps_per_epoch(n, self.cfg.batch_size)
            t0 = time.perf_counter()
            partial = dict(saved.get("partial", {})) if start else {}
            partial = {"epochs": partial.get("epochs", 0.0), "examples": partial.get("examples", 0)}
            ref_saved = saved.get("reference_error") if start else None
            saved = {}

            def snapshot(st, inner, part, ref=None, spec=spec, t0=t0, p=p, cn=carry_next):
                c = cost.to_dict()
                c["wall_time_s"] += time.perf_counter() - t0
                extra = {"cost": c, "events": events, "partial": part, "phase_name": spec.name}
                if ref is not None:
                    extra["reference_error"] = ref
                self.save(st, cn, _Position(r, p, inner), extra)

            where = f"round {r} ({self.policy.name}, seed {self.seed})"
            try:
                if spec.kind in ("grow", "train"):
                    every = self.cfg.checkpoint_every

                    def on_epoch(st, ev, part=partial, spec=spec, n=n, bs=bs, steps=steps,
                                 every=every, snapshot=snapshot):
                        part["epochs"] += 1 + ("active" in ev)
                        part["examples"] += steps * bs + (n if "active" in ev else 0)
                        e = ev["epoch"] + 1
                        if every and e % every == 0 and e < spec.epochs:
                            snapshot(st, e, dict(part))

                    state, _ = grow_and_train(
                        self.trainer, state, data[spec.data], epochs=spec.epochs,
                        learning_rate=spec.learning_rate, grow_every=spec.grow_every,
                        percentile=spec.percentile, scope=spec.scope, init=spec.init,
                        grow=spec.kind == "grow", name=spec.name,
                        on_epoch=on_epoch, start_epoch=start)
                else:
                    ref = ref_saved if ref_saved is not None else self.trainer.error(state, val)
                    every = self.cfg.prune_checkpoint_every
                    held = [0]

                    def on_iteration(best, ev, part=partial, ref=ref, held=held, every=every,
                                     steps=steps, bs=bs, snapshot=snapshot):
                        part["epochs"] += ev["retrain_epochs"]
                        part["examples"] += ev["retrain_epochs"] * steps * bs
                        part["iterations"] = ev["iteration"] + 1
                        if ev["held"]:
                            held[0] += 1
                            if every and held[0] % every == 0:
                                snapshot(best, ev["iteration"] + 1, dict(part), ref)

                    state, _ = prune_and_retrain(
                        self.trainer, state, data["all"], val, self.policy.prune,
                        name=spec.name, reference_error=ref, on_iteration=on_iteration,
                        start_iteration=start)
                    events[spec.name] = {"iterations": partial.get("iterations", start),
                                         "reference_error": ref}
            except NonFiniteLossError as err:
                raise NonFiniteLossError(
                    f"{where}, {err}; the last good checkpoint is step "
                    f"{self.ckpt.latest_step()} in {self.ckpt.directory} (resume starts there)"
                ) from err
            cost.add(spec.name, partial["epochs"], n, partial["examples"],
                     time.perf_counter() - t0)
            state = _copy(state)  # the phases donate buffers; keep this one intact
            if p == plan.carry_after:
                carry_next = _copy({"params": state.params, "masks": state.masks,
                                    "aux": state.aux})
            self.save(state, carry_next, _Position(r, p + 1, 0),
                      {"cost": cost.to_dict(), "events": events})
        if carry_next is None:
            carry_next = _copy({"params": state.params, "masks": state.masks, "aux": state.aux})
        row = self.finish_round(r, rd, state, cost, events, test, val, data["all"], plan)
        self.rows.append(row)
        self.save(state, carry_next, _Position(r, len(plan.phases), 0, round_done=True),
                  {"cost": cost.to_dict(), "events": events})
        self.write_rows()
        if self.callback is not None:
            self.callback("round_end", r, state, carry_next)
        return carry_next

    # ---------------------------------------------------------------------------- results
    def finish_round(self, r, rd, state, cost, events, test, val, data_all, plan) -> dict:
        t0 = time.perf_counter()
        tests = self.exp.test_metrics(state.params, state.aux, test)
        val_err = 100.0 * self.trainer.error(state, val)
        counts = gpjax.count_params(state.masks)
        nonrec = {}
        if self.policy.nonrecoverable is not None:
            cfg = dataclasses.replace(self.policy.nonrecoverable, recoverable=False)
            compact, log = prune_and_retrain(self.trainer, _copy(state), data_all, val, cfg,
                                             name="nonrecoverable")
            nonrec = {
                "params_nonrecoverable": gpjax.count_params(compact.masks).active,
                **{f"{k}_nonrecoverable": v for k, v in
                   self.exp.test_metrics(compact.params, compact.aux, test).items()},
                "val_error_nonrecoverable": 100.0 * self.trainer.error(compact, val),
                "epochs_nonrecoverable": log.epochs,
            }
            if self.cfg.heatmap:
                self.heatmap(compact.masks, r, "nonrecoverable")
        if self.cfg.heatmap:
            self.heatmap(state.masks, r, "recoverable")
        previous = self.rows[-1]["epochs_cumulative"] if self.rows else 0.0
        dead = gpjax.dead_units(state.masks, input_fed=self.exp.input_kernels)
        return {
            "policy": self.policy.name, "seed": self.seed, "round": r,
            "data_fraction": rd.fraction, "classes": list(rd.classes) if rd.classes else None,
            "n_available": rd.n_all, "n_new": rd.n_new,
            **tests, "val_error": val_err,
            "params_recoverable": counts.active, "params_dense": counts.dense,
            "params_nonrecoverable": None, "test_error_nonrecoverable": None,
            **nonrec,
            "dead_units": int(sum(d.inputs + d.outputs for d in dead.values())),
            "epochs": cost.epochs, "epochs_cumulative": previous + cost.epochs,
            "epochs_by_phase": cost.by_phase, "raw_epochs": cost.raw_epochs,
            "wall_time_s": cost.wall_time_s, "eval_time_s": time.perf_counter() - t0,
            "examples": cost.examples,
            "prune_iterations": {k: v["iterations"] for k, v in events.items()},
            "start": plan.start, "devices": self.ndev,
            "config": self.cfg.name, "policy_config": policy_to_dict(self.policy),
        }

    def heatmap(self, masks: PyTree, r: int, which: str) -> None:
        """FIG. 5: per-pixel active connections into the first hidden layer, after round r;
        plus one figure of every round so far (from the saved ``.npy`` masks)."""
        from gpjax.report import pixel_connection_heatmap, pixel_connection_heatmaps

        kernel = _input_kernel_mask(masks, self.exp.input_kernels)
        if kernel is None or kernel.shape[0] != 784:
            return
        out = self.dir / "heatmaps" / f"{which}-round{r:02d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        classes = self.exp.scenario.classes[r]
        title = f"round {r}" + (f": classes {list(classes)}" if classes else "")
        pixel_connection_heatmap(kernel, out, title=title)
        np.save(out.with_suffix(".npy"), kernel)
        panels = {}
        for k in range(r + 1):
            f = self.dir / "heatmaps" / f"{which}-round{k:02d}.npy"
            if f.exists():
                cs = self.exp.scenario.classes[k]
                panels[f"round {k}" + (f": {list(cs)}" if cs else "")] = np.load(f)
        pixel_connection_heatmaps(panels, self.dir / "heatmaps" / f"{which}-all-rounds.png",
                                  suptitle=f"{self.policy.name}: connections per input pixel "
                                           f"({which})")

    def write_rows(self) -> None:
        write_rows(self.rows, self.dir, metadata={**self.run_config,
                                                  "scenario": self.exp.scenario.description})


def connect_seed(masks: PyTree, input_fed: Sequence[str], seed: int) -> PyTree:
    """A sparse seed in which every neuron has an input and an output connection
    (:func:`gpjax.connect_units`; the network's inputs, e.g. pixels, are exempt)."""
    return gpjax.connect_units(masks, seed=seed, input_fed=list(input_fed))


def _input_kernel_mask(masks: PyTree, patterns: Sequence[str]) -> np.ndarray | None:
    import fnmatch

    from gpjax.masks import masked_leaves
    for name, m, _ in masked_leaves(masks):
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            m = np.asarray(m)
            return m.reshape(-1, m.shape[-1])
    return None


def write_rows(rows: list[dict], out_dir: Path, metadata: dict | None = None) -> None:
    """Rows as ``results.json`` and ``results.csv`` (:func:`gpjax.report.write_rows`)."""
    from gpjax.report import write_rows as report_write_rows
    report_write_rows(rows, out_dir, metadata=metadata)


def run(
    config: ExperimentConfig | Experiment,
    policy: Policy,
    seed: int,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    max_to_keep: int = 3,
    callback=None,
) -> list[dict]:
    """Runs every round of ``config``'s scenario with ``policy`` and ``seed``.

    Args:
      config: an experiment config (data loaded here) or an already built experiment.
      policy: the update policy value.
      seed: the run seed (initialisation, data order, augmentation; the chunk partition too
        when the config's ``data_seed`` is None).
      out: output directory; the run writes under ``out/<policy>-seed<seed>/``
        (``checkpoints/``, ``results.json``, ``results.csv``, ``heatmaps/``).
      resume: continue from the newest intact checkpoint there (a fresh start if none).
      progress: tqdm bars per round and phase.
      devices: devices of the data-parallel mesh (default: all local devices).
      max_to_keep: checkpoints kept.
      callback: optional ``callback(event, round, state, carry)``, called with
        ``"round_start"`` (the start state; ``carry``: the previous round's model or None) and
        ``"round_end"`` (the final recoverable state; ``carry``: the model the next round
        starts from). For tests and monitoring; it must not modify the arrays.

    Returns:
      One row per round (see ``experiments/README.md`` for the fields).

    Raises:
      NonFiniteLossError: a NaN/inf loss; the message names round, phase and epoch.
      CheckpointMismatchError: resuming with a different config / model.
      FileExistsError: checkpoints exist and ``resume`` is False.
    """
    exp = config if isinstance(config, Experiment) else build(config, seed)
    r_dir = run_dir(out, policy, seed)
    runner = _Run(exp, policy, seed, r_dir, resume=resume, progress=progress, devices=devices,
                  max_to_keep=max_to_keep, callback=callback)
    try:
        return _run(runner, resume)
    finally:
        runner.ckpt.close()


def _run(runner: _Run, resume: bool) -> list[dict]:
    carry, carry_next, state, pos, saved = None, None, None, _Position(), {}
    if resume:
        got = runner.ckpt.restore_latest(runner.template())
        if got is not None:
            step, tree, meta = got
            runner.step = step
            runner.rows = list(meta["rows"])
            pos = _Position(meta["round"], meta["phase"], meta["inner"], meta["round_done"])
            if pos.round_done:
                carry, pos = tree["carry"], _Position(pos.round + 1)
            else:
                state = tree["state"]
                carry_next = tree["carry"] if meta["has_carry"] else None
                saved = {k: meta[k] for k in ("cost", "events", "partial", "reference_error")
                         if k in meta}
    if runner.rows:
        runner.write_rows()  # a run killed between its last checkpoint and writing its rows
    num_rounds = runner.exp.scenario.num_rounds
    bar = tqdm(total=num_rounds, initial=min(pos.round, num_rounds), disable=not runner.progress,
               desc=f"{runner.policy.name} seed {runner.seed}", dynamic_ncols=True)
    for r in range(pos.round, num_rounds):
        carry = runner.run_round(r, carry, state, pos, saved, carry_next)
        state, carry_next, pos, saved = None, None, _Position(r + 1), {}
        last = runner.rows[-1]
        bar.set_postfix(err=f"{last['test_error']:.2f}%", params=last["params_recoverable"],
                        epochs=f"{last['epochs']:.1f}")
        bar.update()
    bar.close()
    return runner.rows
