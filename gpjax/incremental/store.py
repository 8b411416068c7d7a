"""The model store: the versions of one model as real data arrive, each a folder.

Layout of a store directory::

    STORE/
      store.json          what the model is: spec, task, policy and its config, the recipe
      LATEST              the version users get by default (written atomically)
      versions/0000/      manifest.json + checkpoint/ (Orbax: the training state, the model the
      versions/0001/        next update starts from, the non-recoverable model) +
                            manifest.sha256 (the manifest's digest; the manifest holds every
                            checkpoint file's: :mod:`gpjax.incremental.integrity`)
      work/               an update in progress (its checkpoints); gone when it finishes
      .gpjax.lock         held while a command writes (one writer at a time)

A version is made by :meth:`ModelStore.init` (the first model: round 0 of the policy, i.e. grow
and prune from a connected sparse seed for ``growprune``) or :meth:`ModelStore.update` (the
policy's update round: inherit, grow on the new data first, then on all data, prune). Both go
through the one round runner (:func:`gpjax.incremental.runner.update`). The data of an update
are the new examples plus every earlier one: the store finds the earlier files through the
parent's manifest and checks their fingerprints. Each file is split into training and
validation examples by a seeded rule that depends on its content only (or a validation file is
given), so no update ever trains on an earlier version's validation examples.

Nothing is lost: an update writes its version to a hidden folder and renames it into
``versions/`` when complete, then moves ``LATEST``; a crash leaves the store as it was, and
``update(..., resume=True)`` continues the interrupted update from its last checkpoint in
``work/``, giving the same version as an uninterrupted run (time fields aside). A command
stopped after the version folder's rename (before ``LATEST`` moved or ``work/`` went) is
finished by the next writer.

Damage is found before it breaks anything: :meth:`ModelStore.verify` checks every version's
files against the digests recorded when it was written; ``history`` marks a damaged version
``unreadable``, and loading, evaluating, promoting or updating from one is refused with a
:class:`StoreError` naming the file and the fix (``promote`` the last healthy version, or
``update(..., parent=N)``). A missing or dangling ``LATEST`` is named with the versions
present.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import gpjax
from gpjax._files import atomic_write_text, replace_dir
from gpjax.data.npz import DataFile, DataFileError, check_source, holdout, read_data
from gpjax.data.pipeline import DataConfig, SourceSplit
from gpjax.data.stream import num_examples, take
from gpjax.distributed import DataMesh, is_primary, primary_lock, sync
from gpjax.incremental import integrity
from gpjax.incremental.checkpoint import CheckpointCorruptError, RoundCheckpointer
from gpjax.incremental.lock import DirectoryLock
from gpjax.incremental.phases import Trainer, new_state
from gpjax.incremental.policies import Budget, Policy, make_policy, policy_to_dict, with_budget
from gpjax.incremental.runner import RoundData, model_of, nonrecoverable, update, update_record
from gpjax.models.adapter import as_adapter
from gpjax.models.registry import make_model, model_class
from gpjax.tasks import TASKS
from gpjax.train import OptimizerConfig, TrainState, evaluate, make_optimizer

PyTree = Any
FORMAT = "gpjax-model-store"
FORMAT_VERSION = 1
STORE_FILE = "store.json"
LATEST = "LATEST"
VERSIONS = "versions"
WORK = "work"


class StoreError(ValueError):
    """A store command cannot be carried out; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every version of a store is trained (recorded in ``store.json``).

    Attributes:
      optimizer: the optimiser recipe.
      batch_size, eval_batch_size: mini-batch sizes of training and of evaluation.
      augment: affine distortions of training images (28x28 MNIST-like inputs).
      validation_fraction: share of each data file held out for validation.
      seed: seed of initialisation, data order and the validation split.
      checkpoint_every, prune_checkpoint_every: in-update checkpoints (for ``--resume``).
      checkpoint_interval_s: at most one in-update checkpoint inside a phase per this many
        seconds (phase ends always save; 0: every time).
      data: how data reach the device: an update whose files (as float32) fit
        ``data.memory_budget`` loads them whole, a larger one streams them (Grain).
    """

    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = False
    validation_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: int = 5
    prune_checkpoint_every: int = 5
    checkpoint_interval_s: float = 60.0
    data: DataConfig = DataConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        d = dict(d)
        d["optimizer"] = OptimizerConfig(**d.get("optimizer", {}))
        d["data"] = DataConfig(**d.get("data", {}))
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One version, loaded: the module and its arrays.

    Attributes:
      version: its number.
      model: the Flax module.
      params, masks, aux: the recoverable model (the one later updates inherit).
      nonrecoverable: ``{"params", "masks", "aux"}`` of the non-recoverable model, or None.
      manifest: the version's ``manifest.json``.
      state: the full training state (optimiser state and key included).
    """

    version: int
    model: Any
    params: PyTree
    masks: PyTree
    aux: PyTree
    nonrecoverable: dict | None
    manifest: dict
    state: TrainState


