"""Tests of gpjax.data.images: the TFDS path under tfds.testing.mock_data (no download, and no
TensorFlow: this environment has none), the SPEC hold-out, preprocessing, the MNIST stand-in."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gpjax.data import images as I
from gpjax.data.mnist import load_mnist


def _load(name: str, tmp_path, n: int = 60, **kw):
    with tfds.testing.mock_data(num_examples=n):
        data = I.load_tfds_images(name, label_cache=tmp_path, **kw)
        batches = {s: next(getattr(data, s).batches(8, seed=0)) for s in ("train", "test")}
        return data, batches


def test_cifar10_protocol_under_mock_data(tmp_path):
    data, batches = _load("cifar10", tmp_path, val_per_class=2)
    assert data.num_classes == 10 and data.source.startswith("tfds:cifar10")
    # Validation is held out of train (per class, at most half a class); test is the test split.
    assert len(data.train) + len(data.validation) == 60 and len(data.test) == 60
    train_idx, val_idx = set(data.train.indices), set(data.validation.indices)
    assert not train_idx & val_idx and train_idx | val_idx == set(range(60))
    all_labels = np.concatenate([data.train.labels, data.validation.labels])
    for c in range(10):
        expect = min(2, int(np.sum(all_labels == c)) // 2)
        assert np.sum(data.validation.labels == c) == expect
    assert len(data.validation) > 0
    x, y = batches["train"]
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    with tfds.testing.mock_data(num_examples=60):
        src = tfds.data_source("cifar10", split="train")
        # Labels and evaluation images are the source's, unresized (already 32x32).
        k = int(data.train.indices[3])
        assert data.train.labels[3] == src[k]["label"]
        np.testing.assert_array_equal(data.train.images([3])[0],
                                      src[k]["image"].astype(np.float32) / 255.0)
        again = I.load_tfds_images("cifar10", label_cache=tmp_path, val_per_class=2)
        other = I.load_tfds_images("cifar10", label_cache=tmp_path, val_per_class=2, seed=1)
    np.testing.assert_array_equal(again.validation.indices, data.validation.indices)
    assert not np.array_equal(other.validation.indices, data.validation.indices)


def test_imagenette_resizes_and_uses_validation_as_test(tmp_path):
    data, batches = _load("imagenette", tmp_path, n=30, image_size=48, num_workers=2)
    assert len(data.test) == 30  # the official validation split
    assert data.train.image_shape == (48, 48, 3)
    x, _ = batches["test"]
    assert x.shape == (8, 48, 48, 3) and 0.0 <= x.min() and x.max() <= 1.0


def test_imagenet_defaults_and_label_cache(tmp_path, monkeypatch):
    data, batches = _load("imagenet2012", tmp_path, n=20)
    assert data.num_classes == 1000 and data.train.image_size == 224
    assert batches["train"][0].shape == (8, 224, 224, 3)
    assert len(list(tmp_path.glob("imagenet2012-*-train-20.npy"))) == 1
    # A second load reads the cached labels instead of the source.
    monkeypatch.setattr(I, "_read_labels", lambda *a: pytest.fail("labels were re-read"))
    again, _ = _load("imagenet2012", tmp_path, n=20)
    np.testing.assert_array_equal(again.train.labels, data.train.labels)
    monkeypatch.undo()
    with tfds.testing.mock_data(num_examples=20):
        uncached = I.load_tfds_images("cifar10", label_cache=False)
    assert len(uncached.train) + len(uncached.validation) == 20
    assert len(list(tmp_path.glob("*.npy"))) == 2  # imagenet2012 train + validation
    with pytest.raises(ValueError, match="unknown image dataset"):
        I.load_tfds_images("mnist")


def test_holdout_per_class_is_seeded_and_exact():
    labels = np.repeat(np.arange(7), 120)
    np.random.default_rng(0).shuffle(labels)
    train, val = I.holdout_per_class(labels, 50, seed=3)
    assert np.all(np.bincount(labels[val]) == 50)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    np.testing.assert_array_equal(I.holdout_per_class(labels, 50, seed=3)[1], val)
    assert not np.array_equal(I.holdout_per_class(labels, 50, seed=4)[1], val)
    assert I.TFDS_IMAGE_DATASETS["imagenet2012"].val_per_class == 50


def test_preprocess_image_eval_and_augment():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = I.preprocess_image(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    flat = np.full((50, 70, 3), 128, np.uint8)  # a constant image stays constant
    np.testing.assert_allclose(I.preprocess_image(flat, 32), 128 / 255.0, atol=1e-6)
    a = I.preprocess_image(img, 32, np.random.default_rng(1))
    b = I.preprocess_image(img, 32, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    views = {I.preprocess_image(img, 32, np.random.default_rng(s)).tobytes() for s in range(6)}
    assert len(views) > 1
    square = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
    np.testing.assert_array_equal(I.preprocess_image(square, 32),
                                  square.astype(np.float32) / 255.0)


def test_mnist_standin_is_padded_mnist():
    mnist = load_mnist()
    data = I.load_mnist_images(size=32, channels=3)
    assert (len(data.train), len(data.validation), len(data.test)) == (55_000, 5_000, 10_000)
    assert data.num_classes == 10 and data.train.image_shape == (32, 32, 3)
    x, y = next(data.test.batches(16))
    assert x.shape == (16, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, mnist.test.labels[:16])
    np.testing.assert_array_equal(x[:, 2:30, 2:30, :], np.repeat(mnist.test.images[:16], 3, -1))
    assert not x[:, :2].any() and not x[:, 30:].any() and 0.0 <= x.min() and x.max() <= 1.0
    # Augmentation: the digit moves inside the frame, intact.
    aug = data.test.images(np.arange(16), np.random.default_rng(5))
    np.testing.assert_allclose(aug.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)), rtol=1e-5)
    assert not np.array_equal(aug, x)
    one = I.load_mnist_images(size=28, channels=1).validation.subset([0, 1]).to_split()
    np.testing.assert_array_equal(one.images, mnist.validation.images[:2])
    with pytest.raises(ValueError):
        I.load_mnist_images(size=16)
