"""Round checkpoints: params, masks, optimiser and RNG state, carried across rounds with Orbax.

:class:`RoundCheckpointer` wraps an :class:`orbax.checkpoint.CheckpointManager` and adds what an
incremental run needs on top of it:

* **Any pytree**, including ``None`` leaves (masks on unmasked leaves), typed PRNG keys
  (``jax.random.key``), optax states (NamedTuples) and Python scalars. The state is flattened to
  ``{"leaf_00000": array, ...}`` for Orbax, and a JSON *manifest* records, per leaf, its path
  (``jax.tree_util.keystr``), kind (array / None / PRNG key / Python scalar), shape, dtype and a
  CRC32 of its bytes. Restoring rebuilds the tree with the *structure of ``like``*, so the tree
  types (NamedTuples, Flax dicts, ``MaskedState``) come from the caller, never from the file.
* **Config guard.** The run config (a JSON-able dict) is written to ``gpjax_config.json`` in the
  directory with the first checkpoint; opening the directory again with a different config raises
  :class:`CheckpointMismatchError` listing each differing key (old vs new).
* **Structure guard.** Restoring into a ``like`` whose leaf paths, kinds or shapes differ from the
  saved state raises :class:`CheckpointMismatchError` naming every differing leaf path. dtypes are
  not checked: restored leaves are cast to ``like``'s dtype.
* **Atomic, durable saves.** Orbax writes each step to a temporary directory and renames it into
  place when complete (``commit_success.txt`` on object stores); a process killed at any moment,
  mid-save included, leaves the previous complete step restorable. ``save`` waits for the
  (asynchronous) write to finish unless ``wait=False``, so "save returned" means the step is on
  disk (in the OS's page cache: it survives a SIGKILL; no fsync against power loss).
* **Corruption fallback.** A step that cannot be read (file deleted or truncated, unparsable
  manifest, CRC mismatch) is reported with a :class:`CorruptCheckpointWarning` (and a log record),
  moved aside to ``<directory>/_corrupt/<step>-<time>`` and :meth:`restore_latest` falls back to
  the previous step. The corrupt step is moved so that the resumed run can save that step again.
* **Resharding.** Arrays are restored onto the shardings carried by ``like`` (a ``jax.Array``'s
  ``.sharding`` or a ``jax.ShapeDtypeStruct(..., sharding=...)``); leaves without one go to the
  default device. The device count and mesh at restore time need not match those at save time.

Example::

    ckpt = RoundCheckpointer(out / "ckpt", config=dataclasses.asdict(cfg), max_to_keep=3)
    got = ckpt.restore_latest(like={"params": params, "masks": masks, "opt_state": opt_state,
                                    "key": key})
    if got is not None:
        step, state, meta = got
    ...
    ckpt.save(step, {"params": params, "masks": masks, "opt_state": opt_state, "key": key},
              {"round": r, "phase": "grow", "epoch": e, "rows": rows})
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gpjax._files import atomic_write_text
from gpjax.incremental.configjson import config_diff, flatten_dict, jsonable, with_defaults

PyTree = Any

logger = logging.getLogger(__name__)

FORMAT = "gpjax-round-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "gpjax_config.json"
CORRUPT_DIR = "_corrupt"
_ARRAYS = "arrays"
_DOC = "gpjax"
_MAX_LISTED = 25

_NONE = "none"
_ARRAY = "array"
_KEY = "prng_key"
_SCALAR = "scalar"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit: different run config, or a state of another structure/shape."""


class CheckpointCorruptError(RuntimeError):
    """A checkpoint step exists but cannot be read back intact."""


class CorruptCheckpointWarning(RuntimeWarning):
    """Warned when a corrupt step is skipped and an older one is used."""


# ----------------------------------------------------------------------------- tree helpers


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _kind(x: Any, *, path: str) -> str:
    if x is None:
        return _NONE
    if _is_key(x):
        return _KEY
    if isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return _ARRAY
    if isinstance(x, (bool, int, float)):
        return _SCALAR
    raise TypeError(f"checkpoint leaf {path} is a {type(x).__name__}; leaves must be arrays, "
                    f"jax.ShapeDtypeStruct, typed PRNG keys, Python scalars or None. Convert it "
                    f"(e.g. np.asarray) or move it into the JSON meta.")


