"""What the multi-seed experiment scripts share (``fig6``, ``stopping_rule``): their common
command-line options, the seed list, ``--merge`` / ``--summarise`` of saved rows, and the
mean ± standard error of a column."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

__all__ = ["add_replicate_args", "mean_se", "saved_rows", "seeds"]


def add_replicate_args(p: argparse.ArgumentParser, *, out: str, seeds: str,
                       tiny_help: str = "a few hundred examples (tests)") -> None:
    """Adds ``--out``, ``--seeds``, ``--tiny``, ``--merge``, ``--summarise``, ``--progress``.

    Args:
      p: the script's parser.
      out: default output directory.
      seeds: default comma-separated seeds.
      tiny_help: what ``--tiny`` shrinks.
    """
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--seeds", default=seeds)
    p.add_argument("--tiny", action="store_true", help=tiny_help)
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                   help="concatenate the rows of DIR/runs.json (e.g. seeds run as separate "
                        "processes) into OUT and rebuild the summary")
    p.add_argument("--summarise", action="store_true",
                   help="only rebuild summary.md and the PNG from OUT/runs.json")
    p.add_argument("--progress", action="store_true")


def seeds(args: argparse.Namespace) -> list[int]:
    """The ``--seeds`` list as ints."""
    return [int(s) for s in args.seeds.split(",") if s.strip()]


def saved_rows(args: argparse.Namespace,
               write_outputs: Callable[[list[dict], dict], None]) -> list[dict] | None:
    """Handles ``--merge`` (concatenate the rows of several ``runs.json`` into ``OUT``) and
    ``--summarise``: rebuilds the outputs from ``OUT/runs.json`` with
    ``write_outputs(rows, saved)`` (``saved``: the whole JSON, its ``command`` and ``args``)
    and returns the rows; None when neither option is given (run the experiment)."""
    if args.merge:
        parts = [json.loads((d / "runs.json").read_text()) for d in args.merge]
        saved = {**parts[0], "rows": [r for p in parts for r in p["rows"]],
                 "command": " ; ".join(dict.fromkeys(p["command"] for p in parts))}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runs.json").write_text(json.dumps(saved, indent=1))
    if not (args.summarise or args.merge):
        return None
    saved = json.loads((args.out / "runs.json").read_text())
    write_outputs(saved["rows"], saved)
    print((args.out / "summary.md").read_text())
    return saved["rows"]


def mean_se(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, standard error and count of the finite values (None and NaN skipped).

    The standard error is the sample standard deviation over ``sqrt(n)`` (0 for one value);
    with no finite value, ``(nan, nan, 0)``.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return math.nan, math.nan, 0
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se, int(v.size)
