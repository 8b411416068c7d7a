"""Tests for gpjax.incremental.checkpoint: round trips, mismatch errors, corruption fallback,
SIGKILL during saves, and restoring onto a different device count."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpjax
from gpjax.incremental.checkpoint import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CorruptCheckpointWarning,
    RoundCheckpointer,
    abstract_like,
)
from gpjax.incremental.configjson import with_defaults

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache
def _state(seed: int = 0, n_hidden: int = 32, abstract: bool = False):
    """A small but realistic run state: params, masks with None leaves, masked-Adam state, key.

    With ``abstract`` the params/optimiser leaves are ShapeDtypeStructs (no compilation).
    """
    rng = np.random.default_rng(seed)
    params = {"params": {
        "Dense_0": {"kernel": rng.normal(size=(20, n_hidden)), "bias": np.zeros(n_hidden)},
        "Dense_1": {"kernel": rng.normal(size=(n_hidden, 10)), "bias": np.ones(10)},
    }}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    masks = {"params": {
        "Dense_0": {"kernel": jnp.asarray(rng.random((20, n_hidden)) < 0.3), "bias": None},
        "Dense_1": {"kernel": jnp.asarray(rng.random((n_hidden, 10)) < 0.6), "bias": None},
    }}
    tx = gpjax.masked(optax.adam(1e-2))
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = (jax.eval_shape if abstract else lambda f, *a: f(*a))(
        step, params, opt_state)
    key = jax.random.key(seed)
    return {"params": params, "masks": masks, "opt_state": opt_state,
            "key": jax.random.fold_in(key, 7), "count": np.arange(3, dtype=np.int64) * 2**40,
            "epoch": 4}


def _leaves(tree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]


def _assert_same(a, b):
    sa = jax.tree.structure(a, is_leaf=lambda x: x is None)
    sb = jax.tree.structure(b, is_leaf=lambda x: x is None)
    assert sa == sb
    for (path, x), (_, y) in zip(_leaves(a), _leaves(b)):
        name = jax.tree_util.keystr(path)
        if x is None:
            assert y is None, name
            continue
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key), name
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            np.testing.assert_array_equal(jax.random.key_data(x), jax.random.key_data(y))
            continue
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array)), name
        assert np.asarray(x).dtype == np.asarray(y).dtype, name
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


CONFIG = {"model": "lenet300", "policy": "growprune", "epochs": [15, 20], "alpha": 40.0,
          "prune": {"beta": 5.0, "patience": 2}}


def test_round_trip_everything(tmp_path):
    state = _state()
    meta = {"round": 2, "phase": "grow", "epoch": 3, "policy": "growprune", "seed": 0,
            "rows": [{"round": 1, "test_error": 2.5, "params_recoverable": 1234}]}
    ck = RoundCheckpointer(tmp_path / "ck", config=CONFIG)
    assert ck.restore_latest(state) is None
    assert ck.steps() == [] and ck.latest_step() is None
    ck.save(7, state, meta)
    assert ck.steps() == [7] and ck.latest_step() == 7
    assert json.loads((tmp_path / "ck" / "gpjax_config.json").read_text()) == CONFIG

    # A fresh process-like reopen; `like` as abstract ShapeDtypeStructs (no data needed).
    ck2 = RoundCheckpointer(tmp_path / "ck", config=dict(CONFIG))
    step, got, got_meta = ck2.restore_latest(state)
    assert step == 7 and got_meta == meta
    _assert_same(state, got)
    assert isinstance(got["opt_state"], gpjax.MaskedState)
    assert got["masks"]["params"]["Dense_0"]["kernel"].dtype == jnp.bool_
    assert got["count"].dtype == np.int64 and isinstance(got["count"], np.ndarray)
    assert got["epoch"] == 4 and isinstance(got["epoch"], int)
    # The restored key continues the same random stream.
    np.testing.assert_array_equal(jax.random.uniform(got["key"], (3,)),
                                  jax.random.uniform(state["key"], (3,)))

    like = abstract_like({k: v for k, v in state.items() if k not in ("count", "epoch")})
    like.update(count=state["count"], epoch=0)
    got2, meta2 = ck2.restore(7, like)
    _assert_same(state, got2)
    assert meta2 == meta


def test_restore_casts_to_like_dtype(tmp_path):
    ck = RoundCheckpointer(tmp_path, config={})
    ck.save(1, {"w": jnp.arange(4.0)}, {})
    got, _ = ck.restore(1, {"w": jax.ShapeDtypeStruct((4,), jnp.bfloat16)})
    assert got["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got["w"], np.float32), np.arange(4.0))


def test_config_mismatch_names_keys(tmp_path):
    RoundCheckpointer(tmp_path, config=CONFIG).save(1, {"w": jnp.ones(2)}, {})
    new = json.loads(json.dumps(CONFIG))
    new["alpha"] = 30.0
    new["prune"]["beta"] = 3.0
    new["extra"] = True
    with pytest.raises(CheckpointMismatchError) as e:
        RoundCheckpointer(tmp_path, config=new)
    msg = str(e.value)
    assert "alpha: old=40.0 new=30.0" in msg
    assert "prune.beta: old=5.0 new=3.0" in msg
    assert "extra: old='<absent>' new=True" in msg
    assert "policy" not in msg and "model" not in msg
    # Tuples vs lists are the same JSON config.
    RoundCheckpointer(tmp_path, config={**CONFIG, "epochs": (15, 20)})
    # A config left by a run that never completed a step does not block a new config.
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "gpjax_config.json").write_text(json.dumps(CONFIG))
    ck = RoundCheckpointer(tmp_path / "fresh", config=new)
    ck.save(1, {"w": jnp.ones(2)}, {})
    assert json.loads((tmp_path / "fresh" / "gpjax_config.json").read_text())["alpha"] == 30.0


def test_a_field_added_since_the_save_reads_as_its_default(tmp_path):
    """A config saved before ``prune.protection`` existed resumes with the default value,
    and still refuses any other value."""
    RoundCheckpointer(tmp_path, config=CONFIG).save(1, {"w": jnp.ones(2)}, {})
    defaults = {"prune": {"protection": "restore", "beta": 1.0}, "later": {"x": None}}
    new = json.loads(json.dumps(CONFIG))
    new["prune"]["protection"] = "restore"
    new["later"] = {"x": None}
    assert RoundCheckpointer(tmp_path, config=new, defaults=defaults).latest_step() == 1
    new["prune"]["protection"] = "exclude"
    with pytest.raises(CheckpointMismatchError, match="prune.protection: old='restore'"):
        RoundCheckpointer(tmp_path, config=new, defaults=defaults)
    # Without defaults the absent key is a difference, as before.
    new["prune"]["protection"] = "restore"
    with pytest.raises(CheckpointMismatchError, match="absent"):
        RoundCheckpointer(tmp_path, config=new)
    # A stored value is never replaced by the default.
    assert with_defaults({"prune": {"beta": 5.0}}, defaults)["prune"]["beta"] == 5.0


def test_structure_and_shape_mismatch_named(tmp_path):
    state = _state()
    ck = RoundCheckpointer(tmp_path, config={})
    ck.save(1, state, {})

    # different shapes everywhere Dense_0/Dense_1 touch 32
    wider = _state(n_hidden=40, abstract=True)
    with pytest.raises(CheckpointMismatchError) as e:
        ck.restore_latest(wider)
    msg = str(e.value)
    assert "['params']['params']['Dense_0']['kernel']: shape saved (20, 32) vs `like` (20, 40)" \
        in msg
    assert "['masks']['params']['Dense_1']['kernel']: shape saved (32, 10)" in msg

    missing = dict(state)
    del missing["key"]
    missing["new_leaf"] = jnp.zeros(3)
    with pytest.raises(CheckpointMismatchError) as e:
        ck.restore_latest(missing)
    msg = str(e.value)
    assert "['key']: in the checkpoint, missing from `like`" in msg
    assert "['new_leaf']: in `like`, missing from the checkpoint (extra leaf)" in msg

    swapped = jax.tree.map(lambda x: x, state, is_leaf=lambda x: x is None)
    swapped["masks"]["params"]["Dense_0"]["bias"] = jnp.ones(32, bool)
    with pytest.raises(CheckpointMismatchError, match=r"\['bias'\]: saved none, `like` has array"):
        ck.restore_latest(swapped)
    # A mismatch is the caller's error, never treated as corruption: the step is still there.
    assert ck.steps() == [1]


def _big_file(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and "arrays" in p.parts]
    return max(files, key=lambda p: p.stat().st_size)


# Orbax drops the read coroutine of the damaged array when the restore fails; asyncio then
# reports it as never awaited, which pytest turns into PytestUnraisableExceptionWarning noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "delete", "flip", "manifest"])
def test_corrupt_newest_falls_back_with_warning(tmp_path, damage):
    ck = RoundCheckpointer(tmp_path, config={}, max_to_keep=5)
    n = 50_000
    values = {s: np.random.default_rng(s).normal(size=n).astype(np.float32) for s in (1, 2)}
    for step in (1, 2):  # random values: incompressible, so the data files are the big ones
        ck.save(step, {"w": jnp.asarray(values[step]), "m": jnp.arange(n) % (step + 1) == 0},
                {"step": step})
    step_dir = tmp_path / "2"
    if damage == "manifest":
        target = next(p for p in (step_dir / "gpjax").rglob("*") if p.is_file())
        target.write_text('{"format": "gpjax-round-che')
    else:
        target = _big_file(step_dir)
        if damage == "truncate":
            data = target.read_bytes()
            target.write_bytes(data[: len(data) // 2])
        elif damage == "delete":
            target.unlink()
        else:
            data = bytearray(target.read_bytes())
            for i in range(len(data) // 3, len(data) // 3 + 64):
                data[i] ^= 0xFF
            target.write_bytes(bytes(data))

    like = {"w": jax.ShapeDtypeStruct((n,), jnp.float32), "m": jax.ShapeDtypeStruct((n,), bool)}
    ck2 = RoundCheckpointer(tmp_path, config={}, max_to_keep=5)
    with pytest.raises(CheckpointCorruptError):
        ck2.restore(2, like)
    with pytest.warns(CorruptCheckpointWarning, match="step 2 is corrupt"):
        step, got, meta = ck2.restore_latest(like)
    assert step == 1 and meta == {"step": 1}
    np.testing.assert_array_equal(got["w"], values[1])
    # The damaged step was moved aside, so the resumed run can save step 2 again.
    assert ck2.steps() == [1]
    assert any((tmp_path / "_corrupt").iterdir())
    ck2.save(2, {"w": jnp.zeros(n), "m": jnp.zeros(n, bool)}, {"step": 2})
    assert ck2.restore_latest(like)[0] == 2


def test_max_to_keep_and_step_order(tmp_path):
    ck = RoundCheckpointer(tmp_path, config={}, max_to_keep=2)
    for s in (1, 2, 3, 5):
        ck.save(s, {"w": jnp.full(3, float(s))}, {"s": s})
    assert ck.steps() == [3, 5]
    with pytest.raises(ValueError, match="already has steps"):
        ck.save(4, {"w": jnp.zeros(3)}, {})
    ck.save(3, {"w": jnp.full(3, 33.0)}, {"s": 33}, overwrite=True)
    assert ck.steps() == [3]
    step, got, meta = ck.restore_latest({"w": jnp.zeros(3)})
    assert step == 3 and meta == {"s": 33} and float(got["w"][0]) == 33.0
    with pytest.raises(FileNotFoundError, match="no complete checkpoint step 9"):
        ck.restore(9, {"w": jnp.zeros(3)})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        ck.save(10, {"w": jnp.zeros(3)}, {"bad": object()})


# ------------------------------------------------------------------ subprocess tests

def _env(devices: int | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


KILL_CHILD = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from gpjax.incremental.checkpoint import RoundCheckpointer
    n = int(sys.argv[2])
    ck = RoundCheckpointer(sys.argv[1], config={"kill": 1}, max_to_keep=2)
    step = (ck.latest_step() or 0) + 1
    while True:
        s = float(step)
        state = {"a": jnp.full((n,), s), "b": jnp.full((n,), -s),
                 "m": {"k": (jnp.arange(n) % 7) < (step % 7), "bias": None},
                 "key": jax.random.key(step)}
        jax.block_until_ready(state)
        print("saving", step, flush=True)
        ck.save(step, state, {"step": step})
        print("saved", step, flush=True)
        step += 1
""")


