"""gpjax.compact and gpjax.export_model on models written in Flax linen, Flax NNX and Equinox:
the chain is derived from the model (kernels from its params, padding from its traced
convolutions, activations and pooling checked against its function), the compact model equals
the masked model on the model's own input layout (NHWC for Flax, NCHW for Equinox), and the
exported artifact runs with JAX alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import gpjax
from gpjax.compact import ModelFn, compact, find_chain
from gpjax.masks import path_str

# ----------------------------------------------------------------------------- the models


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(12)(x))
        x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(3)(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):                                  # [B, 8, 8, 1]
        x = nn.avg_pool(nn.tanh(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.tanh(nn.Conv(6, (3, 3), padding="VALID")(x))  # [B, 2, 2, 6]
        x = nn.tanh(nn.Dense(10)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(x)


class NNXMLP(nnx.Module):
    """Attribute names that do not sort in the order of the layers (head < hidden < mid)."""

    def __init__(self, *, rngs):
        self.hidden = nnx.Linear(64, 12, rngs=rngs)
        self.mid = nnx.Linear(12, 8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.head(nnx.relu(self.mid(x)))


class NNXCNN(nnx.Module):
    """The Flax NNX tutorial's CNN, shrunk: SAME convs, average pooling, dropout."""

    def __init__(self, *, rngs):
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, kernel_size=(3, 3), padding="VALID", rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.linear1 = nnx.Linear(24, 10, rngs=rngs)
        self.linear2 = nnx.Linear(10, 3, rngs=rngs)

    def __call__(self, x):                                  # [B, 8, 8, 1]
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.conv2(x)).reshape(x.shape[0], -1)
        return self.linear2(self.dropout(nnx.relu(self.linear1(x))))


class EqxCNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k[0])
        self.conv2 = eqx.nn.Conv2d(4, 6, 3, key=k[1])
        self.fc1 = eqx.nn.Linear(24, 10, key=k[2])
        self.fc2 = eqx.nn.Linear(10, 3, key=k[3])

    def __call__(self, x):                                  # one example [1, 8, 8]
        x = eqx.nn.MaxPool2d(2, 2)(jax.nn.gelu(self.conv1(x)))
        x = jnp.ravel(jax.nn.gelu(self.conv2(x)))           # [6, 2, 2] flattened C-major
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class EqxResidual(eqx.Module):
    layers: list

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.layers = [eqx.nn.Linear(8, 8, key=k[0]), eqx.nn.Linear(8, 8, key=k[1]),
                       eqx.nn.Linear(8, 3, key=k[2])]

    def __call__(self, x):
        x = x + jax.nn.relu(self.layers[0](x))
        x = x + jax.nn.relu(self.layers[1](x))
        return self.layers[2](x)


class NNXResidual(nnx.Module):
    def __init__(self, *, rngs):
        self.a = nnx.Linear(8, 8, rngs=rngs)
        self.b = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.b(x + nnx.relu(self.a(x)))


