"""Smoke test of benchmarks/: the PyTorch reference computes what gpjax computes (loss,
dL/d(W*M), SGD/Adam steps, prune and grow masks), and the benchmark's code paths run end to
end (quick mode, tiny shapes). No timing is asserted."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

import gpjax  # noqa: E402
from benchmarks import bench_core  # noqa: E402
from benchmarks import torch_reference as tr  # noqa: E402


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
                           "--out", str(tmp_path)])
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