def test_sigkill_mid_save_leaves_previous_complete(tmp_path):
    n = 1_500_000  # ~18 MB per step: a save takes long enough to be killed inside it
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD)
    ck_dir = tmp_path / "ck"
    rnd = random.Random(0)
    tmp_dirs = 0
    like = {"a": jax.ShapeDtypeStruct((n,), jnp.float32),
            "b": jax.ShapeDtypeStruct((n,), jnp.float32),
            "m": {"k": jax.ShapeDtypeStruct((n,), bool), "bias": None},
            "key": jax.random.key(0)}
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(ck_dir), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=_env(None))
        last_saved, savings = 0, 0
        try:
            # Let one save complete, then kill during a later save at a random point inside it.
            target = 2 + attempt % 2
            for line in proc.stdout:
                word, step = line.split()
                if word == "saved":
                    last_saved = int(step)
                elif word == "saving":
                    savings += 1
                    if savings >= target:
                        time.sleep(rnd.uniform(0.0, 0.25))
                        break
        finally:
            proc.send_signal(signal.SIGKILL)
            rest = proc.communicate()[0]
        for line in rest.splitlines():
            word, step = line.split()
            if word == "saved":
                last_saved = int(step)
        assert proc.returncode == -signal.SIGKILL
        assert last_saved >= 1, "child never completed a save"

        tmp_dirs += sum(1 for p in ck_dir.iterdir() if "tmp" in p.name)
        ck = RoundCheckpointer(ck_dir, config={"kill": 1}, max_to_keep=2)
        step, got, meta = ck.restore_latest(like)
        # Everything whose save returned is durable; what is restored is complete.
        assert step >= last_saved and meta == {"step": step}
        a = np.asarray(got["a"])
        assert a.shape == (n,) and (a == float(step)).all()
        assert (np.asarray(got["b"]) == -float(step)).all()
        np.testing.assert_array_equal(got["m"]["k"], (np.arange(n) % 7) < (step % 7))
        np.testing.assert_array_equal(jax.random.key_data(got["key"]),
                                      jax.random.key_data(jax.random.key(step)))
        # (A kill while Orbax deletes the step beyond max_to_keep can leave that old step
        # half-deleted; it is older than the kept ones and is removed by the next save.)
        assert len(ck.steps()) <= 3
        ck.close()
    print("temporary (interrupted) step directories seen:", tmp_dirs)


