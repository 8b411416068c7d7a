"""The Grain input pipeline (gpjax.data.pipeline): source splits, per-epoch orders, blocks read
ahead on threads, a checkpointable iterator position, per-process shards of every global batch,
and a model store fed from a .npy directory or an ArrayRecord file (streamed) giving the version
the same arrays give from an .npz (in memory)."""

from __future__ import annotations

import json
import re

import grain
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpjax import cli
from gpjax.data.npz import read_data
from gpjax.data.pipeline import (
    DataConfig,
    SourceSplit,
    block_dataset,
    block_iterator,
    epoch_order,
    epoch_positions,
    shard_positions,
)
from gpjax.data.sources import ArraysSource, write_array_record
from gpjax.fields import ConfigError
from gpjax.incremental.store import ModelStore, Recipe


def _arrays(n, seed=0, shape=(3,)):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), np.float32), rng.integers(0, 10, n).astype(np.int32)


def _concat(blocks):
    return tuple(np.concatenate(c) for c in zip(*blocks))


def test_source_split_reads_across_sources_in_any_order():
    (xa, ya), (xb, yb) = _arrays(7, 0), _arrays(5, 1)
    split = SourceSplit([ArraysSource((xa, ya), "a"), ArraysSource((xb, yb), "b")])
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    pos = np.array([11, 0, 7, 6, 3, 8])
    got = split.examples(pos)
    np.testing.assert_array_equal(got[0], x[pos])
    np.testing.assert_array_equal(got[1], y[pos])
    sub = split.subset([10, 2, 4])
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.examples([2, 0])[1], y[[4, 10]])
    both = sub.concat(split.subset([1]))
    np.testing.assert_array_equal(both.examples(np.arange(4))[0], x[[10, 2, 4, 1]])


def test_epoch_order_deterministic_per_key_and_new_each_epoch():
    key = jax.random.PRNGKey(3)
    a, b = epoch_order(key, 50), epoch_order(jax.random.PRNGKey(3), 50)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(50))
    later = epoch_order(jax.random.split(key)[0], 50)  # the next epoch's key
    assert not np.array_equal(a, later)
    pos = epoch_positions(a, steps=7, batch_size=8)  # 56 > 50: wraps around
    np.testing.assert_array_equal(pos[:50], a)
    np.testing.assert_array_equal(pos[50:], a[:6])


def _example_split(n=40):
    x, y = _arrays(n)
    return SourceSplit([ArraysSource((x, y), "a")]), (x, y)


@pytest.mark.parametrize("threads", [0, 3])
def test_blocks_come_in_order_and_resume_from_a_saved_position(threads):
    split, (x, y) = _example_split()
    pos = np.random.default_rng(0).permutation(40)[:36]
    cfg = DataConfig(num_threads=threads, prefetch=2)
    blocks = list(block_iterator(split, pos, 8, cfg))
    assert [len(b[1]) for b in blocks] == [8, 8, 8, 8, 4]
    np.testing.assert_array_equal(_concat(blocks)[0], x[pos])
    it = block_iterator(split, pos, 8, cfg)
    head = [next(it), next(it)]
    saved = json.loads(json.dumps(it.get_state()))  # a checkpoint stores it as JSON
    rest = list(it)
    resumed = list(block_iterator(split, pos, 8, cfg, state=saved))
    assert len(resumed) == 3 and len(head) == 2
    for a, b in zip(rest, resumed):
        np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(_concat(head + resumed)[1], y[pos])


def test_block_augmentation_seeded_per_block_not_per_thread():
    class Draws:  # a split whose examples are its generator's draws
        def __len__(self):
            return 30

        def examples(self, positions, rng=None):
            return (rng.random(len(positions)) if rng is not None
                    else np.zeros(len(positions)),)

    seed = np.array([1, 2], np.uint32)
    one = _concat(block_iterator(Draws(), np.arange(30), 4, DataConfig(num_threads=0),
                                 seed=seed))
    many = _concat(block_iterator(Draws(), np.arange(30), 4, DataConfig(num_threads=4),
                                  seed=seed))
    np.testing.assert_array_equal(one[0], many[0])
    assert len(np.unique(one[0])) == 30
    assert isinstance(block_dataset(Draws(), np.arange(30), 4), grain.MapDataset)


def test_errors_in_a_block_reach_the_caller():
    class Broken:
        def examples(self, positions, rng=None):
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        list(block_iterator(Broken(), np.arange(10), 5, DataConfig(num_threads=2)))


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 6), per=st.integers(1, 5), procs=st.integers(1, 4),
       n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_process_shards_partition_every_global_batch(steps, per, procs, n, seed):
    bs = per * procs
    order = np.random.default_rng(seed).permutation(n)
    pos = epoch_positions(order, steps, bs)
    shards = [shard_positions(pos, bs, grain.sharding.ShardOptions(i, procs))
              for i in range(procs)]
    assert all(len(s) == steps * per for s in shards)
    rows = np.concatenate([s.reshape(steps, per) for s in shards], axis=1)
    # Side by side, the processes' slices are every global batch: a partition of the epoch.
    np.testing.assert_array_equal(rows.reshape(-1), pos)
    assert sorted(np.concatenate(shards).tolist()) == sorted(pos.tolist())


