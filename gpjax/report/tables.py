"""Replicate summaries (mean and standard error over seeds) and the Markdown tables:
the per-round comparison in the layout of FIG. 10 and the matched-size tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gpjax import matched
from gpjax.paper import fig7_row, paper_table, paper_value
from gpjax.report.rows import (
    COLUMNS,
    ID_KEYS,
    METRIC_FORMATS,
    Row,
    _check_rows,
    _policy_sort,
    _split_variant,
    base_policy,
    label_variants,
    ordered_policies,
    policy_key,
    policy_label,
)

# ----------------------------------------------------------------------------- summaries


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if _is_number(v) and not math.isnan(float(v))]
    if not vals:
        return None, None
    mean = float(np.mean(vals))
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else None
    return mean, se


def numeric_metrics(rows: Sequence[Row]) -> list[str]:
    """Keys (other than seed/round) holding numbers in any row: standard ones first."""
    keys = {k for r in rows for k, v in r.items() if _is_number(v) and k not in ID_KEYS}
    return [k for k in COLUMNS if k in keys] + sorted(keys - set(COLUMNS))


def summarise(rows: Sequence[Row], metrics: Sequence[str] | None = None) -> list[Row]:
    """Mean and standard error over seeds, per (policy, round).

    Args:
      rows: result rows (several seeds per policy and round for replicates).
      metrics: which keys to summarise; default every numeric key.

    Returns:
      One dict per (policy, round), ordered by policy (TFS, NFT, NeST, Merged, Ours, others)
      then round: ``{"policy", "round", "n", "seeds", "<m>_mean", "<m>_se", ...}``. ``n`` is the
      number of seeds; ``<m>_se`` is ``std(ddof=1) / sqrt(k)`` over the ``k`` seeds with a value,
      None when ``k < 2``; missing/None/NaN values are left out. Rows of several configs are
      summarised per (policy, config) (:func:`~gpjax.report.rows.label_variants`).
    """
    _check_rows(rows)
    rows = label_variants(rows)
    metrics = list(metrics) if metrics is not None else numeric_metrics(rows)
    groups: dict[tuple[str, Any], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["round"]), []).append(r)
    out = []
    for (policy, rnd) in sorted(groups, key=lambda k: (_policy_sort(k[0]), k[1])):
        g = groups[(policy, rnd)]
        s: Row = {"policy": policy, "round": rnd, "n": len(g),
                  "seeds": sorted((r["seed"] for r in g), key=str)}
        for m in metrics:
            s[f"{m}_mean"], s[f"{m}_se"] = _mean_se([r.get(m) for r in g])
        out.append(s)
    return out


# ----------------------------------------------------------------------------- tables


def _fmt(mean: float | None, se: float | None, n: int, metric: str) -> str:
    if mean is None:
        return "—"
    _, scale, dec = METRIC_FORMATS.get(metric, (metric, 1.0, 3))
    if metric not in METRIC_FORMATS:
        text = f"{mean:.4g}"
        return text if n < 2 or se is None else f"{text} ± {se:.2g}"
    text = f"{mean * scale:.{dec}f}"
    if n > 1 and se is not None:
        text += f" ± {se * scale:.{dec}f}"
    return text


def _data_label(values: list[Any]) -> str:
    vals = [float(v) for v in values if _is_number(v)]
    if not vals:
        return ""
    f = float(np.mean(vals))
    pct = 100 * f if f <= 1.0 + 1e-9 else f
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


def markdown_table(rows: Sequence[Row],
                   metrics: Sequence[str] = ("test_error", "params_recoverable", "epochs"),
                   *, policies: Sequence[str] | None = None) -> str:
    """The paper-style comparison table (layout of FIG. 10) as Markdown.

    One line per round (with its data fraction); for each metric, one column per policy in the
    order TFS / NFT / NeST / Merged / Ours (GrowPrune), whichever are present. Cells are
    "mean ± s.e." over seeds where a cell has more than one seed, the plain value otherwise.
    Parameters are shown in thousands (K), errors in percent.

    Args:
      rows: result rows (any number of seeds).
      metrics: row keys to show, in order.
      policies: restrict to / reorder these policies (default: all present, paper order).

    Returns:
      The Markdown text: the table, then a one-line note on what the cells are.
    """
    if not rows:
        raise ValueError("markdown_table needs at least one result row")
    rows = label_variants(rows)
    summary = summarise(rows, metrics=list(metrics) + ["data_fraction"])
    pols = list(policies) if policies is not None else ordered_policies(rows)
    known = {policy_key(p): p for p in ordered_policies(rows)}
    pols = [known.get(policy_key(p), p) for p in pols]
    rounds = sorted({s["round"] for s in summary})
    cell = {(s["policy"], s["round"]): s for s in summary}

    header = ["round", "data"]
    for m in metrics:
        label = METRIC_FORMATS.get(m, (m,))[0]
        header += [f"{label} {policy_label(p)}" for p in pols]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    max_n = 1
    for rnd in rounds:
        present = [cell[(p, rnd)] for p in pols if (p, rnd) in cell]
        line = [str(rnd), _data_label([s["data_fraction_mean"] for s in present])]
        for m in metrics:
            for p in pols:
                s = cell.get((p, rnd))
                if s is None:
                    line.append("—")
                    continue
                max_n = max(max_n, s["n"])
                line.append(_fmt(s[f"{m}_mean"], s[f"{m}_se"], s["n"], m))
        lines.append("| " + " | ".join(line) + " |")
    ns = sorted({s["n"] for s in summary})
    note = ("Cells: mean ± standard error over seeds (n = " + ", ".join(map(str, ns)) + ")."
            if max_n > 1 else "Cells: single run (one seed).")
    text = "\n".join(lines) + "\n\n" + note + "\n"
    for section in (recoverability_table(rows, policies=pols),
                    matched_size_tables(rows, policies=pols),
                    cost_table(rows, policies=pols), pruning_table(rows, policies=pols)):
        text += "\n" + section if section else ""
    return text


def _matched_cell(summary: Mapping[tuple, Row], counts: Mapping[tuple, dict],
                  key: tuple, metric: str) -> str:
    """"mean ± s.e." of a derived metric, with "(k/n)" when only k of n seeds have a value."""
    s = summary.get(key)
    if s is None:
        return "—"
    k, n = counts[key][metric]
    text = _fmt(s[f"{metric}_mean"], s[f"{metric}_se"], k, "test_error")
    return text if k == n or k == 0 else f"{text} ({k}/{n})"


def _summary_index(derived: Sequence[Row], metrics: Sequence[str]
                   ) -> tuple[dict[tuple, Row], dict[tuple, dict[str, tuple[int, int]]]]:
    summary = {(s["policy"], s["round"]): s for s in summarise(derived, metrics=metrics)}
    counts: dict[tuple, dict[str, tuple[int, int]]] = {}
    for r in derived:
        c = counts.setdefault((r["policy"], r["round"]), {})
        for m in metrics:
            k, n = c.get(m, (0, 0))
            c[m] = (k + (r.get(m) is not None), n + 1)
    return summary, counts


def matched_size_tables(rows: Sequence[Row], *, policies: Sequence[str] | None = None,
                        metric: str = "test_error") -> str:
    """Markdown: each policy's error at matched sizes, per round (rows with ``prune_curve``).

    Tables (:mod:`gpjax.matched` has the read-off rule: the largest model of the round's
    recoverable-pruning curve at or under the size, never interpolated or extrapolated):

    * at the paper's size of the round (its "Ours" parameter count, :mod:`gpjax.paper`, for
      configs with a paper table), beside the paper's own errors of each policy present;
    * per pair Ours (GrowPrune) vs each baseline of its config, at the larger of the two final
      sizes (per seed; the smallest size both curves reach);
    * when rows hold several configs, per policy run under more than one: its first config
      (in :func:`~gpjax.report.rows.ordered_policies`' order) vs each other, the same way.

    Args:
      rows: result rows; those without ``prune_curve`` (older results) are left out.
      policies: column order (default: all present, paper order).
      metric: the curve's error key (``"test_error"`` or ``"val_error"``).

    Returns:
      The Markdown section, or ``""`` when no row has a curve.
    """
    rows = label_variants(rows)
    at_paper = matched.paper_size_rows(rows, metric)
    if not at_paper:
        return ""
    pols = list(policies) if policies is not None else ordered_policies(rows)
    pols = [p for p in pols if any(r["policy"] == p for r in at_paper)]
    label = "test error" if metric == "test_error" else "validation error"
    out = ["## Matched sizes", "",
           f"{label.capitalize()} (%) read off each round's recoverable-pruning curve at a "
           "common size: the largest model on the curve at or under the size (a model that "
           "fits the budget; never interpolated, and \"—\" where no model of the curve is that "
           "small). Mean ± s.e. over seeds; \"(k/n)\" when only k of n seeds reach the size.",
           ""]
    fractions = {}
    for r in rows:
        fractions.setdefault(r["round"], []).append(r.get("data_fraction"))
    sized = [r for r in at_paper if r["paper_size"] is not None]
    if sized:
        table = next(paper_table(r.get("config")) for r in rows
                     if matched.prune_curve(r) is not None and paper_table(r.get("config")))
        summary, counts = _summary_index(at_paper, ["error_at_paper_size"])
        paper_pols = [b for b in dict.fromkeys(base_policy(p) for p in pols) if b in table.error]
        header = (["round", "data", "paper size (K)"]
                  + [f"paper {policy_label(p)}" for p in paper_pols]
                  + [policy_label(p) for p in pols])
        out += [f"### At the paper's size ({table.figure}, {table.title}: its \"Ours\" "
                f"parameter count of the round; paper errors: {table.error_metric} at each "
                f"policy's own size)", "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        for rnd in sorted({r["round"] for r in at_paper}):
            size = next((r["paper_size"] for r in at_paper
                         if r["round"] == rnd and r["paper_size"] is not None), None)
            frac = next((r["data_fraction"] for r in at_paper if r["round"] == rnd), None)
            line = [str(rnd), _data_label(fractions.get(rnd, [])),
                    "—" if size is None else f"{size / 1e3:.1f}"]
            for p in paper_pols:
                v = paper_value(table, "error", p, frac)
                line.append("—" if v is None else f"{v:.2f}")
            for p in pols:
                line.append(_matched_cell(summary, counts, (p, rnd), "error_at_paper_size"))
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    for reference in (p for p in pols if base_policy(p) == "growprune"):
        variant = _split_variant(reference)[1]
        out += _pair_section([r for r in rows if _split_variant(r["policy"])[1] == variant],
                             reference, metric, fractions,
                             f"{policy_label(reference)} vs each baseline", "baseline")
    for base in dict.fromkeys(base_policy(p) for p in pols):
        variants = [p for p in pols if base_policy(p) == base]
        if len(variants) > 1:  # one policy under several configs (an H-LSTM and an LSTM model)
            out += _pair_section([r for r in rows if base_policy(r["policy"]) == base],
                                 variants[0], metric, fractions,
                                 f"{policy_label(variants[0])} vs the other configs", "config")
    return "\n".join(out)


def _pair_section(rows: Sequence[Row], reference: str, metric: str,
                  fractions: Mapping[Any, list], title: str, other: str) -> list[str]:
    """Lines of the table pairing ``reference`` with each other policy of ``rows``, per seed
    run by both (``other``: the column's name for them, "baseline" or "config")."""
    pairs = matched.pair_rows(rows, reference, metric)
    out: list[str] = []
    if pairs:
        metrics = ["budget", "error", "error_reference"]
        summary, counts = _summary_index(pairs, metrics)
        ref = policy_label(reference)
        out += [f"### {title} at the larger of their two final sizes", "",
                "Per seed run by both, the budget is the larger final size: the policy that "
                "ended smaller is read off its curve there, the other is its final model (the "
                "smaller final size lies beyond the larger model's curve).", "",
                f"| round | data | {other} | size (K) | {other} | {ref} | seeds |",
                "|---|---|---|---:|---:|---:|---:|"]
        for (p, rnd) in sorted(summary, key=lambda k: (k[1], _policy_sort(k[0]))):
            s = summary[(p, rnd)]
            size = _fmt(s["budget_mean"], s["budget_se"], s["n"], "params_recoverable")
            cells = [_matched_cell(summary, counts, (p, rnd), m)
                     for m in ("error", "error_reference")]
            out.append(f"| {rnd} | {_data_label(fractions.get(rnd, []))} | {policy_label(p)} | "
                       f"{size} | {cells[0]} | {cells[1]} | {s['n']} |")
        out.append("")
    return out


def recoverability_table(rows: Sequence[Row], *, policies: Sequence[str] | None = None) -> str:
    """Markdown, FIG. 7's layout: the last round's recoverable and non-recoverable models.

    Per policy with a non-recoverable model in the last round of ``rows``: test error and
    parameters of both (mean ± s.e. over seeds), beside FIG. 7's row for the config's network
    when the last round holds all the data (the figure's models are the final 100% ones).

    Returns:
      The Markdown section, or ``""`` when the last round has no non-recoverable model.
    """
    rows = label_variants(rows)
    last = max(r["round"] for r in rows)
    final = [r for r in rows if r["round"] == last and _is_number(r.get("params_nonrecoverable"))]
    if not final:
        return ""
    metrics = ["test_error", "params_recoverable", "test_error_nonrecoverable",
               "params_nonrecoverable"]
    summary = {s["policy"]: s for s in summarise(final, metrics=metrics + ["data_fraction"])}
    pols = [p for p in (policies if policies is not None else ordered_policies(final))
            if p in summary]
    out = [f"## Recoverable vs non-recoverable pruning (FIG. 7), round {last}", "",
           "| policy | seeds | data | recoverable: error % | params (K) | "
           "non-recoverable: error % | params (K) |", "|---|---:|---|---:|---:|---:|---:|"]
    for p in pols:
        s = summary[p]
        # Formatted as the recoverable model's error and parameter columns.
        cells = [_fmt(s[f"{m}_mean"], s[f"{m}_se"], s["n"],
                      "test_error" if m.startswith("test") else "params_recoverable")
                 for m in metrics]
        out.append(f"| {policy_label(p)} | {s['n']} | {_data_label([s['data_fraction_mean']])} "
                   f"| " + " | ".join(cells) + " |")
    paper = fig7_row(next((r.get("config") for r in final), None))
    fractions = [r.get("data_fraction") for r in final]
    if paper is not None and all(_is_number(f) and abs(f - 1.0) < 1e-6 for f in fractions):
        out.append(f"| paper ({paper.network}) | | 100% | {paper.recoverable_error:.2f} | "
                   f"{paper.recoverable_params / 1e3:.1f} | {paper.nonrecoverable_error:.2f} | "
                   f"{paper.nonrecoverable_params / 1e3:.1f} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- cost, pruning

#: An iteration that removes less than this share of the connections it starts from is a
#: "small" one in :func:`pruning_table` (the protection gave most of its step back).
SMALL_STEP = 0.005


def _ratio(num: float | None, den: float | None) -> str:
    return "—" if num is None or not den else f"{num / den:.2f}x"


def cost_table(rows: Sequence[Row], *, policies: Sequence[str] | None = None) -> str:
    """Markdown: each round's cost counted two ways, per policy, and its ratio to TFS's.

    "counted" is ``epochs`` (an iteration that holds without retraining costs nothing);
    "paper" is ``epochs_paper`` (every pruning iteration retrains at least one epoch, the
    paper's reading; ``docs/method.md``, "Cost"). Rows written before ``epochs_paper``
    existed have "—" there.

    Returns:
      The Markdown section, or ``""`` when no row has ``epochs_paper``.
    """
    rows = label_variants(rows)
    if not any(_is_number(r.get("epochs_paper")) for r in rows):
        return ""
    summary = {(s["policy"], s["round"]): s
               for s in summarise(rows, metrics=["epochs", "epochs_paper", "data_fraction"])}
    pols = list(policies) if policies is not None else ordered_policies(rows)
    tfs = {_split_variant(p)[1]: p for p in pols if base_policy(p) == "tfs"}
    header = ["round", "policy", "seeds", "epochs counted", "epochs paper",
              "÷ TFS counted", "÷ TFS paper"]
    out = ["## Cost: counted and under the paper's reading", "",
           "Normalised epochs per round (mean ± s.e. over seeds). Counted: an iteration that "
           "holds without retraining costs nothing. Paper: every pruning iteration retrains at "
           "least one epoch. Ratios: the policy's mean over TFS's of the same config.", "",
           "| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---:|---:|"]
    for (p, rnd) in sorted(summary, key=lambda k: (k[1], _policy_sort(k[0]))):
        if p not in pols:
            continue
        s = summary[(p, rnd)]
        t = summary.get((tfs.get(_split_variant(p)[1]), rnd))
        cells = [_fmt(s[f"{m}_mean"], s[f"{m}_se"], s["n"], "epochs")
                 for m in ("epochs", "epochs_paper")]
        ratios = [_ratio(s[f"{m}_mean"], t[f"{m}_mean"] if t else None)
                  for m in ("epochs", "epochs_paper")]
        out.append(f"| {rnd} | {policy_label(p)} | {s['n']} | " + " | ".join(cells + ratios)
                   + " |")
    return "\n".join(out) + "\n"


def _iterations(row: Row) -> list[dict]:
    """The recoverable pruning iterations of a row (``prune_log``'s phases other than the
    non-recoverable one), in order; [] for rows written before ``prune_log`` existed."""
    log = row.get("prune_log") or {}
    return [e for name, its in log.items() if name != "nonrecoverable" for e in its]


def pruning_table(rows: Sequence[Row], *, policies: Sequence[str] | None = None) -> str:
    """Markdown: what each round's recoverable pruning did (rows with ``prune_log``).

    Per policy and round, summed over seeds: iterations, held, failed, iterations that
    removed less than :data:`SMALL_STEP` of the connections they started from, retraining
    epochs, and why the phases stopped (``prune_stopped``).

    Returns:
      The Markdown section, or ``""`` when no row has ``prune_log``.
    """
    rows = [r for r in label_variants(rows) if _iterations(r)]
    if not rows:
        return ""
    pols = list(policies) if policies is not None else ordered_policies(rows)
    out = ["## Recoverable pruning, iteration by iteration", "",
           f"Summed over seeds. Small: iterations that removed under {100 * SMALL_STEP:g}% of "
           "the connections they started from. `gpjax report --iterations` lists every "
           "iteration.", "",
           "| round | policy | seeds | iterations | held | failed | small | retraining epochs "
           "| stopped |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["round"]), []).append(r)
    for (p, rnd) in sorted(groups, key=lambda k: (k[1], _policy_sort(k[0]))):
        if p not in pols:
            continue
        its = [e for r in groups[(p, rnd)] for e in _iterations(r)]
        small = sum(e["removed"] < SMALL_STEP * (e["active"] + e["removed"]) for e in its)
        stops: dict[str, int] = {}
        for r in groups[(p, rnd)]:
            for name, why in (r.get("prune_stopped") or {}).items():
                if name != "nonrecoverable":
                    stops[why] = stops.get(why, 0) + 1
        held = sum(bool(e["held"]) for e in its)
        out.append(f"| {rnd} | {policy_label(p)} | {len(groups[(p, rnd)])} | {len(its)} | "
                   f"{held} | {len(its) - held} | {small} | "
                   f"{sum(e['retrain_epochs'] for e in its)} | "
                   + ", ".join(f"{k} x{v}" for k, v in sorted(stops.items())) + " |")
    return "\n".join(out) + "\n"


def iteration_table(row: Row) -> str:
    """Markdown: every pruning iteration of one row (policy, seed, round): active
    connections after it, connections removed, retraining epochs, val error right after the
    removal and after retraining, test error (when measured), held, kept.

    Returns:
      The Markdown section, or ``""`` for a row without ``prune_log``.
    """
    log = row.get("prune_log") or {}
    if not any(log.values()):
        return ""
    out = [f"### {policy_label(row['policy'])}, seed {row['seed']}, round {row['round']}"]
    for name, its in log.items():
        out += ["", f"Phase `{name}` (stopped: "
                f"{(row.get('prune_stopped') or {}).get(name, '?')}):", "",
                "| iteration | active | removed | retraining epochs | val % pruned | "
                "val % | test % | held | kept |", "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for e in its:
            cells = [e.get("iteration"), e.get("active"), e.get("removed"),
                     e.get("retrain_epochs")]
            errs = [e.get(k) for k in ("val_error_pruned", "val_error", "test_error")]
            out.append("| " + " | ".join("—" if c is None else str(c) for c in cells) + " | "
                       + " | ".join("—" if v is None else f"{v:.2f}" for v in errs) + " | "
                       + f"{'yes' if e.get('held') else 'no'} | "
                       + f"{'yes' if e.get('kept', e.get('held')) else 'no'} |")
    return "\n".join(out) + "\n"
