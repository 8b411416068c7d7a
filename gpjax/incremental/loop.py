"""The one incremental loop: a scenario x a policy x a seed, round after round.

For each round the policy's :class:`~gpjax.incremental.policies.RoundPlan` says where the model
starts (inherited, fresh dense, fresh sparse, the carried dense model) and which phases run on
which data; this module runs them with :mod:`gpjax.incremental.phases`, counts the cost
(:mod:`gpjax.incremental.cost`), evaluates, optionally derives the non-recoverable model, and
writes one result row per round.

Checkpoints (:class:`~gpjax.incremental.checkpoint.RoundCheckpointer`): after every round, after
every phase, every ``checkpoint_every`` epochs inside growth/training phases and every
``prune_checkpoint_every`` held iterations inside pruning (at most one inside a phase per
``checkpoint_interval_s`` seconds). A checkpoint holds the current
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
across devices. Several processes (hosts): :func:`gpjax.distributed.initialize` before ``run``
(``gpjax run --coordinator ... --num-processes ... --process-id ...``); the mesh then spans
every process's devices (:class:`~gpjax.distributed.DataMesh`), each process holds only its
rows of every split, every process runs the same program and holds the same masks; checkpoints
are saved by all together, rows and heatmaps written by process 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

import gpjax
from gpjax.data.buckets import Bucketed, is_bucketed, length_buckets
from gpjax.data.stream import is_streamed
from gpjax.distributed import DataMesh, is_primary, primary_lock, sync
from gpjax.incremental.configs import ExperimentConfig
from gpjax.incremental.experiment import Experiment, build
from gpjax.incremental.phases import NonFiniteLossError, Trainer, new_state
from gpjax.incremental.policies import Policy, policy_to_dict
from gpjax.incremental.runner import (
    RoundData,
    model_of,
    nonrecoverable,
    start_state,
    update,
    update_record,
)
from gpjax.train import TrainState, make_optimizer

PyTree = Any
MODELS_DIR = "models"


class ResultsConflictError(FileExistsError):
    """A run directory holds results of a different config."""


@functools.cache
def _optimizer(cfg):
    # One optimiser object per recipe: it is a static argument of the jitted epoch, so runs of
    # several policies in one process share compiled code.
    return make_optimizer(cfg)


def run_dir(out: str | Path, policy: Policy, seed: int) -> Path:
    """Where one run (policy, seed) writes its checkpoints, rows and pictures."""
    return Path(out) / f"{policy.name}-seed{seed}"


def run_config(cfg: ExperimentConfig, policy: Policy, seed: int) -> dict:
    """What identifies a run: stored with its checkpoints and in its ``results.json``."""
    return {"experiment": cfg.to_dict(), "policy": policy_to_dict(policy), "seed": seed}


def run_config_defaults(cfg: ExperimentConfig, policy: Policy, seed: int) -> dict:
    """:func:`run_config` of the default experiment and policy fields: what a config saved
    before a field existed is read as holding (the checkpoint and results guards use it)."""
    return run_config(ExperimentConfig(name=cfg.name), type(policy)(), seed)


def check_results(directory: Path, config: dict, *, overwrite: bool = False,
                  defaults: dict | None = None) -> None:
    """Refuses to write into ``directory`` whose ``results.json`` came from another config.

    Raises:
      ResultsConflictError: the stored results name a different config (or cannot be read)
        and ``overwrite`` is False.
    """
    from gpjax.incremental.configjson import config_diff, with_defaults
    from gpjax.report import RESULTS_JSON
    path = directory / RESULTS_JSON
    if overwrite or not path.exists():
        return
    try:
        stored = json.loads(path.read_text())["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResultsConflictError(f"{path} cannot be read ({e}); move it away or pass "
                                   "--overwrite to replace it") from None
    config = json.loads(json.dumps(config))  # as stored: tuples become lists
    stored = with_defaults({k: stored.get(k) for k in config},
                           json.loads(json.dumps(defaults or {})))
    if stored != config:
        diff = "; ".join(config_diff(stored, config)[:5])
        raise ResultsConflictError(
            f"{path} holds results of a different config ({diff}); use another --out, or "
            "pass --overwrite to replace them")


@dataclasses.dataclass
class _Position:
    """Where a run is: in round ``round``; ``progress`` is the round runner's (None: at the
    round's start); ``round_done``: the round is finished."""

    round: int = 0
    progress: dict | None = None
    round_done: bool = False


