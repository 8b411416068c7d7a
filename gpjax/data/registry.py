"""One loader for every dataset, returning one type.

:func:`load_dataset` looks a name up in :data:`DATASETS` and returns a :class:`Dataset`: the
train / validation / test splits, a description of where the data came from, and the task kind
the data are for. A split is a tuple of arrays with a leading example axis (``(x [N, ...],
y [N])`` for images, ``(features, feature paddings, labels, label paddings)`` for speech) or a
streamed split (:mod:`gpjax.data.stream`) for image sets that do not fit in memory.

Names: ``mnist`` (28x28), ``mnist32`` (the ResNet stand-in, padded to 32x32), ``imagenette``,
``imagenet2012`` (TFDS, streamed), ``synthetic_an4`` (the eSpeak corpus), ``an4``, and
``tfds:NAME`` for any TFDS image classification set prepared on the machine. A user's ``.npz``
files are read by :mod:`gpjax.data.npz`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

PyTree = Any


class Dataset(NamedTuple):
    """Splits of one dataset.

    Attributes:
      train, validation, test: tuples of arrays ``[N, ...]`` or streamed splits.
      source: where the data came from (for result files).
      kind: the task kind the data are for ("classifier" or "speech"; :data:`gpjax.tasks.TASKS`).
      in_memory: the streamed splits are small enough to be trained from device memory
        (:func:`materialise` them after taking the examples wanted).
    """

    train: PyTree
    validation: PyTree
    test: PyTree
    source: str
    kind: str = "classifier"
    in_memory: bool = False


def _mnist(**kw) -> Dataset:
    from gpjax.data.mnist import load_mnist
    m = load_mnist(**kw)
    return Dataset(tuple(m.train), tuple(m.validation), tuple(m.test), m.source)


def _images(name: str, *, materialise: bool) -> Callable[..., Dataset]:
    def load(**kw) -> Dataset:
        from gpjax.data.images import load_mnist_images, load_tfds_images
        d = load_mnist_images(**kw) if name == "mnist32" else load_tfds_images(name, **kw)
        return Dataset(d.train, d.validation, d.test, d.source, in_memory=materialise)
    return load


def _speech(loader: str) -> Callable[..., Dataset]:
    def load(**kw) -> Dataset:
        from gpjax.data import speech
        if loader == "an4":
            kw = dict(kw)
            d = speech.load_an4(kw.pop("root"), **kw)
        else:
            d = speech.load_synthetic_an4(**kw)
        splits = [(s.features, s.feature_paddings(), s.labels, s.label_paddings())
                  for s in (d.train, d.validation, d.test)]
        return Dataset(*splits, d.source, "speech")
    return load


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist": _mnist,
    "mnist32": _images("mnist32", materialise=True),
    "imagenette": _images("imagenette", materialise=False),
    "imagenet2012": _images("imagenet2012", materialise=False),
    "synthetic_an4": _speech("synthetic"),
    "an4": _speech("an4"),
}
"""Dataset loaders by name: ``DATASETS[name](**kwargs) -> Dataset``."""


def load_dataset(name: str, **kwargs) -> Dataset:
    """The dataset ``name`` (a key of :data:`DATASETS` or ``tfds:NAME``), loaded with
    ``kwargs``; TFDS image sets stay streamed."""
    if name.startswith("tfds:"):
        return _images(name.partition(":")[2], materialise=False)(**kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))} "
                         "or tfds:NAME")
    return DATASETS[name](**kwargs)


def materialise(split: PyTree) -> PyTree:
    """A streamed image split as in-memory arrays ``(images, labels)``; arrays unchanged."""
    from gpjax.data.stream import is_streamed
    if not is_streamed(split):
        return split
    s = split.to_split()
    return (s.images, s.labels)


def first(split: PyTree, n: int | None) -> PyTree:
    """The first ``n`` examples of a split (all when ``n`` is None)."""
    from gpjax.data.stream import is_streamed, num_examples, take
    if n is None:
        return split
    if is_streamed(split):
        return split.subset(np.arange(min(n, len(split))))
    return take(split, np.arange(min(n, num_examples(split))))


__all__ = ["DATASETS", "Dataset", "first", "load_dataset", "materialise"]
