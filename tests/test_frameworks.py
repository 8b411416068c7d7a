"""Any JAX model through the store: Flax NNX and Equinox models (module files outside the package)
through ``gpjax init -> update -> history -> evaluate -> export``; one network written in linen,
NNX and Equinox gives the same loss, gradients and masks; models the adapter cannot take are
refused with one line, exit 2, nothing written."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PROPERTY
from hypothesis import given, settings
from hypothesis import strategies as st

import gpjax
from gpjax import cli
from gpjax.incremental.store import ModelStore
from gpjax.models.adapter import Adapter, ModelFrameworkError, as_adapter, from_class
from gpjax.tasks import classifier_task

eqx = pytest.importorskip("equinox")
nnx = pytest.importorskip("flax.nnx")

MODELS_FILE = '''
from functools import partial

import equinox as eqx
import jax
from flax import nnx


class CNN(nnx.Module):
    """The CNN of Flax's NNX MNIST tutorial, shrunk to 8x8 digits."""

    input_kernels = ("conv1/kernel",)

    def __init__(self, *, rngs: nnx.Rngs, classes: int = 4):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(16 * 2 * 2, 32, rngs=rngs)
        self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
        self.linear2 = nnx.Linear(32, classes, rngs=rngs)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.linear1(x)))
        return self.linear2(x)


class BNNet(nnx.Module):
    """Dense -> BatchNorm -> Dense (batch statistics are the store's aux)."""

    def __init__(self, width: int = 16, classes: int = 4, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, width, rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.fc2 = nnx.Linear(width, classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.bn(self.fc1(x))))


class MLP(eqx.Module):
    """An Equinox MLP with dropout, called on one example [8, 8, 1]."""

    layers: list
    dropout: eqx.nn.Dropout
    input_kernels = ("layers/0/weight",)

    def __init__(self, width: int = 32, classes: int = 4, *, key):
        k1, k2 = jax.random.split(key)
        self.layers = [eqx.nn.Linear(64, width, key=k1), eqx.nn.Linear(width, classes, key=k2)]
        self.dropout = eqx.nn.Dropout(0.1)

    def __call__(self, x, *, key=None):
        x = jax.nn.relu(self.layers[0](x.reshape(-1)))
        return self.layers[1](self.dropout(x, key=key))


class NoRngs(nnx.Module):
    def __init__(self, width: int = 4):
        self.width = width


class NoKey(eqx.Module):
    layer: eqx.nn.Linear

    def __init__(self, width: int = 4):
        self.layer = eqx.nn.Linear(64, width, key=jax.random.PRNGKey(0))


class WithState(eqx.Module):
    bn: eqx.nn.BatchNorm

    def __init__(self, *, key):
        self.bn = eqx.nn.BatchNorm(64, axis_name="batch", mode="batch")


class NotAModel:
    def __init__(self, **kwargs):
        pass


class Flat(nnx.Module):
    """One output per example, [B]: no classifier."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))[:, 0]
'''

# The code paths of the protocol at a test's cost: 3 epochs, then 1 + 1 per update.
SETS = ["first_epochs=3", "new_epochs=1", "all_epochs=1", "grow_every=1", "seed_density=0.5",
        "prune.max_iterations=1", "prune.percentile=20", "nonrecoverable.max_iterations=1",
        "batch_size=16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A user's directory: the model module and two 160-digit parts and a test file of four
    8x8 classes (a prototype each, plus noise)."""
    d = tmp_path_factory.mktemp("fw")
    (d / "fw_models.py").write_text(MODELS_FILE)
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    for name, n in (("part0", 160), ("part1", 160), ("test", 160)):
        y = rng.integers(0, 4, n)
        x = protos[y] + 0.5 * rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
        np.savez(d / f"{name}.npz", x=x.astype(np.float32), y=y)
    return d


