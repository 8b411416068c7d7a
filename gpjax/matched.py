"""Errors at matched model sizes, read off each round's recoverable-pruning curve.

A result row may carry ``prune_curve``: in order, ``{"active": int, "val_error": float,
"test_error": float}`` (errors in percent) for the model before recoverable pruning starts and
after every *held* pruning iteration of the round, so the last entry is the round's final model.
Comparing final models alone mixes accuracy with size (a policy that stopped pruning earlier
looks better); this module reads each curve at a common size instead.

Read-off rule (:func:`error_at_size`): the error of the **largest model on the curve at or
under the budget** (``active <= size``): a model that was actually trained and fits the budget,
never an interpolated or extrapolated one. A budget below every point of a curve gives None
(reported as missing). On a curve of falling size the result is the error of the first point
that fits.

Two budgets per round:

* the paper's size: the source's "Ours" parameter count for that data fraction
  (:mod:`gpjax.paper`, by the rows' ``config`` name; none for class-incremental rounds);
* per pair of the reference policy (GrowPrune) and each baseline, per seed run by both: the
  **larger** of the two final sizes. It is the smallest budget both curves reach: the policy
  that ended larger has no model at or under the other's final size (its curve stops at its
  own final model), so the smaller final size would leave one side missing by construction.

The functions here return plain per-seed rows; :mod:`gpjax.report` averages them over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gpjax.paper import paper_table, paper_value

Row = dict[str, Any]
CURVE_KEY = "prune_curve"


def prune_curve(row: Mapping[str, Any]) -> list[dict[str, float]] | None:
    """The row's pruning curve, checked, or None when the row has none (older results).

    Raises:
      ValueError: a malformed curve (names the row and the expected form).
    """
    curve = row.get(CURVE_KEY)
    if curve is None:
        return None
    where = f"policy={row.get('policy')} seed={row.get('seed')} round={row.get('round')}"
    if not isinstance(curve, Sequence) or isinstance(curve, str) or not curve:
        raise ValueError(f"{CURVE_KEY} of row {where} must be a non-empty list of "
                         f'{{"active": int, "val_error": %, "test_error": %}}, got {curve!r:.80}')
    for i, p in enumerate(curve):
        if not isinstance(p, Mapping) or not isinstance(p.get("active"), (int, float)) \
                or isinstance(p.get("active"), bool):
            raise ValueError(f"{CURVE_KEY}[{i}] of row {where} needs an integer 'active' count, "
                             f"got {p!r:.80}")
    return [dict(p) for p in curve]


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def error_at_size(curve: Sequence[Mapping[str, Any]], size: float | None,
                  metric: str = "test_error") -> float | None:
    """Error of the largest model on ``curve`` with ``active <= size`` (see the module doc).

    Args:
      curve: ``[{"active": int, metric: float, ...}, ...]`` in pruning order.
      size: the budget (active connections); None gives None.
      metric: which error to read.

    Returns:
      The error, or None when no point of the curve is at or under ``size`` (a budget beyond
      the curve is missing, not extrapolated) or that point has no ``metric``. Equal sizes:
      the later point (more pruning iterations) wins.
    """
    if size is None:
        return None
    best = None
    for p in curve:
        if p["active"] <= size and (best is None or p["active"] >= best["active"]):
            best = p
    return None if best is None else _number(best.get(metric))


def paper_size_rows(rows: Sequence[Mapping[str, Any]], metric: str = "test_error") -> list[Row]:
    """Per row with a curve: the error at the paper's "Ours" size of its round.

    Returns:
      ``{"policy", "seed", "round", "data_fraction", "paper_size", "error_at_paper_size",
      "final_active"}`` per row with a ``prune_curve``; ``paper_size`` None when the config has
      no paper table, the data fraction is not in it, the cell is unreadable or the round is
      class-incremental (then the error is None too).
    """
    out = []
    for r in rows:
        curve = prune_curve(r)
        if curve is None:
            continue
        table = None if r.get("classes") else paper_table(r.get("config"))
        size = (paper_value(table, "params", "growprune", r.get("data_fraction"))
                if table is not None else None)
        out.append({"policy": r["policy"], "seed": r["seed"], "round": r["round"],
                    "data_fraction": r.get("data_fraction"), "paper_size": size,
                    "error_at_paper_size": error_at_size(curve, size, metric),
                    "final_active": curve[-1]["active"]})
    return out


def pair_rows(rows: Sequence[Mapping[str, Any]], reference: str,
              metric: str = "test_error") -> list[Row]:
    """Per round, baseline and seed run by both: the two errors at the larger final size.

    Args:
      rows: result rows (those without a curve are skipped).
      reference: the policy name (as in the rows) every other policy is paired with.
      metric: which error to read.

    Returns:
      ``{"policy": baseline, "seed", "round", "data_fraction", "budget", "error",
      "error_reference"}``: ``budget`` = max of the two final sizes of that seed, ``error`` the
      baseline's and ``error_reference`` the reference's error read off their curves there.
    """
    curves: dict[tuple[str, Any, Any], tuple[Mapping[str, Any], list]] = {}
    for r in rows:
        c = prune_curve(r)
        if c is not None:
            curves[(str(r["policy"]), r["round"], r["seed"])] = (r, c)
    out = []
    for (policy, rnd, seed), (r, c) in curves.items():
        if policy == reference or (reference, rnd, seed) not in curves:
            continue
        ref_c = curves[(reference, rnd, seed)][1]
        budget = max(c[-1]["active"], ref_c[-1]["active"])
        out.append({"policy": r["policy"], "seed": seed, "round": rnd,
                    "data_fraction": r.get("data_fraction"), "budget": budget,
                    "error": error_at_size(c, budget, metric),
                    "error_reference": error_at_size(ref_c, budget, metric)})
    return out
