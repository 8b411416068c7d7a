"""gpjax.export_model: a directory that loads with JAX alone and computes the masked model's
outputs; sparse products equal dense ones; bad input fails before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpjax
from gpjax.export.sparse import conv_variants, sparse_variants
from gpjax.models import LeNet300, ResNet18

SIZES = {"fc1": (784, 32), "fc2": (32, 16), "fc3": (16, 10)}


def _state(seed=0, density=0.05):
    rng = np.random.default_rng(seed)
    params = {n: {"kernel": rng.normal(0, 0.3, s).astype(np.float32),
                  "bias": rng.normal(0, 0.3, s[1]).astype(np.float32)} for n, s in SIZES.items()}
    masks = jax.tree.map(lambda p: rng.random(p.shape) < density if p.ndim == 2 else None, params)
    masks["fc2"]["kernel"][:, :4] = False  # dead units: compact removes them
    return params, masks


def _masked_forward(params, masks, x):
    model = LeNet300(hidden=(32, 16))
    return np.asarray(model.apply({"params": gpjax.apply_masks(params, masks)}, x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    params, masks = _state()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 784)).astype(np.float32)
    ref = _masked_forward(params, masks, x)
    y = np.argmax(ref, -1)
    y[:16] = (y[:16] + 1) % 10  # 75% accuracy by construction
    out = tmp_path_factory.mktemp("exp") / "artifact"
    manifest = gpjax.export_model(
        LeNet300(hidden=(32, 16)), params, masks, out, example_input=x[:2],
        classes=list("abcdefghij"), source="test-run/round-3", test_data=(x, y),
        batch_sizes=(1, 4), repeats=2)
    return out, manifest, params, masks, x, ref


def test_manifest_records_what_a_user_needs(exported):
    out, manifest, params, masks, _, _ = exported
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["input"] == {"shape": [None, 784], "dtype": "float32"}
    assert manifest["output"]["shape"] == [None, 10]
    assert manifest["classes"] == list("abcdefghij") and manifest["source"] == "test-run/round-3"
    c = gpjax.count_params(masks)
    assert manifest["parameters"]["active"] == c.active
    assert manifest["parameters"]["dense"] == c.dense
    assert manifest["density"] == pytest.approx(c.active / c.dense)
    macs = manifest["macs_per_example"]
    assert macs["dense"] == 784 * 32 + 32 * 16 + 16 * 10 and macs["active"] == c.active
    assert macs["compact_dense"] < macs["dense"]
    assert manifest["accuracy"] == {"artifact": 0.75, "original": 0.75, "examples": 64}
    assert manifest["versions"]["jax"] == jax.__version__ and manifest["versions"]["jaxlib"]
    t = manifest["timings_us"]
    assert set(t["median"]["original"]) == {"1", "4"} and t["chosen"] in t["median"]
    for layer in manifest["layers"]:
        if layer["compute"] == "dense":
            continue
        tl = layer["timings_us"]
        if t["chosen"] == "alternative":  # the layer's fastest variant at the largest batch
            assert tl[layer["compute"]]["4"] == min(v["4"] for n, v in tl.items() if n != "dense")
        else:  # sparse only from a batch size on where it measured faster at every size
            sizes = [b for b in ("1", "4") if int(b) >= layer["from_batch"]]
            assert sizes and all(tl[layer["compute"]][b] < tl["dense"][b] for b in sizes)


def _load_with_jax_alone(out, x, ref, tmp_path, *, block="numpy"):
    """Runs ``out/load.py`` in a fresh Python where importing gpjax or flax fails: ``(the
    process, [max |y - ref| over x, over x[:1]])``. ``block="gpjax"`` checks the blocker."""
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ref)
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("gpjax", "flax"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(out)!r})
        import {block}
        import numpy as np
        from load import load
        predict = load({str(out)!r})
        x, ref = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'ref.npy')!r})
        y1, yb = np.asarray(predict(x[:1])), np.asarray(predict(x))
        assert not any(m.split(".")[0] in ("gpjax", "flax") for m in sys.modules)
        print(float(np.abs(yb - ref).max()), float(np.abs(y1 - ref[:1]).max()))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    return run, (list(map(float, run.stdout.split())) if run.returncode == 0 else None)


def test_artifact_loads_with_jax_alone_and_matches_the_masked_model(exported, tmp_path):
    out, _, _, _, x, ref = exported
    run, errors = _load_with_jax_alone(out, x, ref, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert max(errors) <= 1e-5
    # the blocker works: importing gpjax there fails
    blocked, _ = _load_with_jax_alone(out, x, ref, tmp_path, block="gpjax")
    assert blocked.returncode != 0 and "blocked: gpjax" in blocked.stderr


def test_loader_runs_csr_products_in_a_fresh_process(tmp_path):
    """An artifact whose function holds the CSR custom call (the export picks it where it
    measures faster) loads with JAX alone: its kernel is registered by jax.experimental.sparse,
    which a fresh process has not imported."""
    from jax import export as jax_export

    from gpjax.export.artifact import LOADER
    from gpjax.export.sparse import CSR_CUSTOM_CALLS, csr_product, csr_weights
    rng = np.random.default_rng(4)
    k = (rng.normal(size=(40, 12)) * (rng.random((40, 12)) < 0.2)).astype(np.float32)
    w = csr_weights(k)
    flat = [w["csr_data"], w["csr_indices"], w["csr_indptr"]]

    def infer(flat_w, x):
        return csr_product(x, dict(zip(("csr_data", "csr_indices", "csr_indptr"), flat_w)),
                           shape=k.shape)

    (b,) = jax_export.symbolic_shape("b")
    exp = jax_export.export(
        jax.jit(infer), platforms=["cpu"],
        disabled_checks=[jax_export.DisabledSafetyCheck.custom_call(t)
                         for t in CSR_CUSTOM_CALLS])(
        [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in flat],
        jax.ShapeDtypeStruct((b, 40), np.float32))
    assert any(t in exp.mlir_module() for t in CSR_CUSTOM_CALLS)
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "model.jax").write_bytes(exp.serialize())
    np.savez(out / "weights.npz", **{f"w{i}": a for i, a in enumerate(flat)})
    (out / "load.py").write_text(LOADER)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    run, errors = _load_with_jax_alone(out, x, x @ k, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert max(errors) <= 1e-5


def test_existing_directory_and_unsupported_models_fail_without_writing(exported, tmp_path):
    out, _, params, masks, x, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ValueError, match="already exists"):
        gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, out, example_input=x[:2])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(ValueError, match="residual"):
        gpjax.export_model(ResNet18(num_classes=10), params, masks, tmp_path / "r",
                           example_input=x[:2])
    with pytest.raises(ValueError, match="non-parameter state"):
        gpjax.export_from_state(LeNet300(), params, masks, {"batch_stats": {}, "x": 1},
                                tmp_path / "s", example_input=x[:2])
    with pytest.raises(ValueError, match="format"):
        gpjax.export_model(LeNet300(), params, masks, tmp_path / "f", example_input=x[:2],
                           format="tflite")
    assert not any(tmp_path.iterdir())


@settings(max_examples=5, deadline=None)
@given(n_in=st.integers(1, 30), n_out=st.integers(1, 20), density=st.floats(0.0, 0.5),
       seed=st.integers(0, 1000))
def test_sparse_products_equal_the_dense_product(n_in, n_out, density, seed):
    rng = np.random.default_rng(seed)
    k = (rng.normal(size=(n_in, n_out)) * (rng.random((n_in, n_out)) < density)).astype(np.float32)
    x = rng.normal(size=(3, n_in)).astype(np.float32)
    for name, (w, prod) in sparse_variants(k).items():
        np.testing.assert_allclose(np.asarray(jax.jit(prod)(x, w)), x @ k, atol=1e-5,
                                   err_msg=name)


def _conv_reference(x, k, padding):
    """A stride-1 NHWC convolution by loops over the kernel, in float64 NumPy."""
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, _, o = k.shape
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = np.zeros((x.shape[0], oh, ow, o))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("bhwc,co->bhwo", xp[:, i:i + oh, j:j + ow], k[i, j])
    return y


@settings(max_examples=5, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), c=st.integers(1, 3), o=st.integers(1, 4),
       pad=st.integers(0, 2), density=st.floats(0.0, 0.6), seed=st.integers(0, 1000))
def test_conv_variants_equal_the_convolution(kh, kw, c, o, pad, density, seed):
    rng = np.random.default_rng(seed)
    k = (rng.normal(size=(kh, kw, c, o)) * (rng.random((kh, kw, c, o)) < density)
         ).astype(np.float32)
    x = rng.normal(size=(2, 6, 7, c)).astype(np.float32)
    padding = ((pad, pad), (pad, 0))
    variants = conv_variants(k, padding)
    assert ("conv_taps" in variants) == (np.count_nonzero(k) > 0)
    for name, (w, prod) in variants.items():
        np.testing.assert_allclose(np.asarray(jax.jit(prod)(x, w)),
                                   _conv_reference(x, k, padding), atol=1e-5, err_msg=name)


@pytest.mark.slow  # ~30 s of CPU, nearly all jax2onnx importing its plugin tree
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    params, masks = _state(seed=2)
    x = np.random.default_rng(2).normal(size=(5, 784)).astype(np.float32)
    gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "o", example_input=x,
                       format="onnx", batch_sizes=(1,), repeats=1)
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["files"]["onnx"]
    sess = ort.InferenceSession(str(tmp_path / "o" / "model.onnx"))
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, _masked_forward(params, masks, x), atol=1e-5)


def test_threshold_is_where_a_product_stays_faster():
    from gpjax.export.artifact import _threshold
    dense = {"1": 10.0, "32": 50.0, "1024": 900.0}
    assert _threshold({"1": 20.0, "32": 40.0, "1024": 300.0}, dense, (1, 32, 1024)) == 32
    assert _threshold({"1": 5.0, "32": 40.0, "1024": 300.0}, dense, (1, 32, 1024)) == 1
    assert _threshold({"1": 5.0, "32": 60.0, "1024": 300.0}, dense, (1, 32, 1024)) == 1024
    assert _threshold({"1": 5.0, "32": 40.0, "1024": 950.0}, dense, (1, 32, 1024)) is None


def test_from_batch_switches_products_inside_one_exported_function():
    from jax import export as jax_export

    from gpjax.export.sparse import CSR_CUSTOM_CALLS, csr_product, csr_weights, from_batch
    rng = np.random.default_rng(3)
    k = (rng.normal(size=(40, 12)) * (rng.random((40, 12)) < 0.2)).astype(np.float32)
    w = {"kernel": k, **csr_weights(k)}
    calls = []

    def product(x, w):
        calls.append(x.shape[0])
        return csr_product(x, w, shape=k.shape)

    fn = from_batch(product, 8)
    (b,) = jax_export.symbolic_shape("b")
    exp = jax_export.export(
        jax.jit(fn), disabled_checks=[jax_export.DisabledSafetyCheck.custom_call(t)
                                      for t in CSR_CUSTOM_CALLS])(
        jax.ShapeDtypeStruct((b, 40), np.float32), jax.tree.map(jnp.asarray, w))
    text = exp.mlir_module()
    assert "stablehlo.case" in text or "stablehlo.if" in text  # the batch-size branch
    call = jax_export.deserialize(exp.serialize()).call
    for n in (1, 7, 8, 50):
        x = rng.normal(size=(n, 40)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(call(x, w)), x @ k, atol=1e-5)
    calls.clear()
    for n in (3, 9):  # a concrete batch size picks one product when traced
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(np.ones((n, 40), np.float32), w)),
                                   np.ones((n, 40), np.float32) @ k, atol=1e-5)
    assert calls == [9]


def test_timings_are_steady_state_calls_interleaved_over_rounds():
    """Each timed call follows an untimed call of the same function (its weights in cache);
    rounds interleave the functions. The fakes are slow unless called right after themselves."""
    import time

    from benchmarks.harness import Timer
    from gpjax.export import artifact

    log = []

    def fn(name, cold_s):
        state = {"warm": False}

        def call():
            log.append(name)
            if not state["warm"]:   # slow unless the previous call was this function's
                time.sleep(cold_s)
            for k in fns:
                fns_state[k]["warm"] = k == name
            return np.zeros(1)
        fns_state[name] = state
        return call

    fns_state: dict = {}
    fns = {"a": fn("a", 0.01), "b": fn("b", 0.01)}
    got = artifact.time_calls(fns, repeats=3)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert all(max(v) < 0.005 for v in got.values()), got      # every timed call was warm
    log.clear()
    harness = Timer(threads=(1,)).group(fns, 2, warmup=1, steady=True)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert all(max(v) < 0.005 for v in harness.values()), harness


def _fake_timer(fast):
    """A stand-in for ``artifact.time_calls``: 1 us where ``fast(name, batch)``, else 5 us
    (each call is run once, to learn its batch size from the output)."""
    def time_calls(fns, repeats):
        return {name: [1e-6 if fast(name, np.asarray(f()).shape[0]) else 5e-6]
                for name, f in fns.items()}
    return time_calls


def _assert_exact(directory, params, masks, x):
    """The loaded artifact equals the masked model at batch 1 and at batch ``len(x)``."""
    from gpjax.export.artifact import load_artifact

    predict = load_artifact(directory)
    for n in (1, len(x)):
        np.testing.assert_allclose(np.asarray(predict(x[:n])),
                                   _masked_forward(params, masks, x[:n]), atol=1e-4)


def test_export_uses_a_sparse_product_from_the_batch_size_it_pays(tmp_path, monkeypatch):
    """With timings where CSR beats dense only from batch 32 on, the artifact computes its
    sparse layers by CSR from 32 on and densely below: outputs equal the masked model's at
    both, and the manifest says so (the custom call included); portable=True avoids it."""
    import gpjax.export.artifact as artifact

    monkeypatch.setattr(artifact, "time_calls", _fake_timer(
        lambda name, b: name == "chosen" or (name == "csr" and b >= 32)))
    params, masks = _state(seed=4)
    x = np.random.default_rng(5).normal(size=(40, 784)).astype(np.float32)
    m = gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "a",
                           example_input=x[:2], batch_sizes=(1, 32), repeats=1,
                           platforms=["cpu"])  # CSR: a CPU product (on a GPU machine too)
    sparse = [r for r in m["layers"] if r["compute"] != "dense"]
    assert sparse and all(r["compute"] == "csr" and r["from_batch"] == 32 for r in sparse)
    assert m["custom_calls"] == ["cpu_csr_sparse_dense_ffi"]
    _assert_exact(tmp_path / "a", params, masks, x)
    p = gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "p",
                           example_input=x[:2], batch_sizes=(1, 32), repeats=1, portable=True,
                           platforms=["cpu"])
    assert p["custom_calls"] == [] and all(r["compute"] != "csr" for r in p["layers"])


def test_export_switches_the_whole_model_where_layers_alone_mislead(tmp_path, monkeypatch):
    """Layers timed alone say CSR pays at every size, the whole artifact only from batch 32:
    the export keeps the dense model below 32 ("switched"), and it is still exact."""
    import gpjax.export.artifact as artifact

    monkeypatch.setattr(artifact, "time_calls", _fake_timer(
        lambda name, b: (name in ("csr", "switched") or (name == "chosen" and b >= 32)
                         or (name == "dense" and b < 32))))
    params, masks = _state(seed=6)
    x = np.random.default_rng(7).normal(size=(40, 784)).astype(np.float32)
    m = gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "a",
                           example_input=x[:2], batch_sizes=(1, 32), repeats=1,
                           platforms=["cpu"])
    assert m["timings_us"]["chosen"] == "switched"
    sparse = [r for r in m["layers"] if r["compute"] != "dense"]
    assert sparse and all(r["from_batch"] == 32 for r in sparse)
    _assert_exact(tmp_path / "a", params, masks, x)


def test_export_times_each_layers_alternative_in_the_whole_artifact(tmp_path, monkeypatch):
    """Layers timed alone never favour a sparse product, the whole artifact with each layer on
    its alternative (the variant fastest at the largest batch, from that batch on) is faster:
    the export keeps that whole ("alternative"), records it per layer, and is still exact."""
    import gpjax.export.artifact as artifact

    monkeypatch.setattr(artifact, "time_calls", _fake_timer(
        lambda name, b: name == "alternative"))
    params, masks = _state(seed=8)
    x = np.random.default_rng(9).normal(size=(40, 784)).astype(np.float32)
    m = gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "a",
                           example_input=x[:2], batch_sizes=(1, 32), repeats=1)
    assert m["timings_us"]["chosen"] == "alternative" and m["timings_us"]["never_slower"]
    sparse = [r for r in m["layers"] if r["compute"] != "dense"]
    assert sparse and all(r["from_batch"] == 32 for r in sparse)
    _assert_exact(tmp_path / "a", params, masks, x)


def _lenet5_export(tmp_path, seed, n, recoverable, batch_sizes):
    """A pruned LeNet-5 (80%) exported to ``tmp_path / "a"``: ``(manifest, model, params,
    masks, x [n, 28, 28, 1])``."""
    from gpjax.models import LeNet5

    model = LeNet5()
    x = np.random.default_rng(seed).normal(size=(n, 28, 28, 1)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.key(seed), x[:1])["params"]
    params, masks = gpjax.prune(params, gpjax.init_masks(params), percentile=80.0,
                                recoverable=recoverable, input_fed=LeNet5.input_kernels)
    m = gpjax.export_model(model, params, masks, tmp_path / "a", example_input=x[:2],
                           batch_sizes=batch_sizes, repeats=1)
    return m, model, params, masks, x


def _assert_equals_the_flax_model(directory, model, params, masks, x):
    """The artifact equals the Flax model on the masked weights at batch 1 and ``len(x)``."""
    from gpjax.export.artifact import load_artifact

    predict = load_artifact(directory)
    want = np.asarray(jax.jit(model.apply)({"params": gpjax.apply_masks(params, masks)}, x))
    for n in (1, len(x)):
        np.testing.assert_allclose(np.asarray(predict(x[:n])), want[:n], atol=1e-4)


def test_export_chooses_each_convolution_by_measurement(tmp_path, monkeypatch):
    """LeNet-5 with timings where XLA's own convolution beats the row-GEMM product only from
    batch 32 on: the conv layers switch at 32 inside the one artifact, which equals the masked
    model (the Flax model on the masked weights) at batch 1 and 40."""
    import gpjax.export.artifact as artifact

    monkeypatch.setattr(artifact, "time_calls", _fake_timer(
        lambda name, b: name == "chosen" or (name == "conv_xla" and b >= 32)))
    m, *state = _lenet5_export(tmp_path, 3, 40, recoverable=False, batch_sizes=(1, 32))
    convs = [r for r in m["layers"] if r["kind"] == "conv"]
    assert len(convs) == 2 and all(r["compute"] == "conv_xla" and r["from_batch"] == 32
                                   for r in convs)
    _assert_equals_the_flax_model(tmp_path / "a", *state)


def test_export_can_compute_a_sparse_convolution_from_its_taps(tmp_path, monkeypatch):
    """LeNet-5 with timings where the taps product is the fastest at every batch size: conv1
    (under ``MAX_TAP_TERMS`` nonzeros) runs from its taps alone, stores only their values and
    counts ``nnz * positions`` MACs; conv2 (over it) keeps its kernel; the artifact equals the
    masked model."""
    import gpjax.export.artifact as artifact
    from gpjax.export.sparse import MAX_TAP_TERMS

    monkeypatch.setattr(artifact, "time_calls", _fake_timer(
        lambda name, b: name in ("chosen", "conv_taps")))
    m, *state = _lenet5_export(tmp_path, 4, 9, recoverable=True, batch_sizes=(1, 4))
    conv1, conv2 = (r for r in m["layers"] if r["kind"] == "conv")
    assert conv1["nonzero"] <= MAX_TAP_TERMS < conv2["nonzero"]
    assert conv1["compute"] == "conv_taps" and conv2["compute"] == "dense"
    assert conv1["macs"] == conv1["nonzero"] * 28 * 28
    shapes = [a.shape for a in np.load(tmp_path / "a" / "weights.npz").values()]
    assert (5, 5, 1, 6) not in shapes and (conv1["nonzero"],) in shapes
    _assert_equals_the_flax_model(tmp_path / "a", *state)


def _no_timing(fns, repeats):
    raise AssertionError("an export for several platforms must not time anything")


def test_cpu_cuda_artifact_exported_on_cpu_loads_and_equals_the_model(tmp_path, monkeypatch):
    """``platforms=("cpu", "cuda")`` on a CPU machine: one multi-platform artifact, chosen by
    the documented rule without timing (every layer compact dense), recorded in the manifest;
    its load.py runs it on CPU in a fresh process equal to the masked model."""
    import gpjax.export.artifact as artifact

    monkeypatch.setattr(artifact, "time_calls", _no_timing)
    params, masks = _state(seed=10)
    x = np.random.default_rng(11).normal(size=(20, 784)).astype(np.float32)
    ref = _masked_forward(params, masks, x)
    m = gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "a",
                           example_input=x[:2], test_data=(x, np.argmax(ref, -1)),
                           platforms=("cpu", "cuda"), batch_sizes=(1, 32), repeats=1)
    assert m["platforms"] == ["cpu", "cuda"] and m["custom_calls"] == []
    assert m["timings_us"]["rule"] == artifact.UNTIMED_RULE
    assert m["timings_us"]["measured_on"] is None and m["timings_us"]["chosen"] == "dense"
    assert all(r["compute"] == "dense" for r in m["layers"])
    assert m["accuracy"]["artifact"] == 1.0 and m["output"]["shape"] == [None, 10]
    run, errors = _load_with_jax_alone(tmp_path / "a", x, ref, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert max(errors) <= 1e-5


@pytest.mark.skipif(any(d.platform != "cpu" for d in jax.devices()), reason="needs no GPU here")
def test_artifact_for_an_absent_platform_is_written_but_not_run(tmp_path, monkeypatch):
    """``platforms=("cuda",)`` where there is no GPU: written by the rule, lowered for cuda
    alone, its accuracy at export unknown (None) while the original's is recorded."""
    import gpjax.export.artifact as artifact

    monkeypatch.setattr(artifact, "time_calls", _no_timing)
    params, masks = _state(seed=12)
    x = np.random.default_rng(13).normal(size=(8, 784)).astype(np.float32)
    y = np.argmax(_masked_forward(params, masks, x), -1)
    m = gpjax.export_model(LeNet300(hidden=(32, 16)), params, masks, tmp_path / "a",
                           example_input=x[:2], test_data=(x, y), platforms=["cuda"])
    assert m["platforms"] == ["cuda"] and m["accuracy"]["artifact"] is None
    assert m["accuracy"]["original"] == 1.0
    with pytest.raises(RuntimeError, match="cuda"):  # no cuda device to run it on
        artifact.load_artifact(tmp_path / "a")(x)