def _cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def stores(files, tmp_path_factory):
    """One store per model, each made by `gpjax init` and one `gpjax update` (in this process:
    the CLI's own entry point)."""
    import os
    cwd = os.getcwd()
    os.chdir(files)  # the store records the directory holding the model's module
    out = {}
    try:
        for name in ("CNN", "BNNet", "MLP"):
            path = tmp_path_factory.mktemp("stores") / name
            sets = sum((["--set", s] for s in SETS), [])
            assert cli.main(["init", str(path), "--model", f"fw_models:{name}", "--data",
                             str(files / "part0.npz"), "--test", str(files / "test.npz"),
                             "--no-progress", *sets]) == 0
            assert cli.main(["update", str(path), "--data", str(files / "part1.npz"), "--test",
                             str(files / "test.npz"), "--no-progress"]) == 0
            out[name] = path
    finally:
        os.chdir(cwd)
    return out


@pytest.mark.parametrize("name,framework", [("CNN", "nnx"), ("BNNet", "nnx"),
                                            ("MLP", "equinox")])
def test_store_runs_nnx_and_equinox_models(stores, files, name, framework, capsys):
    """init -> update -> history -> evaluate: two versions, the updated one has learned the
    four classes (test error far below chance, 75%; the CNN's three sparse first epochs may not
    yet), `evaluate` on the test file gives the test error the version recorded, and the loaded
    model holds the masks the manifest counts."""
    path = stores[name]
    code, out, _ = _cli(["history", str(path), "--json"], capsys)
    assert code == 0
    hist = json.loads(out)
    assert [h["version"] for h in hist] == [0, 1] and hist[1]["latest"]
    assert hist[1]["metrics"]["test_error"] < 40.0, hist[1]["metrics"]
    assert hist[1]["metrics"]["test_error"] <= hist[0]["metrics"]["test_error"]
    for h in hist:
        assert 0 < h["metrics"]["params"] <= h["metrics"]["params_dense"]
    code, out, _ = _cli(["evaluate", str(path), "--data", str(files / "test.npz")], capsys)
    assert code == 0 and "| 1 | 160 |" in out
    store = ModelStore.open(path)
    assert as_adapter(store.model).framework == framework
    got = store.evaluate(files / "test.npz")
    assert got["test_error"] == pytest.approx(hist[1]["metrics"]["test_error"], abs=1e-6)
    m = store.load()
    assert gpjax.count_params(m.masks).active == hist[1]["metrics"]["params"]
    # masked weights are exactly zero in the stored model (the optimiser's invariant)
    leaked = jax.tree.map(lambda k, p: None if k is None else bool(np.any(
        np.asarray(p)[~np.asarray(k)])), m.masks, m.params, is_leaf=lambda v: v is None)
    assert jax.tree.leaves(leaked) and not any(jax.tree.leaves(leaked))
    if name == "BNNet":  # batch statistics were trained and stored
        assert not np.allclose(np.asarray(m.aux["bn"]["mean"]), 0.0)