def test_shards_need_a_batch_divisible_by_processes():
    with pytest.raises(ValueError, match="not a multiple of the 3 processes"):
        shard_positions(np.arange(8), 4, grain.sharding.ShardOptions(0, 3))
    np.testing.assert_array_equal(shard_positions(np.arange(8), 4, None), np.arange(8))


def test_data_config_fits_and_checks():
    assert DataConfig(memory_budget=100).fits(100) and not DataConfig(memory_budget=100).fits(101)
    with pytest.raises(ConfigError):
        DataConfig(block_bytes=0)


# ---------------------------------------------------------------------- the store, streamed
POLICY = {"first_epochs": "1", "new_epochs": "1", "all_epochs": "1", "grow_every": "1",
          "prune.max_iterations": "1", "prune.percentile": "20",
          "nonrecoverable.max_iterations": "1", "nonrecoverable.percentile": "30"}
TIME = ("created", "wall_time_s", "wall_time_total_s")


def _parts(d):
    """Two parts of 160 examples (8x8 images; the label is the brightest quadrant), each
    as .npz, a .npy directory and an ArrayRecord file."""
    out = {}
    for i in range(2):
        rng = np.random.default_rng(i)
        x = rng.random((160, 8, 8, 1), np.float32)
        y = np.argmax(x.reshape(160, 2, 4, 2, 4).mean((2, 4)).reshape(160, 4), 1)
        np.savez(d / f"p{i}.npz", x=x, y=y)
        (d / f"p{i}").mkdir()
        np.save(d / f"p{i}" / "x.npy", x)
        np.save(d / f"p{i}" / "y.npy", y)
        write_array_record(d / f"p{i}.array_record", x, y)
        out[i] = {"npz": d / f"p{i}.npz", "npy": d / f"p{i}",
                  "array_record": d / f"p{i}.array_record"}
    return out


def _store(path, budget):
    return ModelStore.create(path, model="lenet300", model_kwargs={"hidden": [16, 8],
                                                                   "num_classes": 4},
                             policy_overrides=POLICY,
                             recipe=Recipe(batch_size=32, eval_batch_size=64,
                                           data=DataConfig(memory_budget=budget)))


def _untimed(manifest):
    m = {k: v for k, v in manifest["metrics"].items() if k not in TIME}
    return m, manifest["prune_curve"], [e["sha256"] for e in manifest["data"]]


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_store_from_npy_and_array_record_streams_to_the_npz_version(tmp_path, capsys):
    # One store in memory from .npz files; one streamed (memory budget 0) from a .npy
    # directory (init) and an ArrayRecord file (update): the same examples in the same order.
    parts = _parts(tmp_path)
    got = {}
    for kind, (first, second), budget in [("npz", ("npz", "npz"), 2**30),
                                          ("npy", ("npy", "array_record"), 0)]:
        s = _store(tmp_path / f"store_{kind}", budget)
        s.init(parts[0][first], progress=False)
        got[kind] = _untimed(s.update(parts[1][second], progress=False))
    m_npz, curve_npz, sha_npz = got["npz"]
    m_npy, curve_npy, sha_npy = got["npy"]
    assert sha_npz == sha_npy and m_npz["n_train"] == m_npy["n_train"] == 2 * 144
    assert m_npz.keys() == m_npy.keys()
    for k, v in m_npz.items():
        assert m_npy[k] == (pytest.approx(v, abs=1e-4) if isinstance(v, float) else v), k
    assert len(curve_npz) == len(curve_npy)

    # A memory-mapped file changed after a version recorded it: refused, store unchanged.
    store = tmp_path / "store_npy"
    x = np.load(parts[0]["npy"] / "x.npy", mmap_mode="r+")
    x[3, 0, 0, 0] = 0.5
    x.flush()
    del x
    before = _snapshot(store)
    code = cli.main(["update", str(store), "--data", str(parts[1]["npy"]), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    recorded = sha_npy[0][:12]
    assert re.search(rf"{parts[0]['npy']}.*changed.*recorded {recorded}", err), err
    assert read_data(parts[0]["npy"]).sha256[:12] in err
    assert _snapshot(store) == before


def test_cli_init_refuses_npy_pair_of_different_lengths(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    np.save(d / "x.npy", np.zeros((6, 4), np.float32))
    np.save(d / "y.npy", np.zeros(5, np.int64))
    code = cli.main(["init", str(tmp_path / "s"), "--model", "lenet300", "--data", str(d)])
    err = capsys.readouterr().err
    assert code == 2 and "x has 6 examples but y has 5" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
