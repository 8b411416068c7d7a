"""The ``inference`` section of :mod:`benchmarks.bench_core` (issue 12): compact models.

For LeNet-300-100 and LeNet-5, each with a recoverable and a non-recoverable mask at the README
demo's sizes, times inference at several batch sizes, round-robin in one group per batch, each
timed call after an untimed one of the same variant (steady state: its weights in cache, as a
deployed model called repeatedly):

* ``masked_dense``: the Flax model on the masked weights, as trained (original widths);
* ``compact_dense``: :func:`gpjax.compact` (dead units removed, unconnected inputs dropped);
* ``sparse``: the compact model with every dense layer as a CSR product over its nonzeros
  (:func:`gpjax.export.sparse.csr_product`, jaxlib's CPU CSR kernel; convolutions stay dense);
* ``artifact``: the :func:`gpjax.export_model` directory, loaded with ``jax.export``;
* ``torch_dense``: PyTorch eager, dense masked weights (original widths);
* ``torch_csr``: PyTorch eager, ``torch.sparse_csr`` weights for the dense layers.

Per variant: p50 / p95 latency, throughput, MACs per example, weight bytes, achieved GFLOP/s
(2 x MACs x batch / p50) and weight bytes streamed per second; plus the storage of each model
four ways (:func:`gpjax.export.storage_report`).

How the masks are made (no training, so that the benchmark is self-contained): weights drawn
``N(0, 1/fan_in)`` times a log-normal scale per input row and per output column (sigma 1:
trained networks have strong and weak units, which magnitude pruning then removes whole), the
first layer's rows of LeNet-300-100 also scaled down with the pixel's distance from the image
centre (MNIST's border pixels carry nothing); then one global magnitude prune
(:func:`gpjax.prune`, ``scope="global"``) to the target count, recoverable (every neuron keeps
an input and an output) or not. Biases ``N(0, 0.1)``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gpjax
from benchmarks.harness import Timer, med, pct
from gpjax.compact import apply_compact, layer_macs
from gpjax.export import load_artifact, storage_report
from gpjax.export.sparse import csr_product, csr_weights
from gpjax.models import LeNet5, LeNet300

SHAPES = {
    "lenet300": {"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)},
    "lenet5": {"conv1": (5, 5, 1, 6), "conv2": (5, 5, 6, 16), "fc1": (400, 120),
               "fc2": (120, 84), "fc3": (84, 10)},
}
VARIANTS = ("masked_dense", "compact_dense", "sparse", "artifact", "torch_dense", "torch_csr")


@dataclass
class InferenceConfig:
    """Sizes of the inference section."""

    batch_sizes: tuple[int, ...] = (1, 32, 1024)
    repeats: int = 50
    export_repeats: int = 15
    targets: tuple[tuple[str, int], ...] = (("lenet300", 10_000), ("lenet5", 7_000))
    hidden: tuple[int, ...] = (300, 100)
    recoverable: tuple[bool, ...] = (True, False)
    seed: int = 0

    @classmethod
    def tiny(cls) -> InferenceConfig:
        """For the smoke test: a small non-recoverable LeNet-300 only, two batch sizes."""
        return cls(batch_sizes=(1, 4), repeats=2, export_repeats=1,
                   targets=(("lenet300", 400),), hidden=(32, 16), recoverable=(False,))


def make_state(name: str, target: int, recoverable: bool, seed: int,
               hidden: tuple[int, ...] = (300, 100)) -> tuple[Any, dict, Any]:
    """``(model, params, masks)`` with about ``target`` active connections (see module doc)."""
    rng = np.random.default_rng(seed)
    shapes = dict(SHAPES[name])
    if name == "lenet300":
        widths = (784, *hidden, 10)
        shapes = {f"fc{i + 1}": (a, b) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}
        model = LeNet300(hidden=hidden)
    else:
        model = LeNet5()
    params = {}
    for n, s in shapes.items():
        fan_in = int(np.prod(s[:-1]))
        w = rng.normal(0, 1 / np.sqrt(fan_in), s)
        w *= rng.lognormal(0, 1, s[-2])[:, None] * rng.lognormal(0, 1, s[-1])
        if name == "lenet300" and n == "fc1":
            yy, xx = np.divmod(np.arange(784), 28)
            r = np.hypot(yy - 13.5, xx - 13.5) / 13.5
            w *= np.exp(-2 * r**2)[:, None]
        params[n] = {"kernel": jnp.asarray(w, jnp.float32),
                     "bias": jnp.asarray(rng.normal(0, 0.1, s[-1]), jnp.float32)}
    masks = gpjax.init_masks(params)
    dense = gpjax.count_params(masks).dense
    params, masks = gpjax.prune(params, masks, percentile=100 * (1 - target / dense),
                                recoverable=recoverable, scope="global",
                                input_fed=type(model).input_kernels)
    return model, params, masks


# ----------------------------------------------------------------------------- torch

def _torch_weights(name: str, params: dict, csr: bool) -> list:
    import torch

    out = []
    for n, p in params.items():
        k = np.array(p["kernel"], np.float32)
        b = torch.from_numpy(np.array(p["bias"], np.float32))
        if k.ndim == 4:
            out.append(("conv", torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))),
                        b, 2 if n == "conv1" else 0))
            continue
        if name == "lenet5" and n == "fc1":  # rows (h, w, c) -> (c, h, w): torch flattens NCHW
            k = k.reshape(5, 5, 16, -1).transpose(2, 0, 1, 3).reshape(400, -1)
        wt = torch.from_numpy(np.ascontiguousarray(k.T))        # [out, in]
        out.append(("csr" if csr else "dense", wt.to_sparse_csr() if csr else wt, b, 0))
    return out


def torch_forward(name: str, weights: list, x: Any) -> Any:
    """Eager PyTorch inference of LeNet-300-100 / LeNet-5 on ``_torch_weights``."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        if name == "lenet5":
            x = x.reshape(x.shape[0], 1, 28, 28)
        for i, (kind, w, b, pad) in enumerate(weights):
            last = i == len(weights) - 1
            if kind == "conv":
                x = F.max_pool2d(F.leaky_relu(F.conv2d(x, w, b, padding=pad), 0.01), 2)
                continue
            x = x.flatten(1)
            x = (F.linear(x, w, b) if kind == "dense"
                 else torch.sparse.mm(w, x.t()).t() + b)
            if not last:
                x = F.leaky_relu(x, 0.01)
        return x


