"""FIG. 6 with paired replicates: "new data first" (ours, GrowPrune) vs "merged" training.

    nice -n 19 python -m experiments.fig6 --out results/fig6      # ~40 min on 2 cores, 4 seeds
    python -m experiments.fig6 --tiny --out /tmp/fig6              # seconds (tests)

Per seed: MNIST's 55K training images are split into ten chunks (seeded by the run seed); one
base model is made on the first nine (90%) with the round-0 plan of
:class:`~gpjax.incremental.policies.GrowPrune` (grow from a 10%-dense seed, then recoverable
pruning). Both arms inherit that same model (params and masks, fresh optimiser state) and update
it with the last chunk (10%) by their round-1 plans:

* ours (``growprune``): grow-and-train on the new chunk first (``--new-epochs``), then on all
  data (``--all-epochs``), then prune;
* merged (``merged``): grow-and-train on all data for ``--new-epochs + --all-epochs`` epochs
  (the same number of growth epochs; ``--merged-epochs`` sets another, e.g. SPEC's 49), then
  prune.

After every training epoch the error on the pooled validation + test images (5K + 10K = 15K:
one image is 0.0067 points) is measured, beside the cost so far in normalised epochs (SPEC: an
epoch over the 10% chunk counts 0.1; growth-gradient passes count like epochs). Target rules
(cost = normalised epochs up to and including the first epoch, after at least one, whose pooled
error is at or below the target; pruning is not part of it):

* ``common`` (the primary rule): the target is the larger of the two arms' lowest pooled errors
  during growth, i.e. the best level *both* arms reach; so both costs exist on every seed.
* ``base``: the pooled error of the inherited base model (get back to where the update started,
  now with the new data included); may be missed (reported as not reached).
* ``fixed``: ``--fixed-target`` points, if given.

The ratio merged / ours of those costs is the FIG. 6 claim (SPEC: 49 / 21.5 = 2.3x). Writes
``runs.json`` / ``runs.csv`` (one row per seed), ``summary.md`` (per-seed ratios, mean ± s.e.)
and ``fig6.png`` (pooled error vs cost per seed and arm; ratios) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gpjax
from benchmarks.harness import command_line
from experiments.replicates import add_replicate_args, mean_se, saved_rows, seeds
from gpjax.incremental import build, get_config
from gpjax.incremental.phases import Trainer
from gpjax.incremental.policies import Policy, RoundPlan, make_policy
from gpjax.incremental.runner import RoundData, model_of, start_state, update
from gpjax.train import make_optimizer

ARMS = ("growprune", "merged")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_replicate_args(p, out="results/fig6", seeds="0,1,2,3")
    p.add_argument("--first-epochs", type=int, default=12,
                   help="growth epochs of the base model on 90%% (SPEC: 90)")
    p.add_argument("--new-epochs", type=int, default=6, help="ours: epochs on the new 10%% "
                   "(SPEC: 15)")
    p.add_argument("--all-epochs", type=int, default=8, help="ours: epochs on all data "
                   "(SPEC: 20)")
    p.add_argument("--merged-epochs", type=int, default=None,
                   help="merged: epochs on all data (default: new + all, the same growth "
                   "epochs as ours; SPEC's merged run: 49)")
    p.add_argument("--grow-every", type=int, default=3)
    p.add_argument("--prune-percentile", type=float, default=15.0,
                   help="pruning step (SPEC 3-5; reduced-cost run: 15)")
    p.add_argument("--prune-max-retrain-epochs", type=int, default=1)
    p.add_argument("--prune-max-iterations", type=int, default=20)
    p.add_argument("--fixed-target", type=float, default=None,
                   help="also report the cost to reach this pooled error (points)")
    args = p.parse_args(argv)
    if args.tiny:
        args.first_epochs, args.new_epochs, args.all_epochs, args.grow_every = 4, 2, 2, 1
        args.prune_max_iterations, args.prune_percentile = 2, 20.0
        if args.seeds == "0,1,2,3":
            args.seeds = "0,1"
    return args


def policies(args: argparse.Namespace) -> dict[str, Policy]:
    """The two arms; every other field is the library default (pruning rule included)."""
    common = {"first_epochs": args.first_epochs, "grow_every": args.grow_every,
              "prune.percentile": args.prune_percentile,
              "prune.max_retrain_epochs": args.prune_max_retrain_epochs,
              "prune.max_iterations": args.prune_max_iterations, "nonrecoverable": None}
    if args.tiny:
        common.update({"growth_percentile": 80.0, "seed_density": 0.3})
    return {"growprune": make_policy("growprune", {**common, "new_epochs": args.new_epochs,
                                                   "all_epochs": args.all_epochs}),
            "merged": make_policy("merged", {**common, "all_epochs": merged_epochs(args)})}


def merged_epochs(args: argparse.Namespace) -> int:
    """The merged arm's epochs on all data: ``--merged-epochs``, else new + all."""
    return args.merged_epochs or args.new_epochs + args.all_epochs


