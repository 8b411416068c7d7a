"""gpjax vs a plain PyTorch eager reference, side by side in one run (issue 2, section 6).

Times, on the same shapes and the same data:

1. the masked LeNet-300-100 train step (batch 128 and 1024; SGD and Adam): gpjax's jitted step
   (``gpjax.masked(optax.sgd/adam)``, forward on ``W`` directly because dormant weights are
   exactly 0; the invariant is checked with ``gpjax.dormant_is_zero`` after the timed steps)
   called once per step, and the same step scanned over a whole epoch in one jit call; versus
   PyTorch eager (forward with ``W * M``, optimiser step, re-mask);
2. the dense JAX step (no masks, plain optax) in both forms: the mask overhead;
3. one growth gradient-accumulation epoch over the 55k training images
   (``gpjax.accumulate_gradients`` on stacked batches, several batch sizes) versus a training
   epoch at batch 128, and PyTorch's equivalents;
4. a prune and a grow mask update on an 11.7M-parameter pytree (the 21 ResNet-18 kernels) per
   layer and global, versus the PyTorch reference built on ``torch.kthvalue``
   (:mod:`benchmarks.bench_masks`);
5. (``models``, issue 3) masked SGD-momentum train steps of LeNet-5, ResNet-18 (small stem) and
   DeepSpeech2-H-LSTM against the PyTorch eager references of ``torch_models.py``
   (:mod:`benchmarks.bench_models`);
6. (``inference``, issue 12) inference of compact LeNet-300-100 / LeNet-5 models: masked dense,
   ``gpjax.compact``, sparse products, the ``gpjax.export_model`` artifact, PyTorch dense and
   CSR (:mod:`benchmarks.bench_inference`, its own repeats: 50 by default).

Each measurement is the median over ``--repeats`` runs; the JAX and PyTorch cases of a group
are run round-robin so that load changes on a shared machine hit both alike. Results go to
``benchmarks/results/bench_core_<date>.{md,json}`` with the command, machine, versions and load.

Usage::

    python -m benchmarks.bench_core                 # full run (~10 min on 2 cores)
    python -m benchmarks.bench_core --quick         # smoke test: few repeats, short epochs
    python -m benchmarks.bench_core --repeats 9 --out /tmp/bench
    python -m benchmarks.bench_core --only models --repeats 5   # the model train steps only
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gpjax
from benchmarks import bench_inference, bench_masks, bench_models
from benchmarks.harness import (
    RESULTS_DIR,
    Timer,
    best_threads,
    command_line,
    fresh_copy,
    load_average,
    machine,
    med,
    parse_threads,
    versions,
    write_results,
)
from gpjax.models import LeNet300

__all__ = ["RESULTS_DIR", "Config", "fresh_copy", "main", "make_jax_steps", "make_lenet", "med"]

SECTIONS = ("train", "growth", "mask", "models", "inference")

@dataclass
class Config:
    """Sizes of one run (the full run, or tiny shapes for the smoke test)."""

    hidden: tuple[int, ...] = (300, 100)
    batch_sizes: tuple[int, ...] = (128, 1024)
    num_train: int = 55_000
    accumulate_batches: tuple[int, ...] = (1000, 5500, 55_000)
    max_steps: int | None = 100           # cap on steps per timed train-step call
    resnet_width: int = 64
    resnet_classes: int = 1000
    resnet_stages: tuple[int, ...] = (2, 2, 2, 2)
    kernel_shapes: tuple[tuple[int, ...], ...] | None = None  # instead of ResNet-18's
    optimizers: tuple[str, ...] = ("sgd", "adam")
    repeats: int = 7
    warmup: int = 1
    mask_density: float = 0.1             # the train-step masks (grow-and-prune starts at 10%)
    update_density: float = 0.5           # the 11.7M-parameter masks for prune/grow
    prune_percentile: float = 5.0
    grow_percentile: float = 50.0
    tiny: bool = False
    notes: list[str] = field(default_factory=list)
    timer: Timer = field(default_factory=Timer)  # round-robin timing, PyTorch thread choice


# ----------------------------------------------------------------------------- data

def load_data(cfg: Config) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images ``[N, 784]`` float32 and labels int32: MNIST, or random when tiny or
    when MNIST cannot be loaded (timings do not depend on the pixel values)."""
    if not cfg.tiny:
        try:
            from gpjax.data.mnist import load_mnist

            d = load_mnist()
            x = np.asarray(d.train.images, np.float32).reshape(len(d.train), -1)
            y = np.asarray(d.train.labels, np.int32)
            return x[: cfg.num_train], y[: cfg.num_train], f"MNIST train ({d.source})"
        except Exception as e:  # noqa: BLE001 - any failure: fall back, and say so
            cfg.notes.append(f"MNIST not loaded ({type(e).__name__}: {e}); random data used")
    rng = np.random.default_rng(0)
    x = rng.random((cfg.num_train, 784), dtype=np.float32)
    y = rng.integers(0, 10, cfg.num_train).astype(np.int32)
    return x, y, "random"


