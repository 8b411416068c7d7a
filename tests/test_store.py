"""The model store end to end: a user's model (a module file outside the package) on small MNIST
files, three versions (init + two updates), the promotion gate and rollback, a killed update
resumed to the same version, one writer at a time, and every bad input refused with the store
left byte-for-byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpjax import cli
from gpjax.data.mnist import load_mnist
from gpjax.incremental.lock import DirectoryLock, DirectoryLockedError
from gpjax.incremental.store import ModelStore, Recipe, StoreError

MODEL_FILE = '''
import flax.linen as nn
import jax.numpy as jnp

from gpjax.tasks import Task, classifier_task, classifier_metrics


def squared_error_task(model, *, augment, eval_batch_size):
    """A user's own Task: squared error on one-hot targets (any Task works from Python)."""
    base = classifier_task(model)

    def loss(params, aux, batch, key):
        x, y = batch
        out = model.apply({"params": params}, x, train=True)
        return jnp.mean((out - jnp.eye(10)[y]) ** 2), aux

    task = base._replace(loss=loss)
    return task, classifier_metrics(task, eval_batch_size)


class TinyMLP(nn.Module):
    width: int = 32
    input_kernels = ("*Dense_0/kernel",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.leaky_relu(nn.Dense(self.width)(x), 0.01)
        return nn.Dense(10)(x)
'''

# A few epochs per phase: the code paths of the protocol at a test's cost.
POLICY = {"first_epochs": "3", "new_epochs": "1", "all_epochs": "2", "grow_every": "1",
          "prune.max_iterations": "3", "prune.percentile": "20",
          "nonrecoverable.max_iterations": "2", "nonrecoverable.percentile": "30"}
TIME = ("created", "wall_time_s", "wall_time_total_s")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A user's directory: the model module and three 1,000-image parts plus a test file."""
    d = tmp_path_factory.mktemp("user")
    (d / "usermodels.py").write_text(MODEL_FILE)
    m = load_mnist()
    x, y = m.train
    for i in range(3):
        np.savez(d / f"part{i}.npz", x=x[i * 1000:(i + 1) * 1000], y=y[i * 1000:(i + 1) * 1000])
    np.savez(d / "test.npz", x=m.test[0][:1000], y=m.test[1][:1000])
    return d


def _create(path: Path, files: Path) -> ModelStore:
    return ModelStore.create(path, model="usermodels:TinyMLP", model_kwargs={"width": 32},
                             policy_overrides=POLICY, search_path=files,
                             recipe=Recipe(batch_size=64, checkpoint_every=1,
                                           prune_checkpoint_every=1, checkpoint_interval_s=0.0))


def _snapshot(path: Path) -> dict[str, str]:
    """Every file of a directory tree with the SHA-256 of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _strip(manifest: dict) -> dict:
    m = json.loads(json.dumps(manifest))
    for k in TIME:
        m.pop(k, None)
        m["metrics"].pop(k, None)
    return m


@pytest.fixture(scope="module")
def store(files, tmp_path_factory):
    """Three versions: init on part 0, updates with parts 1 and 2."""
    s = _create(tmp_path_factory.mktemp("stores") / "s", files)
    s.init(files / "part0.npz", test=files / "test.npz", progress=False)
    s.update(files / "part1.npz", test=files / "test.npz", progress=False)
    s.update(files / "part2.npz", test=files / "test.npz", progress=False)
    return s


def test_three_versions_learn_and_stay_sparse(store, files):
    hist = store.history()
    assert [h["version"] for h in hist] == [0, 1, 2] and store.latest() == 2
    assert [h["parent"] for h in hist] == [None, 0, 1]
    assert [h["start"] for h in hist] == ["fresh_sparse", "inherit", "inherit"]
    m = [h["metrics"] for h in hist]
    assert m[2]["test_error"] < m[0]["test_error"]
    assert m[0]["n_train"] == 900 and m[2]["n_train"] == 2700 and m[2]["n_new"] == 900
    for x in m:
        assert x["density"] < 0.5 and x["params"] < x["params_dense"]
        assert x["params_nonrecoverable"] <= x["params"]
        assert x["dead_units"] == 0  # recoverable: every neuron kept
    assert m[0]["forgetting"] is None and m[1]["forgetting"] is not None
    assert m[1]["forgetting"] == pytest.approx(m[1]["val_error_old"] - m[0]["val_error"])
    # The data the versions were trained on: every file, with its fingerprint and split.
    data = hist[2]["data"]
    assert [Path(e["path"]).name for e in data] == ["part0.npz", "part1.npz", "part2.npz"]
    assert [e["added_in"] for e in data] == [0, 1, 2]
    assert all(e["n_train"] + e["n_validation"] == 1000 for e in data)
    assert hist[2]["prune_curve"][-1]["active"] == m[2]["params"]
    # The loaded model is the recorded one.
    got = store.evaluate(files / "test.npz", version=1)
    assert got["test_error"] == pytest.approx(hist[1]["metrics"]["test_error"], abs=1e-6)
    loaded = store.load(2)
    import gpjax
    assert gpjax.count_params(loaded.masks).active == m[2]["params"]
    assert gpjax.count_params(loaded.nonrecoverable["masks"]).active == \
        m[2]["params_nonrecoverable"]


def test_export_from_store(store, files, tmp_path, capsys):
    """`gpjax export STORE` writes a JAX-only artifact of LATEST's non-recoverable model whose
    outputs equal that model's; an existing --out or an unknown version is refused."""
    from gpjax.export import load_artifact
    out = tmp_path / "artifact"
    assert cli.main(["export", str(store.path), "--out", str(out), "--test",
                     str(files / "test.npz"), "--batch-sizes", "1,64", "--repeats", "3",
                     "--layers", "Dense_0/kernel,Dense_1/kernel"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"].endswith("version 2")
    m = store.load()
    x = np.load(files / "test.npz")["x"][:64]
    nr = m.nonrecoverable
    want = m.model.apply({"params": nr["params"], **nr["aux"]}, x, train=False)
    np.testing.assert_allclose(np.asarray(load_artifact(out)(x)), np.asarray(want), atol=1e-5)
    assert manifest["parameters"]["active"] == store.manifest()["metrics"][
        "params_nonrecoverable"]
    capsys.readouterr()
    assert cli.main(["export", str(store.path), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["export", str(store.path), "--out", str(tmp_path / "b"),
                     "--version", "5"]) == 2
    assert "no version 5" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_any_task_by_import_path(files, tmp_path):
    import jax
    s = ModelStore.create(tmp_path / "t", model="usermodels:TinyMLP", search_path=files,
                          task="usermodels:squared_error_task")
    x = np.zeros((2, 28, 28, 1), np.float32)
    params, aux = s.task.init(jax.random.PRNGKey(0), (x, None))
    loss, _ = s.task.loss(params, aux, (x, np.array([1, 2])), jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and ModelStore.open(s.path).spec["task"].endswith(
        "squared_error_task")


def test_plot_store(store, tmp_path, capsys):
    assert cli.main(["plot", str(store.path), "--out", str(tmp_path)]) == 0
    png = tmp_path / "history.png"
    assert png.stat().st_size > 10_000 and str(png) in capsys.readouterr().out


def test_promotion_gate_and_rollback(store, files, tmp_path):
    s = ModelStore.open(shutil.copytree(store.path, tmp_path / "copy"))
    # Any rise of the old data's error above -100 points trips the gate.
    man = s.update(files / "part0.npz", test=files / "test.npz", max_forgetting=-100.0,
                   progress=False)
    assert man["version"] == 3 and not man["promoted"]
    assert s.latest() == 2 and s.versions() == [0, 1, 2, 3]
    s.promote(0)
    assert s.latest() == 0 and s.load().version == 0
    cli.main(["promote", str(s.path), "--version", "3"])
    assert s.latest() == 3
    with pytest.raises(StoreError, match="no version 7"):
        s.promote(7)


def test_moved_earlier_file_is_named_unless_old_given(store, files, tmp_path):
    user = Path(shutil.copytree(files, tmp_path / "user"))
    s = _create(tmp_path / "s", user)
    s.init(user / "part0.npz", progress=False)
    np.savez(user / "part0.npz", x=np.zeros((5, 28, 28, 1), np.float32), y=np.zeros(5, int))
    before = _snapshot(s.path)
    with pytest.raises(StoreError, match="part0.npz.*changed"):
        s.update(user / "part1.npz", progress=False)
    (user / "part0.npz").unlink()
    with pytest.raises(StoreError, match="part0.npz.*cannot be read"):
        s.update(user / "part1.npz", progress=False)
    assert _snapshot(s.path) == before
    man = s.update(user / "part1.npz", old=[files / "part0.npz"], progress=False)
    assert man["version"] == 1 and [e["added_in"] for e in man["data"]] == [0, 1]


def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    x = np.random.default_rng(0).random((20, 28, 28, 1)).astype(np.float32)
    y = np.arange(20) % 10
    cases = {
        "missing_y": ({"x": x}, "no array 'y'"),
        "missing_x": ({"y": y}, "no array 'x'"),
        "shape": ({"x": x[:, :27], "y": y}, r"shape \(27, 28, 1\).*takes \(28, 28, 1\)"),
        "labels": ({"x": x, "y": y + 5}, "labels in \\[5, 14\\].*10 classes"),
        "float_labels": ({"x": x, "y": y + 0.5}, "not integer labels"),
        "nan": ({"x": np.where(np.arange(20)[:, None, None, None] == 3, np.nan, x), "y": y},
                "NaN/inf"),
        "empty": ({"x": x[:0], "y": y[:0]}, "no examples"),
    }
    out = {}
    for name, (arrays, msg) in cases.items():
        np.savez(d / f"{name}.npz", **arrays)
        out[name] = (d / f"{name}.npz", msg)
    (d / "text.npz").write_text("not a zip")
    out["not_npz"] = (d / "text.npz", "not an .npz")
    return out


def test_bad_input_refused_and_store_unchanged(store, tmp_path, capsys):
    before = _snapshot(store.path)
    for name, (path, msg) in _bad_files(tmp_path).items():
        code = cli.main(["update", str(store.path), "--data", str(path), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("gpjax: error: ") and str(path) in err and \
            __import__("re").search(msg, err), (name, err)
        assert "Traceback" not in err and err.count("\n") == 1, (name, err)
    assert cli.main(["evaluate", str(store.path), "--data", str(path), "--version", "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert cli.main(["history", str(tmp_path)]) == 2
    assert "not a gpjax model store" in capsys.readouterr().err
    assert _snapshot(store.path) == before
    code = cli.main(["init", str(tmp_path / "new"), "--model", "nosuchmodule:Net", "--data",
                     str(path)])
    assert code == 2 and "cannot import module 'nosuchmodule'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_second_writer_refused(store, files):
    before = _snapshot(store.path)
    with DirectoryLock(store.path, what="test"):
        with pytest.raises(DirectoryLockedError, match="being written by process"):
            store.update(files / "part0.npz", progress=False)
        with pytest.raises(DirectoryLockedError):
            store.promote(0)
    assert _snapshot(store.path) == before


def test_killed_update_resumes_to_the_same_version(store, files, tmp_path):
    """SIGKILL an update after its first in-update checkpoint: the store is as it was, and
    ``--resume`` gives the version an uninterrupted update gives (time fields aside)."""
    base = Path(shutil.copytree(store.path, tmp_path / "base"))
    for v in (1, 2):
        shutil.rmtree(base / "versions" / f"{v:04d}")
    (base / "LATEST").write_text("0000\n")
    expected = store.manifest(1)  # the uninterrupted update of the same version 0 and data

    killed = Path(shutil.copytree(base, tmp_path / "killed"))
    before = _snapshot(killed)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(files)}
    cmd = [sys.executable, "-m", "gpjax.cli", "update", str(killed), "--data",
           str(files / "part1.npz"), "--test", str(files / "test.npz"), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = killed / "work" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the update ended before its first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Every file as it was (the lock file still names the killed writer; it is free again).
    after = {k: v for k, v in _snapshot(killed).items()
             if not k.startswith("work/") and k != ".gpjax.lock"}
    assert after == {k: v for k, v in before.items() if k != ".gpjax.lock"}
    s = ModelStore.open(killed)
    assert s.versions() == [0] and s.latest() == 0
    with pytest.raises(StoreError, match="--resume"):
        s.update(files / "part1.npz", test=files / "test.npz", progress=False)
    got = s.update(files / "part1.npz", test=files / "test.npz", resume=True, progress=False)
    assert _strip(got) == _strip(expected)
    assert not (killed / "work").exists()


def test_update_set_changes_only_this_updates_policy(store, files, tmp_path, capsys):
    s = ModelStore.open(shutil.copytree(store.path, tmp_path / "copy"))
    before = _snapshot(s.path)
    code = cli.main(["update", str(s.path), "--data", str(files / "part0.npz"), "--set",
                     "batch_size=8", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "batch_size" in err and "Fix:" in err and err.count("\n") == 1
    assert _snapshot(s.path) == before
    code = cli.main(["update", str(s.path), "--data", str(files / "part0.npz"), "--policy",
                     "tfs", "--set", "epochs=1", "--set", "prune.max_iterations=1",
                     "--no-progress"])
    assert code == 0
    man = s.manifest()
    assert man["policy"]["policy"] == "tfs" and man["policy"]["epochs"] == 1
    assert man["policy"]["prune"]["max_iterations"] == 1 and man["metrics"]["epochs"] <= 2
    assert s.spec["policy"] == "growprune"  # the store's own policy is untouched
