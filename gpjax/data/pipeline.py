"""The input pipeline on Grain: random-access data -> ``grain.MapDataset`` of whole blocks of
mini-batches -> threads reading ahead -> (optionally) global arrays over every process.

Two kinds of data feed the one training loop of :mod:`gpjax.train`:

* a pytree of arrays that fits :attr:`DataConfig.memory_budget`: it goes to the device whole and
  an epoch is one jitted scan (the fast path);
* a streamed split (:class:`gpjax.data.stream.StreamedSplit`: ``len``, ``subset``,
  ``examples``), e.g. :class:`SourceSplit` over memory-mapped ``.npy`` files or ArrayRecord
  (:mod:`gpjax.data.sources`), or TFDS images: an epoch reads it through :func:`block_dataset`.

Everything above the batch source is shared: the epoch's order is the permutation
:func:`epoch_order` draws from the training state's key (the same draw the fast path makes,
so both paths train on the same batches), learning rates and step keys are the same.

A streamed epoch is a ``grain.MapDataset`` whose element ``b`` is block ``b``: the examples at
``positions[b * block : (b + 1) * block]``, made by the split (with training augmentation drawn
from a generator seeded by ``(seed, b)``, so threads do not change the draws). Grain's
``DatasetIterator`` reads ahead on ``num_threads`` threads, and its position
(``get_state()``/``set_state()``, a small dict) is what an in-update checkpoint stores to resume
mid-epoch.

Several processes: :func:`shard_positions` gives a process its slice of every *global*
mini-batch (``grain.sharding.ShardOptions``, e.g. ``ShardByJaxProcess()``), so the global batch
is the same whatever the number of processes; :func:`global_array` assembles the processes'
slices into one ``jax.Array`` (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from gpjax.data.sources import Source
from gpjax.fields import check_range, check_types

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How data reach the device (serialisable into configs).

    Attributes:
      memory_budget: bytes of host arrays (float32 features + int32 labels) that may be
        loaded whole and put on the device (the fast path); larger data stream. The fast path
        holds about 3-4 copies of the data on the host while it prepares them (file, hold-out
        split, concatenation, device copy), so the default, 256 MiB, keeps a store command
        near 1 GiB; raise it on a machine with memory to spare.
      block_bytes: host memory of one streamed block (whole mini-batches; at least one).
      num_threads: Grain threads reading blocks ahead (0: read in the caller's thread).
      prefetch: blocks read ahead (each up to ``block_bytes``).
    """

    memory_budget: int = 256 * 2**20
    block_bytes: int = 16 * 2**20
    num_threads: int = 1
    prefetch: int = 1

    def __post_init__(self) -> None:
        check_types(self)
        check_range(self, "memory_budget", 0)
        check_range(self, "block_bytes", 1)
        check_range(self, "num_threads", 0)
        check_range(self, "prefetch", 0)

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of data take the fast path (device-resident arrays)."""
        return int(nbytes) <= self.memory_budget


class SourceSplit:
    """Examples of one or more sources, in a given order, as a streamed split.

    Args:
      sources: the sources, read as one concatenation (``DataFile`` or any object with
        ``len`` and ``read(indices) -> (x, y)``).
      index: ``[n]`` positions in that concatenation (default: all, in order).
    """

    def __init__(self, sources: Sequence[Source], index: np.ndarray | None = None) -> None:
        self.sources = tuple(sources)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])
        self.index = (np.arange(self._starts[-1]) if index is None
                      else np.asarray(index, np.int64))

    def __len__(self) -> int:
        return int(len(self.index))

    def subset(self, positions: np.ndarray | Sequence[int]) -> SourceSplit:
        """The examples at ``positions`` of this split (nothing is read)."""
        return SourceSplit(self.sources, self.index[np.asarray(positions, np.int64)])

    def examples(self, positions: np.ndarray | Sequence[int],
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x float32 [n, ...], y int32 [n])`` at ``positions`` (``rng`` unused: sources
        have no host augmentation)."""
        del rng
        where = self.index[np.asarray(positions, np.int64)]
        owner = np.searchsorted(self._starts, where, side="right") - 1
        if owner[0] == owner[-1] and (owner == owner[0]).all():  # one source: no extra copy
            x, y = self.sources[owner[0]].read(where - self._starts[owner[0]])
            return x.astype(np.float32, copy=False), y.astype(np.int32, copy=False)
        parts = []
        for k in np.unique(owner):
            sel = np.flatnonzero(owner == k)
            x, y = self.sources[k].read(where[sel] - self._starts[k])
            parts.append((sel, x, y))
        x = np.empty((len(where),) + parts[0][1].shape[1:], np.float32)
        y = np.empty((len(where),), np.int32)
        for sel, xs, ys in parts:
            x[sel], y[sel] = xs, ys
        return x, y

    def concat(self, other: SourceSplit) -> SourceSplit:
        """This split's examples followed by ``other``'s."""
        both = SourceSplit(self.sources + other.sources)
        shift = self._starts[-1]
        return both.subset(np.concatenate([self.index, other.index + shift]))


