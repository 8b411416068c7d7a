"""gpjax.compact: the compact model computes the masked model's function with fewer units;
gpjax.export.sparse: the sparse file restores the same weights and is small."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpjax
from gpjax.compact import LayerSpec, apply_compact, compact
from gpjax.export.sparse import csr_decode, csr_encode, index_dtype, storage_report
from gpjax.models import LeNet5, LeNet300, ResNet18

LENET5_SHAPES = {"conv1": (5, 5, 1, 6), "conv2": (5, 5, 6, 16), "fc1": (400, 120),
                 "fc2": (120, 84), "fc3": (84, 10)}


def _random_state(shapes, seed, density, bias_scale=0.5):
    """Params (numpy: no flax init) with non-zero biases, so folding matters, and a mask."""
    rng = np.random.default_rng(seed)
    params = {n: {"kernel": rng.normal(0, 0.3, s).astype(np.float32),
                  "bias": rng.normal(0, bias_scale, s[-1]).astype(np.float32)}
              for n, s in shapes.items()}
    masks = jax.tree.map(lambda p: rng.random(p.shape) < density if p.ndim >= 2 else None,
                         params)
    return params, masks


def _leaky(h):
    return np.where(h >= 0, h, 0.01 * h)


def _numpy_conv(x, k, pad):
    """Independent reference: a stride-1 NHWC convolution in numpy (float64)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, k.shape[:2], axis=(1, 2))
    return np.einsum("bhwcij,ijco->bhwo", win, k)


def _numpy_pool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _numpy_lenet5(params, masks, x):
    eff = {n: np.asarray(p["kernel"], np.float64) * np.asarray(masks[n]["kernel"])
           for n, p in params.items()}
    h = _numpy_pool(_leaky(_numpy_conv(x, eff["conv1"], 2) + params["conv1"]["bias"]))
    h = _numpy_pool(_leaky(_numpy_conv(h, eff["conv2"], 0) + params["conv2"]["bias"]))
    h = h.reshape(len(x), -1)
    for n in ("fc1", "fc2", "fc3"):
        h = h @ eff[n] + params[n]["bias"]
        h = _leaky(h) if n != "fc3" else h
    return h


def _hidden_units_all_connected(cm):
    for i in range(len(cm.layers) - 1):
        k, nxt = cm.weights[i]["kernel"], cm.weights[i + 1]["kernel"]
        ins = k.reshape(int(np.prod(k.shape[:-1])), k.shape[-1]).any(axis=0)
        groups = int(np.prod(nxt.shape[:-1])) // max(k.shape[-1], 1)
        outs = nxt.reshape(groups, k.shape[-1], nxt.shape[-1]).any(axis=(0, 2))
        if not (ins.all() and outs.all()):
            return False
    return True


def _numpy_mlp(params, masks, x, n_layers):
    """Independent reference: the masked MLP in numpy (leaky ReLU 0.01 on hidden layers)."""
    h = x.astype(np.float64)
    for i in range(n_layers):
        p, m = params[f"fc{i + 1}"], masks[f"fc{i + 1}"]["kernel"]
        h = h @ (np.asarray(p["kernel"], np.float64) * np.asarray(m)) + np.asarray(p["bias"])
        if i < n_layers - 1:
            h = np.where(h >= 0, h, 0.01 * h)
    return h


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), density=st.floats(0.02, 0.6),
       h1=st.integers(1, 12), h2=st.integers(1, 9), n_in=st.integers(1, 20))
