"""Datasets, offline: :mod:`~gpjax.data.mnist`, :mod:`~gpjax.data.images` (MNIST at ResNet size,
TFDS image sets), :mod:`~gpjax.data.speech` (AN4 and the synthetic AN4-like corpus),
:mod:`~gpjax.data.sources` (random-access ``.npz``, memory-mapped ``.npy``, ArrayRecord and TFDS
sources), :mod:`~gpjax.data.pipeline` (the Grain input pipeline), :mod:`~gpjax.data.stream`
(the streamed-split protocol), :mod:`~gpjax.data.augment`, and the shared cache helpers of
:mod:`~gpjax.data.cache` (``data_dir``, ``DataUnavailableError``).

Only :func:`write_array_record` (NumPy-only module; ArrayRecord is imported when it is called)
is imported here: each loader pulls in only what it needs.
"""

from gpjax.data.sources import write_array_record

__all__ = ["write_array_record"]