class NNXStrided(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), strides=2, rngs=rngs)
        self.fc = nnx.Linear(64, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------- as ModelFn

def linen_fn(module, shape):
    params = module.init(jax.random.key(0), jnp.zeros((1, *shape)))["params"]
    return params, ModelFn(lambda p, x: module.apply({"params": p}, x), "flax", shape)


def nnx_fn(module, shape):
    """The adapter's view of an NNX model: the nnx.Param state as a pure dict, merged back."""
    module.eval()
    graphdef, state, rest = nnx.split(module, nnx.Param, ...)

    def forward(p, x):
        s = jax.tree.map(lambda a: a, state)
        nnx.replace_by_pure_dict(s, p)
        return nnx.merge(graphdef, s, rest)(x)

    return nnx.to_pure_dict(state), ModelFn(forward, "flax", shape)


def eqx_fn(module, shape):
    """The adapter's view of an Equinox model: its inexact arrays, called per example."""
    params, static = eqx.partition(module, eqx.is_inexact_array)
    return params, ModelFn(lambda p, x: jax.vmap(eqx.combine(p, static))(x), "torch", shape)


MODELS = {
    "linen-mlp": lambda: linen_fn(LinenMLP(), (8, 8, 1)),
    "linen-cnn": lambda: linen_fn(LinenCNN(), (8, 8, 1)),
    "nnx-mlp": lambda: nnx_fn(NNXMLP(rngs=nnx.Rngs(0)), (8, 8, 1)),
    "nnx-cnn": lambda: nnx_fn(NNXCNN(rngs=nnx.Rngs(0)), (8, 8, 1)),
    "eqx-mlp": lambda: eqx_fn(eqx.nn.MLP(64, 3, 12, 2, key=jax.random.key(0)), (64,)),
    "eqx-cnn": lambda: eqx_fn(EqxCNN(jax.random.key(0)), (1, 8, 8)),
}
EXPECTED = {  # what the chain must say: (hidden activation, pooling per conv)
    "linen-mlp": ("relu", ()), "linen-cnn": ("tanh", ("avg", False)),
    "nnx-mlp": ("relu", ()), "nnx-cnn": ("relu", ("avg", False)),
    "eqx-mlp": ("relu", ()), "eqx-cnn": ("gelu", ("max", False)),
}


def _masks(params, chain, seed, density):
    """Random sparse masks, with hidden unit 0 of the first layer cut off from the next one
    (no outputs: compact removes it) and input feature 0 of a dense first layer unused."""
    masks = jax.tree.map(np.array, gpjax.init_masks(params, density=density,
                                                    key=jax.random.key(seed)))
    named = {path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
    first, second = (chain.layers[i] for i in (0, 1))
    in_axis = -2 if first.layout == "flax" else 1
    np.moveaxis(named[second.kernel], in_axis, 0)[0] = False
    if first.kind == "dense":
        np.moveaxis(named[first.kernel], in_axis, 0)[0] = False
    return masks


@pytest.fixture(scope="module")
def derived():
    """{name: (params, ModelFn, Chain)}: each model's chain derived once."""
    out = {}
    for name, make in MODELS.items():
        params, fn = make()
        fn = fn._replace(forward=jax.jit(fn.forward))
        out[name] = (params, fn, find_chain(params, fn))
    return out


def _x(fn, n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *fn.input_shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_chain_is_derived_from_the_model(derived, name):
    params, fn, chain = derived[name]
    act, pools = EXPECTED[name]
    assert [s.activation for s in chain.layers[:-1]] == [act] * (len(chain.layers) - 1)
    assert chain.layers[-1].activation == "identity"
    assert tuple(s.pool for s in chain.layers if s.kind == "conv") == pools
    assert {s.layout for s in chain.layers} == {fn.layout}
    assert chain.input_shape == fn.input_shape


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 2**16),
       density=st.floats(0.1, 0.9))
def test_compact_model_equals_the_masked_model(derived, name, seed, density):
    params, fn, chain = derived[name]
    masks = _masks(params, chain, seed, density)
    cm = compact(params, masks, chain)
    x = _x(fn, 5, seed)
    ref = np.asarray(fn.forward(gpjax.apply_masks(params, masks), x))
    np.testing.assert_allclose(np.asarray(cm(x)), ref, atol=1e-5, rtol=1e-5)
    assert cm.num_params() < gpjax.count_params(masks, params).dense
    assert cm.nonzero() <= gpjax.count_params(masks).active


def test_compact_takes_the_model_as_a_modelfn_or_a_linen_module(derived, tmp_path):
    params, fn, chain = derived["eqx-cnn"]
    masks = _masks(params, chain, 0, 0.5)
    a, b = compact(params, masks, fn), compact(params, masks, chain)
    assert a.layers == b.layers and a.input_shape == (1, 8, 8) and a.layers[0].channels_first
    gpjax.save_sparse(tmp_path / "eqx.npz", a)          # the NCHW input survives a round trip
    back = gpjax.load_sparse(tmp_path / "eqx.npz")
    x = _x(fn, 3)
    assert back.layers == a.layers
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(a(x)), atol=1e-6)
    params, _, chain = derived["linen-mlp"]
    masks = _masks(params, chain, 0, 0.5)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype(np.float32)
    ref = LinenMLP().apply({"params": gpjax.apply_masks(params, masks)}, x)
    np.testing.assert_allclose(np.asarray(compact(params, masks, LinenMLP(),
                                                  input_shape=(8, 8, 1))(x)), ref, atol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: eqx_fn(EqxResidual(jax.random.key(0)), (8,)), "residual"),
    (lambda: nnx_fn(NNXResidual(rngs=nnx.Rngs(0)), (8,)), "residual"),
    (lambda: nnx_fn(NNXStrided(rngs=nnx.Rngs(0)), (8, 8, 1)), "strided"),
])
def test_models_that_are_not_chains_are_refused_in_one_line(make, match):
    params, fn = make()
    masks = gpjax.init_masks(params)
    with pytest.raises(ValueError, match=match) as e:
        compact(params, masks, fn)
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


# ----------------------------------------------------------------------------- export

EXPORTED = ("linen-cnn", "nnx-cnn", "eqx-mlp", "eqx-cnn")


@pytest.fixture(scope="module")
def artifacts(derived, tmp_path_factory):
    """Each model of EXPORTED, masked, exported; its inputs and masked outputs saved."""
    root = tmp_path_factory.mktemp("artifacts")
    for name in EXPORTED:
        params, fn, chain = derived[name]
        masks = _masks(params, chain, 1, 0.6)
        x = _x(fn, 6, seed=2)
        manifest = gpjax.export_model(fn._replace(input_shape=None), params, masks,
                                      root / name, example_input=x[:2], batch_sizes=(1, 4),
                                      repeats=1)
        assert manifest["input"]["shape"] == [None, *fn.input_shape]
        np.save(root / f"{name}.x.npy", x)
        np.save(root / f"{name}.ref.npy",
                np.asarray(fn.forward(gpjax.apply_masks(params, masks), x)))
    return root


def test_artifacts_run_with_jax_alone_and_equal_the_model(artifacts):
    script = textwrap.dedent(f"""
        import importlib.abc, pathlib, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("gpjax", "flax", "equinox"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import importlib.util
        import numpy as np
        root = pathlib.Path({str(artifacts)!r})
        for name in {EXPORTED!r}:
            spec = importlib.util.spec_from_file_location("load_" + name.replace("-", "_"),
                                                          root / name / "load.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            predict = mod.load(root / name)
            x, ref = np.load(root / f"{{name}}.x.npy"), np.load(root / f"{{name}}.ref.npy")
            err = max(float(np.abs(np.asarray(predict(x)) - ref).max()),
                      float(np.abs(np.asarray(predict(x[:1])) - ref[:1]).max()))
            print(name, err)
        assert not any(m.split(".")[0] in ("gpjax", "flax", "equinox") for m in sys.modules)
        try:
            import equinox  # noqa: F401
        except ImportError as e:
            print("blocked", e)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.split("\n")
    errors = dict(line.split() for line in lines if line and not line.startswith("blocked"))
    assert sorted(errors) == sorted(EXPORTED)
    assert all(float(e) <= 1e-5 for e in errors.values()), errors
    assert "blocked: equinox" in run.stdout
