"""Several processes: ``jax.distributed`` from the command line, data on the global mesh.

Every process runs the same program (SPMD). :func:`initialize` joins the processes
(:class:`ProcessConfig`: a coordinator ``HOST:PORT``, the process count and this process's id,
or JAX's own cluster detection: Slurm, Open MPI, TPU pods). :class:`DataMesh` is the 1-D
``"batch"`` mesh over every device of every process: data arrays are global
``jax.Array`` s split along their example axis, of which each process holds (on its devices)
only its own rows (:func:`global_array`); parameters, masks and optimiser state are replicated.
Everything derived inside ``jit`` from global arrays (gradients, growth scores, pruning
thresholds, errors) is reduced across processes by XLA, so every process takes the same
growth and pruning decisions and holds the same masks.

Files: Orbax checkpoints are written by all processes together (each saves its shards; a
checkpoint is complete when every process's ``save`` returned); result rows, manifests, locks
and ``LATEST`` are written by process 0 only (:func:`is_primary`), after a :func:`sync`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from gpjax._cli_common import UsageError

PyTree = Any

_FLAGS = "--coordinator HOST:PORT --num-processes N --process-id I"


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    """How this process joins the others (all None and ``auto`` False: one process alone).

    Attributes:
      coordinator: ``HOST:PORT`` of process 0's coordination service (every process gives the
        same one; process 0 listens on PORT).
      num_processes: how many processes take part (>= 1).
      process_id: this process's index, ``0 <= process_id < num_processes``.
      auto: let JAX detect the three from the cluster's environment (Slurm, Open MPI, TPU
        pods); values given explicitly take precedence.
      timeout_s: seconds to wait for the coordinator and every process to join; past it the
        process stops with a one-line error (exit 2) before anything is written.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    timeout_s: int = 60

    @property
    def enabled(self) -> bool:
        """Whether ``jax.distributed`` is to be initialised at all."""
        return self.auto or any(v is not None for v in
                                (self.coordinator, self.num_processes, self.process_id))

    def check(self) -> None:
        """Refuses an inconsistent configuration.

        Raises:
          UsageError: one line naming the problem and the fix.
        """
        given = {"--coordinator": self.coordinator, "--num-processes": self.num_processes,
                 "--process-id": self.process_id}
        missing = [k for k, v in given.items() if v is None]
        if self.timeout_s <= 0:
            raise UsageError(f"--coordinator-timeout must be positive, got {self.timeout_s}. "
                             "Fix: give a number of seconds such as 60")
        if not self.auto and missing and len(missing) < 3:
            raise UsageError(f"{', '.join(k for k in given if k not in missing)} given without "
                             f"{', '.join(missing)}. Fix: give all of {_FLAGS}, or "
                             "--distributed to detect them (Slurm, Open MPI, TPU pods)")
        n, i = self.num_processes, self.process_id
        if n is not None and n < 1:
            raise UsageError(f"--num-processes {n}: must be at least 1. Fix: give the number "
                             "of processes taking part, e.g. --num-processes 2")
        if i is not None and (i < 0 or (n is not None and i >= n)):
            top = "" if n is None else f" and below --num-processes {n}"
            raise UsageError(f"--process-id {i}: must be at least 0{top}. Fix: number the "
                             f"processes 0..{'N-1' if n is None else n - 1}, each id once")
        if self.coordinator is not None:
            _host_port(self.coordinator)


