"""A user's data files: ``.npz`` with ``x`` and ``y``, a directory of ``x.npy`` + ``y.npy``
(memory-mapped), an ArrayRecord file or ``tfds:NAME``; checked before use.

A classification file holds ``x`` (float, ``[N, ...]``) and ``y`` (integer labels ``[N]``).
:func:`read_data` opens one as a random-access source (:mod:`gpjax.data.sources`), walks it in
chunks (no large file is ever loaded whole) and refuses, with a one-line :class:`DataFileError`
naming the file, the array and the fix, a file that is not an npz, a missing array, an empty
file, x and y of different lengths, non-integer labels, labels outside the model's classes,
NaN/inf features and a feature shape unlike the model's. Every file gets a content fingerprint
(SHA-256 of the checked arrays, computed chunk by chunk; the same digest for the same arrays in
any format) so a later update can tell that an earlier file moved or changed.

:func:`holdout` splits a file into training and validation examples by a seeded rule that
depends only on the file's content, so the same file always gives the same split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gpjax.data.sources import (
    CHUNK_BYTES,
    ArraysSource,
    Source,
    SourceError,
    chunks,
    open_source,
)

PyTree = Any


class DataFileError(ValueError):
    """A data file cannot be used; the message names the file, the array and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class DataFile:
    """One file of examples.

    Attributes:
      name: its path (absolute) or ``tfds:NAME``, or a caller's label for in-memory arrays.
      source: its examples, random access (:mod:`gpjax.data.sources`).
      sha256: fingerprint of the checked arrays' dtypes, shapes and bytes.
      regression: float targets ``y float32 [N] or [N, k]`` instead of int32 labels.
    """

    name: str
    source: Source
    sha256: str
    regression: bool = False

    def __len__(self) -> int:
        return len(self.source)

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every example in memory, ``(x float32 [N, ...], y int32 [N])`` (float32 targets for
        ``regression``; read on first use;
        for large files take parts with :meth:`read`)."""
        return self.read(np.arange(len(self)))

    def nbytes(self) -> int:
        """Host bytes of every example as :meth:`read` returns them (float32 x, int32 y)."""
        x_shape, y_shape = self.source.spec.shapes
        return len(self) * 4 * (int(np.prod(x_shape)) + int(np.prod(y_shape)))

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples at ``indices``: ``(x float32 [n, ...], y int32 [n])`` (``y`` float32
        ``[n, ...]`` for ``regression``)."""
        x, y = self.source.read(np.asarray(indices, np.int64))
        y_type = np.float32 if self.regression else np.int32
        return x.astype(np.float32, copy=False), y.astype(y_type, copy=False)


def fingerprint(arrays: tuple) -> str:
    """SHA-256 over each array's dtype, shape and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataFileError(f"{path}: no such file; check the path")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            for key in ("x", "y"):
                if key not in names:
                    raise DataFileError(
                        f"{path}: no array {key!r} (it has {sorted(names) or 'none'}); save it "
                        "with np.savez(path, x=features, y=labels)")
            return np.asarray(z["x"]), np.asarray(z["y"])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        if isinstance(e, DataFileError):
            raise
        raise DataFileError(f"{path}: not an .npz file ({e}); save it with "
                            "np.savez(path, x=features, y=labels)") from None


def check_classification(name: str, x: np.ndarray, y: np.ndarray, *,
                         input_shape: tuple | None = None,
                         num_classes: int | None = None,
                         offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32, y int32)`` after the checks of the module docstring.

    ``offset``: the index of ``x[0]`` in its file (for a chunk; error messages count from it).

    Raises:
      DataFileError: naming ``name``, the array and the fix.
    """
    if len(x) == 0 or len(y) == 0:
        raise DataFileError(f"{name}: no examples (x has {len(x)}, y {len(y)}); give a file "
                            "with at least one example")
    if len(x) != len(y):
        raise DataFileError(f"{name}: x has {len(x)} examples but y has {len(y)}; give one "
                            "label per example")
    if y.ndim != 1:
        raise DataFileError(f"{name}: y must be integer labels of shape [N], got shape "
                            f"{y.shape}; pass class indices, not one-hot rows")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(
                y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataFileError(f"{name}: y has dtype {y.dtype}, not integer labels; save "
                                "class indices 0..K-1 (e.g. y.astype(int))")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataFileError(f"{name}: x has dtype {x.dtype}; features must be real numbers")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(x), -1).any(1))[0])
        raise DataFileError(f"{name}: x has NaN/inf values (first in example "
                            f"{first + offset}); clean or drop those examples")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise DataFileError(f"{name}: x has examples of shape {tuple(x.shape[1:])}, the model "
                            f"takes {tuple(input_shape)}; reshape the features to match")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise DataFileError(f"{name}: y has labels in [{y.min()}, {y.max()}], the model has "
                            f"{num_classes} classes (0..{(num_classes or 0) - 1}); relabel, or "
                            "start a store whose model has more outputs")
    return x, y.astype(np.int32)


def _check_spec(src: Source) -> None:
    """The checks a source's element spec answers before any example is read."""
    (x_shape, y_shape), (x_dtype, y_dtype) = src.spec
    y_len = len(src.arrays[1]) if hasattr(src, "arrays") else len(src)
    if len(src) != y_len:
        raise DataFileError(f"{src.name}: x has {len(src)} examples but y has {y_len}; give one "
                            "label per example")
    if tuple(y_shape) != ():
        raise DataFileError(f"{src.name}: y must be integer labels of shape [N], got examples "
                            f"of shape {tuple(y_shape)}; pass class indices, not one-hot rows")
    if not any(np.issubdtype(y_dtype, t) for t in (np.integer, np.bool_, np.floating)):
        raise DataFileError(f"{src.name}: y has dtype {y_dtype}, not integer labels; save "
                            "class indices 0..K-1 (e.g. y.astype(int))")
    if not np.issubdtype(x_dtype, np.number) or np.issubdtype(x_dtype, np.complexfloating):
        raise DataFileError(f"{src.name}: x has dtype {x_dtype}; features must be real numbers")


