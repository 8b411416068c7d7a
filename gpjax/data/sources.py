"""Random-access sources of ``(x, y)`` examples: in-memory arrays (``.npz``), a directory of
memory-mapped ``x.npy`` + ``y.npy``, ArrayRecord files, ``tfds:NAME``.

Every source answers the same questions without loading itself whole::

    len(src)                    # N
    src[i]                      # one example, (x [...], y [])
    src.read(indices)           # the examples at indices, (x [n, ...], y [n]), any order
    src.spec                    # ElementSpec: per-example shapes and dtypes as stored
    src.name                    # the path (absolute), ``tfds:NAME`` or a caller's label

:func:`open_source` picks the kind from what it is given. :func:`scan` walks a source in chunks
of about ``chunk_bytes`` (a 4 GB ``.npy`` pair never sits in memory whole) and
:func:`gpjax.data.npz.read_data` checks and fingerprints each chunk on the way, so the
fingerprint of a ``.npy`` directory, an ArrayRecord file and an ``.npz`` holding the same arrays
is the same digest.

An ArrayRecord record is one example, serialized by :func:`encode_example`: the bytes
``b"GPJX1"``, a little-endian ``uint32`` header length, a JSON header ``[[dtype, shape], ...]``
(one entry per array) and the arrays' raw C-order bytes one after the other.
:func:`write_array_record` writes such a file from arrays.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

#: Default host memory of one chunk of a whole-source pass (fingerprints, checks).
CHUNK_BYTES = 64 * 2**20
_MAGIC = b"GPJX1"
ARRAY_RECORD_SUFFIXES = (".array_record", ".arrayrecord")


class SourceError(ValueError):
    """A source cannot be opened; the message names it and the fix."""


class ElementSpec(NamedTuple):
    """Per-example shapes and dtypes of a source's arrays, as stored.

    Attributes:
      shapes: ``(x shape, y shape)`` of one example (``y``'s is ``()`` for labels).
      dtypes: their numpy dtypes.
    """

    shapes: tuple
    dtypes: tuple

    def example_bytes(self) -> int:
        """Bytes of one example as stored."""
        return int(sum(np.dtype(d).itemsize * int(np.prod(s))
                       for s, d in zip(self.shapes, self.dtypes)))


@runtime_checkable
class Source(Protocol):
    """A random-access source of ``(x, y)`` examples (see the module docstring)."""

    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def spec(self) -> ElementSpec: ...


def _spec_of(arrays: tuple) -> ElementSpec:
    return ElementSpec(tuple(tuple(a.shape[1:]) for a in arrays),
                       tuple(np.dtype(a.dtype) for a in arrays))


class ArraysSource:
    """Arrays in memory (an ``.npz`` file read whole, or a caller's ``(x, y)``).

    Args:
      arrays: ``(x [N, ...], y [N])``.
      name: the path or a label.
    """

    def __init__(self, arrays: tuple, name: str) -> None:
        self.arrays = tuple(np.asarray(a) for a in arrays)
        self.name = name

    def __len__(self) -> int:
        return int(len(self.arrays[0]))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return tuple(a[int(index)] for a in self.arrays)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, np.int64)
        return tuple(a[idx] for a in self.arrays)

    @property
    def spec(self) -> ElementSpec:
        return _spec_of(self.arrays)


class NpyDirSource:
    """A directory holding ``x.npy`` and ``y.npy``, opened memory-mapped (``mmap_mode="r"``).

    After each :meth:`read` the pages it touched are dropped from the process's mapping
    (``madvise(MADV_DONTNEED)``): they stay in the page cache, but a pass over a file larger
    than memory does not grow the resident set.

    Raises:
      SourceError: a file is missing or is not an ``.npy`` array.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser().absolute()
        self.name = str(self.path)
        self.arrays = tuple(self._open(k) for k in ("x", "y"))

    def _open(self, key: str) -> np.ndarray:
        f = self.path / f"{key}.npy"
        if not f.exists():
            raise SourceError(f"{self.path}: no {key}.npy (a data directory holds x.npy and "
                              "y.npy); save them with np.save(DIR/'x.npy', features) and "
                              "np.save(DIR/'y.npy', labels)")
        try:
            a = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SourceError(f"{f}: not an .npy array ({e}); save it with np.save") from None
        if a.ndim == 0:
            raise SourceError(f"{f}: a scalar, not examples [N, ...]; save one row per example")
        return a

    def __len__(self) -> int:
        return int(len(self.arrays[0]))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.read(np.asarray([index]))[0][0], self.arrays[1][int(index)].copy()

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, np.int64)
        out = tuple(np.asarray(np.take(a, idx, axis=0)) for a in self.arrays)  # one copy
        self.release()
        return out

    def release(self) -> None:
        """Drops the mapped pages from this process's resident set (they stay cached)."""
        for a in self.arrays:
            m = getattr(a, "_mmap", None)
            if isinstance(m, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED)

    @property
    def spec(self) -> ElementSpec:
        return _spec_of(self.arrays)


def encode_example(arrays: tuple) -> bytes:
    """One example as an ArrayRecord record (the format of the module docstring)."""
    arrays = [np.asarray(a, order="C") for a in arrays]
    header = json.dumps([[a.dtype.str, list(a.shape)] for a in arrays]).encode()
    return b"".join([_MAGIC, struct.pack("<I", len(header)), header]
                    + [a.tobytes() for a in arrays])


def decode_example(record: bytes) -> tuple[np.ndarray, ...]:
    """The arrays of a record made by :func:`encode_example`.

    Raises:
      ValueError: the record is not in that format.
    """
    if record[:len(_MAGIC)] != _MAGIC:
        raise ValueError("record does not start with b'GPJX1' (not written by "
                         "gpjax.data.write_array_record)")
    start = len(_MAGIC) + 4
    (size,) = struct.unpack("<I", record[len(_MAGIC):start])
    out, pos = [], start + size
    for dtype, shape in json.loads(record[start:pos]):
        dt = np.dtype(dtype)
        count = math.prod(shape)
        out.append(np.frombuffer(record, dt, count, pos).reshape(tuple(shape)))
        pos += count * dt.itemsize
    return tuple(out)


def write_array_record(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, *,
                       group_size: int = 1) -> Path:
    """Writes ``(x, y)`` as an ArrayRecord file, one record per example.

    Args:
      path: the file to write (conventionally ``*.array_record``).
      x: features ``[N, ...]``; y: labels ``[N]``.
      group_size: records per compressed group (1: fastest random access).

    Returns:
      the absolute path written.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    path = Path(path).expanduser().absolute()
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples, y {len(y)}; give one label per example")
    writer = ArrayRecordWriter(str(path), f"group_size:{int(group_size)}")
    try:
        for i in range(len(x)):
            writer.write(encode_example((np.asarray(x[i]), np.asarray(y[i]))))
    finally:
        writer.close()
    return path


class ArrayRecordSource:
    """An ArrayRecord file of examples written by :func:`write_array_record` (read through
    ``grain.sources.ArrayRecordDataSource``).

    Raises:
      SourceError: the file cannot be read, or its records are not gpjax examples.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import grain

        self.path = Path(path).expanduser().absolute()
        self.name = str(self.path)
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file; check the path")
        try:
            self._ds = grain.sources.ArrayRecordDataSource(str(self.path))
            n = len(self._ds)
            self._spec = _spec_of(tuple(a[None] for a in decode_example(self._ds[0]))) \
                if n else ElementSpec(((), ()), (np.dtype(np.float32), np.dtype(np.int32)))
        except (OSError, RuntimeError, ValueError) as e:
            raise SourceError(f"{self.path}: not an ArrayRecord file of examples ({e}); write "
                              "it with gpjax.data.write_array_record(path, x, y)") from None

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return decode_example(self._ds[int(index)])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        records = self._ds.__getitems__([int(i) for i in np.asarray(indices).ravel()])
        return _stack([decode_example(r) for r in records], self._spec, self.name)

    @property
    def spec(self) -> ElementSpec:
        return self._spec


def _stack(examples: list, spec: ElementSpec, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``[n]`` examples stacked per array; examples unlike ``spec`` raise :class:`SourceError`."""
    out = []
    for j, (shape, dtype) in enumerate(zip(spec.shapes, spec.dtypes)):
        col = np.empty((len(examples),) + tuple(shape), dtype)
        for i, ex in enumerate(examples):
            if ex[j].shape != tuple(shape):
                raise SourceError(f"{name}: examples differ in shape ({ex[j].shape} vs "
                                  f"{tuple(shape)}); give every example the same shape")
            col[i] = ex[j]
        out.append(col)
    return tuple(out)


class TfdsSource:
    """The train split of a prepared TFDS dataset (``tfds.data_source``): images scaled to
    [0, 1] as float32, integer labels.

    Raises:
      SourceError: TFDS cannot open it (not prepared, or no such dataset).
    """

    def __init__(self, name: str) -> None:
        self.name = f"tfds:{name}"
        try:
            import tensorflow_datasets as tfds
            self._ds = tfds.data_source(name, split="train")
            first = self[0]
        except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; all mean "not prepared"
            raise SourceError(f"{self.name}: cannot read it with tfds.data_source ({e}); "
                              "prepare it first (tfds build) or give an .npz file") from None
        self._spec = _spec_of(tuple(np.asarray(a)[None] for a in first))

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self._ds[int(index)]
        return np.asarray(item["image"], np.float32) / 255.0, np.asarray(item["label"])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _stack([self[i] for i in np.asarray(indices).ravel()], self._spec, self.name)

    @property
    def spec(self) -> ElementSpec:
        return self._spec


def open_source(source: Any, *, name: str | None = None,
                load_npz: Any = None) -> Source:
    """The source a user's data designation names.

    Args:
      source: a :class:`Source` (returned as it is); ``(x, y)`` arrays; ``"tfds:NAME"``; a
        directory holding ``x.npy`` and ``y.npy``; an ArrayRecord file (``*.array_record``); or
        an ``.npz`` file (read whole).
      name: a label for in-memory arrays (default ``"<arrays>"``).
      load_npz: ``path -> (x, y)``, the ``.npz`` reader (:mod:`gpjax.data.npz` passes its own,
        which raises its errors).

    Raises:
      SourceError: the source cannot be opened (the message names it and the fix).
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, tuple):
        return ArraysSource(source, name or "<arrays>")
    if str(source).startswith("tfds:"):
        return TfdsSource(str(source).partition(":")[2])
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        return NpyDirSource(path)
    if path.suffix in ARRAY_RECORD_SUFFIXES:
        return ArrayRecordSource(path)
    if load_npz is None:
        raise SourceError(f"{path}: not a directory of x.npy/y.npy or an ArrayRecord file")
    return ArraysSource(load_npz(path), str(path))


def chunks(src: Source, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, tuple]]:
    """Walks ``src`` front to back: ``(offset, (x [m, ...], y [m]))`` of about ``chunk_bytes``
    each (at least one example)."""
    n = len(src)
    step = max(int(chunk_bytes) // max(src.spec.example_bytes(), 1), 1)
    for start in range(0, n, step):
        yield start, src.read(np.arange(start, min(start + step, n)))


__all__ = ["ARRAY_RECORD_SUFFIXES", "CHUNK_BYTES", "ArrayRecordSource", "ArraysSource",
           "ElementSpec", "NpyDirSource", "Source", "SourceError", "TfdsSource", "chunks",
           "decode_example", "encode_example", "open_source", "write_array_record"]
