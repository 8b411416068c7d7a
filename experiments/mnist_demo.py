"""The main job: grow-and-prune LeNet-300-100 on MNIST from a 10%-dense random mask.

    python -m experiments.mnist_demo --out results/demo            # 3-10 min on 2 CPU cores
    python -m experiments.mnist_demo --out results/demo-full --full

1. Start from a random mask at 10% density (dormant weights zeroed), with one connection
   switched on for every neuron the draw left without an input or an output
   (:func:`gpjax.connect_units`; ``--no-connect`` keeps the plain draw).
2. Grow-and-train: every ``--grow-every`` epochs, evaluate the epoch-mean gradient with
   parameters frozen and grow the dormant connections at or above the ``--alpha``-th
   percentile of gradient magnitude (SPEC eq. 1), starting them at ``-lr * g``; train with SGD
   (Nesterov 0.9, cosine learning rate, weight decay 1e-4) on affine-augmented batches.
3. Prune recoverably: remove ``--beta`` % of the active weights by magnitude (eq. 3) keeping every
   neuron connected, retrain until the validation error is back within the tolerance, repeat
   while it holds.
4. Optionally prune further, non-recoverably, for an ultra-compact model.

Prints a results table (test error, active parameters, epochs, wall time) and writes
``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import gpjax
from gpjax.data.augment import affine_augment
from gpjax.data.mnist import load_mnist
from gpjax.incremental.phases import PruneConfig, Trainer, new_state
from gpjax.incremental.policies import PhaseSpec, RoundPlan
from gpjax.incremental.runner import RoundData, nonrecoverable, update
from gpjax.models import LeNet300
from gpjax.train import OptimizerConfig, classifier_task, make_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density", type=float, default=0.1, help="initial random mask density")
    p.add_argument("--no-connect", action="store_true",
                   help="keep the plain random mask, even where it leaves neurons unconnected")
    p.add_argument("--epochs", type=int, default=15, help="grow-and-train epochs")
    p.add_argument("--grow-every", type=int, default=3, help="epochs between growth steps")
    p.add_argument("--alpha", type=float, default=80.0, help="growth percentile (eq. 1)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine to 0)")
    p.add_argument("--beta", type=float, default=5.0, help="pruning percentile per iteration")
    p.add_argument("--retrain-epochs", type=int, default=2, help="max retraining per iteration")
    p.add_argument("--retrain-lr", type=float, default=0.05)
    p.add_argument("--tolerance", type=float, default=0.1, help="error points forgiven")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--max-iterations", type=int, default=60)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-nonrecoverable", action="store_true",
                   help="skip the non-recoverable ultra-compact pruning")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--full", action="store_true",
                   help="full-length run: 60 grow-and-train epochs, up to 200 pruning iterations "
                        "with up to 3 retraining epochs each")
    p.add_argument("--subset", type=int, default=None,
                   help="use only this many training and test images (quick checks)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.full:
        args.epochs, args.retrain_epochs, args.max_iterations = 60, 3, 200
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    mnist = load_mnist()
    n = args.subset
    train = (jnp.asarray(mnist.train.images[:n]), jnp.asarray(mnist.train.labels[:n]))
    val = (jnp.asarray(mnist.validation.images[:n]), jnp.asarray(mnist.validation.labels[:n]))
    test = (jnp.asarray(mnist.test.images[:n]), jnp.asarray(mnist.test.labels[:n]))
    print(f"MNIST from {mnist.source}: {len(mnist.train)} train / {len(mnist.validation)} "
          f"validation / {len(mnist.test)} test; devices: {jax.devices()}")

    task = classifier_task(LeNet300(), augment=None if args.no_augment else affine_augment)
    trainer = Trainer(task, make_optimizer(OptimizerConfig()), batch_size=args.batch_size,
                      progress=not args.no_progress)
    state = new_state(trainer, jax.random.key(args.seed), train, density=args.density,
                      connect=not args.no_connect)
    rows = []

    def record(stage: str, st, epochs: float) -> None:
        count = gpjax.count_params(st.masks, st.params)
        rows.append({
            "stage": stage,
            "test_error": 100 * trainer.error(st, test),
            "val_error": 100 * trainer.error(st, val),
            "active_params": count.active,
            "dense_params": count.dense,
            "biases": count.unmasked,
            "dead_units": sum(d.inputs + d.outputs for d in gpjax.dead_units(
                st.masks, input_fed=task.input_kernels).values()),
            "epochs": epochs,
            "wall_time_s": time.perf_counter() - start,
        })

    record("initial (10% random mask)", state, 0)
    # One round of the method from this seed, through the round runner: grow and train on
    # all the data, then prune recoverably.
    plan = RoundPlan("fresh_sparse", (
        PhaseSpec("grow", "all", args.epochs, args.lr, args.grow_every, args.alpha,
                  name="grow-and-train"),
        PhaseSpec("prune", "all", name="prune (recoverable)")), seed_density=args.density)
    prune_cfg = PruneConfig(percentile=args.beta, max_retrain_epochs=args.retrain_epochs,
                            retrain_lr=args.retrain_lr, tolerance=args.tolerance,
                            patience=args.patience, max_iterations=args.max_iterations)

    def after_growth(spec, st, event, cost):
        if event["epoch"] == args.epochs - 1:
            record("after growth", st, cost)

    data = RoundData(train, train, val)
    state, _, log = update(trainer, plan, data, prune_cfg, state=state, on_epoch=after_growth)
    epochs = log.cost.epochs
    record("recoverable pruning", state, epochs)
    logs = list(log.phases)
    if not args.no_nonrecoverable:
        compact, nonrec_log = nonrecoverable(trainer, state, data, prune_cfg)
        record("non-recoverable pruning", compact, epochs + nonrec_log.epochs)
        logs.append(nonrec_log)

    header = ("stage", "test error %", "active params", "epochs", "wall time s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['stage']} | {r['test_error']:.2f} | {r['active_params']:,} | "
              f"{r['epochs']:g} | {r['wall_time_s']:.0f} |")
    result = {"config": vars(args) | {"out": str(args.out)}, "rows": rows,
              "phases": [dataclasses.asdict(log) for log in logs],
              "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\nresults written to {args.out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
