"""Results of incremental runs: JSON/CSV rows, replicate summaries, paper-style tables, plots.

A *row* is one dict per policy x seed x round::

    {"policy": "growprune", "seed": 0, "round": 3, "data_fraction": 0.3,
     "test_error": 1.62,            # percent
     "val_error": 1.70,             # percent
     "params_recoverable": 17000,   # active connections of the model the next round inherits
     "params_nonrecoverable": 9800, # of the optional ultra-compact model (None if not made)
     "epochs": 93.0,                # training cost of this round, epochs normalised to all data
     "epochs_cumulative": 402.0, "wall_time_s": 31.4, "examples": 5_115_000,
     "prune_curve": [{"active": 60000, "val_error": 1.6, "test_error": 1.5}, ...],
     ...}                           # free extra keys are kept

``prune_curve`` (optional; older results lack it): the model before the round's recoverable
pruning and after each held iteration, in order (:mod:`gpjax.matched`).

:func:`write_rows` / :func:`load_rows` store and read them (``results.json`` + ``results.csv``;
unreadable files are named and skipped), :func:`summarise` averages replicates (mean and
standard error over seeds), :func:`markdown_table` renders the comparison table in the layout of
the patent's FIG. 10 followed, for rows with curves, by :func:`matched_size_tables` (errors at
the paper's size and at matched sizes of each pair of policies), :func:`plot_rows` draws error,
parameters and cost versus round and :func:`curve_figure` the last round's error-versus-size
curves. FIG. 5's :func:`pixel_connection_heatmap` / :func:`pixel_connection_heatmaps` live in
:mod:`gpjax.heatmaps` and are importable from here. Files are written atomically with the
umask's mode (:mod:`gpjax._files`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpjax import matched
from gpjax._files import atomic_write_text, pyplot, save_figure
from gpjax.heatmaps import pixel_connection_counts as pixel_connection_counts  # re-exported
from gpjax.heatmaps import pixel_connection_heatmap as pixel_connection_heatmap
from gpjax.heatmaps import pixel_connection_heatmaps as pixel_connection_heatmaps
from gpjax.paper import paper_table, paper_value

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
FORMAT = "gpjax-results"
FORMAT_VERSION = 1

#: Standard columns, in CSV order; extra keys follow, sorted.
COLUMNS = ("policy", "seed", "round", "data_fraction", "test_error", "val_error",
           "params_recoverable", "params_nonrecoverable", "epochs", "epochs_cumulative",
           "wall_time_s", "examples")
#: Keys that identify a row rather than measure something.
ID_KEYS = ("policy", "seed", "round")

#: Canonical policy keys in the paper's column order, and their display names.
POLICY_ORDER = ("tfs", "nft", "nest", "merged", "growprune")
POLICY_NAMES = {"tfs": "TFS", "nft": "NFT", "nest": "NeST", "merged": "Merged",
                "growprune": "Ours (GrowPrune)"}
_POLICY_ALIASES = {"ours": "growprune", "grow_prune": "growprune", "gp": "growprune",
                   "trainfromscratch": "tfs", "networkfinetuning": "nft", "finetune": "nft",
                   "mergedtraining": "merged"}

#: How metrics are shown in tables and plots: (label, scale, decimals).
METRIC_FORMATS: dict[str, tuple[str, float, int]] = {
    "test_error": ("error %", 1.0, 2),
    "val_error": ("val. error %", 1.0, 2),
    "params_recoverable": ("params (K)", 1e-3, 1),
    "params_nonrecoverable": ("params non-rec. (K)", 1e-3, 1),
    "epochs": ("epochs", 1.0, 1),
    "epochs_cumulative": ("cumulative epochs", 1.0, 1),
    "wall_time_s": ("wall time (s)", 1.0, 1),
    "examples": ("examples (M)", 1e-6, 2),
}

Row = dict[str, Any]


# ----------------------------------------------------------------------------- policies


def policy_key(name: str) -> str:
    """Canonical lower-case key of a policy name (``"NeST"`` -> ``"nest"``, ``"Ours"`` ->
    ``"growprune"``); unknown names are lower-cased."""
    k = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return _POLICY_ALIASES.get(k, k)


def policy_label(name: str) -> str:
    """Display name of a policy (``"growprune"`` -> ``"Ours (GrowPrune)"``)."""
    return POLICY_NAMES.get(policy_key(name), str(name))


def _policy_sort(name: str) -> tuple[int, str]:
    k = policy_key(name)
    return (POLICY_ORDER.index(k), k) if k in POLICY_ORDER else (len(POLICY_ORDER), k)


def ordered_policies(rows: Iterable[Row]) -> list[str]:
    """The policies present in ``rows``, in the order TFS / NFT / NeST / Merged / Ours / others."""
    return sorted({r["policy"] for r in rows}, key=_policy_sort)


# ----------------------------------------------------------------------------- I/O


def _plain(v: Any) -> Any:
    """numpy/jax scalars and arrays as plain Python values (for JSON)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return v


