"""Writes a protocol run's results page, ``<dir>/README.md``, from what the directory holds.

A protocol directory (``experiments/results/fig10``, ``fig13_cpu``, ...) holds:

    intro.md     the hand-written opening: what ran, on what machine, the exact commands
    shows.md     the hand-written reading of the results (optional)
    runs/        the rows as ``gpjax run`` writes them (``<policy>-seed<k>/results.{json,csv}``)
    breakdown/   ``benchmarks.round_breakdown`` JSON files, one per policy and seed (optional)

and the page is those pieces in that order, with between them the wall-time table (per policy
and seed: minutes and the share of each category, summed over the rounds), the ``gpjax report``
tables of ``runs/`` and the paper's figure (:mod:`gpjax.paper`)::

    python -m experiments.protocol_page experiments/results/fig10 --figure "FIG. 10"
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

CATEGORIES = ("train", "growth_gradients", "mask_update", "validation", "test", "checkpoint",
              "other")
HEAD = ["policy", "seed", "wall min", "training", "growth gradients", "mask updates",
        "validation", "test curve", "checkpoints", "other", "compile s (inside)"]


def _seed(command: str) -> str:
    m = re.search(r"--seed (\d+)", command)
    return m.group(1) if m else "?"


def breakdown_table(directory: Path) -> str:
    """Markdown: one line per breakdown file (policy, seed), then the minutes per seed."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    per_seed: dict[str, float] = {}
    entries = []
    for p in sorted(directory.glob("*.json")):
        d = json.loads(p.read_text())
        seed = _seed(d.get("command", ""))
        for t in d["totals"]:
            entries.append((t["policy"], seed, t))
            per_seed[seed] = per_seed.get(seed, 0.0) + t["wall_s"]
    if not entries:
        return ""
    for policy, seed, t in sorted(entries, key=lambda e: (e[0], e[1])):
        w = t["wall_s"]
        cells = ([policy, seed, f"{w / 60:.1f}"] + [f"{100 * t[k] / w:.0f}%" for k in CATEGORIES]
                 + [f"{t['compile_s']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    everyone = {e[0] for e in entries}
    ran = {s: sorted({e[0] for e in entries if e[1] == s}) for s in per_seed}
    totals = ", ".join(f"seed {s}: {m / 60:.1f} min"
                       + ("" if set(ran[s]) == everyone else f" ({', '.join(ran[s])} only)")
                       for s, m in sorted(per_seed.items()))
    return "\n".join(lines) + f"\n\nAll policies together, per seed: {totals}.\n"


def paper_section(figure: str) -> str:
    """The paper's table ``figure`` as :func:`gpjax.paper.markdown_tables` prints it."""
    from gpjax.paper import markdown_tables

    tables = markdown_tables()
    start = tables.index(f"{figure},")
    nxt = re.search(r"\nFIG\. \d+,", tables[start + 1:])
    end = start + 1 + nxt.start() if nxt else len(tables)
    return tables[start:end].strip() + "\n"


def page(directory: Path, figure: str) -> str:
    """The page's markdown."""
    report = subprocess.run([sys.executable, "-m", "gpjax", "report", str(directory / "runs")],
                            capture_output=True, text=True, check=True).stdout
    parts = [(directory / "intro.md").read_text().rstrip() + "\n"]
    table = breakdown_table(directory / "breakdown")
    if table:
        parts.append("## Where the wall time went (sums over the rounds)\n\n" + table)
    if (directory / "shows.md").exists():
        parts.append((directory / "shows.md").read_text().rstrip() + "\n")
    parts.append("## The report (`gpjax report runs`)\n\n" + report.rstrip() + "\n")
    parts.append(f"## The paper's {figure} (`gpjax.paper`; columns TFS / NFT / NeST / Ours)\n\n"
                 + paper_section(figure))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--figure", required=True, help='the paper table, e.g. "FIG. 10"')
    args = ap.parse_args(argv)
    missing = [n for n in ("intro.md", "runs") if not (args.directory / n).exists()]
    if missing:
        ap.error(f"{args.directory} has no {', '.join(missing)}: a protocol directory holds "
                 "intro.md and runs/ (see this module's docstring)")
    (args.directory / "README.md").write_text(page(args.directory, args.figure))


if __name__ == "__main__":
    main()
