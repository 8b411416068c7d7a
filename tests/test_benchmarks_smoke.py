"""Smoke test of benchmarks/: the PyTorch reference computes what gpjax computes (loss,
dL/d(W*M), SGD/Adam steps, prune and grow masks), the PyTorch model references
(benchmarks/torch_models.py) compute what the gpjax models compute, and the benchmark's code
paths run end to end (quick mode, tiny shapes). No timing is asserted."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

import gpjax  # noqa: E402
from benchmarks import bench_core, bench_models  # noqa: E402
from benchmarks import torch_reference as tr  # noqa: E402
from benchmarks.torch_models import flatten_jax  # noqa: E402


def _tiny_problem(seed=0, batch=32):
    cfg = bench_core.Config(hidden=(24, 12))
    _, params, masks, loss_fn = bench_core.make_lenet(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    # Non-zero biases: a unit whose inputs are all dormant then has a non-zero pre-activation
    # (at exactly 0, jnp.where(x >= 0, ...) and torch's leaky_relu differ in derivative).
    params = jax.tree.map(lambda p: p if p.ndim > 1 else
                          jnp.asarray(rng.normal(0, 0.1, p.shape), p.dtype), params)
    x = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    kernels, biases, layers = bench_core.lenet_kernels(params)
    kmasks = [masks["params"][k]["kernel"] for k in layers]
    return params, masks, loss_fn, (x, y), kernels, biases, kmasks, layers


def test_torch_reference_loss_and_effective_gradient_match_jax():
    params, masks, loss_fn, (x, y), kernels, biases, kmasks, layers = _tiny_problem()
    ref = tr.MaskedMLP(kernels, biases, kmasks)
    loss_t, gw_t, gb_t = ref.loss_and_effective_grads(torch.from_numpy(x),
                                                      torch.from_numpy(y.astype(np.int64)))
    loss_j = loss_fn(gpjax.apply_masks(params, masks), (x, y))
    np.testing.assert_allclose(float(loss_t), float(loss_j), rtol=1e-5)
    # accumulate_gradients over one batch == dL/d(W*M), dormant entries included.
    g = gpjax.accumulate_gradients(loss_fn, params, masks, (x[None], y[None]))
    for k, gt, gbt in zip(layers, gw_t, gb_t):
        gj = np.asarray(g["params"][k]["kernel"])
        np.testing.assert_allclose(gt.numpy(), gj, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gbt.numpy(), np.asarray(g["params"][k]["bias"]),
                                   rtol=1e-4, atol=1e-6)
        assert np.abs(gj[~np.asarray(masks["params"][k]["kernel"])]).max() > 0  # dormant: real


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_torch_train_steps_match_the_jax_masked_step(opt):
    params, masks, loss_fn, (x, y), kernels, biases, kmasks, layers = _tiny_problem(seed=1)
    lr = 0.1 if opt == "sgd" else 1e-2
    inner = optax.sgd(lr) if opt == "sgd" else optax.adam(lr)
    tx = gpjax.masked(inner)
    step, _ = bench_core.make_jax_steps(loss_fn, tx, masked=True)
    p, s = bench_core.fresh_copy(params), tx.init(params)
    ref = tr.MaskedMLP(kernels, biases, kmasks, optimizer=opt, lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for _ in range(3):
        p, s, loss_j = step(p, s, masks, (x, y))
        loss_t = ref.train_step(xt, yt)
        np.testing.assert_allclose(float(loss_t), float(loss_j), rtol=1e-4)
    assert gpjax.dormant_is_zero(p, masks)
    for k, wt, bt in zip(layers, ref.w, ref.b):
        np.testing.assert_allclose(wt.detach().numpy(), np.asarray(p["params"][k]["kernel"]),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bt.detach().numpy(), np.asarray(p["params"][k]["bias"]),
                                   rtol=1e-4, atol=1e-5)


def test_bench_core_quick_tiny_writes_the_table(tmp_path):
    res = bench_core.main(["--quick", "--tiny", "--repeats", "1", "--torch-threads", "1",
                           "--only", "train", "growth", "mask", "--out", str(tmp_path)])
    md = list(tmp_path.glob("bench_core_*_tiny_quick.md"))
    js = list(tmp_path.glob("bench_core_*_tiny_quick.json"))
    assert len(md) == 1 and len(js) == 1
    text = md[0].read_text()
    for heading in ("train step", "Growth gradient accumulation", "Mask update", "Targets",
                    "| sgd | 16 |", "Command: `python -m benchmarks.bench_core"):
        assert heading in text
    data = json.loads(js[0].read_text())
    assert all(data["dormant_is_zero"].values())
    # prune (plain, recoverable) and grow, per layer and global: same masks and weights.
    agree = data["mask_update"]["same_masks_as_torch"]
    assert len(agree) == 6 and all(agree.values()), agree
    assert data["meta"]["versions"]["torch"] == torch.__version__
    for row in res["train_step"]:
        assert all(v > 0 for v in row["ms_per_step"].values())


# ----------------------------------------------------------------------------- issue 3: models

_TINY = bench_models.ModelsConfig.tiny()
_CASES = {
    "lenet5": lambda: bench_models.lenet5_case(8, 1, density=0.5),
    "lenet300": lambda: bench_models.lenet300_case(8, 1, density=0.5),
    "resnet18": lambda: bench_models.resnet18_case(_TINY),
    "ds2": lambda: bench_models.ds2_case(_TINY),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_torch_model_with_jax_parameters_gives_the_jax_loss_and_gradients(name):
    """The PyTorch reference, loaded with the JAX parameters and masks, computes the same loss
    and the same masked gradients (every leaf) as the gpjax model on a tiny batch."""
    case = _CASES[name]()
    rng = np.random.default_rng(0)
    # Non-zero biases: no pre-activation exactly 0, where the leaky-ReLU derivatives differ.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p + rng.normal(0, 0.1, p.shape).astype(np.float32)
        if path[-1].key == "bias" else p, case.params)
    (loss_j, _), g_j = jax.jit(jax.value_and_grad(case.loss_fn, has_aux=True))(
        params, case.aux, jax.tree.map(jnp.asarray, case.batches[0]))
    ref = case.make_torch(params, case.masks, case.aux)
    loss_t, g_t = ref.loss_and_grads(case.torch_batches[0])
    np.testing.assert_allclose(loss_t, float(loss_j), rtol=1e-5)
    g_j, masks = flatten_jax(g_j), flatten_jax(case.masks)
    assert set(g_t) == set(g_j)
    for k, gj in g_j.items():
        want = gj * masks[k] if k in masks else gj
        # float32 rounding differs (batch-norm statistics over tiny batches above all): a
        # tolerance relative to each leaf's scale; a wrong layout or equation is off by O(1).
        np.testing.assert_allclose(g_t[k], want, rtol=2e-3, atol=1e-4 * np.abs(want).max(),
                                   err_msg=k)
    assert any(np.abs(v).max() > 0 for v in g_t.values())


def test_torch_model_steps_keep_dormant_weights_zero():
    case = bench_models.lenet5_case(8, 2, density=0.3)
    ref = case.make_torch(case.params, case.masks, case.aux)
    loss = ref.train_steps(case.torch_batches)
    assert np.isfinite(float(loss))
    for k, m in ref.m.items():
        assert float((ref.p[k].detach() * (1 - m)).abs().max()) == 0.0


def test_bench_models_quick_tiny_writes_the_table(tmp_path):
    res = bench_core.main(["--only", "models", "--models", "lenet5", "resnet18", "--quick",
                           "--tiny", "--repeats", "1", "--torch-threads", "1",
                           "--out", str(tmp_path)])
    md = list(tmp_path.glob("bench_core_*_models_tiny_quick.md"))
    js = list(tmp_path.glob("bench_core_*_models_tiny_quick.json"))
    assert len(md) == 1 and len(js) == 1
    text = md[0].read_text()
    for heading in ("Model train steps", "| LeNet-5 | 28x28x1, batch 8 |",
                    "| ResNet-18 (small stem) |", "LeNet-5 masked step", "Targets",
                    "Command: `python -m benchmarks.bench_core --only models"):
        assert heading in text, heading
    rows = json.loads(js[0].read_text())["models"]["rows"]
    assert [r["model"] for r in rows] == ["LeNet-5", "ResNet-18 (small stem)"]
    assert all(all(r["dormant_is_zero"].values()) for r in rows)
    assert all(v > 0 for r in res["models"]["rows"] for v in r["ms_per_step"].values())


def test_bench_inference_tiny_variants_agree_and_table_is_written(tmp_path):
    # bench_inference checks every variant against the masked model (max abs diff <= 1e-5 of
    # the largest logit) before timing it, so this run fails if any computes something else.
    res = bench_core.main(["--only", "inference", "--quick", "--tiny", "--repeats", "1",
                           "--torch-threads", "1", "--out", str(tmp_path)])
    (case,) = res["inference"]["cases"]
    assert case["case"] == "lenet300_nonrec" and case["active"] <= 450
    assert case["macs"]["compact_dense"] < case["macs"]["masked_dense"]
    assert case["storage"]["compact_sparse"] < case["storage"]["dense_float32"]
    assert [r["batch"] for r in case["rows"]] == [1, 4]
    md = (tmp_path / next(p.name for p in tmp_path.glob("bench_core_*_inference_tiny_quick.md"))
          ).read_text()
    for needle in ("## Inference of compact models", "| 4 | artifact |", "| 1 | torch_csr |",
                   "artifact >= 1.0x dense JAX"):
        assert needle in md
