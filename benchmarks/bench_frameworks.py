"""Training Flax NNX and Equinox models through gpjax against each framework's own plain loop.

Issue 30's speed target: an epoch of an NNX model through gpjax (its adapter, the masked
optimiser, :func:`gpjax.train.train_epoch`) takes <= 1.10x the epoch of the same model's plain
``nnx.jit`` training step written as Flax's MNIST tutorial writes it (``nnx.Optimizer``,
``nnx.value_and_grad``, one jitted call per batch); Equinox likewise against an
``eqx.filter_jit`` step as Equinox's CNN example writes it. Same model (the tutorial's CNN,
with dropout; an Equinox CNN of the same shapes), same data and batch size, SGD with momentum,
all timed round-robin in one run (:class:`benchmarks.harness.Timer`). The gpjax side trains
with dense masks (the store's first epochs; sparse masks cost the same: W * M is computed
either way).

Run it::

    python -m benchmarks.bench_frameworks --out benchmarks/results
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.harness import (
    Timer,
    command_line,
    load_average,
    machine,
    med,
    versions,
    write_results,
)
from gpjax.incremental.phases import Trainer, new_state
from gpjax.models.adapter import from_class
from gpjax.tasks import classifier_task
from gpjax.train import OptimizerConfig, make_optimizer, train_epoch

LR, MOMENTUM = 0.05, 0.9


class CNN(nnx.Module):
    """The CNN of Flax's NNX MNIST tutorial (28x28x1 inputs, 10 classes)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.linear1(x)))
        return self.linear2(x)


class EqxCNN(eqx.Module):
    """The same network in Equinox, on one example ``[28, 28, 1]``."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    pool: eqx.nn.AvgPool2d
    linear1: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    linear2: eqx.nn.Linear

    def __init__(self, *, key):
        k = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(1, 32, 3, padding=1, key=k[0])
        self.conv2 = eqx.nn.Conv2d(32, 64, 3, padding=1, key=k[1])
        self.pool = eqx.nn.AvgPool2d(2, 2)
        self.linear1 = eqx.nn.Linear(3136, 256, key=k[2])
        self.dropout = eqx.nn.Dropout(0.1)
        self.linear2 = eqx.nn.Linear(256, 10, key=k[3])

    def __call__(self, x, *, key=None):
        x = jnp.transpose(x, (2, 0, 1))
        x = self.pool(jax.nn.relu(self.conv1(x)))
        x = self.pool(jax.nn.relu(self.conv2(x)))
        x = self.dropout(jax.nn.relu(self.linear1(x.reshape(-1))), key=key)
        return self.linear2(x)


class LinenCNN(nn.Module):
    """The same network in Flax linen (gpjax's path before adapters: the reference for what
    masked training through gpjax costs with no adapter in between)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        pool = partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))
        x = pool(nn.relu(nn.Conv(32, (3, 3))(x)))
        x = pool(nn.relu(nn.Conv(64, (3, 3))(x)))
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(10)(x)


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n).astype(np.int32)


