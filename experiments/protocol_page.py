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

``--compare PATH...`` adds other results (run folders of another protocol directory) to the
report, which then names each series by its config (``gpjax report``'s variants): an LSTM
directory read beside the H-LSTM runs it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CATEGORIES = ("train", "growth_gradients", "mask_update", "validation", "test", "checkpoint",
              "other")
HEAD = ["policy", "seed", "rounds", "wall min", "training", "growth gradients", "mask updates",
        "validation", "test curve", "checkpoints", "other", "compile s (inside)"]


def _seed(command: str) -> str:
    m = re.search(r"--seed (\d+)", command)
    return m.group(1) if m else "?"


def _span(rounds: list[int]) -> str:
    """``[0, 1, 2]`` -> "0-2", ``[5]`` -> "5", ``[1, 3]`` -> "1, 3", ``[]`` -> "?"."""
    r = sorted(set(rounds))
    if not r:
        return "?"
    if r == list(range(r[0], r[-1] + 1)):
        return f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0])
    return ", ".join(map(str, r))


def breakdown_table(directory: Path) -> str:
    """Markdown: one line per breakdown file (policy, seed, the rounds it timed), then the
    minutes per seed; a file that timed only some of the rounds is named beside its seed's
    sum."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    entries = []
    for p in sorted(directory.glob("*.json")):
        d = json.loads(p.read_text())
        seed = _seed(d.get("command", ""))
        for t in d["totals"]:
            rounds = [r["round"] for r in d.get("rounds", []) if r.get("policy") == t["policy"]]
            entries.append((t["policy"], seed, t, rounds))
    if not entries:
        return ""
    entries.sort(key=lambda e: (e[0], e[1]))
    n_rounds = 1 + max((max(e[3]) for e in entries if e[3]), default=-1)
    for policy, seed, t, rounds in entries:
        w = t["wall_s"]
        cells = ([policy, seed, _span(rounds), f"{w / 60:.1f}"]
                 + [f"{100 * t[k] / w:.0f}%" for k in CATEGORIES] + [f"{t['compile_s']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    everyone = {e[0] for e in entries}
    sums = []
    for s in sorted({e[1] for e in entries}):
        mine = [e for e in entries if e[1] == s]
        minutes = sum(e[2]["wall_s"] for e in mine) / 60
        notes = [f"{p}: rounds {_span(r)} only" for p, _, _, r in mine
                 if sorted(set(r)) != list(range(n_rounds))]
        if {e[0] for e in mine} != everyone:
            notes.insert(0, ", ".join(sorted({e[0] for e in mine})) + " only")
        sums.append(f"seed {s}: {minutes:.1f} min" + (f" ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines) + f"\n\nAll policies together, per seed: {', '.join(sums)}.\n"


def paper_section(figure: str) -> str:
    """The paper's table ``figure`` as :func:`gpjax.paper.markdown_tables` prints it."""
    from gpjax.paper import markdown_tables

    tables = markdown_tables()
    start = tables.index(f"{figure},")
    nxt = re.search(r"\nFIG\. \d+,", tables[start + 1:])
    end = start + 1 + nxt.start() if nxt else len(tables)
    return tables[start:end].strip() + "\n"


def page(directory: Path, figure: str, compare: Sequence[Path] = ()) -> str:
    """The page's markdown (``compare``: more results paths for the report)."""
    paths = [directory / "runs", *compare]
    report = subprocess.run([sys.executable, "-m", "gpjax", "report", *map(str, paths)],
                            capture_output=True, text=True, check=True).stdout
    named = " ".join(["runs"] + [os.path.relpath(c, directory) for c in compare])
    parts = [(directory / "intro.md").read_text().rstrip() + "\n"]
    table = breakdown_table(directory / "breakdown")
    if table:
        parts.append("## Where the wall time went (sums over the rounds)\n\n" + table)
    if (directory / "shows.md").exists():
        parts.append((directory / "shows.md").read_text().rstrip() + "\n")
    parts.append(f"## The report (`gpjax report {named}`)\n\n" + report.rstrip() + "\n")
    parts.append(f"## The paper's {figure} (`gpjax.paper`; columns TFS / NFT / NeST / Ours)\n\n"
                 + paper_section(figure))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--figure", required=True, help='the paper table, e.g. "FIG. 10"')
    ap.add_argument("--compare", nargs="+", type=Path, default=[], metavar="PATH",
                    help="other results the report reads beside runs/")
    args = ap.parse_args(argv)
    missing = [n for n in ("intro.md", "runs") if not (args.directory / n).exists()]
    if missing:
        ap.error(f"{args.directory} has no {', '.join(missing)}: a protocol directory holds "
                 "intro.md and runs/ (see this module's docstring)")
    absent = [str(c) for c in args.compare if not c.exists()]
    if absent:
        ap.error(f"--compare: no such results path {', '.join(absent)}")
    (args.directory / "README.md").write_text(page(args.directory, args.figure, args.compare))


if __name__ == "__main__":
    main()