def _check_rows(rows: Sequence[Row]) -> None:
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise TypeError(f"row {i} is a {type(r).__name__}; rows must be dicts")
        missing = [k for k in ID_KEYS if k not in r]
        if missing:
            raise ValueError(f"row {i} lacks {missing}; every row needs policy, seed and round "
                             f"(got keys {sorted(r)})")


def columns(rows: Sequence[Row]) -> list[str]:
    """CSV columns: the standard ones present (or always, for the core ones), then extras."""
    keys = set().union(*(r.keys() for r in rows)) if rows else set()
    return list(COLUMNS) + sorted(keys - set(COLUMNS))


def write_rows(rows: Sequence[Row], out_dir: str | os.PathLike, *,
               metadata: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Writes ``results.json`` and ``results.csv`` into ``out_dir``, each atomically.

    Args:
      rows: result rows (see the module doc); each needs ``policy``, ``seed``, ``round``.
      out_dir: directory (created if missing).
      metadata: JSON-able run information stored in ``results.json`` (config, command, git
        revision...).

    Returns:
      ``(json_path, csv_path)``.
    """
    rows = [_plain(dict(r)) for r in rows]
    _check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": FORMAT_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "metadata": _plain(dict(metadata or {})), "columns": columns(rows), "rows": rows}
    try:
        text = json.dumps(doc, indent=1, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"result rows/metadata must be JSON-serialisable: {e}") from e
    json_path, csv_path = out / RESULTS_JSON, out / RESULTS_CSV
    atomic_write_text(json_path, text + "\n")

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=doc["columns"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else
                        json.dumps(r[k]) if isinstance(r.get(k), (list, dict, bool)) else r[k])
                    for k in doc["columns"]})
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _parse_csv_value(s: str) -> Any:
    if s == "":
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s[:1] in "[{" or s in ("true", "false", "null"):
        try:
            return json.loads(s)
        except ValueError:
            pass
    return s


def _read_one(path: Path) -> list[Row]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [{k: _parse_csv_value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    doc = json.loads(path.read_text())
    if isinstance(doc, list):
        return doc
    if isinstance(doc, Mapping) and isinstance(doc.get("rows"), list):
        return list(doc["rows"])
    raise ValueError(f"{path} is not a results file (expected a list of rows or a dict with "
                     f"'rows'; written by gpjax.report.write_rows)")


def load_rows(paths: Sequence[str | os.PathLike] | str | os.PathLike, *,
              on_error: str = "warn") -> list[Row]:
    """Reads rows from result files or directories and concatenates them.

    Args:
      paths: ``results.json`` / ``results.csv`` files, or directories: a directory's own
        ``results.json`` if it has one, otherwise every ``results.json`` below it (e.g. one
        output directory per seed or policy).
      on_error: what an unreadable file does (truncated or invalid JSON, not a results file,
        rows without policy/seed/round, no permission): ``"warn"`` skips it with one line
        ``gpjax: skipped <path>: <reason>`` on stderr, so the other runs are still reported;
        ``"raise"`` raises ``ValueError`` naming the file.

    Returns:
      The rows of every readable file (empty when none was). Where the same (policy, seed,
      round) appears twice, the later file wins, with a warning.

    Raises:
      FileNotFoundError: a path does not exist or a directory holds no results.
      ValueError: ``on_error="raise"`` and a file cannot be read.
    """
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            own = p / RESULTS_JSON
            found = [own] if own.is_file() else sorted(p.rglob(RESULTS_JSON))
            if not found:
                raise FileNotFoundError(f"no {RESULTS_JSON} in or below {p}; pass the --out "
                                        f"directory of a run (or the results file itself)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"results path {p} does not exist")
    by_id: dict[tuple, Row] = {}
    for f in files:
        try:
            rows = _read_one(f)
            if not isinstance(rows, list):
                raise ValueError("expected a list of rows")
            _check_rows(rows)
        except (OSError, ValueError, TypeError) as e:  # JSON/Unicode errors are ValueErrors
            reason = " ".join(str(e).split()) or type(e).__name__
            if on_error == "raise":
                raise ValueError(f"cannot read results file {f}: {reason}") from e
            print(f"gpjax: skipped {f}: {reason}", file=sys.stderr, flush=True)
            continue
        for r in rows:
            ident = (str(r["policy"]), r["seed"], r["round"])
            if ident in by_id:
                warnings.warn(f"duplicate result row policy={ident[0]} seed={ident[1]} "
                              f"round={ident[2]}; keeping the one from {f}", stacklevel=2)
            by_id[ident] = dict(r)
    return list(by_id.values())


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
      None when ``k < 2``; missing/None/NaN values are left out.
    """
    _check_rows(rows)
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
    section = matched_size_tables(rows, policies=pols)
    return text + ("\n" + section if section else "")


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

    Two tables (:mod:`gpjax.matched` has the read-off rule: the largest model of the round's
    recoverable-pruning curve at or under the size, never interpolated or extrapolated):

    * at the paper's size of the round (its "Ours" parameter count, :mod:`gpjax.paper`, for
      configs with a paper table), beside the paper's own errors of each policy present;
    * per pair Ours (GrowPrune) vs each baseline, at the larger of the two final sizes (per
      seed; the smallest size both curves reach).

    Args:
      rows: result rows; those without ``prune_curve`` (older results) are left out.
      policies: column order (default: all present, paper order).
      metric: the curve's error key (``"test_error"`` or ``"val_error"``).

    Returns:
      The Markdown section, or ``""`` when no row has a curve.
    """
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
        paper_pols = [p for p in pols if policy_key(p) in table.error]
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
                v = paper_value(table, "error", policy_key(p), frac)
                line.append("—" if v is None else f"{v:.2f}")
            for p in pols:
                line.append(_matched_cell(summary, counts, (p, rnd), "error_at_paper_size"))
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    reference = next((p for p in pols if policy_key(p) == "growprune"), None)
    pairs = matched.pair_rows(rows, reference, metric) if reference is not None else []
    if pairs:
        metrics = ["budget", "error", "error_reference"]
        summary, counts = _summary_index(pairs, metrics)
        ref = policy_label(reference)
        out += [f"### {ref} vs each baseline at the larger of their two final sizes", "",
                "Per seed run by both, the budget is the larger final size: the policy that "
                "ended smaller is read off its curve there, the other is its final model (the "
                "smaller final size lies beyond the larger model's curve).", "",
                f"| round | data | baseline | size (K) | baseline | {ref} | seeds |",
                "|---|---|---|---:|---:|---:|---:|"]
        for (p, rnd) in sorted(summary, key=lambda k: (k[1], _policy_sort(k[0]))):
            s = summary[(p, rnd)]
            size = _fmt(s["budget_mean"], s["budget_se"], s["n"], "params_recoverable")
            cells = [_matched_cell(summary, counts, (p, rnd), m)
                     for m in ("error", "error_reference")]
            out.append(f"| {rnd} | {_data_label(fractions.get(rnd, []))} | {policy_label(p)} | "
                       f"{size} | {cells[0]} | {cells[1]} | {s['n']} |")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def _series(summary: Sequence[Row], policy: str, metric: str):
    pts = [(s["round"], s[f"{metric}_mean"], s[f"{metric}_se"]) for s in summary
           if s["policy"] == policy and s.get(f"{metric}_mean") is not None]
    pts.sort(key=lambda t: t[0])
    x = np.array([p[0] for p in pts], float)
    y = np.array([p[1] for p in pts], float)
    e = np.array([p[2] if p[2] is not None else 0.0 for p in pts], float)
    return x, y, e


def build_figures(rows: Sequence[Row]) -> dict[str, Any]:
    """Matplotlib figures of error, parameters and cost versus round, one line per policy.

    Args:
      rows: result rows; error bars are the standard error over seeds (none for one seed).

    Returns:
      ``{"error": fig, "params": fig, "cost": fig}``, plus ``"curve"``
      (:func:`curve_figure`) when rows have ``prune_curve``. Each series is an error-bar
      container in ``ax.containers`` labelled with the policy's display name
      (" non-recoverable" appended for the dashed ultra-compact sizes); its data line
      ``container.lines[0]`` holds the per-round means: error in percent, parameters in K,
      cost in normalised epochs (cost figure: per round on the left axes, cumulative on the
      right). Close them with
      ``matplotlib.pyplot.close(fig)``.
    """
    if not rows:
        raise ValueError("build_figures needs at least one result row")
    plt = pyplot()
    summary = summarise(rows)
    pols = ordered_policies(rows)
    colors = {p: f"C{i}" for i, p in enumerate(pols)}
    rounds = sorted({s["round"] for s in summary})
    data = {r: _data_label([s.get("data_fraction_mean") for s in summary if s["round"] == r])
            for r in rounds}

    def axes_setup(ax, ylabel):
        ax.set_xlabel("round (data available)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(rounds)
        ax.set_xticklabels([f"{r}\n{data[r]}" if data[r] else str(r) for r in rounds])
        ax.grid(alpha=0.3)

    def draw(ax, metric, scale=1.0):
        for p in pols:
            x, y, e = _series(summary, p, metric)
            if len(x):
                ax.errorbar(x, y * scale, yerr=e * scale, color=colors[p], capsize=3,
                            marker="o", ms=4, label=policy_label(p))

    figs: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw(ax, "test_error")
    axes_setup(ax, "test error (%)")
    ax.set_title("Test error versus round")
    ax.legend()
    figs["error"] = fig

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in pols:
        for metric, style, suffix in (("params_recoverable", "-", ""),
                                      ("params_nonrecoverable", "--", " non-recoverable")):
            x, y, e = _series(summary, p, metric)
            if len(x):
                ax.errorbar(x, y * 1e-3, yerr=e * 1e-3, color=colors[p], ls=style, capsize=3,
                            marker="o", ms=4, label=policy_label(p) + suffix)
    axes_setup(ax, "active parameters (K)")
    ax.set_title("Model size versus round")
    ax.legend(fontsize="small")
    figs["params"] = fig

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    draw(ax1, "epochs")
    axes_setup(ax1, "training cost (epochs over all data)")
    ax1.set_title("Cost per round")
    draw(ax2, "epochs_cumulative")
    axes_setup(ax2, "cumulative cost (epochs)")
    ax2.set_title("Cumulative cost")
    ax1.legend(fontsize="small")
    fig.tight_layout()
    figs["cost"] = fig
    curve = curve_figure(rows)
    if curve is not None:
        figs["curve"] = curve
    return figs


def curve_figure(rows: Sequence[Row], metric: str = "test_error") -> Any | None:
    """Error versus active parameters along the last round's recoverable-pruning curves.

    One line per policy and seed (log x; the policy's display name labels its first seed's
    line), the final model of each drawn larger; the paper's "Ours" model of that round as a
    black star where the config has a paper table (:mod:`gpjax.paper`).

    Args:
      rows: result rows; only those of the last round with a ``prune_curve`` are drawn.
      metric: the curve's error key.

    Returns:
      The figure, or None when no row has a curve. ``ax.lines`` are the curves (x: active
      parameters, y: error in percent) in policy then seed order.
    """
    with_curve = [r for r in rows if matched.prune_curve(r) is not None]
    if not with_curve:
        return None
    plt = pyplot()
    last = max(r["round"] for r in with_curve)
    drawn = sorted((r for r in with_curve if r["round"] == last),
                   key=lambda r: (_policy_sort(r["policy"]), str(r["seed"])))
    colors = {p: f"C{i}" for i, p in enumerate(ordered_policies(rows))}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labelled = set()
    for r in drawn:
        curve = matched.prune_curve(r)
        x = [p["active"] for p in curve]
        y = [np.nan if p.get(metric) is None else p[metric] for p in curve]
        label = None if r["policy"] in labelled else policy_label(r["policy"])
        labelled.add(r["policy"])
        ax.plot(x, y, "-o", ms=3, lw=1, color=colors[r["policy"]], label=label)
        ax.plot(x[-1:], y[-1:], "o", ms=7, color=colors[r["policy"]])
    table = None if drawn[0].get("classes") else paper_table(drawn[0].get("config"))
    if table is not None:
        frac = drawn[0].get("data_fraction")
        size, err = (paper_value(table, w, "growprune", frac) for w in ("params", "error"))
        if size is not None and err is not None:
            ax.plot([size], [err], "k*", ms=12, label=f"paper Ours ({table.figure})")
    ax.set_xscale("log")
    ax.set_xlabel("active parameters (log scale)")
    ax.set_ylabel(("test" if metric == "test_error" else "validation") + " error (%)")
    ax.set_title(f"Recoverable pruning, round {last}: error versus size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def plot_rows(rows: Sequence[Row], out_dir: str | os.PathLike, *, dpi: int = 120) -> list[Path]:
    """Writes ``error_vs_round.png``, ``params_vs_round.png``, ``cost_vs_round.png`` and, for
    rows with ``prune_curve``, ``error_vs_params_last_round.png`` (:func:`curve_figure`).

    Args:
      rows: result rows (any number of seeds).
      out_dir: directory (created if missing).
      dpi: resolution.

    Returns:
      The PNG paths.
    """
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in build_figures(rows).items():
        path = out / ("error_vs_params_last_round.png" if name == "curve"
                      else f"{name}_vs_round.png")
        save_figure(fig, path, dpi)
        plt.close(fig)
        paths.append(path)
    return paths