def check_source(src: Source, *, input_shape: tuple | None = None,
                 num_classes: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Checks every example of ``src`` (:func:`check_classification`, a chunk at a time) and
    returns :func:`fingerprint` of the checked ``(x float32, y int32)``.

    The labels (4 bytes an example) are kept until x is hashed: the digest hashes x, then y.

    Raises:
      DataFileError: naming the source, the array and the fix.
    """
    _check_spec(src)
    checks = {"input_shape": input_shape, "num_classes": num_classes}
    n = len(src)
    if n == 0:
        raise DataFileError(f"{src.name}: no examples; give a file with at least one example")
    h = hashlib.sha256()
    h.update(f"{np.dtype(np.float32).str}{(n, *src.spec.shapes[0])}".encode())
    labels = []
    for offset, (x, y) in chunks(src, chunk_bytes):
        x, y = check_classification(src.name, x, y, offset=offset, **checks)
        h.update(np.ascontiguousarray(x).tobytes())
        labels.append(y)
    h.update(f"{np.dtype(np.int32).str}{(n,)}".encode())
    for y in labels:
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def check_regression(name: str, x: np.ndarray, y: np.ndarray, *,
                     input_shape: tuple | None = None,
                     target_shape: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32, y float32)`` of a regression file: float targets ``[N]`` or ``[N, k]``.

    Raises:
      DataFileError: naming ``name``, the array and the fix (integer targets are refused: they
        are class labels, the classifier's convention).
    """
    if len(x) == 0 or len(x) != len(y):
        raise DataFileError(f"{name}: x has {len(x)} examples and y {len(y)}; give one target "
                            "per example, at least one example")
    if not np.issubdtype(y.dtype, np.floating):
        raise DataFileError(f"{name}: y has dtype {y.dtype}, but a regression store takes float "
                            "targets [N] or [N, k]; Fix: save y.astype(np.float32), or make a "
                            "classifier store (--task classifier) for class labels")
    if y.ndim not in (1, 2):
        raise DataFileError(f"{name}: y has shape {y.shape}; regression targets are [N] or "
                            "[N, k]; Fix: reshape y to (N, k)")
    if target_shape is not None and tuple(y.shape[1:]) != tuple(target_shape):
        raise DataFileError(f"{name}: y has targets of shape {tuple(y.shape[1:])}, the store's "
                            f"have {tuple(target_shape)}; Fix: give targets of the store's shape")
    x, _ = check_classification(name, x, np.zeros(len(x), np.int32), input_shape=input_shape)
    if not np.all(np.isfinite(y)):
        raise DataFileError(f"{name}: y has NaN/inf targets; clean or drop those examples")
    return x, y.astype(np.float32)


def read_data(source: str | os.PathLike | tuple, *, input_shape: tuple | None = None,
              num_classes: int | None = None, name: str | None = None,
              chunk_bytes: int = CHUNK_BYTES, target_shape: tuple | None = None,
              regression: bool = False) -> DataFile:
    """Opens and checks one classification (or, with ``regression``, regression) data source,
    a chunk at a time (regression data: read whole).

    Args:
      source: an ``.npz`` path, a directory holding ``x.npy`` and ``y.npy`` (memory-mapped),
        an ArrayRecord file (``*.array_record``, :func:`gpjax.data.sources.write_array_record`),
        ``"tfds:NAME"`` (its train split, via ``tfds.data_source``) or an ``(x, y)`` tuple.
      input_shape: the model's example shape (checked when given).
      num_classes: the model's class count (labels checked when given).
      name: a label for in-memory arrays (default ``"<arrays>"``).
      chunk_bytes: host memory of one chunk of the checking and fingerprinting pass.
      target_shape: regression targets' shape per example (checked when given).
      regression: float targets (:func:`check_regression`) instead of integer labels.

    Raises:
      DataFileError: the source cannot be used (see the module docstring).
    """
    try:
        src = open_source(source, name=name, load_npz=_load_npz)
    except SourceError as e:
        raise DataFileError(str(e)) from None
    if regression:
        x, y = check_regression(src.name, *src.read(np.arange(len(src))),
                                input_shape=input_shape, target_shape=target_shape)
        return DataFile(src.name, ArraysSource((x, y), src.name), fingerprint((x, y)),
                        regression=True)
    return DataFile(src.name, src, check_source(src, input_shape=input_shape,
                                                num_classes=num_classes,
                                                chunk_bytes=chunk_bytes))


def holdout(file: DataFile, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, validation indices)`` of a file: a seeded ``fraction`` held out.

    The draw depends on ``seed`` and the file's fingerprint only. At least one example is held
    out and one kept when the file has two or more.
    """
    n = len(file)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = min(max(int(round(fraction * n)), 1 if fraction > 0 and n > 1 else 0), n - 1)
    rng = np.random.default_rng([int(seed), int(file.sha256[:12], 16)])
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


__all__ = ["DataFile", "DataFileError", "check_classification", "check_regression",
           "check_source", "fingerprint", "holdout", "read_data"]