def _host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` split (``[::1]:PORT`` for IPv6), or a :class:`UsageError`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {address!r}: expected HOST:PORT with a port in "
                         "1..65535. Fix: e.g. --coordinator 10.0.0.1:12345 (process 0's host)")
    return host.strip("[]"), int(port)


def add_process_args(parser: argparse.ArgumentParser) -> None:
    """Adds the several-processes options to a command's parser (``gpjax run / init /
    update``); :func:`process_config` reads them back."""
    g = parser.add_argument_group(
        "several processes", "data parallel over every device of every process (README: "
        "Scaling out); start the same command once per process")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's host and a free port, the same in every process")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="how many processes take part")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's index, 0..N-1 (0 writes results, manifests, LATEST)")
    g.add_argument("--distributed", action="store_true",
                   help="detect coordinator, N and I from the cluster (Slurm, Open MPI, TPU "
                        "pods: jax.distributed's own detection)")
    g.add_argument("--coordinator-timeout", type=int, default=60, metavar="SECONDS",
                   help="give up when the processes have not all joined within this "
                        "(default 60)")


def process_config(args: argparse.Namespace) -> ProcessConfig:
    """The :class:`ProcessConfig` of parsed :func:`add_process_args` options."""
    return ProcessConfig(args.coordinator, args.num_processes, args.process_id,
                         args.distributed, args.coordinator_timeout)


def _reachable(address: str) -> bool:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _give_up(cfg: ProcessConfig) -> None:
    """Watchdog: one line and exit 2, before JAX's own timeout aborts with a stack dump."""
    where = cfg.coordinator or "the detected coordinator"
    if cfg.process_id not in (None, 0) and cfg.coordinator and not _reachable(cfg.coordinator):
        what = f"the coordinator {where} is unreachable"
        fix = ("start process 0 first on that host, and check the host, the port and any "
               "firewall between them")
    else:
        what = f"not all {cfg.num_processes or ''} processes joined the coordinator {where}"
        fix = ("start every process with the same --coordinator and --num-processes and its "
               "own --process-id")
    print(f"gpjax: error: {what} (waited --coordinator-timeout {cfg.timeout_s} s). "
          f"Fix: {fix}", file=sys.stderr, flush=True)
    os._exit(2)


def initialize(cfg: ProcessConfig) -> None:
    """Joins the processes (``jax.distributed.initialize``); nothing when not ``enabled``.

    Call before any JAX computation. CPU processes use JAX's default cross-process collectives
    (gloo).

    Raises:
      UsageError: an inconsistent ``cfg``, or ``auto`` outside a cluster JAX detects. A
        coordinator or process that does not join within ``cfg.timeout_s`` ends the process
        with a one-line error and exit status 2 (JAX itself would abort with a stack dump).
    """
    import jax

    cfg.check()
    if not cfg.enabled or jax.distributed.is_initialized():
        return
    # JAX's preemption service would catch SIGTERM (Slurm's scancel, `timeout`) and carry on;
    # without it a process ends on SIGTERM as one alone does, and --resume continues the job.
    jax.config.update("jax_enable_preemption_service", False)
    watchdog = threading.Timer(cfg.timeout_s, _give_up, (cfg,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            cfg.coordinator, cfg.num_processes, cfg.process_id,
            cluster_detection_method=None if cfg.auto else "deactivate",
            initialization_timeout=cfg.timeout_s + 30)  # the watchdog speaks first
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"cannot join the processes ({e}). Fix: give {_FLAGS}, or run "
                         "--distributed under Slurm (srun), Open MPI (mpirun) or on a TPU "
                         "pod") from None
    finally:
        watchdog.cancel()


def is_primary() -> bool:
    """Whether this is process 0, the one that writes results, manifests and ``LATEST``."""
    import jax
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reached ``sync(name)`` (nothing with one process)."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_lock(directory, *, what: str) -> Iterator[None]:
    """The directory's writer lock (:class:`~gpjax.incremental.lock.DirectoryLock`), held by
    process 0 for all processes; every process waits until it is taken."""
    from gpjax.incremental.lock import DirectoryLock
    lock = DirectoryLock(directory, what=what) if is_primary() else None
    if lock is not None:
        lock.acquire()
    try:
        sync(f"gpjax-lock-{os.fspath(directory)}")
        yield
    finally:
        if lock is not None:
            lock.release()


def local_rows(sharding, shape: tuple[int, ...]) -> slice:
    """The rows (leading axis) of a global array of ``shape`` that this process's devices hold
    under ``sharding``: one contiguous slice (all of them when the axis is not split)."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
        s = index[0] if index else slice(None)
        start, stop, _ = s.indices(shape[0])
        starts.append(start)
        stops.append(stop)
    return slice(min(starts), max(stops))


def global_array(a: np.ndarray, sharding):
    """``a`` (the whole array, as every process holds it) as a global ``jax.Array`` under
    ``sharding``, each process putting only its own rows on its devices."""
    import jax
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    a = np.asarray(a)
    return jax.make_array_from_process_local_data(sharding, a[local_rows(sharding, a.shape)],
                                                  a.shape)


class DataMesh:
    """The data-parallel mesh: 1-D ``"batch"`` over ``devices`` (default: every device of every
    process, ``jax.devices()``).

    Attributes:
      mesh: the ``jax.sharding.Mesh``.
      size: its device count.
      split: ``NamedSharding(mesh, P("batch"))``, examples split across devices.
      replicated: ``NamedSharding(mesh, P())``.
    """

    def __init__(self, devices=None) -> None:
        import jax
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P
        devices = list(devices) if devices is not None else jax.devices()
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.size = len(devices)
        self.split = NamedSharding(self.mesh, P("batch"))
        self.replicated = NamedSharding(self.mesh, P())

    def batch_sharding(self, batch_size: int):
        """Sharding of a training mini-batch: split when ``batch_size`` divides, else None."""
        return self.split if self.size > 1 and batch_size % self.size == 0 else None

    def put(self, data: PyTree) -> PyTree:
        """Arrays ``[N, ...]`` on the mesh: split along ``N`` when the device count divides it,
        else replicated. Every process passes the same ``data``; each keeps only its rows."""
        import jax
        n = len(jax.tree.leaves(data)[0])
        sharding = self.split if self.size > 1 and n % self.size == 0 else self.replicated
        return jax.tree.map(lambda a: global_array(np.asarray(a), sharding), data)

    def replicate(self, tree: PyTree) -> PyTree:
        """Every array of ``tree`` replicated on every device of the mesh."""
        import jax
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(lambda a: _replicated(a, self.replicated), tree)


def _replicated(a, sharding):
    """One leaf of :meth:`DataMesh.replicate` with several processes (typed PRNG keys too)."""
    import jax
    if jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key):
        data = global_array(np.asarray(jax.random.key_data(a)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    return global_array(np.asarray(a), sharding)


__all__ = ["DataMesh", "ProcessConfig", "add_process_args", "global_array", "initialize",
           "is_primary", "local_rows", "primary_lock", "process_config", "sync"]
