"""Image-classification data for ResNet-18: TFDS sources (ImageNet, Imagenette, CIFAR-10) and the
offline MNIST stand-in, all behind one lazily-decoded :class:`ImageSplit`.

Protocol (SPEC "Experimental protocol"): a seeded, per-class validation set is held out of the
official training split (50 images per class for ImageNet) and the official validation split is
the test set. The ten incremental chunks are drawn from ``train`` by the caller
(:meth:`ImageSplit.subset`).

The real path reads ``tfds.data_source`` (ArrayRecord; random access, no TensorFlow: TFDS
decodes the JPEG/PNG bytes with PIL or OpenCV), then crops, resizes and scales in numpy/PIL,
batch by batch, so ImageNet never has to fit in memory. ImageNet must be prepared by hand as
TFDS documents (``tfds build imagenet2012`` with the tar files in ``manual_dir``); nothing here
downloads it. Labels are read once per split (images skipped) and cached as ``.npy``.

The offline path, :func:`load_mnist_images`, pads the 28x28 digits of
:func:`gpjax.data.mnist.load_mnist` to the small-image ResNet input (32x32 by default), with 1
or 3 channels, for CPU runs and tests.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from gpjax.data.mnist import Split, data_dir, load_mnist


@dataclasses.dataclass(frozen=True)
class TfdsImageSpec:
    """How a TFDS image dataset is split and sized.

    Attributes:
      train_split: the official training split (validation is held out of it).
      test_split: the official split used as test.
      val_per_class: images per class held out of ``train_split`` as validation.
      image_size: default side of the square model input.
    """

    train_split: str
    test_split: str
    val_per_class: int
    image_size: int


TFDS_IMAGE_DATASETS: dict[str, TfdsImageSpec] = {
    # SPEC: 50 images per class withheld from train; the official validation set is the test.
    "imagenet2012": TfdsImageSpec("train", "validation", 50, 224),
    # Imagenette (10 ImageNet classes): the same protocol, 500 validation images of 9,469.
    "imagenette": TfdsImageSpec("train", "validation", 50, 224),
    # CIFAR-10: 5k of the 50k training images held out, as MNIST's 5k of 60k.
    "cifar10": TfdsImageSpec("train", "test", 500, 32),
}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
    """A split of an image-classification set: labels in memory, images made per batch.

    Subclasses say how images are fetched (:meth:`_fetch`); this class does the rest.

    Attributes:
      indices: ``[N]`` positions of this split's examples in the underlying store.
      labels: int32 ``[N]``, the labels of those examples.
      image_size: side of the square images returned.
      channels: channels of the images returned.
    """

    indices: np.ndarray
    labels: np.ndarray
    image_size: int
    channels: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(image_size, image_size, channels)``."""
        return (self.image_size, self.image_size, self.channels)

    def _fetch(self, store_indices: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        raise NotImplementedError

    def images(self, positions: np.ndarray | list[int],
               rng: np.random.Generator | None = None) -> np.ndarray:
        """The images at some positions of this split.

        Args:
          positions: ``[n]`` positions in ``range(len(self))``.
          rng: a numpy generator turns on training augmentation (see the subclass); ``None``
            gives the deterministic evaluation view.

        Returns:
          float32 ``[n, image_size, image_size, channels]`` in [0, 1].
        """
        return self._fetch(self.indices[np.asarray(positions, dtype=np.int64)], rng)

    def examples(self, positions: np.ndarray | list[int],
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels at some positions: the split as a
        :class:`gpjax.data.stream.StreamedSplit`, so training streams it block by block.

        Args:
          positions: ``[n]`` positions in ``range(len(self))``.
          rng: training augmentation (see :meth:`images`) or None.

        Returns:
          ``(images float32 [n, image_size, image_size, channels], labels int32 [n])``.
        """
        positions = np.asarray(positions, dtype=np.int64)
        return self.images(positions, rng), self.labels[positions]

    def subset(self, positions: np.ndarray | list[int]) -> ImageSplit:
        """The examples at ``positions`` of this split, as a split of the same kind.

        Args:
          positions: ``[n]`` positions in ``range(len(self))`` (e.g. one incremental chunk).

        Returns:
          a split of ``n`` examples sharing this one's store.
        """
        positions = np.asarray(positions, dtype=np.int64)
        return dataclasses.replace(self, indices=self.indices[positions],
                                   labels=self.labels[positions])

    def batches(self, batch_size: int, *, seed: int | None = None, augment: bool = False,
                drop_remainder: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of mini-batches.

        Args:
          batch_size: examples per batch.
          seed: shuffles the order with this seed (``None``: the split's order).
          augment: training augmentation, drawn from ``seed`` (or seed 0).
          drop_remainder: drop the last, smaller batch.

        Yields:
          ``(images [b, H, W, C] float32, labels [b] int32)``.
        """
        order = (np.arange(len(self)) if seed is None
                 else np.random.default_rng(seed).permutation(len(self)))
        rng = np.random.default_rng([0 if seed is None else seed, 1]) if augment else None
        stop = len(order) - len(order) % batch_size if drop_remainder else len(order)
        for start in range(0, stop, batch_size):
            pos = order[start:start + batch_size]
            yield self.images(pos, rng), self.labels[pos]

    def to_split(self) -> Split:
        """All of this split in memory (for small sets), evaluation view.

        Returns:
          a :class:`gpjax.data.mnist.Split` of float32 ``[N, H, W, C]`` images and int32 labels.
        """
        return Split(self.images(np.arange(len(self))), self.labels.copy())


class ImageData(NamedTuple):
    """Train / validation / test splits of one dataset."""

    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    num_classes: int
    source: str


# ---------------------------------------------------------------------------------------------
# In-memory arrays (the MNIST stand-in)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayImageSplit(ImageSplit):
    """Images held in memory, smaller than the output, zero-padded (centred) per batch.

    Augmentation (``rng`` given): the image is placed at a random offset inside the padded
    frame instead of the centre (a random translation of up to the padding, no flips: digits
    are not mirror-symmetric).

    Attributes:
      store: ``[M, h, w, c]`` float32 in [0, 1] with ``h, w <= image_size`` and ``c`` 1 or
        ``channels``.
    """

    store: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 1, 1, 1)))

    def _fetch(self, store_indices: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        src = self.store[store_indices]
        n, h, w, _ = src.shape
        size = self.image_size
        out = np.zeros((n, size, size, src.shape[-1]), np.float32)
        if rng is None:
            top = np.full(n, (size - h) // 2)
            left = np.full(n, (size - w) // 2)
        else:
            top = rng.integers(0, size - h + 1, n)
            left = rng.integers(0, size - w + 1, n)
        for k in range(n):
            out[k, top[k]:top[k] + h, left[k]:left[k] + w] = src[k]
        if out.shape[-1] != self.channels:
            out = np.repeat(out, self.channels, axis=-1)
        return out


def _array_split(split: Split, size: int, channels: int) -> ArrayImageSplit:
    return ArrayImageSplit(indices=np.arange(len(split)),
                           labels=np.asarray(split.labels, np.int32),
                           image_size=size, channels=channels, store=split.images)


def load_mnist_images(*, size: int = 32, channels: int = 1,
                      cache_dir: str | os.PathLike | None = None, seed: int = 0) -> ImageData:
    """MNIST as the offline stand-in for ImageNet: 28x28 digits zero-padded to ``size``.

    Same 55k / 5k / 10k splits as :func:`gpjax.data.mnist.load_mnist` (which caches offline).

    Args:
      size: side of the output images (>= 28; 32 is the small-stem ResNet's CIFAR size).
      channels: 1, or 3 (the grey level repeated, for models built for RGB).
      cache_dir: MNIST cache directory (see :func:`gpjax.data.mnist.load_mnist`).
      seed: seed of the train/validation split.

    Returns:
      :class:`ImageData` whose splits give float32 ``[n, size, size, channels]`` in [0, 1].
    """
    if size < 28:
        raise ValueError(f"size={size}: MNIST digits are 28x28 and are padded, not shrunk; "
                         "use size >= 28")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: use 1 or 3")
    mnist = load_mnist(cache_dir, seed=seed)
    return ImageData(
        train=_array_split(mnist.train, size, channels),
        validation=_array_split(mnist.validation, size, channels),
        test=_array_split(mnist.test, size, channels),
        num_classes=10,
        source=f"mnist padded to {size}x{size}x{channels} ({mnist.source})",
    )


# ---------------------------------------------------------------------------------------------
# TFDS data sources


def _resize_shorter(image: np.ndarray, shorter: int) -> np.ndarray:
    """Bilinear resize (PIL, antialiased) so that the shorter side is ``shorter``."""
    from PIL import Image

    h, w = image.shape[:2]
    if min(h, w) == shorter:
        return image
    scale = shorter / min(h, w)
    new_h, new_w = max(shorter, round(h * scale)), max(shorter, round(w * scale))
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
    return out[..., None] if squeeze else out


def preprocess_image(image: np.ndarray, size: int,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Decoded uint8 image to a float32 square model input.

    Evaluation (``rng`` None): an image already ``size x size`` is kept; any other is resized
    so its shorter side is ``round(size * 8 / 7)`` (256 for 224) and centre-cropped.
    Training (``rng`` given): shorter side resized to ``round(size * 8 / 7)``, a random
    ``size x size`` crop, a random horizontal flip.

    Args:
      image: uint8 ``[h, w, c]``.
      size: output side.
      rng: augmentation randomness, or None.

    Returns:
      float32 ``[size, size, c]`` in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if rng is None and image.shape[:2] == (size, size):
        return image.astype(np.float32) / 255.0
    image = _resize_shorter(image, round(size * 8 / 7))
    h, w = image.shape[:2]
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    image = image[top:top + size, left:left + size]
    if rng is not None and rng.random() < 0.5:
        image = image[:, ::-1]
    return image.astype(np.float32) / 255.0


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsImageSplit(ImageSplit):
    """Images read from a ``tfds.data_source`` and preprocessed per batch
    (:func:`preprocess_image`), decoded on ``num_workers`` threads.

    Attributes:
      source: the random-access data source (``source[i]["image"]``, uint8 ``[h, w, c]``).
      num_workers: threads decoding a batch (0: in the calling thread).
    """

    source: Any = None
    num_workers: int = 0

    def _fetch(self, store_indices: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        # Per-example generators drawn up front keep augmentation deterministic under threads.
        n = len(store_indices)
        rngs: list[Any] = ([None] * n if rng is None else
                           [np.random.default_rng(s) for s in rng.integers(0, 2**63, n)])

        def one(k: int) -> np.ndarray:
            return preprocess_image(self.source[int(store_indices[k])]["image"],
                                    self.image_size, rngs[k])

        if self.num_workers > 0 and len(store_indices) > 1:
            with ThreadPoolExecutor(self.num_workers) as pool:
                images = list(pool.map(one, range(len(store_indices))))
        else:
            images = [one(k) for k in range(len(store_indices))]
        if not images:
            return np.zeros((0, *self.image_shape), np.float32)
        return np.stack(images)


def _read_labels(name: str, split: str, tfds_dir: str | None, source: Any) -> np.ndarray:
    """All labels of a split, skipping image decoding where TFDS allows."""
    import tensorflow_datasets as tfds

    try:
        fast = tfds.data_source(name, split=split, data_dir=tfds_dir, download=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        return np.array([fast[i]["label"] for i in range(len(fast))], np.int32)
    except ModuleNotFoundError:
        # tfds.testing.mock_data re-encodes skipped images with TensorFlow, absent here; the
        # real ArrayRecord reader does not. Fall back to decoding (slow on ImageNet).
        return np.array([source[i]["label"] for i in range(len(source))], np.int32)


def _labels(name: str, split: str, tfds_dir: str | None, source: Any,
            label_cache: Path | None, version: str) -> np.ndarray:
    if label_cache is None:
        return _read_labels(name, split, tfds_dir, source)
    path = label_cache / f"{name}-{version}-{split}-{len(source)}.npy"
    if path.exists():
        return np.load(path)
    labels = _read_labels(name, split, tfds_dir, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, labels)
    os.replace(tmp, path)
    return labels


def holdout_per_class(labels: np.ndarray, per_class: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class hold-out: ``per_class`` examples of each class (never more than half of
    a class, so tiny sets keep training examples).

    Args:
      labels: int ``[N]``.
      per_class: examples per class to hold out.
      seed: seed of the choice.

    Returns:
      ``(train_positions, validation_positions)``, sorted int64 arrays partitioning
      ``range(N)``.
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(per_class, len(members) // 2)
        held.append(rng.choice(members, take, replace=False))
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train.astype(np.int64), val.astype(np.int64)


def load_tfds_images(name: str, *, tfds_dir: str | os.PathLike | None = None,
                     image_size: int | None = None, val_per_class: int | None = None,
                     seed: int = 0, num_workers: int = 0,
                     label_cache: str | os.PathLike | None | Literal[False] = None) -> ImageData:
    """An image dataset prepared with TFDS, split per the SPEC protocol. Never downloads.

    Args:
      name: ``"imagenet2012"``, ``"imagenette"`` or ``"cifar10"`` (see
        :data:`TFDS_IMAGE_DATASETS`), optionally with a config (``"imagenette/320px-v2"``).
      tfds_dir: TFDS data directory (default: TFDS's, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      image_size: side of the square images (default: 224 for ImageNet/Imagenette, 32 for
        CIFAR-10).
      val_per_class: images per class held out of train as validation (default: 50 for
        ImageNet/Imagenette, 500 for CIFAR-10).
      seed: seed of the hold-out.
      num_workers: threads decoding each batch.
      label_cache: directory caching the label arrays (default
        ``<gpjax data dir>/tfds-labels``; ``False``: no cache).

    Returns:
      :class:`ImageData`: train and validation from the official training split, test = the
      official validation (ImageNet, Imagenette) or test (CIFAR-10) split.

    Raises:
      ValueError: unknown dataset.
      Exception from TFDS: the dataset is not prepared in ``tfds_dir``.
    """
    import tensorflow_datasets as tfds

    base = name.split("/")[0].split(":")[0]
    if base not in TFDS_IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; known: {sorted(TFDS_IMAGE_DATASETS)}")
    spec = TFDS_IMAGE_DATASETS[base]
    size = image_size or spec.image_size
    per_class = spec.val_per_class if val_per_class is None else val_per_class
    tfds_dir = None if tfds_dir is None else os.fspath(tfds_dir)
    cache = (None if label_cache is False
             else data_dir() / "tfds-labels" if label_cache is None else Path(label_cache))

    builder = tfds.builder(name, data_dir=tfds_dir)
    version = str(builder.info.version)
    num_classes = builder.info.features["label"].num_classes
    sources = {}
    splits = {}
    for split in (spec.train_split, spec.test_split):
        src = tfds.data_source(name, split=split, data_dir=tfds_dir, download=False)
        labels = _labels(name.replace("/", "_"), split, tfds_dir, src, cache, version)
        sources[split] = src
        first = np.asarray(src[0]["image"]) if len(src) else np.zeros((1, 1, 3))
        channels = first.shape[-1] if first.ndim == 3 else 1
        splits[split] = TfdsImageSplit(indices=np.arange(len(src)), labels=labels,
                                       image_size=size, channels=channels, source=src,
                                       num_workers=num_workers)
    full_train = splits[spec.train_split]
    train_pos, val_pos = holdout_per_class(full_train.labels, per_class, seed)
    return ImageData(
        train=full_train.subset(train_pos),
        validation=full_train.subset(val_pos),
        test=splits[spec.test_split],
        num_classes=num_classes,
        source=f"tfds:{name}:{version}",
    )
