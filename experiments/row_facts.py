"""The numbers the results pages quote about pruning's tails and FIG. 6, read off the rows.

    python -m experiments.row_facts            # FIG. 10, FIG. 11 and FIG. 6 (committed rows)

Prints, for the GrowPrune runs of ``experiments/results/fig10`` and ``fig11``:

* per seed, the held pruning iterations that removed under 0.5% of the connections active
  before them, out of all held iterations (from each row's ``prune_curve``);
* the change in test error over the pruning tails: per round, the final model's test error
  minus the one at the tail's start (the first held iteration that removed under 1%, the rule
  of :mod:`experiments.pruning_tail`), averaged per seed, then mean ± s.e. over seeds;

and for FIG. 6 (``fig6_spec``, the 35-epoch merged arm, and ``fig6_spec/merged49``, the
protocol's 49): the ratio merged / ours of the epochs to the common target (growth only), and
of the whole update's cost (growth plus pruning), mean ± s.e. over the paired seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.pruning_tail import tail_start

RESULTS = Path(__file__).resolve().parent / "results"


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error (None for one value)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def small_steps(rows: Sequence[dict[str, Any]], fraction: float = 0.005) -> tuple[int, int]:
    """``(small, held)``: held iterations (over the rows' ``prune_curve``) that removed under
    ``fraction`` of the connections active before them, and all held iterations."""
    small = held = 0
    for r in rows:
        c = r.get("prune_curve") or []
        for a, b in zip(c, c[1:]):
            held += 1
            small += (a["active"] - b["active"]) < fraction * a["active"]
    return small, held


def tail_changes(rows: Sequence[dict[str, Any]], fraction: float = 0.01) -> list[float]:
    """Per round with a tail: final test error minus the test error at the tail's start."""
    out = []
    for r in rows:
        c = r.get("prune_curve") or []
        i = tail_start(c, fraction)
        if i is not None and "test_error" in c[i]:
            out.append(c[-1]["test_error"] - c[i]["test_error"])
    return out


def _runs(figure: str, policy: str = "growprune") -> dict[int, list[dict[str, Any]]]:
    out = {}
    for f in sorted((RESULTS / figure / "runs").glob(f"{policy}-seed*/results.json")):
        rows = json.loads(f.read_text())["rows"]
        out[rows[0]["seed"]] = rows
    return out


def _fmt(m: float, se: float | None, sign: str = "+") -> str:
    return f"{m:{sign}.2f}" + ("" if se is None else f" ± {se:.2f}")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    for figure in ("fig10", "fig11"):
        runs = _runs(figure)
        print(f"## {figure}: GrowPrune, {len(runs)} seeds")
        for seed, rows in runs.items():
            small, held = small_steps(rows)
            print(f"- seed {seed}: {small} / {held} held iterations removed < 0.5% "
                  f"({100 * small / held:.0f}%)")
        per_seed = {s: mean_se(tail_changes(rows))[0] for s, rows in runs.items()}
        print("- test error change over the tails (final - tail start), per seed: "
              + ", ".join(f"{s}: {v:+.3f}" for s, v in per_seed.items())
              + f"; over seeds {_fmt(*mean_se(list(per_seed.values())))} points")
    for name, sub in (("35-epoch merged arm", "fig6_spec"),
                      ("49-epoch merged arm", "fig6_spec/merged49")):
        rows = json.loads((RESULTS / sub / "runs.json").read_text())
        rows = rows["rows"] if isinstance(rows, dict) else rows
        total = [(r["merged_growth_cost"] + r["merged_prune_cost"])
                 / (r["growprune_growth_cost"] + r["growprune_prune_cost"]) for r in rows]
        print(f"## FIG. 6, {name} ({len(rows)} seeds): merged / ours epochs to the common "
              f"target {_fmt(*mean_se([r['ratio_common'] for r in rows]), '')}x (growth "
              f"only); whole update with pruning {_fmt(*mean_se(total), '')}x")


if __name__ == "__main__":
    main()
