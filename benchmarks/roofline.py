"""The matrix-multiply ceiling of the LeNet-300-100 train step on this machine.

At batch 1024 the masked LeNet-300-100 step is ~1.15 GFLOP of matrix multiplies and almost
nothing else, so its speed is the speed of the machine's GEMM. This script measures, side by
side in one run (round-robin, as :mod:`benchmarks.bench_core`):

* ``gemm``: the step's multiplies alone in each library: forward and backward of the same
  three-layer chain with no activation, bias, loss or optimiser (JAX: one jitted
  ``value_and_grad``; PyTorch: autograd, the input needing no gradient in either);
* ``step``: the full masked SGD step, as in bench_core (gpjax: ``gpjax.masked(optax.sgd)``
  jitted; PyTorch: forward with ``W * M``, backward, step, re-mask);
* ``square``: a 2048x2048x2048 matmul, each library's best case on this CPU.

It prints achieved GFLOP/s and the ceiling it implies: gpjax's step cannot be faster than its
own multiplies, so ``PyTorch step / gpjax gemm`` bounds the speedup over PyTorch (and the
square-matmul rate bounds both).

    python -m benchmarks.roofline [--batches 128 1024] [--repeats 7] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gpjax
from benchmarks.harness import (
    RESULTS_DIR,
    Timer,
    command_line,
    default_threads,
    load_average,
    machine,
    med,
    write_results,
)

LAYERS = (784, 300, 100, 10)


def step_flops(batch: int, layers: tuple[int, ...] = LAYERS) -> int:
    """Multiply-add FLOPs (2 per MAC) of one training step of an MLP on ``batch`` examples:
    forward ``x W`` and backward ``dW = x^T dz`` for every layer, ``dx = dz W^T`` for all but
    the first (the input needs no gradient)."""
    macs = 0
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        macs += batch * a * b * (2 if i == 0 else 3)
    return 2 * macs


def _jax_cases(batch: int, rng: np.random.Generator) -> dict:
    ws = [jnp.asarray(rng.standard_normal((a, b), np.float32) * 0.05)
          for a, b in zip(LAYERS[:-1], LAYERS[1:], strict=True)]
    x = jnp.asarray(rng.random((batch, LAYERS[0]), np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))

    @jax.jit
    def gemm(ws, x):
        def chain(ws):
            h = x
            for w in ws:
                h = h @ w
            return jnp.sum(h)
        return jax.grad(chain)(ws)

    params = {f"w{i}": w for i, w in enumerate(ws)} | {
        f"b{i}": jnp.zeros(w.shape[1]) for i, w in enumerate(ws)}
    masks = gpjax.init_masks(params, density=0.1, key=jax.random.PRNGKey(0))
    params = gpjax.apply_masks(params, masks)
    tx = gpjax.masked(optax.sgd(0.01))
    state = [params, tx.init(params)]

    def loss(p, x, y):
        h = x
        for i in range(len(ws)):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < len(ws) - 1:
                h = jax.nn.leaky_relu(h, 0.01)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    @jax.jit
    def step(p, s, masks, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p, masks=masks)
        return optax.apply_updates(p, u), s

    def run_step():
        state[0], state[1] = step(state[0], state[1], masks, x, y)
        jax.block_until_ready(state[0])

    sq = jnp.asarray(rng.random((2048, 2048), np.float32))
    square = jax.jit(lambda a: a @ a)
    return {"jax_gemm": lambda: jax.block_until_ready(gemm(ws, x)),
            "jax_step": run_step,
            "jax_square": lambda: jax.block_until_ready(square(sq))}


def _torch_cases(batch: int, rng: np.random.Generator) -> dict:
    import torch

    from benchmarks.torch_reference import MaskedMLP, to_torch

    kernels = [rng.standard_normal((a, b), np.float32) * 0.05
               for a, b in zip(LAYERS[:-1], LAYERS[1:], strict=True)]
    masks = [rng.random(k.shape) < 0.1 for k in kernels]
    ws = [to_torch(k).requires_grad_(True) for k in kernels]
    x = to_torch(rng.random((batch, LAYERS[0]), np.float32))
    y = to_torch(rng.integers(0, 10, batch))
    mlp = MaskedMLP(kernels, [np.zeros(k.shape[1], np.float32) for k in kernels], masks,
                    optimizer="sgd", lr=0.01)

    def gemm():
        h = x
        for w in ws:
            h = h @ w
        torch.autograd.grad(h.sum(), ws)

    sq = to_torch(rng.random((2048, 2048), np.float32))
    return {"torch_gemm": gemm, "torch_step": lambda: mlp.train_step(x, y),
            "torch_square": lambda: sq @ sq}


def run(batches: tuple[int, ...], repeats: int, timer: Timer | None = None) -> dict:
    """Times every case at each batch size; returns the rows (ms and GFLOP/s)."""
    timer = timer or Timer(default_threads())
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        fns = _jax_cases(batch, rng) | _torch_cases(batch, rng)
        ms = {k: 1e3 * med(v) for k, v in timer.group(fns, repeats, warmup=2).items()}
        flops = step_flops(batch)
        sq = 2 * 2048**3
        rows.append({
            "batch": batch, "step_gflop": flops / 1e9, "ms": ms,
            "gflops": {"jax_gemm": flops / ms["jax_gemm"] / 1e6,
                       "jax_step": flops / ms["jax_step"] / 1e6,
                       "torch_gemm": flops / ms["torch_gemm"] / 1e6,
                       "torch_step": flops / ms["torch_step"] / 1e6,
                       "jax_square": sq / ms["jax_square"] / 1e6,
                       "torch_square": sq / ms["torch_square"] / 1e6},
            "speedup_step": ms["torch_step"] / ms["jax_step"],
            "speedup_ceiling": ms["torch_step"] / ms["jax_gemm"],
        })
    return {"rows": rows}


def render(res: dict) -> str:
    m = res["meta"]
    lines = [f"# The GEMM ceiling of the masked LeNet-300-100 step ({m['date']})", "",
             f"Command: `{m['command']}`", "",
             f"Machine: {m['machine']}; XLA_FLAGS: `{m['xla_flags']}`; load average at start "
             f"{m['load_start']}, at end {m['load_end']}. PyTorch at its fastest of "
             f"{m['torch_threads']} threads. Medians of {m['repeats']} round-robin repeats.", "",
             "| batch | GFLOP/step | gpjax step ms | gpjax GEMMs ms | PyTorch step ms | "
             "PyTorch GEMMs ms | gpjax step GFLOP/s | square matmul GFLOP/s (JAX / PyTorch) | "
             "speedup | ceiling (PyTorch step / gpjax GEMMs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ms, g = r["ms"], r["gflops"]
        lines.append(
            f"| {r['batch']} | {r['step_gflop']:.3f} | {ms['jax_step']:.2f} | "
            f"{ms['jax_gemm']:.2f} | {ms['torch_step']:.2f} | {ms['torch_gemm']:.2f} | "
            f"{g['jax_step']:.0f} | {g['jax_square']:.0f} / {g['torch_square']:.0f} | "
            f"{r['speedup_step']:.2f}x | {r['speedup_ceiling']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    timer = Timer(default_threads())
    load_start = load_average()
    res = run(tuple(args.batches), args.repeats, timer)
    now = datetime.datetime.now(datetime.UTC)
    res["meta"] = {"command": command_line("benchmarks.roofline", argv),
                   "date": now.strftime("%Y-%m-%d %H:%M UTC"),
                   "machine": machine(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                   "load_start": load_start, "load_end": load_average(),
                   "torch_threads": list(timer.threads), "repeats": args.repeats}
    text = render(res)
    print(text)
    write_results(args.out, f"roofline_{now.strftime('%Y-%m-%d')}", res, text)
    return res


if __name__ == "__main__":
    main()
