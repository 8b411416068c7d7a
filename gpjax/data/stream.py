"""Data too big for memory: splits that make their examples on the host, a block at a time.

Most gpjax data are pytrees of arrays with a leading example axis (MNIST, the speech corpus):
an epoch is one jitted scan over them on the device. ImageNet is not: 1.28M decoded images do
not fit in host or device memory. A *streamed split* keeps only what it needs to find an
example (indices, labels, a TFDS ``data_source``) and makes examples on request::

    len(split)                          # N
    split.subset(positions)             # a streamed split of those examples (no decoding)
    split.examples(positions, rng)      # the examples as a pytree of numpy arrays [n, ...]

:class:`gpjax.data.images.ImageSplit` is one. :func:`gpjax.train.train_epoch`,
:func:`~gpjax.train.evaluate` and :func:`~gpjax.train.growth_gradients` accept one wherever
they accept arrays: they walk it in blocks of whole mini-batches (about ``max_block_bytes`` of
host memory each), one jitted scan per block, the next block made on a worker thread while the
device runs the current one. The scenarios (:mod:`gpjax.incremental.scenarios`) take chunks of
it with :func:`take`, so an incremental run over ImageNet never materialises it.

Training passes a numpy generator to ``examples`` (seeded from the training state's key): the
split applies its training augmentation (random crop and flip for TFDS images); evaluation and
growth gradients pass ``None`` (the deterministic evaluation view).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from gpjax.data.buckets import is_bucketed

PyTree = Any

#: Default host memory of one streamed block (whole mini-batches; at least one).
MAX_BLOCK_BYTES = 256 * 2**20


@runtime_checkable
class StreamedSplit(Protocol):
    """A split whose examples are made on demand (see the module docstring)."""

    def __len__(self) -> int: ...

    def subset(self, positions: np.ndarray | Sequence[int]) -> StreamedSplit: ...

    def examples(self, positions: np.ndarray | Sequence[int],
                 rng: np.random.Generator | None = None) -> PyTree: ...


def is_streamed(data: Any) -> bool:
    """Whether ``data`` is a :class:`StreamedSplit` (rather than a pytree of arrays)."""
    return isinstance(data, StreamedSplit)


def num_examples(data: PyTree | StreamedSplit) -> int:
    """Examples in ``data``: its length if streamed, the sum over the parts of a
    :class:`~gpjax.data.buckets.Bucketed` split, else the leading axis of its leaves.

    Raises:
      ValueError: the leaves of an array pytree disagree on the number of examples, or there
        are none.
    """
    if is_streamed(data):
        return len(data)
    if is_bucketed(data):
        return sum(num_examples(p) for p in data.parts)
    sizes = {int(np.shape(x)[0]) for x in jax.tree.leaves(data)}
    if len(sizes) != 1:
        raise ValueError("data leaves disagree on the number of examples (leading axis): "
                         f"{sorted(sizes)}" if sizes else "data has no array leaves")
    return sizes.pop()


def take(data: PyTree | StreamedSplit, indices: np.ndarray | Sequence[int]) -> PyTree:
    """The examples at ``indices``: a lazy subset of a streamed split, else fancy indexing of
    every leaf on the host."""
    idx = np.asarray(indices, np.int64)
    if is_streamed(data):
        return data.subset(idx)
    return jax.tree.map(lambda x: np.asarray(x)[idx], data)


def block_size(data: StreamedSplit, batch_size: int,
               max_block_bytes: int = MAX_BLOCK_BYTES) -> int:
    """Examples per streamed block: the most whole mini-batches within ``max_block_bytes``
    (measured on one example), at least one mini-batch."""
    one = data.examples(np.zeros(1, np.int64))
    per_example = max(sum(np.asarray(x).nbytes for x in jax.tree.leaves(one)), 1)
    batches = max(max_block_bytes // (per_example * batch_size), 1)
    return int(batches * batch_size)


def prefetch(items: Iterable[Any], depth: int = 1) -> Iterator[Any]:
    """Yields ``items`` in order, computing up to ``depth`` ahead on one worker thread.

    The host makes block ``k + 1`` while the device (dispatched asynchronously) works on block
    ``k``. One worker keeps the order, and so any random draws, deterministic.
    """
    it = iter(items)
    with ThreadPoolExecutor(1) as pool:
        pending = [pool.submit(next, it, _END) for _ in range(depth + 1)]
        while True:
            item = pending.pop(0).result()
            if item is _END:
                return
            pending.append(pool.submit(next, it, _END))
            yield item


_END = object()


def iterate_blocks(data: StreamedSplit, positions: np.ndarray, block: int,
                   rng: np.random.Generator | None = None) -> Iterator[PyTree]:
    """The examples at ``positions`` in consecutive blocks of ``block`` (the last may be
    shorter), made ahead on a worker thread (:func:`prefetch`).

    Args:
      data: a streamed split.
      positions: ``[n]`` positions in ``range(len(data))``, in the order wanted.
      block: examples per block.
      rng: passed to ``data.examples`` (training augmentation) or None.

    Yields:
      pytrees of numpy arrays with leading axis ``min(block, remaining)``.
    """
    positions = np.asarray(positions, np.int64)
    starts = range(0, len(positions), max(int(block), 1))
    return prefetch(data.examples(positions[s:s + block], rng) for s in starts)


__all__ = ["MAX_BLOCK_BYTES", "StreamedSplit", "block_size", "is_streamed", "iterate_blocks",
           "num_examples", "prefetch", "take"]