# ----------------------------------------------------------------------------- one case

def _bytes_of(tree: Any) -> int:
    return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)))


def _case(name: str, recoverable: bool, target: int, cfg: InferenceConfig,
          timer: Timer, workdir: Path) -> dict:
    import torch

    model, params, masks = make_state(name, target, recoverable, cfg.seed, cfg.hidden)
    count = gpjax.count_params(masks)
    masked = gpjax.apply_masks(params, masks)
    cm = gpjax.compact(params, masks, model)
    full = gpjax.compact(params, masks, model, shrink=False)
    tag = f"{name}_{'rec' if recoverable else 'nonrec'}"
    storage = storage_report(params, masks, cm, workdir / f"{tag}_storage")
    x_shape = (784,) if name == "lenet300" else (28, 28, 1)
    rng = np.random.default_rng(cfg.seed + 1)
    manifest = gpjax.export_model(
        model, params, masks, workdir / f"{tag}_artifact",
        example_input=np.zeros((2, *x_shape), np.float32), batch_sizes=cfg.batch_sizes,
        repeats=cfg.export_repeats, source=f"benchmarks.bench_inference {tag}")
    artifact = load_artifact(workdir / f"{tag}_artifact")
    art_dir = workdir / f"{tag}_artifact"
    art_bytes = (art_dir / "weights.npz").stat().st_size + (art_dir / "model.jax").stat().st_size

    dense_fwd = jax.jit(lambda v, x: model.apply(v, x))
    comp = jax.jit(apply_compact, static_argnums=0)
    seg_w, prods = [], []
    for layer, w in zip(cm.layers, cm.weights):
        if layer.kind == "dense":
            seg_w.append({**{k: v for k, v in w.items() if k != "kernel"},
                          **csr_weights(np.asarray(w["kernel"]))})
            prods.append(partial(csr_product, shape=tuple(w["kernel"].shape)))
        else:
            seg_w.append(w)
            prods.append(None)
    sparse_fwd = jax.jit(lambda w, x: apply_compact(cm.layers, w, x, prods))
    tw_dense, tw_csr = (_torch_weights(name, masked, c) for c in (False, True))
    dead = {k: v._asdict() for k, v in gpjax.dead_units(
        masks, input_fed=type(model).input_kernels).items()}

    nnz_dense_layers = sum(int(np.count_nonzero(w["kernel"]))
                           for layer, w in zip(cm.layers, cm.weights) if layer.kind == "dense")
    conv_compact = sum(layer_macs(la, w["kernel"].shape)[0]
                       for la, w in zip(cm.layers, cm.weights) if la.kind == "conv")
    conv_full = sum(layer_macs(la, w["kernel"].shape)[0]
                    for la, w in zip(full.layers, full.weights) if la.kind == "conv")
    nnz_full_dense = sum(int(np.count_nonzero(w["kernel"]))
                         for la, w in zip(full.layers, full.weights) if la.kind == "dense")
    macs = {"masked_dense": full.macs(), "compact_dense": cm.macs(),
            "sparse": conv_compact + nnz_dense_layers,
            "artifact": manifest["macs_per_example"]["artifact"],
            "torch_dense": full.macs(), "torch_csr": conv_full + nnz_full_dense}
    csr_bytes = sum(w.values().numel() * 4 + w.col_indices().numel() * 8
                    + w.crow_indices().numel() * 8 if kind == "csr" else w.numel() * 4
                    for kind, w, _, _ in tw_csr) + sum(b.numel() * 4 for _, _, b, _ in tw_csr)
    nbytes = {"masked_dense": _bytes_of(masked), "compact_dense": _bytes_of(cm.weights),
              "sparse": _bytes_of(seg_w), "artifact": art_bytes,
              "torch_dense": _bytes_of(masked), "torch_csr": int(csr_bytes)}
    rows = []
    for b in cfg.batch_sizes:
        x = rng.standard_normal((b, *x_shape)).astype(np.float32)
        xj, xt = jnp.asarray(x), torch.from_numpy(x.reshape(b, -1))
        v = {"params": masked}
        y_ref = np.asarray(dense_fwd(v, xj))
        scale = max(1.0, float(np.abs(y_ref).max()))
        errs = {}
        for k, got in (("compact_dense", comp(cm.layers, cm.weights, xj)),
                       ("sparse", sparse_fwd(seg_w, xj)), ("artifact", artifact(xj)),
                       ("torch_dense", torch_forward(name, tw_dense, xt)),
                       ("torch_csr", torch_forward(name, tw_csr, xt))):
            errs[k] = float(np.abs(np.asarray(got) - y_ref).max()) / scale
            if errs[k] > 1e-5:  # relative to the largest logit (float32 rounding)
                raise AssertionError(f"{tag} b{b}: {k} differs from the masked model by "
                                     f"{errs[k]:.2e} of the largest logit")
        fns = {
            "masked_dense": lambda v=v, xj=xj: jax.block_until_ready(dense_fwd(v, xj)),
            "compact_dense": lambda xj=xj: jax.block_until_ready(
                comp(cm.layers, cm.weights, xj)),
            "sparse": lambda xj=xj: jax.block_until_ready(sparse_fwd(seg_w, xj)),
            "artifact": lambda xj=xj: jax.block_until_ready(artifact(xj)),
            "torch_dense": lambda xt=xt: torch_forward(name, tw_dense, xt),
            "torch_csr": lambda xt=xt: torch_forward(name, tw_csr, xt),
        }
        s = timer.group(fns, cfg.repeats, warmup=2, steady=True)
        threads = {k: {str(n): 1e3 * t for n, t in d.items()}
                   for k, d in timer.choice.items() if k in ("torch_dense", "torch_csr")}
        row = {"batch": b, "max_rel_err": errs, "threads_ms": threads}
        for k in VARIANTS:
            p50, p95 = med(s[k]), pct(s[k], 95)
            row[k] = {"p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95, "per_s": b / p50,
                      "gflops": 2 * macs[k] * b / p50 / 1e9,
                      "weight_gbs": nbytes[k] / p50 / 1e9}
        rows.append(row)
        print(f"  inference {tag} b{b}: " + "  ".join(
            f"{k} {row[k]['p50_ms']:.3f}ms" for k in VARIANTS), flush=True)
    return {"case": tag, "model": name, "recoverable": recoverable, "target": target,
            "active": count.active, "dense": count.dense, "dead_units": dead,
            "compact_widths": [list(w["kernel"].shape) for w in cm.weights],
            "macs": macs, "bytes": nbytes, "storage": storage, "rows": rows,
            "export_choice": {"layers": [lr["compute"] for lr in manifest["layers"]],
                              "timings_us": manifest["timings_us"]}}