def test_only_products_a_platform_has_are_offered():
    """CSR (jaxlib's CPU custom call) is offered for a CPU artifact alone; the gather forms
    for every platform, and they lower for cuda without any custom call."""
    from jax import export as jax_export

    k = (np.random.default_rng(14).normal(size=(12, 5)) * (np.arange(5) % 2)).astype(np.float32)
    assert set(sparse_variants(k, platforms=("cpu",))) == {"ell", "segment_sum", "csr"}
    assert set(sparse_variants(k, platforms=("cpu", "cuda"))) == {"ell", "segment_sum"}
    assert set(sparse_variants(k, platforms=("cpu",), portable=True)) == {"ell", "segment_sum"}
    for name, (w, prod) in sparse_variants(k, platforms=("cuda",)).items():
        exp = jax_export.export(jax.jit(prod), platforms=["cpu", "cuda"])(
            jax.ShapeDtypeStruct((3, 12), np.float32), w)
        assert "custom_call" not in exp.mlir_module(), name


@pytest.mark.parametrize("bad", ["cpu,gpu", "CUDA", ","])
def test_unknown_platform_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys,
                                                                            bad):
    from gpjax import cli

    out = tmp_path / "a"
    assert cli.main(["export", str(tmp_path / "no-such-run"), "--out", str(out),
                     "--platforms", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "--platforms" in err and "Fix:" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown platform"):
        gpjax.export_model(LeNet300(hidden=(32, 16)), *_state(), out,
                           example_input=np.zeros((1, 784), np.float32), platforms=bad.split(","))
    assert not any(tmp_path.iterdir())