# ------------------------------------------------------------------------------ target rules


def cost_to_target(curve: list[dict], target: float) -> float | None:
    """Normalised epochs until the pooled error first is at or below ``target``.

    ``curve``: points ``{"cost": normalised epochs so far, "pooled_error": percent}`` in
    training order; the starting point (cost 0, the inherited model) does not count: the rule
    asks for the first training epoch that reaches the target. ``None``: never reached.
    """
    for pt in curve:
        if pt["cost"] > 0 and pt["pooled_error"] <= target + 1e-9:
            return float(pt["cost"])
    return None


def common_target(curves: dict[str, list[dict]]) -> float:
    """The best pooled error that every arm reaches: the max over arms of each arm's minimum
    over its training epochs."""
    return max(min(pt["pooled_error"] for pt in c if pt["cost"] > 0) for c in curves.values())


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` (merged / ours), None when either is missing."""
    return None if a is None or b is None or b == 0 else a / b


# ------------------------------------------------------------------------------ running


def run_plan(trainer: Trainer, exp, plan: RoundPlan, policy: Policy, data: RoundData, val,
             pooled, key: jax.Array, carry=None) -> tuple:
    """Runs a round plan with the round runner, with a pooled-error point after every training
    epoch. Returns ``(state, curve, update_log)``."""
    curve = []

    def on_epoch(spec, st, ev, spent):
        curve.append({"cost": spent, "pooled_error": 100 * trainer.error(st, pooled),
                      "phase": spec.name, "epoch": ev["epoch"],
                      "active": gpjax.count_params(st.masks).active})

    state = start_state(trainer, plan, key, exp.example_batch, carry)
    curve.append({"cost": 0.0, "pooled_error": 100 * trainer.error(state, pooled),
                  "phase": "start", "epoch": -1, "active": gpjax.count_params(state.masks).active})
    state, _, log = update(trainer, plan, data, policy.prune, state=state, on_epoch=on_epoch)
    return state, curve, log


def _experiment(args: argparse.Namespace, seed: int):
    name = "lenet300_mnist_tiny" if args.tiny else "lenet300_mnist"
    extra = {"n_train": 600} if args.tiny else {}
    cfg = dataclasses.replace(get_config(name), chunks=10, initial_chunks=9, rounds=2,
                              data_seed=None, **extra)
    return build(cfg, seed)


def run_seed(args: argparse.Namespace, seed: int, log=print) -> dict:
    exp = _experiment(args, seed)
    cfg = exp.config
    pols = policies(args)
    trainer = Trainer(exp.task, make_optimizer(cfg.optimizer), cfg.batch_size,
                      cfg.eval_batch_size, args.progress)
    put = lambda d: jax.device_put(jax.tree.map(np.asarray, d))  # noqa: E731
    r0, r1 = exp.scenario.round(0), exp.scenario.round(1)
    val, test = put(r1.validation), put(r1.test)
    pooled = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), val, test)
    row: dict = {"seed": seed, "n_base": r0.n_all, "n_all": r1.n_all, "n_new": r1.n_new,
                 "n_pooled": int(len(jax.tree.leaves(pooled)[0]))}

    t0 = time.perf_counter()
    base_key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    st, _, _ = run_plan(trainer, exp, pols["growprune"].plan(0), pols["growprune"],
                        RoundData(put(r0.new), put(r0.all), val), val, pooled, base_key)
    base = model_of(st)
    row.update(base_params=gpjax.count_params(st.masks).active,
               base_pooled_error=100 * trainer.error(st, pooled),
               base_test_error=100 * trainer.error(st, test), base_wall_s=time.perf_counter() - t0)
    log(f"seed {seed}: base on {r0.n_all} images: {row['base_params']:,} params, pooled "
        f"{row['base_pooled_error']:.2f}% ({row['base_wall_s']:.0f} s)")

    data = RoundData(put(r1.new), put(r1.all), val)
    curves = {}
    for arm in ARMS:
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)  # same stream for both arms
        st, curve, ulog = run_plan(trainer, exp, pols[arm].plan(1), pols[arm], data, val,
                                   pooled, key, carry=base)
        pcost, stopped = ulog.cost.by_phase.get("prune", 0.0), ulog.stopped.get("prune", "")
        curves[arm] = curve
        row.update({
            f"{arm}_growth_cost": curve[-1]["cost"],
            f"{arm}_grown_params": curve[-1]["active"],
            f"{arm}_grown_pooled_error": curve[-1]["pooled_error"],
            f"{arm}_best_pooled_error": min(p["pooled_error"] for p in curve[1:]),
            f"{arm}_final_params": gpjax.count_params(st.masks).active,
            f"{arm}_final_pooled_error": 100 * trainer.error(st, pooled),
            f"{arm}_final_val_error": 100 * trainer.error(st, val),
            f"{arm}_final_test_error": 100 * trainer.error(st, test),
            f"{arm}_prune_cost": pcost, f"{arm}_prune_stopped": stopped,
            f"{arm}_wall_s": time.perf_counter() - t0,
        })
        log(f"seed {seed} {arm:>9}: grown {curve[-1]['active']:,} params, pooled "
            f"{curve[-1]['pooled_error']:.2f}% after {curve[-1]['cost']:.1f} epochs; pruned "
            f"{row[f'{arm}_final_params']:,} params, test {row[f'{arm}_final_test_error']:.2f}% "
            f"({row[f'{arm}_wall_s']:.0f} s)")
    targets = {"common": common_target(curves), "base": row["base_pooled_error"]}
    if args.fixed_target is not None:
        targets["fixed"] = args.fixed_target
    for rule, target in targets.items():
        row[f"target_{rule}"] = target
        for arm in ARMS:
            row[f"{arm}_cost_{rule}"] = cost_to_target(curves[arm], target)
        row[f"ratio_{rule}"] = ratio(row[f"merged_cost_{rule}"], row[f"growprune_cost_{rule}"])
    row["ratio_budget"] = ratio(row["merged_growth_cost"], row["growprune_growth_cost"])
    row["curves"] = curves
    log(f"seed {seed}: " + ", ".join(
        f"{rule} target {t:.2f}%: ours {_f(row[f'growprune_cost_{rule}'])}, merged "
        f"{_f(row[f'merged_cost_{rule}'])}, ratio {_f(row[f'ratio_{rule}'], '{:.2f}')}"
        for rule, t in targets.items()))
    return row


def _f(x, fmt: str = "{:.1f}") -> str:
    return "not reached" if x is None else fmt.format(x)


# ------------------------------------------------------------------------------ outputs

TARGET_TEXT = {
    "common": "the larger of the two arms' lowest pooled errors during growth (the best level "
              "both reach)",
    "base": "the pooled error of the inherited base model",
    "fixed": "a fixed level (--fixed-target)",
}


def markdown(rows: list[dict], command: str, args_text: str) -> str:
    rules = [k[len("target_"):] for k in rows[0] if k.startswith("target_")]
    r0 = rows[0]
    lines = [
        '# FIG. 6: "new data first" (ours) vs "merged", paired replicates', "",
        f"Command: `{command}`", "", args_text, "",
        f"Per seed: a base model on {r0['n_base']:,} images (90%), then the update with the "
        f"last {r0['n_new']:,} (10%), both arms from that same model. Error: pooled validation "
        f"+ test ({r0['n_pooled']:,} images). Cost: normalised epochs (a pass over the 10% "
        "chunk counts 0.1; growth-gradient passes count) until the first training epoch whose "
        "pooled error is at or below the target; pruning is not counted. Ratio = merged / ours "
        "(> 1: new data first is cheaper; SPEC: 49 / 21.5 = 2.3).", "",
        "Target rules: " + "; ".join(f"`{r}`: {TARGET_TEXT[r]}" for r in rules) +
        ". `budget`: merged / ours total growth cost (the ratio when a target is reached only "
        "at the end).", "",
        "| seed | base err % | " + " | ".join(
            f"{r} target % | ours | merged | ratio" for r in rules) +
        " | budget ratio | ours final err % / params | merged final err % / params |",
        "|---|---|" + "---|---|---|---|" * len(rules) + "---|---|---|",
    ]
    for r in rows:
        cells = [str(r["seed"]), f"{r['base_pooled_error']:.2f}"]
        for rule in rules:
            cells += [f"{r[f'target_{rule}']:.2f}", _f(r[f"growprune_cost_{rule}"]),
                      _f(r[f"merged_cost_{rule}"]), _f(r[f"ratio_{rule}"], "{:.2f}")]
        cells.append(_f(r["ratio_budget"], "{:.2f}"))
        for arm in ARMS:
            cells.append(f"{r[f'{arm}_final_pooled_error']:.2f} / "
                         f"{r[f'{arm}_final_params'] / 1e3:.1f}K")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± s.e. over seeds (n: seeds where defined):", "",
              "| quantity | mean ± s.e. | n |", "|---|---|---|"]

    def add(label, values, fmt="{:.2f}"):
        m, s, n = mean_se(values)
        lines.append(f"| {label} | " + ("-" if n == 0 else f"{fmt.format(m)} ± {fmt.format(s)}")
                     + f" | {n} |")

    for rule in rules:
        add(f"ratio merged / ours, `{rule}` target", [r[f"ratio_{rule}"] for r in rows])
        for arm in ARMS:
            add(f"{arm} cost to `{rule}` target (epochs)", [r[f"{arm}_cost_{rule}"] for r in rows],
                "{:.1f}")
    add("ratio, budget", [r["ratio_budget"] for r in rows])
    add("base pooled error %", [r["base_pooled_error"] for r in rows])
    for arm in ARMS:
        add(f"{arm} pooled error after growth %", [r[f"{arm}_grown_pooled_error"] for r in rows])
        add(f"{arm} final (pruned) pooled error %", [r[f"{arm}_final_pooled_error"] for r in rows])
        add(f"{arm} final test error %", [r[f"{arm}_final_test_error"] for r in rows])
        add(f"{arm} final params (K)", [r[f"{arm}_final_params"] / 1e3 for r in rows], "{:.1f}")
    add("final pooled error, merged - ours (points)",
        [r["merged_final_pooled_error"] - r["growprune_final_pooled_error"] for r in rows])
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [k[len("target_"):] for k in rows[0] if k.startswith("target_")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]})
    colors = plt.get_cmap("tab10")
    lo, hi = [], []
    for r in rows:
        c = colors(r["seed"] % 10)
        for arm, style in zip(ARMS, ("-", "--"), strict=True):
            pts = r["curves"][arm]
            ax.plot([p["cost"] for p in pts], [p["pooled_error"] for p in pts], style, color=c,
                    marker="o", ms=2.5, lw=1,
                    label=f"seed {r['seed']} {'ours' if arm == 'growprune' else 'merged'}")
            lo.append(min(p["pooled_error"] for p in pts))
        ax.axhline(r["target_common"], color=c, lw=0.6, ls=":")
        hi.append(r["base_pooled_error"])
    ax.set_ylim(min(lo) - 0.1, max(hi) * 1.6 + 0.1)
    ax.set_xlabel("cost (normalised epochs)")
    ax.set_ylabel(f"pooled val+test error % ({rows[0]['n_pooled']:,} images)")
    ax.set_title("update with the last 10%: ours (solid) vs merged (dashed); dotted: common target")
    ax.legend(fontsize=7, ncol=2)
    for i, rule in enumerate([*rules, "budget"]):
        vals = [r[f"ratio_{rule}"] for r in rows]
        xs = [i + 0.08 * (k - len(rows) / 2) for k in range(len(rows))]
        ax2.scatter([x for x, v in zip(xs, vals, strict=True) if v is not None],
                    [v for v in vals if v is not None], color="gray", s=16)
        m, s, n = mean_se(vals)
        if n:
            ax2.errorbar(i, m, yerr=s, fmt="o", color="k", capsize=4)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.axhline(49 / 21.5, color="tab:red", lw=0.8, ls="--", label="SPEC 2.3")
    ax2.set_xticks(range(len(rules) + 1), [*rules, "budget"])
    ax2.set_ylabel("cost ratio merged / ours")
    ax2.set_title("per seed (dots), mean ± s.e.")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(rows: list[dict], out: Path, command: str, args_text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"command": command, "args": args_text,
                                               "rows": rows}, indent=1))
    flat = [{k: v for k, v in r.items() if k != "curves"} for r in rows]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    (out / "summary.md").write_text(markdown(rows, command, args_text))
    plot(rows, out / "fig6.png")


def describe(args: argparse.Namespace) -> str:
    pols = policies(args)
    g, m = pols["growprune"], pols["merged"]
    p = g.prune
    return (f"Base: grow {g.first_epochs} epochs from a {g.seed_density:g}-dense seed "
            f"(growth every {g.grow_every}, percentile {g.growth_percentile:g}), then prune. "
            f"Ours: {g.new_epochs} epochs on the new 10% + {g.all_epochs} on all; merged: "
            f"{m.all_epochs} on all (lr {g.learning_rate:g} cosine per phase). Pruning (all "
            f"models): {p.percentile:g}% per iteration, <= {p.max_retrain_epochs} retraining "
            f"epoch(s) from lr {p.retrain_lr:g}, tolerance {p.tolerance:g} points, patience "
            f"{p.patience}, <= {p.max_iterations} iterations. " + _scale_text(args, p))


SPEC_FIG6 = {"first_epochs": 90, "new_epochs": 15, "all_epochs": 20}
"""The SPEC protocol's epochs for FIG. 6 (merged: 35, the same growth epochs, or 49)."""


def _scale_text(args: argparse.Namespace, prune) -> str:
    ours = {k: getattr(args, k) for k in SPEC_FIG6}
    if ours == SPEC_FIG6 and 3 <= prune.percentile <= 5:
        return "SPEC epochs and pruning step."
    return ("Reduced from SPEC's 90 / 15 + 20 / 35 (or 49) epochs and 3-5% steps, to fit "
            "~40 min on 2 CPU cores.")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    command = command_line("experiments.fig6", argv)
    saved = saved_rows(args, lambda rows, saved: write_outputs(
        rows, args.out, saved["command"], saved["args"]))
    if saved is not None:
        return saved
    args_text = describe(args)
    rows: list[dict] = []
    for seed in seeds(args):
        rows.append(run_seed(args, seed, log=lambda m: print(m, flush=True)))
        write_outputs(rows, args.out, command, args_text)  # partial results survive
    print(markdown(rows, command, args_text))
    return rows


if __name__ == "__main__":
    main()