def _head(data: tuple | SourceSplit, n: int) -> tuple:
    """The first ``n`` examples of arrays or of a streamed split, as arrays."""
    if isinstance(data, SourceSplit):
        return data.examples(np.arange(min(n, len(data))))
    return tuple(a[:n] for a in data)


def _vname(v: int) -> str:
    return f"{v:04d}"


def _task_of(kind: str):
    if kind not in TASKS and ":" not in kind:
        raise StoreError(f"unknown task {kind!r}; Fix: use classifier, regression or an import "
                         "path module:function returning (Task, metrics)")
    return TASKS[kind] if kind in TASKS else model_class(kind)


class ModelStore:
    """A directory of model versions (see the module docstring).

    Make one with :meth:`create`, open one with :meth:`open`.
    """

    def __init__(self, path: Path, spec: dict) -> None:
        self.path = path
        self.spec = spec
        self.recipe = Recipe.from_dict(spec["recipe"])
        search = spec["model"].get("search_path")
        self.model = make_model(spec["model"]["spec"], spec["model"].get("kwargs"),
                                search_path=search)
        factory = _task_of(spec["task"])
        augment = None
        if self.recipe.augment:
            from gpjax.data.augment import affine_augment
            augment = affine_augment
        self.task, self.metrics = factory(self.model, augment=augment,
                                          eval_batch_size=self.recipe.eval_batch_size)
        self.trainer = Trainer(self.task, make_optimizer(self.recipe.optimizer),
                               self.recipe.batch_size, self.recipe.eval_batch_size, True,
                               data_config=self.recipe.data)

    # ------------------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | os.PathLike, *, model: str, model_kwargs: dict | None = None,
               task: str = "classifier", policy: str = "growprune",
               policy_overrides: dict | None = None, recipe: Recipe = Recipe(),
               search_path: str | os.PathLike | None = None) -> ModelStore:
        """Makes an empty store at ``path`` (which must not exist or be empty).

        Args:
          path: the store directory.
          model: a zoo name (``lenet300``...) or ``"package.module:Class"``.
          model_kwargs: constructor arguments.
          task: a :data:`gpjax.tasks.TASKS` kind or ``"module:function"`` returning
            ``(Task, metrics)`` like :func:`gpjax.tasks.make_task`'s entries.
          policy: the update policy (growprune, tfs, nft, nest, merged).
          policy_overrides: its field overrides (dotted keys: ``{"prune.tolerance": 0.3}``).
          recipe: optimiser, batch sizes, validation fraction, seed.
          search_path: directory holding the model's module (recorded).

        Raises:
          StoreError: ``path`` is a non-empty directory or a file; the model cannot be made.
        """
        path = Path(path).expanduser().absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"{path} exists and is not an empty directory; choose a new path")
        pol = make_policy(policy, policy_overrides or {})
        if search_path is None and ":" in model:
            search_path = os.getcwd()
        spec = {"format": FORMAT, "version": FORMAT_VERSION, "created": time.time(),
                "model": {"spec": model, "kwargs": dict(model_kwargs or {}),
                          "search_path": str(search_path) if search_path else None},
                "task": task, "policy": policy, "policy_overrides": dict(policy_overrides or {}),
                "policy_config": policy_to_dict(pol), "recipe": recipe.to_dict(),
                "input_shape": None, "num_classes": None}
        store = cls(path, spec)  # makes the model and task: bad specs fail before writing
        sync("gpjax-store-create")  # every process checked before process 0 writes
        if is_primary():
            path.mkdir(parents=True, exist_ok=True)
            (path / VERSIONS).mkdir()
            DirectoryLock(path).path.touch()  # later commands leave the store's files as is
            atomic_write_text(path / STORE_FILE, json.dumps(spec, indent=1) + "\n")
        sync("gpjax-store-created")
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> ModelStore:
        """Opens the store at ``path``.

        Raises:
          StoreError: ``path`` is not a store.
        """
        path = Path(path).expanduser().absolute()
        f = path / STORE_FILE
        try:
            spec = json.loads(f.read_text())
            assert spec.get("format") == FORMAT
        except (OSError, ValueError, AssertionError):
            if f.exists() and (path / VERSIONS).is_dir():
                raise StoreError(f"{f} is damaged (not a readable store description); its "
                                 "versions are untouched. Fix: restore that file from a backup "
                                 "of the store") from None
            raise StoreError(f"{path} is not a gpjax model store (no readable {STORE_FILE}); "
                             "make one with `gpjax init`") from None
        return cls(path, spec)

    # ------------------------------------------------------------------------- versions
    def versions(self) -> list[int]:
        """The complete versions, oldest first."""
        d = self.path / VERSIONS
        return sorted(int(p.name) for p in d.iterdir()
                      if p.name.isdigit() and (p / "manifest.json").exists())

    def latest(self) -> int | None:
        """The version ``LATEST`` names (None before the first, or when it is unreadable)."""
        try:
            return int((self.path / LATEST).read_text().strip())
        except (OSError, ValueError):
            return None

    def manifest(self, version: int | None = None) -> dict:
        """A version's manifest (default: LATEST).

        Raises:
          StoreError: no such version, or its manifest is damaged (the message says what to do).
        """
        v = self._version(version)
        check, manifest = integrity.check_version(self.path, self._vdir(v), files=False)
        if manifest is None:
            raise StoreError(self._damaged_message(check))
        return manifest

    def history(self) -> list[dict]:
        """Every version's manifest, oldest first, with ``latest`` marking LATEST's; a damaged
        version is ``{"version", "latest", "unreadable": "<file> (<why>)"}`` plus whatever of
        its manifest is intact."""
        latest = self.latest()
        out = []
        for v in self.versions():
            check, manifest = integrity.check_version(self.path, self._vdir(v))
            row = {**{k: x for k, x in (manifest or {}).items() if k != "integrity"},
                   "version": v, "latest": v == latest}
            out.append(row if check.healthy else {**row, "unreadable": check.describe()})
        return out

    def verify(self, version: int | None = None) -> integrity.VerifyResult:
        """Checks every version (or one) against the digests recorded when it was written.

        Args:
          version: one version to check (default: all).

        Returns:
          A :class:`~gpjax.incremental.integrity.VerifyResult` (``.ok``, ``.damaged``).
        """
        dirs = sorted(p for p in (self.path / VERSIONS).iterdir() if p.name.isdigit())
        problems = ()
        if version is not None:
            dirs = [d for d in dirs if int(d.name) == int(version)]
            if not dirs:
                self._version(version)  # the "no such version" message
        elif self.versions() and self.latest() not in self.versions():
            problems = (str(self._no_latest(self.versions())),)
        return integrity.VerifyResult(
            self.path, tuple(integrity.check_version(self.path, d)[0] for d in dirs), problems)

    def _vdir(self, v: int) -> Path:
        return self.path / VERSIONS / _vname(v)

    def _healthy(self, v: int) -> int:
        """``v`` when its files are intact; else a StoreError naming the file and the fix."""
        check, _ = integrity.check_version(self.path, self._vdir(v))
        if not check.healthy:
            raise StoreError(self._damaged_message(check))
        return v

    def _damaged_message(self, check: integrity.VersionCheck) -> str:
        others = [c for c in self.verify().versions if c.healthy and c.version != check.version]
        p = self.path
        fix = ("Fix: restore the store from a backup (no healthy version is left)" if not others
               else f"Fix: make the last healthy version LATEST with `gpjax promote {p} "
                    f"--version {others[-1].version}`, or update from it with `gpjax update "
                    f"{p} --from {others[-1].version} --data ...`")
        return (f"version {check.version} of {p} is damaged: {check.describe()}; "
                f"`gpjax verify {p}` lists every damaged file. {fix}")

    def _no_latest(self, have: list[int]) -> StoreError:
        f = self.path / LATEST
        if not have:
            return StoreError(f"{self.path} has no version yet; make one with `gpjax init`")
        try:
            what = f"names version {int(f.read_text().strip())}, which the store does not hold"
        except FileNotFoundError:
            what = "is missing"
        except (OSError, ValueError) as e:
            what = f"cannot be read ({getattr(e, 'strerror', None) or e})"
        return StoreError(f"{f} {what}; the store holds versions {', '.join(map(str, have))}. "
                          f"Fix: choose the one to use with `gpjax promote {self.path} --version "
                          f"N` (`gpjax history {self.path}` lists them)")

    def _version(self, version: int | None) -> int:
        have = self.versions()
        if version is None:
            version = self.latest()
            if version is None or int(version) not in have:
                raise self._no_latest(have)
        if int(version) not in have:
            raise StoreError(f"{self.path} has no version {version}; it has "
                             f"{', '.join(map(str, have)) or 'none'} (`gpjax history`)")
        return int(version)

    def promote(self, version: int) -> None:
        """Points ``LATEST`` at ``version`` (roll back or forward); a damaged one is refused."""
        with DirectoryLock(self.path, what="model store command"):
            v = self._healthy(self._version(version))
            atomic_write_text(self.path / LATEST, _vname(v) + "\n")

    # ------------------------------------------------------------------------- load
    def _template(self) -> dict:
        shape = self.spec["input_shape"]
        x = np.zeros((1, *shape), np.float32)
        st = new_state(self.trainer, jax.random.PRNGKey(0), (x, np.zeros((1,), np.int32)))
        m = model_of(st)
        return {"state": st, "carry": m, "nonrecoverable": m}

    def _restore(self, v: int) -> tuple[dict, dict]:
        ckpt = RoundCheckpointer(self._vdir(v) / "checkpoint", config=self._ckpt_config(),
                                 async_save=False)
        try:
            return ckpt.restore(0, self._template())
        except (CheckpointCorruptError, FileNotFoundError) as e:  # a store without digests
            first = str(e).splitlines()[0][:300]
            check = integrity.VersionCheck(v, integrity.DAMAGED, (integrity.Damage(
                f"{VERSIONS}/{_vname(v)}/checkpoint", first),))
            raise StoreError(self._damaged_message(check)) from None
        finally:
            ckpt.close()

    def load(self, version: int | None = None) -> LoadedModel:
        """A version's models (default: LATEST).

        Raises:
          StoreError: no such version, or it is damaged (the message names the file and fix).
        """
        v = self._healthy(self._version(version))
        tree, meta = self._restore(v)
        st = tree["state"]
        nonrec = tree["nonrecoverable"] if meta.get("has_nonrecoverable") else None
        return LoadedModel(v, self.model, st.params, st.masks, st.aux, nonrec,
                           self.manifest(v), st)

    def evaluate(self, data: str | os.PathLike | tuple, *, version: int | None = None) -> dict:
        """Error of a version (default: LATEST) on a data file: ``{"version", "n",
        "test_error", ("test_error_nonrecoverable")}`` (percent)."""
        m = self.load(version)
        f = self._read(data)
        out = {"version": m.version, "n": len(f), "data": f.name,
               **self.metrics(m.params, m.aux, self._view(f))}
        if m.nonrecoverable is not None:
            nr = m.nonrecoverable
            out.update({f"{k}_nonrecoverable": v
                        for k, v in self.metrics(nr["params"], nr["aux"], self._view(f)).items()})
        return out

    # ------------------------------------------------------------------------- data
    def _read(self, source) -> DataFile:
        return read_data(source, input_shape=self.spec["input_shape"],
                         num_classes=self.spec["num_classes"],
                         regression=self.spec["task"] == "regression",
                         target_shape=self.spec.get("target_shape"))

    def _view(self, f: DataFile, streamed: bool | None = None) -> tuple | SourceSplit:
        """A file's examples: arrays in memory, or (beyond the recipe's memory budget, or when
        ``streamed``) a streamed split read through the Grain pipeline."""
        if streamed is None:
            streamed = not self.recipe.data.fits(f.nbytes())
        return SourceSplit([f]) if streamed else f.arrays

    def _entry(self, f: DataFile, role: str, added_in: int) -> dict:
        """A file's manifest entry; ``role``: "train" (a held-out fraction validates),
        "train_all" (every example trains: a validation file was given) or "validation"."""
        entry = {"path": f.name, "n": len(f), "sha256": f.sha256, "role": role,
                 "added_in": added_in}
        if role == "train":
            tr, va = holdout(f, self.recipe.validation_fraction, self.recipe.seed)
            entry.update(n_train=len(tr), n_validation=len(va),
                         split={"fraction": self.recipe.validation_fraction,
                                "seed": self.recipe.seed})
        return entry

    def _parts(self, f: DataFile, entry: dict, streamed: bool) -> tuple:
        """(training examples, validation examples) of a file by its manifest entry: arrays,
        or streamed splits (the hold-out taken by index)."""
        whole = self._view(f, streamed)
        if entry["role"] == "validation":
            return None, whole
        if entry["role"] == "train_all":
            return whole, None
        tr, va = holdout(f, entry["split"]["fraction"], entry["split"]["seed"])
        return take(whole, tr), (take(whole, va) if len(va) else None)

    def _old_files(self, parent: dict, old: Sequence | None) -> list[tuple[DataFile, dict]]:
        """The parent's data, found through its manifest (fingerprints checked), or ``old``."""
        if old:
            files = [self._read(o) for o in old]
            recorded = {e["sha256"]: e for e in parent["data"]}
            return [(f, recorded.get(f.sha256) or self._entry(f, "train", -1)) for f in files]
        out = []
        for e in parent["data"]:
            if e["path"].startswith("<"):
                raise StoreError(f"version {parent['version']} was trained on in-memory arrays "
                                 f"{e['path']}; pass the earlier data explicitly (--old)")
            try:
                f = self._read(e["path"])
            except DataFileError as err:
                raise StoreError(f"earlier data file {e['path']} (version {e['added_in']}) "
                                 f"cannot be read: {err}; pass the earlier data with --old") \
                    from None
            if f.sha256 != e["sha256"]:
                raise StoreError(f"earlier data file {e['path']} (version {e['added_in']}) has "
                                 f"changed since it was used (fingerprint {f.sha256[:12]}, "
                                 f"recorded {e['sha256'][:12]}); restore it, or pass the "
                                 "earlier data explicitly with --old")
            out.append((f, e))
        return out

    # ------------------------------------------------------------------------- init / update
    def init(self, data, *, validation=None, test=None, resume: bool = False,
             progress: bool = True) -> dict:
        """The first version: round 0 of the policy on ``data``. Returns its manifest."""
        done = self._finish_work()
        if done is not None and resume:
            return done
        if self.versions():
            raise StoreError(f"{self.path} already has versions; add data with `gpjax update`")
        if not resume and (self.path / WORK).exists():
            raise StoreError(f"{self.path} holds an interrupted init; continue it with "
                             "`gpjax init STORE --resume --data ...` or delete the store")
        return self._make(data, validation, test, old=None, resume=resume, progress=progress)

    def update(self, new_data, *, old: Sequence | None = None, validation=None, test=None,
               max_forgetting: float | None = None, resume: bool = False,
               progress: bool = True, policy: str | None = None,
               policy_overrides: dict | None = None,
               budget: Budget = Budget(), parent: int | None = None) -> dict:
        """A new version from the LATEST one (or ``parent``) and ``new_data`` plus every
        earlier example.

        Args:
          new_data: the new examples (an ``.npz`` path, a directory of ``x.npy`` + ``y.npy``,
            an ArrayRecord file, ``tfds:NAME`` or ``(x, y)``).
          old: the earlier data, given explicitly (instead of the manifests' files).
          validation: a validation file for the new data (default: a held-out fraction).
          test: a test file, reported only.
          max_forgetting: error points the old data's validation error may rise; beyond it the
            version is kept but ``LATEST`` stays where it was.
          resume: continue an interrupted update from its checkpoints in ``work/``.
          policy: this update's policy instead of the store's (e.g. "tfs").
          policy_overrides: field overrides of this update's policy (dotted keys, as
            :meth:`create` takes them), on top of the store's own when the policy is the
            store's; recorded in the manifest's ``policy``.
          budget: a size target and/or a cost cap for this update
            (:class:`~gpjax.incremental.policies.Budget`; recorded in the manifest's
            ``budget``).
          parent: the version to update from (default: LATEST), e.g. the last healthy one.

        Returns:
          The new version's manifest (``promoted`` says whether LATEST moved).

        Raises:
          StoreError: among others, a budget that is not positive or a target above the
            model's connections (checked before anything is written).
        """
        if not self.versions():
            raise StoreError(f"{self.path} has no version yet; make the first with `gpjax init`")
        self._check_budget(budget)
        done = self._finish_work()
        if done is not None and resume:
            return done
        return self._make(new_data, validation, test, old=old, resume=resume,
                          progress=progress, max_forgetting=max_forgetting,
                          policy=(policy, dict(policy_overrides or {})),
                          budget=budget, parent=parent)

    def _check_budget(self, budget: Budget) -> None:
        n, e = budget
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise StoreError(f"--target-params must be a positive number of connections, got "
                             f"{n!r}; Fix: give an integer N >= 1")
        if e is not None and (isinstance(e, bool) or not e > 0):
            raise StoreError(f"--max-epochs must be a positive number of normalised epochs, "
                             f"got {e!r}; Fix: give E > 0 (e.g. --max-epochs 20)")
        if n is not None:
            dense = gpjax.count_params(self._template()["state"].masks).dense
            if n > dense:
                raise StoreError(f"--target-params {n} is more than the model's {dense} "
                                 f"connections; Fix: give N <= {dense} (`gpjax history` shows "
                                 "the versions' sizes)")

    def _policy(self, choice: tuple[str | None, dict] | None) -> Policy:
        """The policy of an update: ``(name or None for the store's, field overrides)``."""
        name, overrides = choice or (None, {})
        if name is None or name == self.spec["policy"]:
            return make_policy(self.spec["policy"], {**self.spec["policy_overrides"],
                                                     **overrides})
        return make_policy(name, overrides)

    def _ckpt_config(self) -> dict:
        return {"store": {k: self.spec[k] for k in ("model", "task", "recipe")}}

    def _make(self, data, validation, test, *, old, resume, progress, max_forgetting=None,
              policy=None, budget: Budget = Budget(), parent=None) -> dict:
        t_start = time.time()
        with primary_lock(self.path, what="model store command"):
            job = self._prepare(data, validation, test, old, policy, budget, parent)
            work = self.path / WORK
            if resume and not work.exists() and _same_new_data(job["parent"], job["record"]):
                _sweep(self.path)
                return job["parent"]  # the update to resume finished (its work/ is gone)
            if work.exists() and not resume:
                raise StoreError(f"{work} holds an interrupted update; continue it with "
                                 "--resume, or delete that folder to drop it")
            if resume and work.exists():
                saved = json.loads((work / "job.json").read_text())
                if saved != job["record"]:
                    raise StoreError(f"the interrupted update in {work} was for other data or "
                                     "settings; rerun it with the same command, or delete "
                                     f"{work}")
            fresh = not work.exists()
            sync("gpjax-store-checked")  # every process checked before process 0 writes
            try:
                if is_primary():
                    atomic_write_text(self.path / STORE_FILE,
                                      json.dumps(self.spec, indent=1) + "\n")
                    work.mkdir(exist_ok=True)
                    atomic_write_text(work / "job.json", json.dumps(job["record"], indent=1))
                manifest = self._run(job, work, progress, t_start, max_forgetting)
            except BaseException:
                if fresh and is_primary():
                    _drop_unstarted(work)
                raise
            sync("gpjax-store-done")
            return manifest

    def _finish_work(self) -> dict | None:
        """Completes an update killed after its version was written, before ``LATEST`` moved
        or ``work/`` was removed. Returns that version's manifest (None: nothing to finish)."""
        job = self.path / WORK / "job.json"
        if not job.parent.exists():
            return None
        with primary_lock(self.path, what="model store command"):
            try:
                v = int(json.loads(job.read_text())["version"])
            except FileNotFoundError:  # what a removal of work/ stopped midway left
                if is_primary():
                    shutil.rmtree(job.parent)
                return None
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if v not in self.versions():
                return None
            check, manifest = integrity.check_version(self.path, self._vdir(v))
            if not check.healthy or manifest is None:
                return None
            self._publish(v, manifest)
            return manifest

    def _publish(self, v: int, manifest: dict) -> None:
        """After version ``v`` is in place: ``LATEST`` moves to it (if promoted), ``work/``
        goes. Process 0 only."""
        if not is_primary():
            return
        if manifest.get("promoted", True):
            atomic_write_text(self.path / LATEST, _vname(v) + "\n")
        # Cleaning up, which may fail without harm: a work/ left is finished by the next
        # writer (_finish_work). Renamed first: a removal stopped midway never leaves a work/
        # without its job.json. Then what stopped writers left: temporary files of atomic
        # writes, unfinished versions, finished work folders.
        try:
            replace_dir(self.path / WORK, self.path / f".{WORK}-done-{os.getpid()}")
        except OSError:
            pass
        _sweep(self.path)

    def _prepare(self, data, validation, test, old, policy, budget: Budget = Budget(),
                 parent_version=None) -> dict:
        """Reads and checks every input before anything is written."""
        first = not self.versions()
        if first:
            new = read_data(data, regression=self.spec["task"] == "regression") \
                if not isinstance(data, DataFile) else data
            self._fix_shapes(new)
        else:
            new = self._read(data)
        parent = None if first else self.manifest(self._healthy(self._version(parent_version)))
        version = 0 if first else max(self.versions()) + 1
        files = [] if first else self._old_files(parent, old)
        files.append((new, self._entry(new, "train", version)))
        if validation is not None:
            v = self._read(validation)
            files[-1] = (new, self._entry(new, "train_all", version))
            files.append((v, self._entry(v, "validation", version)))
        test_file = self._read(test) if test is not None else None
        pol = with_budget(self._policy(policy), budget)
        round_index = 0 if first else parent["round"] + 1
        record = {"version": version, "parent": None if first else parent["version"],
                  "round": round_index, "policy": policy_to_dict(pol),
                  "data": [e for _, e in files],
                  "test": None if test_file is None else {"path": test_file.name,
                                                          "sha256": test_file.sha256}}
        return {"record": record, "files": files, "test": test_file, "policy": pol,
                "parent": parent}

    def _fix_shapes(self, f: DataFile) -> None:
        """The first data fix the model's input shape and classes (or regression targets'
        shape), checked against the model's outputs and on later files."""
        x = f.read(np.arange(1))[0]
        adapter = as_adapter(self.model)
        params, aux = adapter.init(jax.random.PRNGKey(0), x[:1])
        out = jax.eval_shape(lambda: adapter.apply(params, aux, x[:1], train=False)[0])
        shape = tuple(getattr(out, "shape", ()))
        name = self.spec["model"]["spec"]
        if self.spec["task"] == "regression":
            want = tuple(f.source.spec.shapes[1])
            if shape not in ((1, *want),) + (((1,), (1, 1)) if not want else ()):
                raise StoreError(
                    f"model {name!r} returns outputs of shape {shape} for one example, but the "
                    f"regression targets are {list(want) or 'scalars'} (the task wants [B] or "
                    "[B, 1] for targets [N], [B, k] for [N, k]); Fix: give the model that many "
                    "outputs, or reshape y")
            self.spec = {**self.spec, "input_shape": list(x.shape[1:]), "num_classes": None,
                         "target_shape": list(want)}
            return
        if len(shape) != 2 or (self.spec["task"] == "classifier" and shape[-1] < 2):
            raise StoreError(
                f"model {name!r} returns outputs of shape {shape} for one example; a classifier "
                "returns logits [B, K] with K >= 2 classes; Fix: end the model with a dense "
                "layer of K outputs, or use --task regression for real-valued targets")
        check_source(f.source, num_classes=int(shape[-1]))
        self.spec = {**self.spec, "input_shape": list(x.shape[1:]),
                     "num_classes": int(shape[-1])}

    def _round_data(self, files) -> tuple[RoundData, dict]:
        new_v = max(e["added_in"] for _, e in files)
        streamed = not self.recipe.data.fits(sum(f.nbytes() for f, _ in files))
        parts = {"new": [], "old": [], "val_new": [], "val_old": []}
        for f, e in files:
            tr, va = self._parts(f, e, streamed)
            is_new = e["added_in"] == new_v
            if tr is not None:
                parts["new" if is_new else "old"].append(tr)
            if va is not None:
                parts["val_new" if is_new else "val_old"].append(va)
        cat = lambda xs: None if not xs else (  # noqa: E731
            functools.reduce(SourceSplit.concat, xs) if streamed
            else tuple(np.concatenate(cols) for cols in zip(*xs)))
        new = cat(parts["new"])
        every = cat(parts["old"] + parts["new"])
        val = {"old": cat(parts["val_old"]), "new": cat(parts["val_new"]),
               "all": cat(parts["val_old"] + parts["val_new"])}
        if val["all"] is None:
            raise StoreError("no validation examples: give --validation, or data files of two "
                             "or more examples")
        return RoundData(new, every, val["all"]), val

    def _run(self, job, work: Path, progress: bool, t_start: float,
             max_forgetting: float | None) -> dict:
        rec, pol = job["record"], job["policy"]
        data, val = self._round_data(job["files"])
        example = _head(data.all, 2)
        # Data parallel over every device of every process (each holds its rows only);
        # streamed splits are read block by block instead (one process).
        place = DataMesh()
        put = lambda d: d if d is None or isinstance(d, SourceSplit) else place.put(d)  # noqa: E731
        data = RoundData(*(put(d) for d in (data.new, data.all, data.validation)))
        val = {k: put(v) for k, v in val.items()}
        test = None if job["test"] is None else put(self._view(job["test"]))
        if jax.process_count() > 1 and any(isinstance(d, SourceSplit)
                                           for d in (data.new, data.all, data.validation)):
            raise StoreError(f"the data exceed the recipe's memory budget "
                             f"({self.recipe.data.memory_budget:,} bytes) and streamed data take "
                             "one process; Fix: run it in one process, or raise it with --set "
                             "data.memory_budget=BYTES at `gpjax init`")
        trainer = dataclasses.replace(self.trainer, progress=progress,
                                      batch_sharding=place.batch_sharding(self.trainer.batch_size))
        plan = pol.round_plan(rec["round"])
        ckpt = RoundCheckpointer(work / "checkpoints", config=self._ckpt_config(),
                                 max_to_keep=2, async_save=False)
        template = place.replicate(self._template())
        state, carry_next, resume = None, None, None
        got = ckpt.restore_latest(template)
        if got is not None:
            _, tree, meta = got
            state, resume = tree["state"], meta["progress"]
            carry_next = tree["carry"] if meta["has_carry"] else None
        carry = None
        if state is None and plan.start in ("inherit", "carry_dense"):
            # "inherit": the parent's recoverable model; "carry_dense": the model it carries
            # (NFT's dense one).
            tree, _ = self._restore(rec["parent"])
            carry = tree["carry"] if plan.start == "carry_dense" else model_of(tree["state"])
        step = [0 if got is None else got[0]]

        def snapshot(st, cn, progress_):
            step[0] += 1
            ckpt.save(step[0], {"state": st, "carry": cn if cn is not None else model_of(st),
                                "nonrecoverable": model_of(st)},
                      {"progress": progress_, "has_carry": cn is not None}, overwrite=True)

        measure = None if test is None else (
            lambda st: {"test_error": self.metrics(st.params, st.aux, test)["test_error"]})
        key = jax.random.fold_in(jax.random.PRNGKey(self.recipe.seed), rec["round"])
        try:
            state, carry_next, log = update(
                trainer, plan, data, pol.prune, state=state, key=key, example_batch=example,
                carry=carry, place=place.replicate, resume=resume, carry_next=carry_next,
                snapshot=snapshot,
                checkpoint_every=self.recipe.checkpoint_every,
                prune_checkpoint_every=self.recipe.prune_checkpoint_every,
                checkpoint_interval_s=self.recipe.checkpoint_interval_s, measure=measure)
        finally:
            ckpt.close()
        nonrec, nlog = None, None
        if pol.nonrecoverable is not None:
            nonrec, nlog = nonrecoverable(
                trainer, state, data, pol.nonrecoverable,
                max_epochs=log.cost.remaining(plan.max_epochs, log.cost.n_available))
        metrics = self._metrics(state, nonrec, val, test, job["parent"], log, data)
        metrics.update(update_record(log, nlog))
        if nlog is not None:
            metrics["epochs_nonrecoverable"] = nlog.epochs
        metrics["wall_time_total_s"] = time.time() - t_start
        promoted = True
        if (max_forgetting is not None and metrics["forgetting"] is not None
                and metrics["forgetting"] > max_forgetting):
            promoted = False
        manifest = {**rec, "created": time.time(), "gpjax_version": gpjax.__version__,
                    "model": self.spec["model"], "task": self.spec["task"],
                    "input_shape": self.spec["input_shape"],
                    "num_classes": self.spec["num_classes"],
                    "validation_rule": {"fraction": self.recipe.validation_fraction,
                                        "seed": self.recipe.seed},
                    "start": plan.start, "metrics": metrics, "promoted": promoted,
                    "max_forgetting": max_forgetting,
                    "prune_curve": log.prune_curve, "stopped": log.stopped,
                    "budget": _budget_record(pol, metrics)}
        manifest = self._write_version(rec["version"], state, carry_next, nonrec, manifest)
        self._publish(rec["version"], manifest)
        return manifest

    def _metrics(self, state, nonrec, val, test, parent, log, data) -> dict:
        err = lambda st, d: None if d is None else 100.0 * evaluate(  # noqa: E731
            st.params, st.aux, d, task=self.task, batch_size=self.recipe.eval_batch_size,
            data_config=self.recipe.data)
        counts = gpjax.count_params(state.masks)
        dead = gpjax.dead_units(state.masks, input_fed=list(self.task.input_kernels),
                                layout=self.task.layout)
        m = {"val_error_old": err(state, val["old"]), "val_error_new": err(state, val["new"]),
             "val_error": err(state, val["all"]),
             "test_error": None if test is None else self.metrics(
                 state.params, state.aux, test)["test_error"],
             "params": counts.active, "params_dense": counts.dense,
             "density": counts.active / max(counts.dense, 1),
             "dead_units": int(sum(d.inputs + d.outputs for d in dead.values())),
             "epochs": log.cost.epochs, "epochs_by_phase": log.cost.by_phase,
             "raw_epochs": log.cost.raw_epochs, "examples": log.cost.examples,
             "wall_time_s": log.cost.wall_time_s,
             "n_train": num_examples(data.all), "n_new": num_examples(data.new)}
        prev = None if parent is None else parent["metrics"]["val_error"]
        m["forgetting"] = (None if prev is None or m["val_error_old"] is None
                           else m["val_error_old"] - prev)
        if nonrec is not None:
            m.update(params_nonrecoverable=gpjax.count_params(nonrec.masks).active,
                     val_error_nonrecoverable=err(nonrec, val["all"]),
                     test_error_nonrecoverable=None if test is None else self.metrics(
                         nonrec.params, nonrec.aux, test)["test_error"])
        return m

    def _write_version(self, v: int, state, carry, nonrec, manifest: dict) -> dict:
        """Writes version ``v`` to a hidden folder (checkpoint, then the manifest with the
        digest of every checkpoint file, then the manifest's digest) and renames it into place.
        Returns the manifest written."""
        final = self._vdir(v)
        staging = self.path / VERSIONS / f".staging-{_vname(v)}"
        if is_primary():
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir()
        sync("gpjax-store-staging")
        ckpt = RoundCheckpointer(staging / "checkpoint", config=self._ckpt_config(),
                                 max_to_keep=None, async_save=False)
        try:
            ckpt.save(0, {"state": state, "carry": carry,
                          "nonrecoverable": model_of(nonrec) if nonrec else model_of(state)},
                      {"has_nonrecoverable": nonrec is not None, "version": v})
        finally:
            ckpt.close()
        sync("gpjax-store-saved")  # every process's shards are on disk
        if not is_primary():
            return manifest
        manifest = {**manifest, "integrity": integrity.record(staging)}
        text = json.dumps(manifest, indent=1) + "\n"
        atomic_write_text(staging / integrity.MANIFEST, text)
        atomic_write_text(staging / integrity.MANIFEST_DIGEST, integrity.manifest_digest(text))
        if final.exists():  # a damaged version folder left by older versions of gpjax
            shutil.rmtree(final)
        replace_dir(staging, final)
        return manifest