class _Run:
    def __init__(self, exp: Experiment, policy: Policy, seed: int, out: Path, *, resume: bool,
                 progress: bool, devices: Sequence[jax.Device] | None, max_to_keep: int,
                 callback=None, overwrite: bool = False):
        from gpjax.incremental.checkpoint import RoundCheckpointer

        self.exp, self.cfg, self.policy, self.seed = exp, exp.config, policy, seed
        self.callback = callback
        self.dir = out
        self.progress = progress
        self.place = DataMesh(devices)
        self.mesh, self.ndev = self.place.mesh, self.place.size
        bs = self.cfg.batch_size
        batch_sharding = self.place.batch_sharding(bs)
        self.trainer = Trainer(exp.task, _optimizer(self.cfg.optimizer), bs,
                               self.cfg.eval_batch_size, progress, batch_sharding)
        self.run_config = run_config(self.cfg, policy, seed)
        defaults = run_config_defaults(self.cfg, policy, seed)
        ckpt_dir = out / "checkpoints"
        has_ckpt = ckpt_dir.exists() and any(ckpt_dir.iterdir())
        if not resume and has_ckpt:
            raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass resume=True "
                                  "(--resume) to continue that run, or choose another --out")
        if not has_ckpt:  # with checkpoints, their own config guard names what differs
            check_results(out, self.run_config, overwrite=overwrite, defaults=defaults)
        # A run continued for more (or fewer) rounds is the same run: rounds only truncate.
        guard = {"defaults": defaults, "free": ("experiment.rounds",)}
        self.ckpt = RoundCheckpointer(ckpt_dir, config=self.run_config, max_to_keep=max_to_keep,
                                      async_save=False, **guard)
        self.models = RoundCheckpointer(out / MODELS_DIR, config=self.run_config,
                                        max_to_keep=None, async_save=False, **guard)
        self.step = 0
        self.rows: list[dict] = []

    def close(self) -> None:
        self.ckpt.close()
        self.models.close()

    # ---------------------------------------------------------------------------- placement
    def put(self, data: PyTree) -> PyTree:
        """Data on the mesh: split along the example axis when it divides, else replicated.

        A streamed split stays on the host: training sends it block by block, each mini-batch
        constrained to the batch sharding inside the jitted step.
        """
        if is_streamed(data):
            if jax.process_count() > 1:
                from gpjax.fields import ConfigError
                raise ConfigError(f"config {self.cfg.name}: a streamed dataset "
                                  f"({self.cfg.dataset}) runs in one process only. Fix: run "
                                  "it without --coordinator/--distributed")
            return data
        if is_bucketed(data):
            return Bucketed(tuple(self.put(p) for p in data.parts))
        return self.place.put(data)

    def bucket(self, data: PyTree) -> PyTree:
        """``data`` in the config's length buckets (speech splits; unchanged for 1)."""
        if self.cfg.length_buckets <= 1:
            return data
        return length_buckets(tuple(data), self.cfg.length_buckets, self.cfg.batch_size)

    def replicate(self, tree: PyTree) -> PyTree:
        return self.place.replicate(tree)

    def template(self) -> dict:
        st = self.replicate(new_state(self.trainer, jax.random.PRNGKey(0),
                                      self.exp.example_batch))
        return {"carry": {"params": st.params, "masks": st.masks, "aux": st.aux}, "state": st}

    # ---------------------------------------------------------------------------- saving
    def save(self, state: TrainState, carry: dict | None, pos: _Position) -> None:
        tree = {"carry": carry if carry is not None else
                {"params": state.params, "masks": state.masks, "aux": state.aux},
                "state": state}
        meta = {"round": pos.round, "progress": pos.progress, "round_done": pos.round_done,
                "has_carry": carry is not None, "policy": self.policy.name, "seed": self.seed,
                "rows": self.rows}
        self.step += 1
        self.ckpt.save(self.step, tree, meta, overwrite=True)

    def save_models(self, r: int, state: TrainState, nonrec: TrainState | None,
                    row: dict) -> None:
        """The round's recoverable and non-recoverable models, kept for every round (for
        evaluation and export: ``models/<round>``)."""
        rec = model_of(state)
        tree = {"recoverable": rec, "nonrecoverable": model_of(nonrec) if nonrec else rec}
        example = self.exp.example_batch
        shape = list(np.shape(example[0])[1:]) if isinstance(example, tuple) else None
        self.models.save(r, tree, {"round": r, "has_nonrecoverable": nonrec is not None,
                                   "row": row, "model": self.cfg.model,
                                   "model_kwargs": self.cfg.model_kwargs,
                                   "input_shape": shape}, overwrite=True)

    # ---------------------------------------------------------------------------- one round
    def run_round(self, r: int, carry: dict | None, state: TrainState | None,
                  pos: _Position, carry_next: dict | None) -> dict:
        """Runs round ``r`` from ``pos`` and returns the model the next round starts from.

        ``carry``: the previous round's model (used to build the start state when ``state`` is
        None); ``carry_next``: the next round's model when already fixed (NFT, restored).
        """
        rd = self.exp.scenario.round(r)
        plan = self.policy.round_plan(r)
        data = RoundData(*(self.put(self.bucket(d)) for d in (rd.new, rd.all, rd.validation)))
        test = self.put(rd.test)
        if state is None:
            # Not saved: a resume recomputes it from the previous round's checkpoint.
            key = jax.random.fold_in(jax.random.PRNGKey(self.seed), r)
            state = self.replicate(start_state(self.trainer, plan, key,
                                               self.exp.example_batch, carry))
            if self.callback is not None:
                self.callback("round_start", r, state, carry)

        def snapshot(st, cn, progress):
            self.save(st, cn, _Position(r, progress))

        def measure(st):
            return {"test_error": self.exp.test_error(st.params, st.aux, test)}

        try:
            state, carry_next, log = update(
                self.trainer, plan, data, self.policy.prune, state=state, resume=pos.progress,
                carry_next=carry_next, snapshot=snapshot,
                checkpoint_every=self.cfg.checkpoint_every,
                prune_checkpoint_every=self.cfg.prune_checkpoint_every,
                checkpoint_interval_s=self.cfg.checkpoint_interval_s, measure=measure)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"round {r} ({self.policy.name}, seed {self.seed}), {err}; the last good "
                f"checkpoint is step {self.ckpt.latest_step()} in {self.ckpt.directory} "
                "(resume starts there); to avoid it, lower the learning rate (--set "
                "learning_rate=0.05) or clip gradients (--set 'optimizer={\"clip_norm\": 5.0}')"
                ) from err
        row, nonrec = self.finish_round(r, rd, state, log, test, data, plan)
        self.rows.append(row)
        # The round's models before its "done" checkpoint: a run stopped between them (a kill,
        # a full disk) redoes the round's end on resume, so models/<r> is never left missing.
        self.save_models(r, state, nonrec, row)
        self.save(state, carry_next, _Position(r, None, round_done=True))
        self.write_rows()
        if self.callback is not None:
            self.callback("round_end", r, state, carry_next)
        return carry_next

    # ---------------------------------------------------------------------------- results
    def finish_round(self, r, rd, state, log, test, data: RoundData, plan):
        t0 = time.perf_counter()
        tests = self.exp.test_metrics(state.params, state.aux, test)
        val_err = 100.0 * self.trainer.error(state, data.validation)
        counts = gpjax.count_params(state.masks)
        nonrec, compact, plog = {}, None, None
        last = r == self.exp.scenario.num_rounds - 1
        if self.policy.nonrecoverable is not None and (
                last or self.cfg.nonrecoverable_rounds == "all"):
            compact, plog = nonrecoverable(
                self.trainer, state, data, self.policy.nonrecoverable,
                max_epochs=log.cost.remaining(plan.max_epochs, log.cost.n_available))
            nonrec = {
                "params_nonrecoverable": gpjax.count_params(compact.masks).active,
                **{f"{k}_nonrecoverable": v for k, v in
                   self.exp.test_metrics(compact.params, compact.aux, test).items()},
                "val_error_nonrecoverable": 100.0 * self.trainer.error(compact, data.validation),
                "epochs_nonrecoverable": plog.epochs,
            }
            if self.cfg.heatmap:
                self.heatmap(compact.masks, r, "nonrecoverable")
        if self.cfg.heatmap:
            self.heatmap(state.masks, r, "recoverable")
        previous = self.rows[-1]["epochs_cumulative"] if self.rows else 0.0
        previous_paper = self.rows[-1].get("epochs_paper_cumulative") if self.rows else 0.0
        dead = gpjax.dead_units(state.masks, input_fed=self.exp.input_kernels,
                                layout=self.exp.task.layout)
        cost = log.cost
        row = {
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
            "prune_iterations": {k: v["iterations"] for k, v in log.events.items()},
            "prune_curve": log.prune_curve,
            **update_record(log, plog),
            "epochs_paper_cumulative": (None if previous_paper is None
                                        else previous_paper + cost.epochs_paper),
            "max_epochs": plan.max_epochs, "target_params": self.policy.prune.target_params,
            "start": plan.start, "devices": self.ndev,
            "config": self.cfg.name, "policy_config": policy_to_dict(self.policy),
        }
        return row, compact

    def heatmap(self, masks: PyTree, r: int, which: str) -> None:
        """FIG. 5: per-pixel active connections into the first hidden layer, after round r;
        plus one figure of every round so far (from the saved ``.npy`` masks)."""
        from gpjax.report import pixel_connection_heatmap, pixel_connection_heatmaps

        kernel = _input_kernel_mask(masks, self.exp.input_kernels)
        if kernel is None or kernel.shape[0] != 784 or not is_primary():
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
        """The rows so far, written by process 0 once every process has saved."""
        sync("gpjax-rows")
        if not is_primary():
            return
        write_rows(self.rows, self.dir, metadata={**self.run_config,
                                                  "scenario": self.exp.scenario.description})