def test_compact_mlp_equals_the_masked_model(seed, density, h1, h2, n_in):
    model = LeNet300(num_classes=5, hidden=(h1, h2))
    x = np.random.default_rng(seed).normal(size=(7, n_in)).astype(np.float32)
    params, masks = _random_state({"fc1": (n_in, h1), "fc2": (h1, h2), "fc3": (h2, 5)},
                                  seed, density)
    cm = compact(params, masks, model)
    y = jax.jit(apply_compact, static_argnums=0)(cm.layers, cm.weights, x)
    np.testing.assert_allclose(np.asarray(y), _numpy_mlp(params, masks, x, 3),
                               atol=1e-5, rtol=0)
    # nothing dead is left (no padded conv here), and no active connection is invented
    assert _hidden_units_all_connected(cm)
    assert cm.nonzero() <= gpjax.count_params(masks).active
    kept = cm.weights[0].get("index", np.arange(n_in))
    used = np.flatnonzero(np.asarray(masks["fc1"]["kernel"]).any(axis=1))
    assert set(kept.tolist()) <= set(used.tolist())


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), density=st.floats(0.02, 0.3))
def test_compact_lenet5_equals_the_masked_model(seed, density):
    model = LeNet5()
    x = np.random.default_rng(seed).normal(size=(3, 28, 28, 1)).astype(np.float32)
    params, masks = _random_state(LENET5_SHAPES, seed, density)
    # kill whole conv filters so channels go, both ways (no input / no output)
    m = jax.tree.map(np.array, masks)
    m["conv1"]["kernel"][..., 0] = False
    m["conv2"]["kernel"][:, :, 1, :] = False
    m["conv2"]["kernel"][..., 3] = False
    m["fc1"]["kernel"][np.arange(400) % 16 == 5] = False
    masks = jax.tree.map(jnp.asarray, m)
    cm = compact(params, masks, model)
    y = jax.jit(apply_compact, static_argnums=0)(cm.layers, cm.weights, x.reshape(3, -1))
    np.testing.assert_allclose(np.asarray(y), _numpy_lenet5(params, masks, x), atol=1e-5, rtol=0)
    k1, k2 = cm.weights[0]["kernel"], cm.weights[1]["kernel"]
    assert k1.shape[3] <= 4 and k2.shape[2] == k1.shape[3] and k2.shape[3] <= 14
    assert cm.weights[2]["kernel"].shape[0] <= 25 * k2.shape[3]


def test_unit_without_inputs_is_folded_into_the_next_bias():
    k1 = np.array([[1.0, 0.0, 2.0], [0.5, 0.0, -1.0]], np.float32)      # unit 1: no inputs
    k2 = np.array([[1.0], [3.0], [0.0]], np.float32)                    # unit 2: no outputs
    params = {"a": {"kernel": k1, "bias": np.array([0.1, -2.0, 0.3], np.float32)},
              "b": {"kernel": k2, "bias": np.array([0.5], np.float32)}}
    masks = {"a": {"kernel": np.ones((2, 3), bool), "bias": None},
             "b": {"kernel": np.ones((3, 1), bool), "bias": None}}
    cm = compact(params, masks, layers=["a/kernel", "b/kernel"], activation="leaky_relu")
    assert cm.weights[0]["kernel"].shape == (2, 1) and cm.weights[1]["kernel"].shape == (1, 1)
    # b2 = 0.5 + leaky_relu(-2.0) * 3 = 0.5 - 0.06
    np.testing.assert_allclose(cm.weights[1]["bias"], [0.44], rtol=1e-6)
    x = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)
    h = np.where(x @ k1 + params["a"]["bias"] >= 0, 1, 0.01) * (x @ k1 + params["a"]["bias"])
    np.testing.assert_allclose(np.asarray(cm(x)), h @ k2 + 0.5, rtol=1e-6)


def test_user_dense_chain_with_its_own_activation_and_variables_tree():
    rng = np.random.default_rng(3)
    shapes = [(10, 8), (8, 6), (6, 3)]
    params = {"params": {f"Dense_{i}": {"kernel": rng.normal(size=s).astype(np.float32),
                                        "bias": rng.normal(size=s[1]).astype(np.float32)}
                         for i, s in enumerate(shapes)}}
    masks = jax.tree.map(lambda p: rng.random(p.shape) < 0.3 if p.ndim == 2 else None, params)
    paths = [f"params/Dense_{i}/kernel" for i in range(3)]
    cm = compact(params, masks, layers=paths, activation=jnp.tanh)
    x = rng.normal(size=(5, 10)).astype(np.float32)
    h = x
    for i in range(3):
        p = params["params"][f"Dense_{i}"]
        h = h @ (p["kernel"] * masks["params"][f"Dense_{i}"]["kernel"]) + p["bias"]
        h = np.tanh(h) if i < 2 else h
    np.testing.assert_allclose(np.asarray(cm(x)), h, atol=1e-5)
    # the same structure as explicit LayerSpecs, jitted with the structure static
    specs = [LayerSpec(p, p.replace("kernel", "bias"), "dense", jnp.tanh if i < 2 else
                       "identity") for i, p in enumerate(paths)]
    cm2 = compact(params, masks, layers=specs)
    y = jax.jit(apply_compact, static_argnums=0)(cm2.layers, cm2.weights, x)
    np.testing.assert_allclose(np.asarray(y), h, atol=1e-5)