SHARD_CHILD = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from gpjax.incremental.checkpoint import RoundCheckpointer
    mode, src, dst = sys.argv[1:4]
    n = len(jax.devices())
    mesh = jax.make_mesh((n,), ("data",))
    sh, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    w = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    m = (w % 3) == 0
    out = {"devices": n}
    if "restore" in mode:
        ck = RoundCheckpointer(src, config={"shard": 1})
        SDS = jax.ShapeDtypeStruct
        like = {"params": {"w": SDS((8, 6), np.float32, sharding=sh),
                           "b": SDS((6,), np.float32, sharding=rep)},
                "masks": {"w": SDS((8, 6), bool, sharding=sh), "b": None},
                "key": SDS((), jax.random.key(0).dtype, sharding=rep)}
        step, st, meta = ck.restore_latest(like)
        assert np.array_equal(np.asarray(st["params"]["w"]), w)
        assert np.array_equal(np.asarray(st["params"]["b"]), np.ones(6, np.float32))
        assert np.array_equal(np.asarray(st["masks"]["w"]), m)
        assert st["masks"]["b"] is None
        assert np.array_equal(np.asarray(jax.random.key_data(st["key"])),
                              np.asarray(jax.random.key_data(jax.random.key(7))))
        assert st["params"]["w"].sharding == sh and st["masks"]["w"].sharding == sh
        assert len(st["params"]["w"].sharding.device_set) == n
        out.update(restored_from=meta["devices"],
                   shards=len(st["params"]["w"].addressable_shards))
    if "save" in mode:
        ck = RoundCheckpointer(dst, config={"shard": 1})
        state = {"params": {"w": jax.device_put(w, sh),
                            "b": jax.device_put(np.ones(6, np.float32), rep)},
                 "masks": {"w": jax.device_put(m, sh), "b": None},
                 "key": jax.random.key(7)}
        assert len(state["params"]["w"].addressable_shards) == n
        ck.save(1, state, {"devices": n})
    print(json.dumps(out))
""")


def test_restore_on_different_device_count(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(SHARD_CHILD)
    a, b = tmp_path / "four", tmp_path / "one"

    def run(mode, src, dst, devices):
        r = subprocess.run([sys.executable, str(script), mode, str(src), str(dst)],
                           capture_output=True, text=True, env=_env(devices), timeout=300,
                           check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    assert run("save", a, a, 4) == {"devices": 4}
    # 4 devices -> 1 device, and the 1-device process saves for the way back.
    assert run("restore+save", a, b, 1) == {"devices": 1, "restored_from": 4, "shards": 1}
    # 1 device -> 4 devices (sharded over a 4-device mesh).
    assert run("restore", b, b, 4) == {"devices": 4, "restored_from": 1, "shards": 4}