def _input_kernel_mask(masks: PyTree, patterns: Sequence[str]) -> np.ndarray | None:
    """The first input-fed kernel's mask as ``[inputs, units]`` (None: no such kernel)."""
    from gpjax.masks import input_fed_flags, masked_leaves
    for (_, m, _), fed in zip(masked_leaves(masks), input_fed_flags(masks, tuple(patterns))):
        if fed:
            m = np.asarray(m)
            return m.reshape(-1, m.shape[-1])
    return None


def load_round_models(directory: str | Path, round_index: int | None = None) -> dict:
    """A run's saved models of one round (default: the last): ``{"round", "model" (the Flax
    module), "recoverable", "nonrecoverable" (each ``{"params", "masks", "aux"}``; the latter
    None when the policy made none), "row", "input_shape"}``.

    Raises:
      FileNotFoundError: ``directory`` holds no saved models or not that round.
    """
    from gpjax.incremental.checkpoint import CONFIG_FILE, RoundCheckpointer
    from gpjax.models.registry import make_model
    from gpjax.tasks import classifier_task
    d = Path(directory) / MODELS_DIR
    if not (d / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{directory} holds no saved round models ({d}); give a "
                                "`gpjax run` directory DIR/<policy>-seed<seed> or a model store")
    config = json.loads((d / CONFIG_FILE).read_text())
    ckpt = RoundCheckpointer(d, config=config, max_to_keep=None, async_save=False)
    try:
        steps = ckpt.steps()
        r = steps[-1] if round_index is None and steps else round_index
        if r not in steps:
            raise FileNotFoundError(f"{d} has no round {round_index}; it has {steps}")
        meta = ckpt._read_doc(r)["meta"]
        exp = config["experiment"]
        model = make_model(exp["model"], exp["model_kwargs"])
        x = np.zeros((1, *meta["input_shape"]), np.float32)
        params, aux = classifier_task(model).init(jax.random.PRNGKey(0), (x, None))
        m = {"params": params, "masks": gpjax.init_masks(params), "aux": aux}
        tree, meta = ckpt.restore(r, {"recoverable": m, "nonrecoverable": m})
    finally:
        ckpt.close()
    return {"round": r, "model": model, "recoverable": tree["recoverable"],
            "nonrecoverable": tree["nonrecoverable"] if meta["has_nonrecoverable"] else None,
            "row": meta["row"], "input_shape": meta["input_shape"]}


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
    overwrite: bool = False,
    release_compiled_at: float | None = 0.25,
) -> list[dict]:
    """Runs every round of ``config``'s scenario with ``policy`` and ``seed``.

    Args:
      config: an experiment config (data loaded here) or an already built experiment.
      policy: the update policy value.
      seed: the run seed (initialisation, data order, augmentation; the chunk partition too
        when the config's ``data_seed`` is None).
      out: output directory; the run writes under ``out/<policy>-seed<seed>/``
        (``checkpoints/``, ``models/`` (every round's recoverable and non-recoverable model),
        ``results.json``, ``results.csv``, ``heatmaps/``), holding its lock meanwhile.
      resume: continue from the newest intact checkpoint there (a fresh start if none).
      progress: tqdm bars per round and phase.
      devices: devices of the data-parallel mesh (default: every device of every process).
      max_to_keep: checkpoints kept.
      callback: optional ``callback(event, round, state, carry)``, called with
        ``"round_start"`` (the start state; ``carry``: the previous round's model or None) and
        ``"round_end"`` (the final recoverable state; ``carry``: the model the next round
        starts from). For tests and monitoring; it must not modify the arrays.
      overwrite: replace a ``results.json`` there that another config wrote.
      release_compiled_at: after a round, drop JAX's in-memory compiled programs
        (``jax.clear_caches()``, which clears every jit cache of the process) once the process
        holds more than this fraction of the OS's memory-map limit (:func:`map_pressure`; 0:
        after every round; None: never). Each round brings new data shapes, so a long run keeps
        adding executables, each holding memory maps, until the OS refuses more: a DeepSpeech2
        run died in its 6th round with LLVM's "Cannot allocate memory" at Linux's 65,530 maps
        (~13K maps per round). Recurring shapes reload from the disk cache
        (:func:`gpjax.cli.enable_compile_cache`, on in the ``gpjax`` command).

    Returns:
      One row per round (see ``experiments/README.md`` for the fields).

    Raises:
      NonFiniteLossError: a NaN/inf loss; the message names round, phase and epoch.
      CheckpointMismatchError: resuming with a different config / model.
      FileExistsError: checkpoints exist and ``resume`` is False.
      ResultsConflictError: results of another config are there (and not ``overwrite``).
      DirectoryLockedError: another process is writing the run directory.
    """
    exp = config if isinstance(config, Experiment) else build(config, seed)
    r_dir = run_dir(out, policy, seed)
    with primary_lock(r_dir, what="run"):
        runner = _Run(exp, policy, seed, r_dir, resume=resume, progress=progress,
                      devices=devices, max_to_keep=max_to_keep, callback=callback,
                      overwrite=overwrite)
        try:
            return _run(runner, resume, release_compiled_at)
        finally:
            runner.close()


