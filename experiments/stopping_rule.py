"""Stopping-rule sweep for recoverable pruning (issue 4a): which tolerance, patience and
retraining rate should :class:`~gpjax.incremental.phases.PruneConfig` default to?

    nice -n 19 python -m experiments.stopping_rule --out results/stopping_rule   # ~40 min, 2 cores
    python -m experiments.stopping_rule --tiny --out /tmp/sr                     # seconds (tests)

Per seed, one dense LeNet-300-100 is trained on MNIST's 55K training images (``--base-epochs``
epochs, SGD Nesterov, cosine from 0.1, affine augmentation: the experiments' recipe). Every rule
then prunes a copy of that same model with :func:`~gpjax.incremental.phases.prune_and_retrain`
(recoverable, ``--percentile`` % of the active connections per iteration, at most
``--max-retrain-epochs`` one-epoch cosine restarts per iteration), so the rules differ only in
the stopping rule and the sweep costs only pruning. Recorded per seed x rule: final active
parameters, validation (5K) and test (10K) error of the kept model, iterations, retraining
epochs, and why and where the phase stopped; the test error of the kept model after every
iteration is recorded too (the trajectory).

Writes ``runs.json`` / ``runs.csv`` (one row per seed x rule), ``summary.md`` (mean ± standard
error over seeds) and ``stopping_rule.png`` (active parameters vs test error per rule) to
``--out``. ``--summarise`` rebuilds the summary from an existing ``runs.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

import gpjax
from experiments.replicates import add_replicate_args, mean_se, saved_rows, seeds
from gpjax.incremental import build, get_config
from gpjax.incremental.phases import (
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.train import make_optimizer

# name -> (tolerance in error points, patience, retrain_lr)
RULES: dict[str, tuple[float, int, float]] = {
    "literal": (0.0, 1, 0.05),
    "tol0-p2": (0.0, 2, 0.05),
    "tol0.05-p2": (0.05, 2, 0.05),
    "tol0.1-p1": (0.1, 1, 0.05),
    "tol0.1-p2": (0.1, 2, 0.05),
    "tol0.1-p3": (0.1, 3, 0.05),
    "tol0.2-p2": (0.2, 2, 0.05),
    "tol0.2-p3": (0.2, 3, 0.05),
    "tol0.1-p2-lr0.01": (0.1, 2, 0.01),
}
"""The rules of the sweep: the literal rule (tolerance 0, patience 1), tolerances 0-0.2
points, patience 1-3, and the retraining rate 0.01 vs 0.05."""

TINY_RULES = ("literal", "tol0.2-p2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_replicate_args(p, out="results/stopping_rule", seeds="0,1,2",
                       tiny_help="a few hundred examples, a small MLP, two rules, two seeds "
                                 "(tests)")
    p.add_argument("--rules", default=",".join(RULES), help=f"subset of {list(RULES)}")
    p.add_argument("--base-epochs", type=int, default=12,
                   help="training epochs of the dense model every rule starts from")
    p.add_argument("--percentile", type=float, default=15.0,
                   help="share of active connections pruned per iteration (SPEC: 3-5; "
                        "reduced-cost sweep: 15)")
    p.add_argument("--max-retrain-epochs", type=int, default=2)
    p.add_argument("--max-iterations", type=int, default=30)
    args = p.parse_args(argv)
    if args.tiny:
        args.base_epochs, args.max_iterations, args.max_retrain_epochs = 8, 4, 1
        args.percentile = 30.0
        if args.seeds == "0,1,2":
            args.seeds = "0,1"
        if args.rules == ",".join(RULES):
            args.rules = ",".join(TINY_RULES)
    return args


def rule_config(name: str, args: argparse.Namespace) -> PruneConfig:
    tol, patience, lr = RULES[name]
    return PruneConfig(percentile=args.percentile, max_retrain_epochs=args.max_retrain_epochs,
                       retrain_lr=lr, tolerance=tol, patience=patience,
                       max_iterations=args.max_iterations)


def _experiment(args: argparse.Namespace, seed: int):
    name = "lenet300_mnist_tiny" if args.tiny else "lenet300_mnist"
    cfg = dataclasses.replace(get_config(name), chunks=1, initial_chunks=1, rounds=1)
    return build(cfg, seed)


def run_seed(args: argparse.Namespace, seed: int, rules: list[str], log=print,
             on_row=None) -> list[dict]:
    """Trains the seed's dense model once and prunes a copy of it under every rule
    (``on_row(rows so far)`` after each)."""
    exp = _experiment(args, seed)
    cfg = exp.config
    trainer = Trainer(exp.task, make_optimizer(cfg.optimizer), cfg.batch_size,
                      cfg.eval_batch_size, args.progress)
    rd = exp.scenario.round(0)
    train, val, test = (jax.device_put(jax.tree.map(np.asarray, d))
                        for d in (rd.all, rd.validation, rd.test))
    t0 = time.perf_counter()
    state = new_state(trainer, jax.random.PRNGKey(seed), exp.example_batch)
    state, _ = grow_and_train(trainer, state, train, epochs=args.base_epochs,
                              learning_rate=0.1, grow=False, name="base")
    base_time = time.perf_counter() - t0
    base = jax.tree.map(lambda x: x.copy(), state)
    start = {"start_params": gpjax.count_params(base.masks).active,
             "start_val_error": 100 * trainer.error(base, val),
             "start_test_error": 100 * trainer.error(base, test)}
    log(f"seed {seed}: dense model after {args.base_epochs} epochs ({base_time:.0f} s): "
        f"val {start['start_val_error']:.2f}%, test {start['start_test_error']:.2f}%")
    rows = []
    for name in rules:
        pc = rule_config(name, args)
        trajectory = []

        def on_iteration(best, ev, trajectory=trajectory):
            trajectory.append({"iteration": ev["iteration"], "active": ev["active"],
                               "val_error": 100 * ev["val_error"], "held": bool(ev["held"]),
                               "retrain_epochs": ev["retrain_epochs"],
                               "kept_params": gpjax.count_params(best.masks).active,
                               "kept_test_error": 100 * trainer.error(best, test)})

        t0 = time.perf_counter()
        st = jax.tree.map(lambda x: x.copy(), base)
        # the kept model's key is the base's: every rule retrains from the same random stream
        kept, plog = prune_and_retrain(trainer, st, train, val, pc, name=f"prune {name}",
                                       on_iteration=on_iteration)
        wall = time.perf_counter() - t0
        held = [t for t in trajectory if t["held"]]
        row = {
            "seed": seed, "rule": name, "tolerance": pc.tolerance, "patience": pc.patience,
            "retrain_lr": pc.retrain_lr, "percentile": pc.percentile,
            "max_retrain_epochs": pc.max_retrain_epochs, "max_iterations": pc.max_iterations,
            "base_epochs": args.base_epochs, "n_train": len(rd.all_indices), **start,
            "final_params": gpjax.count_params(kept.masks).active,
            "final_val_error": 100 * trainer.error(kept, val),
            "final_test_error": 100 * trainer.error(kept, test),
            "iterations": len(trajectory), "held_iterations": len(held),
            "failed_iterations": len(trajectory) - len(held),
            "first_failure": next((t["iteration"] for t in trajectory if not t["held"]), None),
            "retrain_epochs": plog.epochs, "stopped": plog.stopped,
            "stop_params": trajectory[-1]["active"] if trajectory else start["start_params"],
            "wall_s": wall, "trajectory": trajectory,
        }
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        log(f"seed {seed} {name:>18}: {row['final_params']:>7,} params, val "
            f"{row['final_val_error']:.2f}%, test {row['final_test_error']:.2f}%, "
            f"{row['iterations']} it ({row['failed_iterations']} failed), "
            f"{row['retrain_epochs']:.0f} retrain epochs, stopped: {row['stopped']} "
            f"({wall:.0f} s)")
    return rows


SUMMARY_METRICS = ("final_params", "final_val_error", "final_test_error", "test_change",
                   "iterations", "failed_iterations", "retrain_epochs")


def summarise(rows: list[dict]) -> list[dict]:
    """One row per rule: mean ± s.e. over seeds of the final metrics and the stop reasons."""
    out = []
    for name in dict.fromkeys(r["rule"] for r in rows):
        rs = [r for r in rows if r["rule"] == name]
        s = {"rule": name, "tolerance": rs[0]["tolerance"], "patience": rs[0]["patience"],
             "retrain_lr": rs[0]["retrain_lr"], "n": len(rs),
             "stopped": ", ".join(f"{k} x{sum(r['stopped'] == k for r in rs)}"
                                  for k in dict.fromkeys(r["stopped"] for r in rs))}
        for m in SUMMARY_METRICS:
            vals = [r["final_test_error"] - r["start_test_error"] if m == "test_change"
                    else r[m] for r in rs]
            s[m], s[m + "_se"], _ = mean_se(vals)
        out.append(s)
    return out


def _pm(mean: float, se: float, fmt: str = "{:.2f}") -> str:
    if math.isnan(mean):
        return "-"
    return fmt.format(mean) + " ± " + fmt.format(se).lstrip("+")


def markdown(rows: list[dict], command: str) -> str:
    summ = summarise(rows)
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    starts = {r["seed"]: r for r in rows}
    sp, _, _ = mean_se([starts[s]["start_params"] for s in seeds])
    sv, sve, _ = mean_se([starts[s]["start_val_error"] for s in seeds])
    st, ste, _ = mean_se([starts[s]["start_test_error"] for s in seeds])
    lines = [
        "# Stopping-rule sweep (recoverable pruning of LeNet-300-100 on MNIST)", "",
        f"Command: `{command}`", "",
        f"Seeds {seeds}. Per seed one dense LeNet-300-100 ({sp:,.0f} params) trained "
        f"{r0['base_epochs']} epochs on {r0.get('n_train', 55000):,} images (val {_pm(sv, sve)}%, "
        f"test {_pm(st, ste)}% over seeds) is pruned by every rule: recoverable, "
        f"{r0['percentile']:g}% of active connections per iteration, at most "
        f"{r0['max_retrain_epochs']} one-epoch cosine restarts per iteration, at most "
        f"{r0['max_iterations']} iterations. Tolerance in error points on the 5K validation "
        "set (one image = 0.02 points) above the error when pruning starts. Mean ± s.e. over "
        "seeds; test error on 10K; `test change` = final minus dense test error.", "",
        "| rule | tolerance | patience | retrain lr | seeds | params | val error % | "
        "test error % | test change | iterations | failed | retrain epochs | stopped by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summ:
        lines.append(
            f"| {s['rule']} | {s['tolerance']:g} | {s['patience']} | {s['retrain_lr']:g} | "
            f"{s['n']} | {_pm(s['final_params'] / 1e3, s['final_params_se'] / 1e3, '{:.1f}')}K | "
            f"{_pm(s['final_val_error'], s['final_val_error_se'])} | "
            f"{_pm(s['final_test_error'], s['final_test_error_se'])} | "
            f"{_pm(s['test_change'], s['test_change_se'], '{:+.2f}')} | "
            f"{_pm(s['iterations'], s['iterations_se'], '{:.1f}')} | "
            f"{_pm(s['failed_iterations'], s['failed_iterations_se'], '{:.1f}')} | "
            f"{_pm(s['retrain_epochs'], s['retrain_epochs_se'], '{:.1f}')} | {s['stopped']} |")
    lines += ["", "Per seed (params, test error %, stop reason, first failed iteration):", "",
              "| rule | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for s in summ:
        cells = []
        for seed in seeds:
            r = next((r for r in rows if r["rule"] == s["rule"] and r["seed"] == seed), None)
            cells.append("-" if r is None else
                         f"{r['final_params'] / 1e3:.1f}K, {r['final_test_error']:.2f}, "
                         f"{r['stopped']}, {r['first_failure']}")
        lines.append(f"| {s['rule']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarise(rows)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab10")
    for i, s in enumerate(summ):
        c = colors(i % 10)
        rs = [r for r in rows if r["rule"] == s["rule"]]
        ax.scatter([r["final_params"] / 1e3 for r in rs], [r["final_test_error"] for r in rs],
                   color=c, alpha=0.35, s=18)
        ax.errorbar(s["final_params"] / 1e3, s["final_test_error"],
                    xerr=s["final_params_se"] / 1e3, yerr=s["final_test_error_se"], fmt="o",
                    color=c, capsize=3, label=s["rule"])
    ax.set_xscale("log")
    ax.set_xlabel("final active parameters (K, log)")
    ax.set_ylabel("test error % (10K)")
    ax.set_title("where each rule stops (mean ± s.e.; dots: seeds)")
    ax.legend(fontsize=8)
    # trajectory of the kept model under the most permissive rule, per seed
    perm = max(summ, key=lambda s: s["iterations"])["rule"]
    for r in rows:
        if r["rule"] == perm and r["trajectory"]:
            t = r["trajectory"]
            ax2.plot([x["active"] / 1e3 for x in t], [x["val_error"] for x in t], "-", lw=0.8,
                     color=colors(r["seed"] % 10), alpha=0.5)
            ax2.plot([x["kept_params"] / 1e3 for x in t], [x["kept_test_error"] for x in t],
                     "o-", ms=3, color=colors(r["seed"] % 10), label=f"seed {r['seed']}")
    ax2.set_xscale("log")
    ax2.invert_xaxis()
    ax2.set_xlabel("active parameters (K, log)")
    ax2.set_ylabel("error %")
    ax2.set_title(f"'{perm}': kept model's test error (dots), val after retraining (line)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(rows: list[dict], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    flat = [{k: v for k, v in r.items() if k != "trajectory"} for r in rows]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    (out / "summary.md").write_text(markdown(rows, command))
    plot(rows, out / "stopping_rule.png")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    command = "python -m experiments.stopping_rule " + " ".join(
        sys.argv[1:] if argv is None else argv)
    saved = saved_rows(args, lambda rows, saved: write_outputs(rows, args.out,
                                                                saved["command"]))
    if saved is not None:
        return saved
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SystemExit(f"unknown rules {unknown}; known: {list(RULES)}")
    rows: list[dict] = []
    for seed in seeds(args):
        done = list(rows)
        # outputs after every rule: partial results survive
        rows += run_seed(args, seed, rules, log=lambda m: print(m, flush=True),
                         on_row=lambda new, done=done: write_outputs(done + new, args.out,
                                                                     command))
    print(markdown(rows, command))
    return rows


if __name__ == "__main__":
    main()