def nnx_plain(x: np.ndarray, y: np.ndarray, batch: int):
    """One epoch of the tutorial's loop: ``train_step`` per batch under ``nnx.jit``."""
    model = CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(LR, MOMENTUM), wrt=nnx.Param)

    def loss_fn(model, images, labels):
        logits = model(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    @nnx.jit
    def train_step(model, optimizer, images, labels):
        grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
        (loss, _), grads = grad_fn(model, images, labels)
        optimizer.update(model, grads)
        return loss

    batches = [(jnp.asarray(x[s:s + batch]), jnp.asarray(y[s:s + batch]))
               for s in range(0, len(x) - batch + 1, batch)]

    def epoch():
        model.train()
        for images, labels in batches:
            loss = train_step(model, optimizer, images, labels)
        return jax.block_until_ready(loss)

    return epoch


def eqx_plain(x: np.ndarray, y: np.ndarray, batch: int):
    """One epoch of Equinox's example loop: ``make_step`` per batch under ``eqx.filter_jit``."""
    optim = optax.sgd(LR, MOMENTUM)
    holder = {"model": EqxCNN(key=jax.random.PRNGKey(0))}
    holder["opt"] = optim.init(eqx.filter(holder["model"], eqx.is_inexact_array))

    def loss(model, images, labels, key):
        keys = jax.random.split(key, images.shape[0])
        logits = jax.vmap(lambda xi, ki: model(xi, key=ki))(images, keys)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @eqx.filter_jit
    def make_step(model, opt_state, images, labels, key):
        value, grads = eqx.filter_value_and_grad(loss)(model, images, labels, key)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    batches = [(jnp.asarray(x[s:s + batch]), jnp.asarray(y[s:s + batch]))
               for s in range(0, len(x) - batch + 1, batch)]

    def epoch():
        key = jax.random.PRNGKey(1)
        for images, labels in batches:
            key, k = jax.random.split(key)
            holder["model"], holder["opt"], value = make_step(holder["model"], holder["opt"],
                                                              images, labels, k)
        return jax.block_until_ready(value)

    return epoch


def through_gpjax(model: Any, x: np.ndarray, y: np.ndarray, batch: int):
    """One epoch through gpjax: the adapter's task, the masked SGD, ``train_epoch``."""
    task = classifier_task(model)
    tx = make_optimizer(OptimizerConfig(name="sgd", momentum=MOMENTUM, nesterov=False,
                                        weight_decay=0.0))
    trainer = Trainer(task, tx, batch, batch, False)
    holder = {"state": new_state(trainer, jax.random.PRNGKey(0), (x[:2], y[:2]))}
    data = (jnp.asarray(x), jnp.asarray(y))
    rates = np.full(trainer.steps(data), LR, np.float32)

    def epoch():
        holder["state"], loss = train_epoch(holder["state"], data, rates, task=task, tx=tx,
                                            batch_size=batch)
        return jax.block_until_ready(loss)

    return epoch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32, help="the tutorial's batch size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write <out>/bench_frameworks.{md,json}")
    ap.add_argument("--stem", default="bench_frameworks")
    args = ap.parse_args(argv)
    x, y = _data(args.examples)
    fns = {"nnx plain (nnx.jit step)": nnx_plain(x, y, args.batch),
           "nnx through gpjax": through_gpjax(from_class(CNN, {}), x, y, args.batch),
           "linen through gpjax": through_gpjax(LinenCNN(), x, y, args.batch),
           "equinox plain (eqx.filter_jit step)": eqx_plain(x, y, args.batch),
           "equinox through gpjax": through_gpjax(from_class(EqxCNN, {}), x, y, args.batch)}
    samples = Timer().group(fns, args.repeats, warmup=1)
    t = {k: med(v) for k, v in samples.items()}
    rows = [("NNX", t["nnx plain (nnx.jit step)"], t["nnx through gpjax"]),
            ("Equinox", t["equinox plain (eqx.filter_jit step)"], t["equinox through gpjax"])]
    lines = ["# Training NNX and Equinox models through gpjax vs plain loops\n",
             f"Command: `{command_line('benchmarks.bench_frameworks', argv)}`  ",
             f"Machine: {machine()}; load average at the end {load_average()}  ",
             f"One epoch of {args.examples} 28x28 examples, batch {args.batch} "
             f"({args.examples // args.batch} steps), median of {args.repeats} round-robin "
             "runs.\n",
             "| framework | plain loop s/epoch | through gpjax s/epoch | gpjax / plain |",
             "|---|---|---|---|"]
    lines += [f"| {n} | {p:.3f} | {g:.3f} | {g / p:.2f}x |" for n, p, g in rows]
    lines += ["", f"The same CNN in linen through gpjax (no adapter between, the masked "
              f"training alone): {t['linen through gpjax']:.3f} s/epoch, "
              f"{t['linen through gpjax'] / t['nnx plain (nnx.jit step)']:.2f}x the NNX plain "
              f"loop; NNX through gpjax / linen through gpjax: "
              f"{t['nnx through gpjax'] / t['linen through gpjax']:.2f}x."]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        from pathlib import Path
        write_results(Path(args.out), args.stem, {
            "samples_s": samples, "median_s": t, "versions": versions(
                equinox=eqx.__version__), "machine": machine(),
            "load_average": load_average(), "args": vars(args)}, md)


if __name__ == "__main__":
    main()
