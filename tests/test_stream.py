"""Streamed splits (gpjax.data.stream, read through the Grain pipeline of gpjax.data.pipeline):
training, evaluation and growth gradients over data made on the host block by block give what
the in-memory path gives on the same examples."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpjax.data import pipeline, stream
from gpjax.data.images import load_mnist_images
from gpjax.data.pipeline import DataConfig
from gpjax.incremental.scenarios import class_incremental, data_incremental
from gpjax.models import LeNet300
from gpjax.train import (
    OptimizerConfig,
    classifier_task,
    cosine_rates,
    evaluate,
    growth_gradients,
    make_optimizer,
    steps_per_epoch,
    train_epoch,
)


@dataclasses.dataclass(frozen=True, eq=False)
class ArraysSplit:
    """A streamed view of in-memory arrays that records every fetch (rng ignored)."""

    images: np.ndarray
    labels: np.ndarray
    fetched: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, positions):
        p = np.asarray(positions)
        return ArraysSplit(self.images[p], self.labels[p], self.fetched)

    def examples(self, positions, rng=None):
        p = np.asarray(positions)
        self.fetched.append(len(p))
        return self.images[p], self.labels[p]


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), np.float32)
    y = (x[:, 10:18, 10:18, 0].mean((1, 2)) * 20).astype(np.int32) % 10
    return x, y


def _state(task, tx, x, seed=0, density=0.5):
    from gpjax.incremental.phases import Trainer, new_state
    trainer = Trainer(task, tx, batch_size=32, eval_batch_size=50, progress=False)
    return new_state(trainer, jax.random.PRNGKey(seed), (x[:2], np.zeros(2, np.int32)),
                     density=density)


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def test_protocol_detection():
    x, y = _data(10)
    assert stream.is_streamed(ArraysSplit(x, y))
    assert stream.is_streamed(load_mnist_images(size=32).test)
    assert not stream.is_streamed((x, y))
    assert not stream.is_streamed({"x": x})
    assert stream.num_examples(ArraysSplit(x, y)) == 10 == stream.num_examples((x, y))
    with pytest.raises(ValueError, match="disagree"):
        stream.num_examples((x, y[:3]))


def test_block_size_whole_batches_within_budget():
    x, y = _data(10)
    per = x[0].nbytes + y[0].nbytes
    split = ArraysSplit(x, y)
    assert pipeline.block_size(split, 8, per * 8 * 3 + 5) == 24
    assert pipeline.block_size(split, 8, 1) == 8  # at least one batch


@pytest.mark.parametrize("steps_scale,scan", [(1.0, None), (1.5, False)])
def test_streamed_epoch_equals_in_memory_epoch(steps_scale, scan):
    x, y = _data(300)
    task = classifier_task(LeNet300(hidden=(32, 16)))
    tx = make_optimizer(OptimizerConfig())
    split = ArraysSplit(x, y)
    a = _state(task, tx, x)
    b = _copy(a)
    steps = int(steps_per_epoch(300, 32) * steps_scale)  # 1.5: wraps around the permutation
    rates = cosine_rates(0.1, steps)
    a, loss_a = train_epoch(a, (jnp.asarray(x), jnp.asarray(y)), rates, task=task, tx=tx,
                            batch_size=32)
    # A budget of 3 batches per block: several blocks, the last one shorter.
    # scan=False: each block's steps as one jitted call each (the CPU path of conv nets).
    b, loss_b = train_epoch(b, split, rates, task=task, tx=tx, batch_size=32, scan=scan,
                            data_config=DataConfig(
                                block_bytes=3 * 32 * (x[0].nbytes + y[0].nbytes)))
    assert len(split.fetched) > 2 and max(split.fetched[1:]) <= 96
    assert sum(split.fetched[1:]) == steps * 32  # fetched[0]: block_size's probe
    chex.assert_trees_all_close(a.params, b.params, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_equal(a.key, b.key)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5)


def test_streamed_evaluate_and_growth_gradients_equal_in_memory():
    x, y = _data(230)
    task = classifier_task(LeNet300(hidden=(32, 16)))
    tx = make_optimizer(OptimizerConfig())
    st = _state(task, tx, x)
    split = ArraysSplit(x, y)
    mem = (jnp.asarray(x), jnp.asarray(y))
    e_mem = evaluate(st.params, st.aux, mem, task=task, batch_size=50)
    e_str = evaluate(st.params, st.aux, split, task=task, batch_size=50,
                     data_config=DataConfig(block_bytes=2 * 50 * x[0].nbytes))
    assert e_mem == pytest.approx(e_str, abs=1e-6)
    g_mem = growth_gradients(st, mem, task=task, batch_size=50)
    g_str = growth_gradients(st, split, task=task, batch_size=50)
    chex.assert_trees_all_close(g_mem, g_str, atol=1e-6, rtol=1e-5)


def test_scenarios_chunk_a_streamed_split_without_making_examples():
    data = load_mnist_images(size=32)
    train = data.train.subset(np.arange(600))
    sc = data_incremental(train, data.validation.subset(np.arange(50)),
                          data.test.subset(np.arange(50)), chunks=3, seed=0)
    rd = sc.round(1)
    assert stream.is_streamed(rd.all) and len(rd.all) == 400 and len(rd.new) == 200
    np.testing.assert_array_equal(rd.all.labels, train.labels[rd.all_indices])
    x, y = rd.new.examples(np.arange(3))
    assert x.shape == (3, 32, 32, 1) and y.shape == (3,)
    cl = class_incremental(train, data.validation, data.test, [[1, 2], [0]])
    r0 = cl.round(0)
    assert set(np.unique(r0.all.labels)) == {1, 2}
    assert set(np.unique(r0.test.labels)) <= {1, 2}


def test_streamed_mnist_images_train_with_host_augmentation():
    # The offline ImageNet stand-in as a streamed split: its training view shifts the digits
    # at random inside the 32x32 frame; an epoch still learns (loss falls, error drops).
    data = load_mnist_images(size=32)
    train = data.train.subset(np.arange(2000))
    val = data.validation.subset(np.arange(500))
    task = classifier_task(LeNet300(hidden=(64, 32)))
    tx = make_optimizer(OptimizerConfig())
    x0, _ = train.examples(np.arange(2))
    st = _state(task, tx, x0, density=1.0)
    err0 = evaluate(st.params, st.aux, val, task=task, batch_size=250)
    rates = cosine_rates(0.05, steps_per_epoch(2000, 32) * 2)
    st, loss = train_epoch(st, train, rates, task=task, tx=tx, batch_size=32,
                           data_config=DataConfig(block_bytes=2**20))
    err1 = evaluate(st.params, st.aux, val, task=task, batch_size=250)
    assert np.isfinite(float(loss)) and err1 < 0.5 * err0 and err1 < 0.3


def test_incremental_run_streams_a_tfds_image_set(tmp_path, monkeypatch):
    # An Imagenette config under tfds.testing.mock_data (no download, no TensorFlow): the
    # experiment keeps the TFDS splits streamed (chunks are lazy subsets, examples decoded per
    # block while the run goes) and two grow-and-prune rounds run through the whole loop.
    # A small MLP on 16x16 inputs stands in for the tiny ResNet to keep compile time short.
    import tensorflow_datasets as tfds

    from gpjax.incremental import build, get_config, run
    from gpjax.incremental.policies import make_policy

    monkeypatch.setenv("GPJAX_DATA_DIR", str(tmp_path / "data"))
    base = get_config("resnet18_imagenette_tiny")
    policies = {"growprune": {**base.policies["growprune"], "nonrecoverable": None}}
    cfg = dataclasses.replace(base, rounds=2, model="lenet300",
                              model_kwargs={"hidden": [16, 8], "num_classes": 10},
                              dataset_kwargs={"image_size": 16}, policies=policies)
    with tfds.testing.mock_data(num_examples=60):
        exp = build(cfg, 0)
        assert stream.is_streamed(exp.scenario.train)
        rd = exp.scenario.round(1)
        assert stream.is_streamed(rd.all) and stream.is_streamed(rd.test)
        rows = run(exp, make_policy("growprune", cfg.policies["growprune"]), 0, tmp_path / "run",
                   progress=False)
    assert [r["round"] for r in rows] == [0, 1]
    for r in rows:
        assert 0.0 <= r["test_error"] <= 100.0 and r["params_recoverable"] > 0
        assert r["dead_units"] == 0 and r["epochs"] > 0