def map_pressure() -> float:
    """The share of the OS's memory-map limit this process holds (Linux: lines of
    ``/proc/self/maps`` over ``vm.max_map_count``; 0.0 where that cannot be read)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
    except (OSError, ValueError):
        return 0.0
    return maps / max(limit, 1)


def _run(runner: _Run, resume: bool, release_at: float | None) -> list[dict]:
    carry, carry_next, state, pos = None, None, None, _Position()
    if resume:
        got = runner.ckpt.restore_latest(runner.template())
        if got is not None:
            step, tree, meta = got
            runner.step = step
            runner.rows = list(meta["rows"])
            if meta["round_done"]:
                carry, pos = tree["carry"], _Position(meta["round"] + 1)
            else:
                state = tree["state"]
                carry_next = tree["carry"] if meta["has_carry"] else None
                pos = _Position(meta["round"], meta["progress"])
    if runner.rows:
        runner.write_rows()  # a run killed between its last checkpoint and writing its rows
    num_rounds = runner.exp.scenario.num_rounds
    bar = tqdm(total=num_rounds, initial=min(pos.round, num_rounds), disable=not runner.progress,
               desc=f"{runner.policy.name} seed {runner.seed}", dynamic_ncols=True)
    for r in range(pos.round, num_rounds):
        carry = runner.run_round(r, carry, state, pos, carry_next)
        state, carry_next, pos = None, None, _Position(r + 1)
        if release_at is not None and map_pressure() >= release_at:
            jax.clear_caches()
        last = runner.rows[-1]
        bar.set_postfix(err=f"{last['test_error']:.2f}%", params=last["params_recoverable"],
                        epochs=f"{last['epochs']:.1f}")
        bar.update()
    bar.close()
    return runner.rows
