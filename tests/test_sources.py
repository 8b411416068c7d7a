"""Data sources (gpjax.data.sources) and the checks of gpjax.data.npz: every format gives the
examples it was written from, fingerprints are the same digest in any format and at any chunk
size, and unusable inputs are refused with one line naming the file and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpjax.data.npz import DataFileError, fingerprint, read_data
from gpjax.data.sources import (
    ArrayRecordSource,
    ArraysSource,
    NpyDirSource,
    decode_example,
    encode_example,
    open_source,
    write_array_record,
)


def _arrays(n=37, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 5, 3), np.float32), (rng.integers(0, 7, n)).astype(np.int64)


def _write_all(d, x, y):
    """The same arrays as .npz, a .npy directory and an ArrayRecord file."""
    np.savez(d / "a.npz", x=x, y=y)
    (d / "npy").mkdir()
    np.save(d / "npy" / "x.npy", x)
    np.save(d / "npy" / "y.npy", y)
    write_array_record(d / "a.array_record", x, y)
    return {"npz": d / "a.npz", "npy": d / "npy", "array_record": d / "a.array_record"}


def test_each_source_gives_the_examples_it_was_written_from(tmp_path):
    x, y = _arrays()
    paths = _write_all(tmp_path, x, y)
    kinds = {"npz": ArraysSource, "npy": NpyDirSource, "array_record": ArrayRecordSource}
    idx = np.array([36, 0, 5, 5, 17, 2])
    for kind, path in paths.items():
        src = open_source(path, load_npz=lambda p: tuple(np.load(p)[k] for k in "xy"))
        assert isinstance(src, kinds[kind]) and len(src) == 37 and src.name == str(path)
        assert src.spec.shapes == ((5, 3), ()) and src.spec.dtypes[0] == np.float32
        got_x, got_y = src.read(idx)
        np.testing.assert_array_equal(got_x, x[idx])
        np.testing.assert_array_equal(got_y, y[idx])
        one_x, one_y = src[11]
        np.testing.assert_array_equal(one_x, x[11])
        assert int(one_y) == y[11]


def test_fingerprint_same_in_every_format_and_chunk_size(tmp_path):
    x, y = _arrays()
    paths = _write_all(tmp_path, x, y)
    want = fingerprint((x, y.astype(np.int32)))
    for path in paths.values():
        for chunk in (1, 5 * 3 * 4 * 4, 1 << 20):  # one example, four, everything
            f = read_data(path, chunk_bytes=chunk)
            assert f.sha256 == want and len(f) == 37
    f = read_data((x, y), name="<mine>")
    assert f.sha256 == want and f.name == "<mine>"
    np.testing.assert_array_equal(read_data(paths["npy"]).arrays[0], x)
    assert read_data(paths["npy"]).arrays[1].dtype == np.int32
    x2 = x.copy()
    x2[20, 1, 1] += 1.0
    assert read_data((x2, y)).sha256 != want


_DTYPES = st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.int64, np.bool_])


@settings(max_examples=30, deadline=None)
@given(arrays=st.lists(
    _DTYPES.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                max_side=4))),
    min_size=1, max_size=3))
def test_record_encoding_round_trips(arrays):
    got = decode_example(encode_example(tuple(arrays)))
    assert len(got) == len(arrays)
    for a, b in zip(arrays, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_npy_reads_drop_their_pages_and_keep_the_file_mapped(tmp_path):
    x, y = _arrays(n=200)
    _write_all(tmp_path, x, y)
    src = NpyDirSource(tmp_path / "npy")
    assert isinstance(src.arrays[0], np.memmap)
    for _ in range(3):  # reads after release() see the file again
        np.testing.assert_array_equal(src.read(np.arange(199, -1, -7))[0], x[199::-7])


@pytest.mark.parametrize("case,msg", [
    ("lengths", "x has 10 examples but y has 9"),
    ("y_dtype", "y has dtype complex64, not integer labels"),
    ("x_dtype", "x has dtype <U1; features must be real numbers"),
    ("y_shape", r"y must be integer labels of shape \[N\]"),
    ("no_y", "no y.npy"),
    ("not_npy", "not an .npy array"),
    ("nan", "NaN/inf values \\(first in example 7\\)"),
])
def test_bad_npy_directory_refused_with_one_line(tmp_path, case, msg):
    d = tmp_path / case
    d.mkdir()
    x = np.random.default_rng(0).random((10, 2), np.float32)
    y = np.arange(10) % 3
    if case == "nan":
        x[7, 1] = np.nan
    arrays = {"lengths": (x, y[:9]), "y_dtype": (x, y.astype(np.complex64)),
              "x_dtype": (np.array(list("abcdefghij")), y), "y_shape": (x, np.eye(10)),
              }.get(case, (x, y))
    np.save(d / "x.npy", arrays[0])
    if case != "no_y":
        np.save(d / "y.npy", arrays[1])
    if case == "not_npy":
        (d / "y.npy").write_text("not an array")
    with pytest.raises(DataFileError, match=msg) as e:
        read_data(d, chunk_bytes=16)  # 2 examples a chunk: the NaN is found in a later chunk
    assert str(d) in str(e.value) and "\n" not in str(e.value)


def test_bad_array_record_refused(tmp_path):
    bad = tmp_path / "bad.array_record"
    bad.write_bytes(b"definitely not an array record file")
    with pytest.raises(DataFileError, match="not an ArrayRecord file of examples"):
        read_data(bad)
    with pytest.raises(DataFileError, match="no such file"):
        read_data(tmp_path / "missing.array_record")
    x, y = _arrays(n=4)
    write_array_record(tmp_path / "labels.array_record", x, np.full(4, 9))
    with pytest.raises(DataFileError, match="labels in \\[9, 9\\].*3 classes"):
        read_data(tmp_path / "labels.array_record", num_classes=3)
