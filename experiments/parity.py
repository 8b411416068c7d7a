"""The update against train-from-scratch, round by round, on validation error (issue 11, part 2).

Probes are ordinary ``gpjax run`` outputs (a few rounds, a few seeds, one change each with
``--set``); this script lines them up. Every choice is made on validation error; test error is
only reported elsewhere (``gpjax report``)::

    gpjax run --config lenet300_mnist --policy growprune,tfs --rounds 2 --seeds 0,1,2 \\
        --out parity/base
    gpjax run --config lenet300_mnist --policy growprune --rounds 2 --seeds 0,1,2 \\
        --set growprune:learning_rate=0.05 --out parity/lr05
    python -m experiments.parity parity/base parity/lr05 --reference base/tfs

Per round and probe/policy (mean ± s.e. over seeds): the model before pruning (active
connections, validation error), the final recoverable model, normalised epochs, and the
validation error at a matched size against the reference (``gpjax.matched.pair_rows``: the
larger of the two final sizes, so both curves have a model there), with the difference
(negative: the probe is better than the reference).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from experiments.replicates import mean_se
from gpjax.matched import pair_rows, prune_curve
from gpjax.report import load_rows


def labelled_rows(dirs: Sequence[Path]) -> list[dict]:
    """The rows of each ``gpjax run`` output, policy renamed ``<dir name>/<policy>``."""
    rows = []
    for d in dirs:
        for r in load_rows(d):
            rows.append({**r, "policy": f"{Path(d).name}/{r['policy']}"})
    return rows


def _fmt(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    m, se, _ = mean_se(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def table(rows: list[dict], reference: str, metric: str = "val_error") -> str:
    """A Markdown table per round (see the module doc)."""
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in rows:
        if prune_curve(r) is not None:
            groups[(r["round"], r["policy"])].append(r)
    pairs: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for p in pair_rows(rows, reference, metric):
        pairs[(p["round"], p["policy"])].append(p)
    head = ["round", "probe/policy", "seeds", "start K", f"start {metric}", "final K",
            f"final {metric}", "epochs", "matched K", f"{metric} at matched", "reference there",
            "difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (rnd, pol), rs in sorted(groups.items()):
        curves = [prune_curve(r) for r in rs]
        ps = pairs.get((rnd, pol), [])
        ok = [p for p in ps if p["error"] is not None and p["error_reference"] is not None]
        cells = [str(rnd), pol, ",".join(str(r["seed"]) for r in rs),
                 _fmt([c[0]["active"] for c in curves], 1, 1e-3),
                 _fmt([c[0].get(metric) for c in curves]),
                 _fmt([c[-1]["active"] for c in curves], 1, 1e-3),
                 _fmt([c[-1].get(metric) for c in curves]),
                 _fmt([r["epochs"] for r in rs], 1),
                 _fmt([p["budget"] for p in ps], 1, 1e-3),
                 _fmt([p["error"] for p in ok]), _fmt([p["error_reference"] for p in ok]),
                 _fmt([p["error"] - p["error_reference"] for p in ok])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="gpjax run output directories")
    ap.add_argument("--reference", default="base/tfs",
                    help="<dir name>/<policy> every other probe is matched against")
    ap.add_argument("--metric", default="val_error")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    text = table(labelled_rows(args.dirs), args.reference, args.metric)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
