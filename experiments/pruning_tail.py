"""What recoverable pruning's tail costs: a bound read off committed runs, no training.

    python -m experiments.pruning_tail experiments/results/fig11 --policy growprune

For every round of every ``<policy>-seed<k>`` run under ``DIR/runs`` (its ``prune_curve``: the
active parameters and errors after each held pruning iteration) and its round timer
(``DIR/breakdown/round_breakdown_*_<policy>_seed<k>.json``), the *tail* starts at the first held
iteration that removed under ``--fraction`` of the connections active before it. A rule "stop
there" would skip the iterations after it; each costs one validation and one test evaluation,
so the evaluation time it would save is estimated as

    saved_eval_s = (validation_s + test_s) * skipped / held

per round (``held``: held iterations of the round). The table gives, per seed, the tail's size,
the wall time and evaluation share as run and as they would be under the rule, and the test
error and size at the tail's start against the final model's: what stopping early would cost.
The estimate leaves the retraining epochs of the skipped iterations in (training would shrink
too), so it is a lower bound on the time saved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gpjax.report import load_rows


def tail_start(curve: list[dict[str, Any]], fraction: float) -> int | None:
    """Index of the first held iteration removing under ``fraction`` of the active before it.

    Args:
      curve: a round's ``prune_curve`` (dicts with ``active``), in pruning order.
      fraction: e.g. 0.01 for 1%.

    Returns:
      The index into ``curve``, or ``None`` when every iteration removed at least ``fraction``.
    """
    for i in range(1, len(curve)):
        before, after = curve[i - 1]["active"], curve[i]["active"]
        if before - after < fraction * before:
            return i
    return None


def _breakdown(run_dir: Path, policy: str, seed: int) -> dict[int, dict[str, float]]:
    files = sorted((run_dir / "breakdown").glob(f"round_breakdown_*_{policy}_seed{seed}.json"))
    if not files:
        raise SystemExit(f"no round timer for {policy} seed {seed} under {run_dir}/breakdown; "
                         "run experiments/protocol_seed.sh for it first")
    rounds = json.loads(files[-1].read_text())["rounds"]
    return {int(str(r["round"]).split()[0]): r for r in rounds}


def seed_summary(rows: list[dict[str, Any]], timer: dict[int, dict[str, float]],
                 fraction: float) -> dict[str, Any]:
    """The tail bound of one seed's rows (one per round) and its round timer."""
    wall = evals = saved = 0.0
    tails, size_ratio, stop = [], [], None
    for row in sorted(rows, key=lambda r: r["round"]):
        t = timer[int(row["round"])]
        curve = row["prune_curve"] or []
        eval_s = t["validation"] + t["test"]
        wall += t["wall_s"]
        evals += eval_s
        start = tail_start(curve, fraction)
        stop = None if start is None else (curve[start]["active"], curve[start]["test_error"])
        if stop is None:
            tails.append(0)
            continue
        skipped = len(curve) - 1 - start
        tails.append(skipped)
        saved += eval_s * skipped / len(curve)
        size_ratio.append(stop[0] / row["params_recoverable"])
    return {
        "tail_iterations": tails,
        "wall_s": wall, "eval_share": evals / wall,
        "saved_s": saved, "eval_share_with_rule": (evals - saved) / (wall - saved),
        "last_round_stop": stop,
        "last_round_final": (row["params_recoverable"], row["test_error"]),
        "size_ratio": size_ratio,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a protocol folder with runs/ and breakdown/")
    p.add_argument("--policy", default="growprune")
    p.add_argument("--fraction", type=float, default=0.01)
    a = p.parse_args(argv)
    rows = [r for r in load_rows(a.dir / "runs") if r["policy"] == a.policy]
    if not rows:
        raise SystemExit(f"no {a.policy} rows under {a.dir}/runs; pass --policy or another dir")
    print("| seed | tail iterations per round | wall s | eval share | saved s (>=) | "
          "eval share with rule | last round: tail start -> final (active, test %) | "
          "size at tail start / final |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        print(_table_row(seed, seed_summary(mine, _breakdown(a.dir, a.policy, seed), a.fraction)))


def _table_row(seed: int, s: dict[str, Any]) -> str:
    stop, final = s["last_round_stop"], s["last_round_final"]
    start = f"{stop[0]} / {stop[1]:.2f}" if stop else "no tail"
    ratios = s["size_ratio"]
    sizes = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
    return (f"| {seed} | {', '.join(map(str, s['tail_iterations']))} | {s['wall_s']:.0f} | "
            f"{100 * s['eval_share']:.1f}% | {s['saved_s']:.0f} | "
            f"{100 * s['eval_share_with_rule']:.1f}% | "
            f"{start} -> {final[0]} / {final[1]:.2f} | {sizes} |")


if __name__ == "__main__":
    sys.exit(main())