def bench_inference(cfg: InferenceConfig, timer: Timer) -> dict:
    """Every (model, recoverable / non-recoverable) case; returns the section's results."""
    cases = []
    with tempfile.TemporaryDirectory() as d:
        for name, target in cfg.targets:
            for recoverable in cfg.recoverable:
                cases.append(_case(name, recoverable, target, cfg, timer, Path(d)))
    return {"cases": cases, "batch_sizes": list(cfg.batch_sizes), "repeats": cfg.repeats}


# ----------------------------------------------------------------------------- report

def _best_torch(row: dict) -> float:
    return min(row["torch_dense"]["p50_ms"], row["torch_csr"]["p50_ms"])


def render(res: dict) -> list[str]:
    """Markdown lines of the inference section."""
    lines = ["## Inference of compact models (issue 12)", "",
             "Variants: `masked_dense` the Flax model on masked weights (as trained), "
             "`compact_dense` gpjax.compact, `sparse` compact with CSR (jaxlib kernel) dense "
             "layers, `artifact` the gpjax.export_model directory via jax.export, `torch_dense` "
             "/ `torch_csr` PyTorch eager with dense / torch.sparse_csr weights (original "
             "widths). Masks: random weights with per-unit log-normal scales, globally "
             "magnitude-pruned (see benchmarks/bench_inference.py). Latencies in ms "
             f"(p50 / p95 of {res['repeats']} round-robin calls, each after an untimed one); "
             "GFLOP/s = 2 x MACs x batch / p50.", ""]
    for c in res["cases"]:
        st = c["storage"]
        lines += [f"### {c['case']}: {c['active']:,} of {c['dense']:,} connections", "",
                  f"Compact kernels: {c['compact_widths']}; export chose "
                  f"{c['export_choice']['layers']}. Dead units (inputs, outputs) per kernel: "
                  + ", ".join(f"{k.split('/')[-2]} {v['inputs']}/{v['outputs']}"
                              for k, v in c["dead_units"].items()) + ".", "",
                  f"Bytes on disk: dense float32 {st['dense_float32']:,}, masked checkpoint "
                  f"{st['masked_checkpoint']:,}, compact dense {st['compact_dense']:,}, compact "
                  f"sparse {st['compact_sparse']:,} "
                  f"({st['dense_float32'] / st['compact_sparse']:.1f}x smaller than dense).", "",
                  "| batch | variant | p50 ms | p95 ms | examples/s | MACs/example | weight bytes "
                  "| GFLOP/s | weight GB/s | vs masked_dense |", "|---|---|---|---|---|---|---|---|"
                  "---|---|"]
        for r in c["rows"]:
            base = r["masked_dense"]["p50_ms"]
            for k in VARIANTS:
                v = r[k]
                lines.append(f"| {r['batch']} | {k} | {v['p50_ms']:.3f} | {v['p95_ms']:.3f} | "
                             f"{v['per_s']:,.0f} | {c['macs'][k]:,} | {c['bytes'][k]:,} | "
                             f"{v['gflops']:.2f} | {v['weight_gbs']:.2f} | "
                             f"{base / v['p50_ms']:.2f}x |")
        lines.append("")
    return lines


def targets(res: dict) -> list[dict]:
    """The issue's targets: artifact >= 1.0x masked dense JAX everywhere, >= 2x at the largest
    batch for non-recoverable LeNet-300-100, >= 1.0x PyTorch's best."""
    out = []
    for c in res["cases"]:
        for r in c["rows"]:
            a = r["artifact"]["p50_ms"]
            sp = r["masked_dense"]["p50_ms"] / a
            out.append({"target": f"{c['case']} b{r['batch']}: artifact >= 1.0x dense JAX",
                        "measured": f"{sp:.2f}x", "met": sp >= 1.0})
            tp = _best_torch(r) / a
            out.append({"target": f"{c['case']} b{r['batch']}: artifact >= 1.0x best PyTorch",
                        "measured": f"{tp:.2f}x", "met": tp >= 1.0})
        if c["model"] == "lenet300" and not c["recoverable"]:
            r = c["rows"][-1]
            sp = r["masked_dense"]["p50_ms"] / r["artifact"]["p50_ms"]
            out.append({"target": f"{c['case']} b{r['batch']}: artifact >= 2x dense JAX",
                        "measured": f"{sp:.2f}x", "met": sp >= 2.0})
    return out