def test_refuses_structures_it_cannot_handle():
    params = {"a": {"kernel": np.ones((3, 3, 1, 4), np.float32)}}
    masks = {"a": {"kernel": np.ones((3, 3, 1, 4), bool)}}
    with pytest.raises(ValueError, match="residual"):
        compact(params, masks, ResNet18(num_classes=10))
    with pytest.raises(ValueError, match="layers="):
        compact(params, masks, object())
    with pytest.raises(ValueError, match="not a leaf"):
        compact(params, masks, layers=["nope/kernel"])
    with pytest.raises(ValueError, match="check the layer order"):
        two = {"a": {"kernel": np.ones((4, 3), np.float32)},
               "b": {"kernel": np.ones((5, 2), np.float32)}}
        compact(two, jax.tree.map(lambda p: np.ones(p.shape, bool), two),
                layers=["a/kernel", "b/kernel"])


def test_non_recoverable_model_loses_neurons_recoverable_only_pixels():
    model = LeNet300()
    params, _ = _random_state({"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}, 0, 1.0)
    rng = np.random.default_rng(0)
    # a recoverable-style mask: every hidden neuron keeps an input and an output
    masks = gpjax.connect_units(
        jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.01) if p.ndim == 2 else None,
                     params), seed=0, input_fed=LeNet300.input_kernels)
    rec = compact(params, masks, model)
    assert [w["kernel"].shape[1] for w in rec.weights] == [300, 100, 10]
    assert rec.weights[0]["kernel"].shape[0] < 784
    # non-recoverable: drop 100 hidden units' outputs -> they go, with their inputs
    m = jax.tree.map(np.array, masks)
    m["fc2"]["kernel"][:100] = False
    non = compact(params, jax.tree.map(jnp.asarray, m), model)
    assert non.weights[0]["kernel"].shape[1] == 200


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(1, 300), density=st.floats(0, 1),
       seed=st.integers(0, 1000))
def test_csr_round_trip_matches_numpy(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(rows, cols)) * (rng.random((rows, cols)) < density)).astype(np.float32)
    enc = csr_encode(a)
    assert enc["indices"].dtype == index_dtype(cols - 1)
    assert enc["indices"].dtype.itemsize == (1 if cols <= 256 else 2)
    assert enc["data"].size == np.count_nonzero(a)
    np.testing.assert_array_equal(csr_decode(**enc, shape=a.shape), a)


def test_sparse_file_restores_the_weights_and_is_ten_times_smaller(tmp_path):
    model = LeNet300()
    params, masks = _random_state({"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}, 1,
                                  10_000 / 266_200)   # ~10K of 266K
    cm = compact(params, masks, model)
    sizes = storage_report(params, masks, cm, tmp_path)
    assert sizes["dense_float32"] >= 266_610 * 4
    # the same function: the compact model loaded back against a numpy forward
    x = np.random.default_rng(0).normal(size=(4, 784)).astype(np.float32)
    assert sizes["masked_checkpoint"] > sizes["dense_float32"]
    assert sizes["dense_float32"] >= 10 * sizes["compact_sparse"]
    back = gpjax.load_sparse(tmp_path / "compact_sparse.npz")
    assert back.layers == cm.layers and back.input_shape == cm.input_shape
    for w, v in zip(cm.weights, back.weights):
        assert w.keys() == v.keys()
        for k in w:
            np.testing.assert_array_equal(w[k], v[k])
    np.testing.assert_allclose(np.asarray(back(x)), _numpy_mlp(params, masks, x, 3), atol=1e-5)
    dense_back = gpjax.load_sparse(tmp_path / "compact_dense.npz")
    np.testing.assert_array_equal(dense_back.weights[0]["kernel"], cm.weights[0]["kernel"])
    with pytest.raises(ValueError, match="no name"):
        gpjax.save_sparse(tmp_path / "f.npz", cm._replace(
            layers=(cm.layers[0]._replace(activation=jnp.tanh), *cm.layers[1:])))
