"""Figures of result rows: error, parameters and cost per round; error-versus-size curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpjax import matched
from gpjax._files import pyplot, save_figure
from gpjax.paper import paper_table, paper_value
from gpjax.report.rows import Row, _policy_sort, label_variants, ordered_policies, policy_label
from gpjax.report.tables import _data_label, summarise

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
    rows = label_variants(rows)
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
    rows = label_variants(rows)
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