def _sweep(store: Path) -> None:
    """Removes what stopped writers left (best effort): temporary files of atomic writes,
    unfinished versions (``.staging-*``), finished work folders (``.work-done-*``)."""
    for p in [*store.glob(".*.tmp*"), *store.glob(f".{WORK}-done-*"),
              *(store / VERSIONS).glob(".staging-*")]:
        try:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        except OSError:
            pass


def _same_new_data(made: dict | None, record: dict) -> bool:
    """Whether version ``made`` was itself made from the new data of job ``record``."""
    new = lambda m: sorted((e["sha256"], e["role"]) for e in m["data"]  # noqa: E731
                           if e["added_in"] == m["version"])
    return made is not None and new(made) == new(record)


def _drop_unstarted(work: Path) -> None:
    """Removes ``work/`` of a command that failed before its first complete checkpoint (a
    refusal or a fault leaves nothing behind); one with a checkpoint stays for ``--resume``."""
    ckpts = work / "checkpoints"
    try:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return
    except OSError:
        return
    shutil.rmtree(work, ignore_errors=True)


def _budget_record(pol: Policy, metrics: dict) -> dict:
    """The manifest's ``budget``: what was asked (``target_params``, ``max_epochs``; None
    when not) and whether the version meets it (``target_met``, ``within_max_epochs``: None
    when not asked). The cap covers the update and its non-recoverable post-processing."""
    target, cap = pol.prune.target_params, pol.max_epochs
    spent = metrics["epochs"] + (metrics.get("epochs_nonrecoverable") or 0.0)
    return {"target_params": target, "max_epochs": cap,
            "target_met": None if target is None else metrics["params"] <= target,
            "within_max_epochs": None if cap is None else spent <= cap + 1e-9,
            "epochs_spent": spent}


__all__ = ["LoadedModel", "ModelStore", "Recipe", "StoreError"]