def lenet_kernels(params) -> tuple[list, list, list[str]]:
    layers = sorted(params["params"], key=lambda s: int(s[2:]))
    return ([params["params"][k]["kernel"] for k in layers],
            [params["params"][k]["bias"] for k in layers], layers)


# ----------------------------------------------------------------------------- 1+2: train step

def make_lenet(cfg: Config, seed: int = 0):
    """(model, params with dormant weights 0, masks, loss_fn(params, (x, y)))."""
    model = LeNet300(hidden=cfg.hidden)

    # Shapes from Flax, values from numpy (LeCun-normal kernels, zero biases, a random mask
    # of the given density, dormant weights 0): no compilation needed to build them.
    shapes = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, 784), jnp.float32))
    rng = np.random.default_rng(seed)

    def make(s):
        if len(s.shape) < 2:
            return np.zeros(s.shape, np.float32), None
        m = rng.random(s.shape) < cfg.mask_density
        w = rng.standard_normal(s.shape).astype(np.float32) / np.sqrt(s.shape[0])
        return w * m, m

    pairs = jax.tree.map(make, shapes)
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    params = jax.tree.map(lambda t: jnp.asarray(t[0]), pairs, is_leaf=is_pair)
    masks = jax.tree.map(lambda t: None if t[1] is None else jnp.asarray(t[1]), pairs,
                         is_leaf=is_pair)

    def loss_fn(p, batch):
        x, y = batch
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return model, params, masks, loss_fn


