"""Datasets, offline: :mod:`~gpjax.data.mnist`, :mod:`~gpjax.data.images` (MNIST at ResNet size,
TFDS image sets), :mod:`~gpjax.data.speech` (AN4 and the synthetic AN4-like corpus),
:mod:`~gpjax.data.stream` (splits too large for memory), :mod:`~gpjax.data.augment`, and the
shared cache helpers of :mod:`~gpjax.data.cache` (``data_dir``, ``DataUnavailableError``).

Nothing is imported here: each loader pulls in only what it needs.
"""