@pytest.mark.parametrize("name", ["CNN", "MLP"])
def test_export_nnx_and_equinox_models(stores, files, name, tmp_path, capsys):
    """`gpjax export` of the NNX CNN and the Equinox MLP; the artifact, run in a fresh process
    with gpjax, flax and equinox blocked, agrees with the store's own test error."""
    out = tmp_path / "artifact"
    code, _, err = _cli(["export", str(stores[name]), "--out", str(out)], capsys)
    assert code == 0, err
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("gpjax", "flax", "equinox"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(out)!r})
        import numpy as np
        from load import load
        predict = load({str(out)!r})
        with np.load({str(files / 'test.npz')!r}) as z:
            x, y = z["x"], z["y"]
        print(100.0 * float(np.mean(np.argmax(np.asarray(predict(x)), -1) != y)))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    store = ModelStore.open(stores[name])
    want = store.evaluate(files / "test.npz")
    want = want.get("test_error_nonrecoverable", want["test_error"])
    assert float(run.stdout.split()[-1]) == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("model,words", [
    ("fw_models:NotAModel", ["not a Flax linen, Flax NNX or Equinox model", "Fix:"]),
    ("fw_models:NoRngs", ["takes no `rngs`", "rngs=nnx.Rngs(seed)", "Fix:"]),
    ("fw_models:NoKey", ["takes no `key`", "key=jax.random.key(seed)", "Fix:"]),
    ("fw_models:WithState", ["stateful layers", "Fix:"]),
    ("fw_models:Flat", ["logits [B, K]", "Fix:"]),
])
def test_models_it_cannot_take_are_refused(files, tmp_path, monkeypatch, capsys, model, words):
    """One line naming the convention and the fix, exit 2, no store left behind."""
    monkeypatch.chdir(files)
    path = tmp_path / "s"
    code, _, err = _cli(["init", str(path), "--model", model, "--data",
                         str(files / "part0.npz"), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not path.exists()


def test_regression_store_refuses_integer_targets(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(files)
    path = tmp_path / "r"
    code, _, err = _cli(["init", str(path), "--model", "fw_models:BNNet", "--task", "regression",
                         "--data", str(files / "part0.npz"), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "float targets [N] or [N, k]" in err and "Fix:" in err
    assert not path.exists()


# ----------------------------------------------------------------------------- equivalence
class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.leaky_relu(nn.Dense(8, name="fc1")(x), 0.01)
        return nn.Dense(3, name="fc2")(x)


class _NnxMLP(nnx.Module):
    def __init__(self, *, rngs):
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.leaky_relu(self.fc1(x), 0.01))


class _EqxMLP(eqx.Module):
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, *, key):
        k1, k2 = jax.random.split(key)
        self.fc1 = eqx.nn.Linear(4, 8, key=k1)
        self.fc2 = eqx.nn.Linear(8, 3, key=k2)

    def __call__(self, x):
        return self.fc2(jax.nn.leaky_relu(self.fc1(x), 0.01))


@functools.cache
def _tasks():
    """Each framework's adapter, task and jitted loss-and-gradient (made once: the property's
    examples differ in values only)."""
    out = {}
    for fw, adapter in (("linen", as_adapter(_LinenMLP())), ("nnx", from_class(_NnxMLP, {})),
                        ("equinox", from_class(_EqxMLP, {}))):
        task = classifier_task(adapter)
        out[fw] = (adapter, task, jax.jit(jax.value_and_grad(task.frozen_loss)),
                   jax.jit(task.loss))
    return out


def _weights(seed: int):
    """The same weights as linen/NNX params ([in, out]) and Equinox params ([out, in])."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    w1, w2 = jax.random.normal(ks[0], (4, 8)), jax.random.normal(ks[1], (8, 3))
    b1, b2 = 0.1 * jax.random.normal(ks[2], (8,)), 0.1 * jax.random.normal(ks[3], (3,))
    flax_p = {"fc1": {"kernel": w1, "bias": b1}, "fc2": {"kernel": w2, "bias": b2}}
    eqx_p = {"fc1": {"weight": w1.T, "bias": b1}, "fc2": {"weight": w2.T, "bias": b2}}
    return {"linen": flax_p, "nnx": flax_p, "equinox": eqx_p}


def _flax_view(tree, framework):
    """An Equinox params/masks tree in linen's names and [in, out] axes."""
    if framework != "equinox":
        return tree
    return {k: {"kernel": v["weight"].T, "bias": v["bias"]} for k, v in tree.items()}


@settings(PROPERTY, max_examples=3)
@given(seed=st.integers(0, 2**16), density=st.floats(0.3, 0.7))
def test_one_network_in_three_frameworks_is_one_network(seed, density):
    """Same weights: same loss, same gradients (Equinox's transposed), and after one grow and one
    prune step the same masks."""
    rng = np.random.default_rng(seed)
    batch = (jnp.asarray(rng.normal(size=(16, 4)), jnp.float32),
             jnp.asarray(rng.integers(0, 3, 16)))
    weights = _weights(seed)
    flax_masks = gpjax.init_masks(weights["linen"], density=density,
                                  key=jax.random.PRNGKey(seed + 1))
    got = {}
    for fw, (adapter, task, loss_grad, train_loss_fn) in _tasks().items():
        assert isinstance(adapter, Adapter) and adapter.framework == fw
        masks = flax_masks if fw != "equinox" else {
            k: {"weight": v["kernel"].T, "bias": v["bias"]} for k, v in flax_masks.items()}
        params = gpjax.apply_masks(weights[fw], masks)
        loss, grads = loss_grad(params, {}, batch)
        train_loss, _ = train_loss_fn(params, {}, batch, jax.random.PRNGKey(0))
        grown_p, grown_m = gpjax.grow(params, masks, grads, percentile=80.0, learning_rate=0.1)
        _, pruned_m = gpjax.prune(grown_p, grown_m, percentile=30.0, layout=task.layout)
        got[fw] = (float(loss), float(train_loss), _flax_view(grads, fw),
                   _flax_view(grown_m, fw), _flax_view(pruned_m, fw))
    ref = got["linen"]
    for fw in ("nnx", "equinox"):
        assert got[fw][0] == pytest.approx(ref[0], rel=1e-5)
        assert got[fw][1] == pytest.approx(ref[1], rel=1e-5)
        for a, b in zip(jax.tree.leaves(got[fw][2]), jax.tree.leaves(ref[2]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        for i in (3, 4):
            for a, b in zip(jax.tree.leaves(got[fw][i]), jax.tree.leaves(ref[i]), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernel_paths_follow_the_forward_pass(files):
    """The kernels in the order the input meets them, whatever the framework's own (NNX sorts
    its state by name; Equinox keeps field order)."""
    sys.path.insert(0, str(files))
    import fw_models
    x = np.zeros((1, 8, 8, 1), np.float32)
    for cls, want in ((fw_models.CNN, ("conv1/kernel", "conv2/kernel", "linear1/kernel",
                                       "linear2/kernel")),
                      (fw_models.MLP, ("layers/0/weight", "layers/1/weight"))):
        a = from_class(cls, {})
        params, aux = a.init(jax.random.PRNGKey(0), x)
        assert a.kernel_paths(params, aux, x) == want


def test_nnx_dropout_follows_the_step_key_and_eval_is_deterministic(files):
    sys.path.insert(0, str(files))
    import fw_models
    a = from_class(fw_models.CNN, {})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)), jnp.float32)
    params, aux = a.init(jax.random.PRNGKey(0), x[:1])
    train = jax.jit(lambda k: a.apply(params, aux, x, train=True, key=k)[0])
    y0, y0b, y1 = train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(0)), \
        train(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(y0b))
    assert not np.allclose(np.asarray(y0), np.asarray(y1))
    e = a.apply(params, aux, x, train=False)[0]
    np.testing.assert_array_equal(np.asarray(e), np.asarray(a.apply(params, aux, x,
                                                                     train=False)[0]))
    p2, _ = a.init(jax.random.PRNGKey(1), x[:1])  # the key chooses the initial weights
    assert not np.allclose(np.asarray(p2["conv1"]["kernel"]),
                           np.asarray(params["conv1"]["kernel"]))


def test_a_class_of_no_framework_is_refused_in_python():
    class Plain:
        pass

    with pytest.raises(ModelFrameworkError, match="Fix:"):
        from_class(Plain, {})
    with pytest.raises(ModelFrameworkError, match="Fix:"):
        as_adapter(Plain())


def test_forward_is_the_evaluation_apply(files):
    """Adapter.forward(aux): the function compact/export take, equal to apply(train=False)."""
    sys.path.insert(0, str(files))
    import fw_models
    a = from_class(fw_models.BNNet, {})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
    params, aux = a.init(jax.random.PRNGKey(0), x[:1])
    np.testing.assert_array_equal(np.asarray(jax.jit(a.forward(aux))(params, x)),
                                  np.asarray(a.apply(params, aux, x, train=False)[0]))