def _flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return [(jax.tree_util.keystr(p), x) for p, x in leaves], treedef


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data) & 0xFFFFFFFF


def _host_crc(x: Any) -> int | None:
    """CRC32 of an array's bytes, or None where it is not fully addressable (multi-host)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return _crc(np.asarray(x))


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _key_data_sharding(sharding: Any, extra_dims: int) -> jax.sharding.Sharding:
    """Sharding for a typed key's raw data (trailing key dims replicated)."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec) + (None,) * extra_dims
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return sharding
    return _default_sharding()


# ----------------------------------------------------------------------------- the checkpointer


class RoundCheckpointer:
    """Orbax-backed checkpoints of an incremental run, guarded by the run config.

    Args:
      directory: where the steps live (created if missing). Must not be shared by runs of
        different configs.
      config: the run config as a JSON-able dict; compared with the one stored in ``directory``.
      defaults: the same layout with every field's default: a key the stored config lacks
        (a field added since it was saved) counts as holding its default (:func:`with_defaults`).
      free: dotted keys of ``config`` that may differ from the stored config (the stored file
        keeps its value): e.g. ``"experiment.rounds"``, so a run can be continued for more
        rounds.
      max_to_keep: how many newest steps Orbax keeps (older ones are deleted after a save).
      async_save: let Orbax write in a background thread (``save`` still waits unless told not).
      checksums: store a CRC32 of every leaf and verify it on restore (catches silently damaged
        data, at the cost of one host copy of the state per save and restore).

    Raises:
      CheckpointMismatchError: ``directory`` holds checkpoints of a different config; the message
        lists every differing key.
    """

    def __init__(self, directory: str | os.PathLike, *, config: dict, max_to_keep: int = 3,
                 async_save: bool = True, checksums: bool = True,
                 defaults: dict | None = None, free: Sequence[str] = ()) -> None:
        if max_to_keep is not None and int(max_to_keep) < 1:
            raise ValueError(f"max_to_keep must be >= 1 (or None to keep all), got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.config = jsonable(config, "the run config")
        self.defaults = jsonable(defaults or {}, "the config defaults")
        self.free = tuple(free)
        self.max_to_keep = max_to_keep
        self.checksums = checksums
        self._primary = jax.process_index() == 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, cleanup_tmp_directories=True, create=True,
            enable_async_checkpointing=async_save)
        self._manager = self._new_manager()

    # -- setup
    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options,
                                     item_names=(_ARRAYS, _DOC))

    @property
    def config_path(self) -> Path:
        """The file holding the stored run config."""
        return self.directory / CONFIG_FILE

    def _check_config(self) -> None:
        path = self.config_path
        if not path.exists():
            return
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointMismatchError(
                f"cannot read the stored run config {path}: {e}. Delete it only if you are sure "
                f"the checkpoints in {self.directory} belong to this config.") from e
        stored = with_defaults(stored, self.defaults)
        if self._fixed(stored) != self._fixed(self.config):
            if not any(p.is_dir() and p.name.isdigit() for p in self.directory.iterdir()):
                # Config written by a run killed before its first complete step: nothing to
                # protect, the new config takes over.
                path.unlink()
                return
            lines = config_diff(stored, self.config)
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoints of a different run config; differing keys "
                f"(old vs new):\n  " + "\n  ".join(lines) +
                "\nUse a fresh output directory for the new config, or rerun with the old one.")

    def _fixed(self, config: dict) -> dict:
        """``config`` as dotted keys, less the ``free`` ones: what must match."""
        return {k: v for k, v in flatten_dict(config).items() if k not in self.free}

    def _write_config(self) -> None:
        if self._primary and not self.config_path.exists():
            atomic_write_text(self.config_path,
                               json.dumps(self.config, sort_keys=True, indent=1) + "\n")

    # -- listing
    def steps(self) -> list[int]:
        """All complete steps on disk, ascending (temporary/incomplete ones excluded)."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    # -- saving
    def save(self, step: int, state: PyTree, meta: dict, *, wait: bool = True,
             overwrite: bool = False) -> None:
        """Saves ``state`` and ``meta`` as ``step``, atomically.

        Args:
          step: a non-negative int, larger than every step on disk.
          state: any pytree of arrays; ``None`` leaves, typed PRNG keys and Python scalars are
            allowed (see the module doc).
          meta: a JSON-able dict stored beside the arrays (round, phase, epoch, rows so far...).
          wait: block until the write is complete (durable). With False, call :meth:`wait`
            before relying on it; a later ``save`` waits for the previous one first.
          overwrite: when ``step`` is not newer than the latest step, delete the steps
            ``>= step`` first instead of raising.

        Raises:
          ValueError: ``step`` is not newer than the latest step and ``overwrite`` is False.
          TypeError: ``meta`` is not JSON-able or a leaf is of an unsupported type.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"checkpoint steps must be >= 0, got {step}")
        meta = jsonable(meta, "checkpoint meta")
        self._manager.wait_until_finished()
        existing = [s for s in self.steps() if s >= step]
        if existing:
            if not overwrite:
                raise ValueError(
                    f"cannot save step {step}: {self.directory} already has steps {existing} "
                    f">= {step} (latest {max(existing)}). Save a larger step, resume from the "
                    f"latest one, or pass overwrite=True to delete steps >= {step} first.")
            for s in existing:
                self._manager.delete(s)
            self._manager.reload()

        leaves, _ = _flatten(state)
        arrays: dict[str, Any] = {}
        records = []
        for i, (path, x) in enumerate(leaves):
            kind = _kind(x, path=path)
            if isinstance(x, jax.ShapeDtypeStruct):
                raise TypeError(f"checkpoint leaf {path} is a jax.ShapeDtypeStruct; save needs "
                                f"concrete arrays (ShapeDtypeStructs are for `like`).")
            rec: dict[str, Any] = {"path": path, "kind": kind}
            if kind == _NONE:
                records.append(rec)
                continue
            name = f"leaf_{i:05d}"
            if kind == _KEY:
                rec["impl"] = str(jax.random.key_impl(x))
                rec["shape"] = list(x.shape)
                data = jax.random.key_data(x)
            elif kind == _SCALAR:
                rec["py_type"] = type(x).__name__
                rec["value"] = x
                records.append(rec)
                continue
            else:
                data = x if isinstance(x, jax.Array) else np.asarray(x)
                rec["shape"] = list(data.shape)
            rec["name"] = name
            rec["dtype"] = str(np.dtype(data.dtype))
            rec["crc32"] = _host_crc(data) if self.checksums else None
            arrays[name] = data
            records.append(rec)

        doc = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "time": time.time(),
               "leaves": records, "meta": meta, "config": self.config}
        items: dict[str, ocp.args.CheckpointArgs] = {_DOC: ocp.args.JsonSave(doc)}
        if arrays:
            items[_ARRAYS] = ocp.args.StandardSave(arrays)
        self._write_config()
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not saved:
            raise RuntimeError(f"Orbax declined to save step {step} in {self.directory} "
                               f"(existing steps {self.steps()}).")
        if wait:
            self.wait()

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is complete (and re-raises its error)."""
        self._manager.wait_until_finished()
        self._manager.check_for_errors()

    # -- restoring
    def _read_doc(self, step: int) -> dict:
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(**{_DOC: ocp.args.JsonRestore()}))
            doc = out[_DOC]
        except Exception as e:  # any read failure means a damaged step
            raise CheckpointCorruptError(f"step {step}: cannot read its manifest: "
                                         f"{type(e).__name__}: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or "leaves" not in doc:
            raise CheckpointCorruptError(f"step {step}: manifest is not a {FORMAT} manifest")
        return doc

    @staticmethod
    def _match(step: int, records: list[dict], like: PyTree) -> list[tuple[dict, Any]]:
        """Pairs saved leaf records with ``like``'s leaves; raises on any structural difference."""
        like_leaves, _ = _flatten(like)
        saved = {r["path"]: r for r in records}
        have = {p: x for p, x in like_leaves}
        problems = []
        for p in saved:
            if p not in have:
                problems.append(f"{p}: in the checkpoint, missing from `like`")
        for p, x in like_leaves:
            if p not in saved:
                problems.append(f"{p}: in `like`, missing from the checkpoint (extra leaf)")
                continue
            r = saved[p]
            kind = _kind(x, path=p)
            if kind != r["kind"] and {kind, r["kind"]} != {_ARRAY, _SCALAR}:
                problems.append(f"{p}: saved {r['kind']}, `like` has {kind}")
            elif kind != _NONE and r["kind"] != _SCALAR and tuple(np.shape(x)) != tuple(r["shape"]):
                problems.append(f"{p}: shape saved {tuple(r['shape'])} vs `like` "
                                f"{tuple(np.shape(x))}")
        if problems:
            shown = problems[:_MAX_LISTED]
            more = len(problems) - len(shown)
            raise CheckpointMismatchError(
                f"checkpoint step {step} does not fit `like` ({len(problems)} difference(s)):\n  "
                + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
                + "\nRestore into the model/optimiser built with the config the run was saved "
                  "with (same architecture, optimiser and mask layout).")
        return [(saved[p], x) for p, x in like_leaves]

    def _restore_step(self, step: int, like: PyTree) -> tuple[PyTree, dict]:
        doc = self._read_doc(step)
        pairs = self._match(step, doc["leaves"], like)
        targets: dict[str, Any] = {}
        placements: dict[str, jax.sharding.Sharding] = {}
        for rec, x in pairs:
            if rec["kind"] in (_NONE, _SCALAR):
                continue
            sharding = getattr(x, "sharding", None)
            if not isinstance(sharding, jax.sharding.Sharding):
                sharding = _default_sharding()
            shape = tuple(rec["shape"])
            dtype = np.dtype(rec["dtype"])
            if rec["kind"] == _KEY:
                sample = jax.random.key_data(jax.random.key(0, impl=rec["impl"]))
                sharding = _key_data_sharding(sharding, sample.ndim)
                shape = shape + tuple(sample.shape)
            if (isinstance(x, (np.ndarray, np.generic))
                    or jax.dtypes.canonicalize_dtype(dtype) != dtype):
                # host target: exact bytes (e.g. int64 without jax_enable_x64), placed below
                targets[rec["name"]] = np.zeros(shape, dtype)
                if not isinstance(x, (np.ndarray, np.generic)):
                    placements[rec["name"]] = sharding
            else:
                targets[rec["name"]] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        arrays: dict[str, Any] = {}
        if targets:
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    **{_ARRAYS: ocp.args.StandardRestore(targets)}))
                arrays = dict(out[_ARRAYS])
            except Exception as e:  # any read failure means a damaged step
                raise CheckpointCorruptError(f"step {step}: cannot read its arrays: "
                                             f"{type(e).__name__}: {e}") from e
        bad = []
        for rec, _ in pairs:
            if rec["kind"] in (_NONE, _SCALAR):
                continue
            a = arrays.get(rec["name"])
            if a is None or tuple(a.shape) != tuple(targets[rec["name"]].shape):
                bad.append(f"{rec['path']} (missing or wrong shape)")
            elif (self.checksums and rec.get("crc32") is not None
                  and _host_crc(a) not in (None, rec["crc32"])):
                bad.append(f"{rec['path']} (CRC32 mismatch)")
        if bad:
            raise CheckpointCorruptError(f"step {step}: damaged leaves: " + ", ".join(bad[:10]))
        for name, sharding in placements.items():
            arrays[name] = jax.device_put(arrays[name], sharding)

        values = []
        for rec, x in pairs:
            kind = rec["kind"]
            if kind == _NONE:
                values.append(None)
                continue
            if kind == _SCALAR:
                value = rec["value"]
                if isinstance(x, (bool, int, float)):
                    values.append(type(x)(value))
                elif isinstance(x, (np.ndarray, np.generic)):
                    values.append(np.asarray(value, dtype=x.dtype))
                else:
                    sharding = getattr(x, "sharding", None)
                    values.append(jax.device_put(np.asarray(value, dtype=x.dtype),
                                                 sharding if isinstance(
                                                     sharding, jax.sharding.Sharding) else None))
                continue
            a = arrays[rec["name"]]
            if kind == _KEY:
                values.append(jax.random.wrap_key_data(a, impl=rec["impl"]))
                continue
            if isinstance(x, (bool, int, float)):
                values.append(type(x)(np.asarray(a).item()))
                continue
            if isinstance(x, (np.ndarray, np.generic)):
                v = np.asarray(a).astype(x.dtype, copy=False)
                values.append(v if isinstance(x, np.ndarray) else v[()])
                continue
            dtype = getattr(x, "dtype", None)
            values.append(a.astype(dtype) if dtype is not None and a.dtype != dtype else a)
        treedef = jax.tree_util.tree_structure(like, is_leaf=lambda v: v is None)
        return jax.tree_util.tree_unflatten(treedef, values), doc["meta"]

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict]:
        """Restores one step into the structure, dtypes and shardings of ``like``.

        Args:
          step: a step listed by :meth:`steps`.
          like: a pytree like the saved state: concrete arrays, or ``jax.ShapeDtypeStruct``
            with ``sharding=`` to choose placement (e.g. ``jax.eval_shape`` output with
            shardings attached); ``None`` where ``None`` was saved; a typed key (or its
            ShapeDtypeStruct) where a key was saved.

        Returns:
          ``(state, meta)``.

        Raises:
          CheckpointMismatchError: ``like`` differs from the saved state (message lists paths).
          CheckpointCorruptError: the step is damaged.
          FileNotFoundError: no such step.
        """
        step = int(step)
        self.wait()
        if step not in self.steps():
            raise FileNotFoundError(f"no complete checkpoint step {step} in {self.directory} "
                                    f"(steps: {self.steps()})")
        return self._restore_step(step, like)

    def restore_latest(self, like: PyTree) -> tuple[int, PyTree, dict] | None:
        """Restores the newest intact step; damaged newer steps are warned about and moved aside.

        Args:
          like: as for :meth:`restore`.

        Returns:
          ``(step, state, meta)``, or None when no (intact) step exists.

        Raises:
          CheckpointMismatchError: ``like`` does not fit the saved state (never treated as
            corruption: fix the model/config instead).
        """
        self.wait()
        for step in reversed(self.steps()):
            try:
                state, meta = self._restore_step(step, like)
            except CheckpointCorruptError as e:
                where = self._quarantine(step)
                msg = (f"checkpoint {self.directory} step {step} is corrupt and was skipped "
                       f"({e}); moved to {where}; trying the previous step.")
                logger.warning(msg)
                warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
                continue
            return step, state, meta
        return None

    def _quarantine(self, step: int) -> Path | None:
        """Moves a damaged step out of Orbax's sight, so the same step can be saved again."""
        src = self.directory / str(step)
        if not self._primary or not src.exists():
            self._manager.reload()
            return None
        dst_root = self.directory / CORRUPT_DIR
        dst_root.mkdir(exist_ok=True)
        dst = dst_root / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            os.replace(src, dst)
        except OSError:
            shutil.move(str(src), str(dst))
        self._manager.reload()
        return dst

    # -- lifetime
    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> RoundCheckpointer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def abstract_like(tree: PyTree, sharding: jax.sharding.Sharding | PyTree | None = None) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves for ``tree`` (``None`` kept), optionally with shardings.

    Args:
      tree: a pytree of arrays (or of anything with shape and dtype), ``None`` leaves allowed.
      sharding: one sharding for every leaf, a pytree of shardings like ``tree``, or None (each
        leaf keeps its own ``.sharding`` if it has one).

    Returns:
      A pytree for ``like`` of :meth:`RoundCheckpointer.restore`.
    """
    def sds(x: Any, s: Any) -> Any:
        if x is None:
            return None
        s = s if s is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)

    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: sds(x, sharding), tree, is_leaf=lambda x: x is None)
    return jax.tree.map(sds, tree, sharding, is_leaf=lambda x: x is None)