def make_jax_steps(loss_fn, tx, masked: bool):
    """(one jitted step, one jitted scan over stacked batches); params and state donated.

    The masked step computes the forward pass on ``W`` directly: ``gpjax.masked`` keeps every
    dormant weight exactly 0, so ``W == W * M`` and ``dL/dW == dL/d(W*M)``.
    """

    def one(p, s, m, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        if masked:
            u, s = tx.update(g, s, p, masks=m)
        else:
            u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def many(p, s, m, batches):
        def body(carry, batch):
            p, s, loss = one(*carry, m, batch)
            return (p, s), loss

        (p, s), losses = jax.lax.scan(body, (p, s), batches)
        return p, s, losses

    return (jax.jit(one, donate_argnums=(0, 1)), jax.jit(many, donate_argnums=(0, 1)))


def _run_steps(st: list, step, masks, batch_list) -> None:
    """One jitted call per batch; ``st = [params, opt_state]`` is updated in place."""
    loss = None
    for b in batch_list:
        st[0], st[1], loss = step(st[0], st[1], masks, b)
    loss.block_until_ready()


def _run_scan(st: list, epoch, masks, batches) -> None:
    """All batches in one jitted ``lax.scan``; ``st`` is updated in place."""
    st[0], st[1], losses = epoch(st[0], st[1], masks, batches)
    losses.block_until_ready()


def bench_train(cfg: Config, x: np.ndarray, y: np.ndarray, out: dict) -> None:
    import torch

    from benchmarks.torch_reference import MaskedMLP

    _, params0, masks, loss_fn = make_lenet(cfg)
    kernels, biases, layers = lenet_kernels(params0)
    kmasks = [masks["params"][k]["kernel"] for k in layers]
    rows, invariant = [], {}
    for opt_name in cfg.optimizers:
        lr = 0.1 if opt_name == "sgd" else 1e-3
        inner = optax.sgd(lr) if opt_name == "sgd" else optax.adam(lr)
        m_step, m_epoch = make_jax_steps(loss_fn, gpjax.masked(inner), masked=True)
        d_step, d_epoch = make_jax_steps(loss_fn, inner, masked=False)
        for bs in cfg.batch_sizes:
            steps = len(x) // bs
            if cfg.max_steps:
                steps = min(steps, cfg.max_steps)
            xs_np = x[: steps * bs].reshape(steps, bs, -1)
            ys_np = y[: steps * bs].reshape(steps, bs)
            xs, ys = jnp.asarray(xs_np), jnp.asarray(ys_np)
            batch_list = [(xs[i], ys[i]) for i in range(steps)]
            jax.block_until_ready(batch_list)
            tx_m = gpjax.masked(inner)
            state = {name: [fresh_copy(params0), tx.init(params0)]
                     for name, tx in (("m_step", tx_m), ("m_scan", tx_m), ("d_step", inner),
                                      ("d_scan", inner))}
            model_t = MaskedMLP(kernels, biases, kmasks, optimizer=opt_name, lr=lr)
            xs_t, ys_t = torch.from_numpy(xs_np), torch.from_numpy(ys_np.astype(np.int64))
            fns = {
                "gpjax_step": functools.partial(_run_steps, state["m_step"], m_step, masks,
                                                batch_list),
                "gpjax_scan": functools.partial(_run_scan, state["m_scan"], m_epoch, masks,
                                                (xs, ys)),
                "dense_step": functools.partial(_run_steps, state["d_step"], d_step, None,
                                                batch_list),
                "dense_scan": functools.partial(_run_scan, state["d_scan"], d_epoch, None,
                                                (xs, ys)),
                "torch": functools.partial(model_t.train_epoch, xs_t, ys_t),
            }
            s = cfg.timer.group(fns, cfg.repeats, cfg.warmup)
            per_step = {k: med(v) / steps for k, v in s.items()}
            for name in ("m_step", "m_scan"):
                ok = gpjax.dormant_is_zero(state[name][0], masks)
                invariant[f"{opt_name}/b{bs}/{name}"] = ok
                if not ok:
                    raise AssertionError(f"dormant weights not 0 after {name} ({opt_name}, {bs})")
            rows.append({
                "optimizer": opt_name, "batch": bs, "steps_per_call": steps,
                "ms_per_step": {k: 1e3 * v for k, v in per_step.items()},
                "samples_s": s,
                "torch_ms_per_step_by_threads": {
                    str(n): 1e3 * v / steps for n, v in cfg.timer.choice["torch"].items()},
                "speedup_vs_torch_step": per_step["torch"] / per_step["gpjax_step"],
                "speedup_vs_torch_scan": per_step["torch"] / per_step["gpjax_scan"],
                "mask_overhead_step": per_step["gpjax_step"] / per_step["dense_step"],
                "mask_overhead_scan": per_step["gpjax_scan"] / per_step["dense_scan"],
            })
            print(f"  train {opt_name:4s} b{bs:<5d} " + "  ".join(
                f"{k} {1e3 * v:.3f}ms" for k, v in per_step.items()), flush=True)
    out["train_step"] = rows
    out["dormant_is_zero"] = invariant


# ----------------------------------------------------------------------------- 3: growth

def bench_growth(cfg: Config, x: np.ndarray, y: np.ndarray, out: dict) -> None:
    import torch

    from benchmarks.torch_reference import MaskedMLP

    _, params, masks, loss_fn = make_lenet(cfg)
    kernels, biases, layers = lenet_kernels(params)
    kmasks = [masks["params"][k]["kernel"] for k in layers]
    n = len(x)
    model_t = MaskedMLP(kernels, biases, kmasks, optimizer="sgd", lr=0.1)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    fns = {}
    for bs in cfg.accumulate_batches:
        if n % bs:
            continue
        stacked = (jnp.asarray(x.reshape(n // bs, bs, -1)), jnp.asarray(y.reshape(n // bs, bs)))
        fns[f"gpjax_acc_b{bs}"] = functools.partial(
            lambda st: jax.block_until_ready(
                gpjax.accumulate_gradients(loss_fn, params, masks, st)), stacked)
        fns[f"torch_acc_b{bs}"] = functools.partial(
            lambda b: model_t.accumulate_gradients(zip(x_t.split(b), y_t.split(b))), bs)

    # A training epoch at batch 128 (the whole epoch scanned in one jit call, and one jit call
    # per step), masked SGD, and PyTorch's.
    bs = 128
    steps = n // bs
    xs_np, ys_np = x[: steps * bs].reshape(steps, bs, -1), y[: steps * bs].reshape(steps, bs)
    xs, ys = jnp.asarray(xs_np), jnp.asarray(ys_np)
    batch_list = [(xs[i], ys[i]) for i in range(steps)]
    tx = gpjax.masked(optax.sgd(0.1))
    m_step, m_epoch = make_jax_steps(loss_fn, tx, masked=True)
    st_scan = [fresh_copy(params), tx.init(params)]
    st_step = [fresh_copy(params), tx.init(params)]

    def scan_epoch():
        st_scan[0], st_scan[1], losses = m_epoch(st_scan[0], st_scan[1], masks, (xs, ys))
        losses.block_until_ready()

    def step_epoch():
        loss = None
        for b in batch_list:
            st_step[0], st_step[1], loss = m_step(st_step[0], st_step[1], masks, b)
        loss.block_until_ready()

    train_t = MaskedMLP(kernels, biases, kmasks, optimizer="sgd", lr=0.1)
    xs_t, ys_t = torch.from_numpy(xs_np), torch.from_numpy(ys_np.astype(np.int64))
    fns["gpjax_train_epoch_scan_b128"] = scan_epoch
    fns["gpjax_train_epoch_step_b128"] = step_epoch
    fns["torch_train_epoch_b128"] = lambda: train_t.train_epoch(xs_t, ys_t)
    s = cfg.timer.group(fns, cfg.repeats, cfg.warmup)
    ms = {k: 1e3 * med(v) for k, v in s.items()}
    jax_acc = {k: v for k, v in ms.items() if k.startswith("gpjax_acc")}
    torch_acc = {k: v for k, v in ms.items() if k.startswith("torch_acc")}
    best_jax = min(jax_acc, key=jax_acc.get)
    best_torch = min(torch_acc, key=torch_acc.get)
    train_best = min(ms["gpjax_train_epoch_scan_b128"], ms["gpjax_train_epoch_step_b128"])
    out["growth"] = {
        "samples": n, "train_epoch_samples": steps * bs, "ms": ms, "samples_s": s,
        "best_gpjax_accumulate": best_jax, "best_torch_accumulate": best_torch,
        "gpjax_growth_over_train_epoch": jax_acc[best_jax] / train_best,
        "gpjax_growth_over_train_epoch_step": jax_acc[best_jax] / ms["gpjax_train_epoch_step_b128"],
        "torch_growth_over_train_epoch": torch_acc[best_torch] / ms["torch_train_epoch_b128"],
        "speedup_vs_torch": torch_acc[best_torch] / jax_acc[best_jax],
    }
    for k, v in ms.items():
        print(f"  growth {k:32s} {v:9.1f} ms", flush=True)


# ----------------------------------------------------------------------------- report

def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def render_markdown(res: dict) -> str:
    meta = res["meta"]
    lines = [f"# gpjax vs PyTorch eager: core operations ({meta['date']})", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['machine']}; JAX devices: {meta['jax_devices']}; "
             f"XLA_FLAGS: `{meta['xla_flags'] or ''}`. Each PyTorch case is timed with "
             f"torch.set_num_threads in {meta['torch_threads']} and reported at its fastest "
             "(the JSON has both).",
             "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), "",
             f"Load average (1/5/15 min) at start: {meta['load_start']}, at end: "
             f"{meta['load_end']} (shared machine: other jobs compete for the {meta['cpus']} "
             "cores, so absolute times are noisy; JAX and PyTorch cases of each group ran "
             "round-robin, so the ratios are the robust figures).", "",
             f"Medians of {meta['repeats']} repeats after {meta['warmup']} warm-up; data: "
             f"{meta['data']}.", ""]
    if meta["notes"]:
        lines += ["Notes: " + "; ".join(meta["notes"]), ""]
    if "train_step" in res:
        lines += [
            "## 1-2. Masked LeNet-300-100 train step (ms per step)", "",
            "`gpjax step`: one jitted call per step (params/state donated); `gpjax scan`: "
            f"the timed steps (an epoch, at most {meta['max_steps']}) in one jitted "
            "`lax.scan`, time per step; `dense`: the same "
            "without masks (plain optax). Speedup = PyTorch time / gpjax time; overhead = "
            "masked / dense JAX time.", "",
            "| optimizer | batch | gpjax step | gpjax scan | dense step | dense scan | PyTorch "
            "| speedup (step) | speedup (scan) | overhead (step) | overhead (scan) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["train_step"]:
            m = r["ms_per_step"]
            lines.append(
                f"| {r['optimizer']} | {r['batch']} | {_fmt(m['gpjax_step'])} | "
                f"{_fmt(m['gpjax_scan'])} | {_fmt(m['dense_step'])} | {_fmt(m['dense_scan'])} "
                f"| {_fmt(m['torch'])} ({best_threads(r['torch_ms_per_step_by_threads'])}t) | "
                f"{_fmt(r['speedup_vs_torch_step'], 2)}x | "
                f"{_fmt(r['speedup_vs_torch_scan'], 2)}x | {_fmt(r['mask_overhead_step'], 2)} | "
                f"{_fmt(r['mask_overhead_scan'], 2)} |")
        ok = all(res["dormant_is_zero"].values())
        lines += ["", f"Invariant `W * M == W` (gpjax.dormant_is_zero) after the timed masked "
                      f"steps: {'holds in every case' if ok else 'VIOLATED'}.", ""]
    if "growth" in res:
        g = res["growth"]
        lines += ["## 3. Growth gradient accumulation: one epoch", "",
                  f"Accumulation over {g['samples']} samples; training epoch at batch 128 = "
                  f"{g['train_epoch_samples']} samples (masked SGD).", "",
                  "| case | gpjax (ms) | PyTorch (ms) | speedup |", "|---|---|---|---|"]
        ms = g["ms"]
        for k in ms:
            if k.startswith("gpjax_acc"):
                tk = k.replace("gpjax_", "torch_")
                lines.append(f"| accumulate, batch {k.split('_b')[-1]} | {ms[k]:.1f} | "
                             f"{ms[tk]:.1f} | {ms[tk] / ms[k]:.2f}x |")
        lines.append(f"| train epoch, batch 128 (scan / per-step jit) | "
                     f"{ms['gpjax_train_epoch_scan_b128']:.1f} / "
                     f"{ms['gpjax_train_epoch_step_b128']:.1f} | "
                     f"{ms['torch_train_epoch_b128']:.1f} | "
                     f"{ms['torch_train_epoch_b128'] / ms['gpjax_train_epoch_scan_b128']:.2f}x |")
        lines += ["", "Growth epoch / training epoch: gpjax "
                      f"{g['gpjax_growth_over_train_epoch']:.2f}"
                      f" (best accumulate `{g['best_gpjax_accumulate']}` vs the fastest training "
                      f"epoch; {g['gpjax_growth_over_train_epoch_step']:.2f} vs the per-step-jit "
                      f"epoch), PyTorch {g['torch_growth_over_train_epoch']:.2f}.", ""]
    if "mask_update" in res:
        u = res["mask_update"]
        ms = u["ms"]
        lines += [f"## 4. Mask update on {u['parameters']:,} parameters ({u['tensors']} "
                  f"{'ResNet-18 ' if u['tensors'] == 21 else ''}kernels)", "",
                  f"Masks {u['mask_density']:.0%} dense; prune at the {u['prune_percentile']}th "
                  f"percentile of active |w|, grow at the {u['grow_percentile']}th of |g|. "
                  "PyTorch: `torch.kthvalue` on the selected magnitudes + the same mask "
                  "update (recoverable: the same unit protection). `kthvalue only` is the "
                  "threshold alone, no mask update.", "",
                  "| operation | scope | gpjax (ms) | PyTorch (ms) | speedup | torch.kthvalue "
                  "only (ms) | gpjax / kthvalue only |", "|---|---|---|---|---|---|---|"]
        for scope in ("layer", "global"):
            for op, kth in (("prune_{}_plain", "active"), ("prune_{}_recoverable", "active"),
                            ("grow_{}", "all")):
                k = op.format(scope)
                j, t = ms[f"gpjax_{k}"], ms[f"torch_{k}"]
                kv = ms[f"torch_kthvalue_{kth}_{scope}"]
                name = k.replace(f"_{scope}", "").replace("_", " ")
                lines.append(f"| {name} | {scope} | {j:.1f} | {t:.1f} | {t / j:.2f}x | "
                             f"{kv:.1f} | {j / kv:.2f} |")
        agree = u["same_masks_as_torch"]
        lines += ["", "Same masks and weights as the PyTorch reference: "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in agree.items()), ""]
    if "models" in res:
        lines += bench_models.render_models(res)
    if "inference" in res:
        lines += bench_inference.render(res["inference"])
    if "targets" in res:
        lines += ["## Targets (issue 2, section 6; issue 3)", "", "| target | measured | met |",
                  "|---|---|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def targets(res: dict) -> list[dict]:
    out = []
    if "train_step" in res:
        for r in res["train_step"]:
            best = max(r["speedup_vs_torch_step"], r["speedup_vs_torch_scan"])
            out.append({"target": f"masked step {r['optimizer']} b{r['batch']} >= 1.5x PyTorch",
                        "measured": f"{r['speedup_vs_torch_step']:.2f}x step, "
                                    f"{r['speedup_vs_torch_scan']:.2f}x scan",
                        "met": best >= 1.5})
            out.append({"target": f"masked/dense {r['optimizer']} b{r['batch']} <= 1.10",
                        "measured": f"{r['mask_overhead_step']:.2f} step, "
                                    f"{r['mask_overhead_scan']:.2f} scan",
                        "met": min(r["mask_overhead_step"], r["mask_overhead_scan"]) <= 1.10})
    if "growth" in res:
        g = res["growth"]["gpjax_growth_over_train_epoch"]
        out.append({"target": "growth epoch <= 0.8x training epoch (b128)",
                    "measured": f"{g:.2f}", "met": g <= 0.8})
    if "mask_update" in res:
        ms = res["mask_update"]["ms"]
        for scope in ("layer", "global"):
            for op, kth in (("prune", "active"), ("grow", "all")):
                j = ms[f"gpjax_{op}_{scope}" + ("_recoverable" if op == "prune" else "")]
                kv = ms[f"torch_kthvalue_{kth}_{scope}"]
                out.append({"target": f"{op} ({scope}) <= torch.kthvalue time",
                            "measured": f"{j:.1f} ms vs {kv:.1f} ms", "met": j <= kv})
    if "models" in res:
        out += bench_models.model_targets(res)
    if "inference" in res:
        out += bench_inference.targets(res["inference"])
    return out


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 repeats, at most 20 train steps per timed call")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (7)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes and random data (for the test suite)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS,
                   help="sections to run (default: all)")
    p.add_argument("--models", nargs="+", choices=("lenet5", "resnet18", "ds2"),
                   default=("lenet5", "resnet18", "ds2"),
                   help="models of the 'models' section (default: all)")
    p.add_argument("--ds2-rnn-features", type=int, default=None,
                   help="H-LSTM width of the DeepSpeech2 case (default 128; the model's own "
                        "default is 800)")
    p.add_argument("--ds2-batch", type=int, default=None,
                   help="batch size of the DeepSpeech2 case (default 8)")
    p.add_argument("--suffix", default="",
                   help="appended to the results' file names (bench_core_<date>_models<suffix>)")
    p.add_argument("--torch-threads", default=None,
                   help="comma-separated torch.set_num_threads values to time each PyTorch "
                        "case with, the fastest counting (default: 1 and the number of CPUs)")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.tiny:
        cfg = Config(hidden=(32, 16), batch_sizes=(16,), num_train=512, optimizers=("sgd",),
                     accumulate_batches=(512,),
                     kernel_shapes=((3, 3, 2, 4), (16, 10)),
                     tiny=True)
    if args.quick:
        cfg.repeats, cfg.max_steps = 2, 20
    if args.repeats is not None:
        cfg.repeats = args.repeats
    return cfg


def main(argv: list[str] | None = None) -> dict:
    import torch

    args = parse_args(argv)
    cfg = make_config(args)
    cfg.timer = Timer(parse_threads(args.torch_threads))
    cmd = command_line("benchmarks.bench_core", argv)
    load_start = load_average()
    x, y, data_name = (load_data(cfg) if {"train", "growth"} & set(args.only)
                       else (None, None, "random"))
    res: dict = {}
    t0 = time.time()
    print(f"bench_core: repeats={cfg.repeats}, load {load_start}", flush=True)
    if "train" in args.only:
        bench_train(cfg, x, y, res)
    if "growth" in args.only:
        bench_growth(cfg, x, y, res)
    if "mask" in args.only:
        bench_masks.bench_mask_update(cfg, res)
    if "models" in args.only:
        mcfg = bench_models.ModelsConfig.tiny() if cfg.tiny else bench_models.ModelsConfig()
        mcfg.which = tuple(args.models)
        if args.ds2_rnn_features:
            mcfg.ds2_rnn_features = args.ds2_rnn_features
        if args.ds2_batch:
            mcfg.ds2_batch = args.ds2_batch
        if args.quick:
            mcfg.quick()
        bench_models.bench_models(mcfg, cfg.repeats, cfg.warmup, res, timer=cfg.timer)
    if "inference" in args.only:
        icfg = (bench_inference.InferenceConfig.tiny() if cfg.tiny
                else bench_inference.InferenceConfig())
        if args.quick:
            icfg.repeats = min(icfg.repeats, 5)
        if args.repeats is not None:
            icfg.repeats = args.repeats
        res["inference"] = bench_inference.bench_inference(icfg, cfg.timer)
    res["torch_threads_s"] = cfg.timer.choice_json()
    res["targets"] = targets(res)
    now = datetime.datetime.now(datetime.UTC)
    res["meta"] = {
        "command": cmd, "date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "cpus": os.cpu_count(), "jax_devices": str(jax.devices()),
        "torch_threads": list(cfg.timer.threads), "xla_flags": os.environ.get("XLA_FLAGS"),
        "versions": versions(torch=torch.__version__),
        "load_start": load_start, "load_end": load_average(),
        "repeats": (res["inference"]["repeats"] if tuple(args.only) == ("inference",)
                    else cfg.repeats), "warmup": cfg.warmup, "max_steps": cfg.max_steps,
        "quick": args.quick, "tiny": cfg.tiny,
        "data": data_name, "notes": cfg.notes, "wall_s": round(time.time() - t0, 1),
    }
    md = render_markdown(res)
    print()
    print(md)
    only = tuple(args.only)
    stem = f"bench_core_{now.strftime('%Y-%m-%d')}" + (
        f"_{only[0]}" if len(only) == 1 and only[0] in ("models", "inference") else "") + (
        "_tiny" if cfg.tiny else "") + ("_quick" if args.quick else "") + args.suffix
    path = write_results(args.out, stem, res, md)
    print(f"wrote {path}.{{md,json}}")
    return res


if __name__ == "__main__":
    main()