def epoch_order(key: jax.Array, n: int) -> np.ndarray:
    """An epoch's permutation of ``range(n)``, drawn from its key (``jax.random.permutation``,
    the draw the device-resident epoch of :func:`gpjax.train.train_epoch` makes)."""
    return np.asarray(jax.random.permutation(key, n))


def epoch_positions(order: np.ndarray | jax.Array, steps: int, batch_size: int) -> np.ndarray:
    """The positions an epoch trains on, in order: ``order`` (:func:`epoch_order`) repeated
    as needed to fill ``steps`` mini-batches of ``B`` (``steps * B > n`` wraps around).

    Returns:
      int64 ``[steps * B]``.
    """
    order = np.asarray(order)
    return order[np.arange(steps * batch_size) % len(order)].astype(np.int64)


def shard_positions(positions: np.ndarray, batch_size: int,
                    shard: grain.sharding.ShardOptions | None) -> np.ndarray:
    """A process's part of an epoch: its contiguous slice of every global mini-batch.

    Args:
      positions: ``[steps * B]`` global positions (:func:`epoch_positions`).
      batch_size: the global mini-batch ``B``; divisible by ``shard.shard_count``.
      shard: which slice (``grain.sharding.ShardByJaxProcess()`` in a multi-process run);
        None: all of it.

    Returns:
      ``[steps * B / P]``: the positions this process reads, batch by batch.

    Raises:
      ValueError: ``B`` is not a multiple of the number of processes.
    """
    if shard is None or shard.shard_count == 1:
        return np.asarray(positions, np.int64)
    count, index = shard.shard_count, shard.shard_index
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} is not a multiple of the {count} processes; "
                         "choose a batch size divisible by the number of processes")
    local = batch_size // count
    rows = np.asarray(positions, np.int64).reshape(-1, batch_size)
    return rows[:, index * local:(index + 1) * local].reshape(-1)


def _block_maker(split: Any, positions: np.ndarray, block: int, seed: np.ndarray | None):
    def make(b: int) -> PyTree:
        rng = None if seed is None else np.random.default_rng([*seed.tolist(), int(b)])
        return split.examples(positions[b * block:(b + 1) * block], rng)
    return make


def block_dataset(split: Any, positions: np.ndarray, block: int, *,
                  seed: np.ndarray | None = None) -> grain.MapDataset:
    """The blocks of an epoch as a ``grain.MapDataset``: element ``b`` holds the examples at
    ``positions[b * block:(b + 1) * block]`` (the last may be shorter).

    Args:
      split: a streamed split (``examples(positions, rng)``).
      positions: ``[m]`` positions of ``split``, in the order wanted.
      block: examples per block (a multiple of the mini-batch).
      seed: integers seeding block ``b``'s augmentation generator as ``(*seed, b)``; None:
        no augmentation (evaluation view).
    """
    positions = np.asarray(positions, np.int64)
    count = -(-len(positions) // max(int(block), 1))
    make = _block_maker(split, positions, max(int(block), 1), seed)
    return grain.MapDataset.range(count).map(make)


def block_iterator(split: Any, positions: np.ndarray, block: int, cfg: DataConfig, *,
                   seed: np.ndarray | None = None,
                   state: dict | None = None) -> grain.DatasetIterator:
    """Iterates :func:`block_dataset` with ``cfg.num_threads`` threads reading
    ``cfg.prefetch`` blocks ahead; ``state``: a position from ``iterator.get_state()`` to
    resume from (the next block is the one that followed it)."""
    opts = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
    it = iter(block_dataset(split, positions, block, seed=seed).to_iter_dataset(opts))
    if state is not None:
        it.set_state(state)
    return it


def block_size(split: Any, batch_size: int, block_bytes: int) -> int:
    """Examples per streamed block: the most whole mini-batches within ``block_bytes``
    (measured on one example), at least one mini-batch."""
    one = split.examples(np.zeros(1, np.int64))
    per_example = max(sum(np.asarray(x).nbytes for x in jax.tree.leaves(one)), 1)
    return int(max(block_bytes // (per_example * batch_size), 1) * batch_size)


def global_array(local: PyTree, sharding: jax.sharding.Sharding,
                 global_shape_of: Any = None) -> PyTree:
    """Each process's slice of a global batch, assembled into global ``jax.Array`` leaves
    (``jax.make_array_from_process_local_data``).

    Args:
      local: this process's arrays (leading axis: its rows of the global batch).
      sharding: the global batch's sharding (e.g. ``NamedSharding(mesh, P("batch"))``).
      global_shape_of: ``leaf -> global shape``; default: the leading axis times the number
        of processes.
    """
    def one(x):
        x = np.asarray(x)
        shape = (global_shape_of(x) if global_shape_of is not None
                 else (x.shape[0] * jax.process_count(),) + x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)
    return jax.tree.map(one, local)


__all__ = ["DataConfig", "SourceSplit", "block_dataset", "block_iterator", "block_size",
           "epoch_order", "epoch_positions", "global_array", "shard_positions"]
