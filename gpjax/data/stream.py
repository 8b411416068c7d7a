"""Data too big for memory: splits that make their examples on the host, on request.

Most gpjax data are pytrees of arrays with a leading example axis (MNIST, the speech corpus):
an epoch is one jitted scan over them on the device. Data that outgrow memory are not: a
*streamed split* keeps only what it needs to find an example (a memory-mapped file, indices,
labels, a TFDS ``data_source``) and makes examples on request::

    len(split)                          # N
    split.subset(positions)             # a streamed split of those examples (nothing read)
    split.examples(positions, rng)      # the examples as a pytree of numpy arrays [n, ...]

:class:`gpjax.data.pipeline.SourceSplit` (``.npz``, memory-mapped ``.npy``, ArrayRecord,
TFDS sources) and :class:`gpjax.data.images.ImageSplit` are two. :func:`gpjax.train.train_epoch`,
:func:`~gpjax.train.evaluate` and :func:`~gpjax.train.growth_gradients` accept one wherever
they accept arrays and read it through the Grain pipeline of :mod:`gpjax.data.pipeline` (blocks
of whole mini-batches, read ahead on Grain's threads, one jitted scan each). The scenarios
(:mod:`gpjax.incremental.scenarios`) take chunks of it with :func:`take`, so an incremental run
over ImageNet never materialises it.

Training passes a numpy generator to ``examples`` (seeded from the training state's key and the
block's number): the split applies its training augmentation (random crop and flip for TFDS
images); evaluation and growth gradients pass ``None`` (the deterministic evaluation view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from gpjax.data.buckets import is_bucketed

PyTree = Any


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


__all__ = ["StreamedSplit", "is_streamed", "num_examples", "take"]
