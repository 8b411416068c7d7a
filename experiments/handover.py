"""Hands an unfinished protocol run from one machine to the next through the repository.

A protocol seed (``experiments/protocol_seed.sh``) keeps its runs in ``$WORK`` under ``/tmp``,
which a new session's machine does not have. ``pack`` copies what a resume needs of each run
named (the newest checkpoint step, the config guards, the rows so far, its round-timer table)
into ``experiments/results/<figure>/inprogress/<policy>-seed<k>/``, small enough to commit
(about 1 MB for LeNet-5); ``unpack`` puts it back under a fresh ``$WORK``, where ``--resume``
continues from that step. ``protocol_seed.sh`` unpacks by itself, and a finished run's folder
is deleted from ``inprogress/`` when its results are committed.

    python -m experiments.handover --work /tmp/gpjax-fig11 --figure fig11 pack nft-seed0
    python -m experiments.handover unpack --work /tmp/gpjax-fig11 --figure fig11

Rows of a handed-over run are those of a run resumed on another machine: every round is
complete and valid, but bit-for-bit replay needs the machines of each part (recorded per
part in the table's ``segments``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

INPROGRESS = "inprogress"
ROWS = ("results.json", "results.csv")
CONFIG_FILE = "gpjax_config.json"


def _latest_step(checkpoints: Path) -> Path:
    steps = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit()]
    if not steps:
        raise SystemExit(f"handover: {checkpoints} holds no checkpoint step; nothing to hand over")
    return max(steps, key=lambda p: int(p.name))


def _tables(breakdown: Path, run: str) -> list[Path]:
    """The round-timer tables of ``run`` ("nft-seed0" -> ``*_nft_seed0.{json,md}``)."""
    tag = run.replace("-seed", "_seed")
    return sorted(breakdown.glob(f"round_breakdown_*_{tag}.*")) if breakdown.is_dir() else []


def pack(work: Path, dest: Path, runs: list[str]) -> list[Path]:
    """Copies what resuming each of ``runs`` needs from ``work`` into ``dest/<run>``.

    Args:
      work: a protocol seed's work directory (``runs/<run>/``, ``breakdown/``).
      dest: the figure's ``inprogress`` folder; each ``dest/<run>`` is replaced.
      runs: run names, ``<policy>-seed<k>``.

    Returns:
      The folders written.
    """
    written = []
    for run in runs:
        src = work / "runs" / run
        if not (src / "checkpoints").is_dir():
            raise SystemExit(f"handover: {src} holds no checkpoints; name a run of {work}/runs")
        step = _latest_step(src / "checkpoints")
        out = dest / run
        tmp = dest / f".{run}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(step, tmp / "runs" / run / "checkpoints" / step.name)
        for sub in ("checkpoints", "models"):
            if (src / sub / CONFIG_FILE).exists():
                (tmp / "runs" / run / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / sub / CONFIG_FILE, tmp / "runs" / run / sub / CONFIG_FILE)
        for name in ROWS:
            if (src / name).exists():
                shutil.copy2(src / name, tmp / "runs" / run / name)
        for table in _tables(work / "breakdown", run):
            (tmp / "breakdown").mkdir(parents=True, exist_ok=True)
            shutil.copy2(table, tmp / "breakdown" / table.name)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        written.append(out)
    return written


def unpack(src: Path, work: Path) -> list[str]:
    """Copies every handed-over run of ``src`` into ``work`` unless ``work`` has it already.

    Returns:
      The runs copied.
    """
    copied = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (work / "runs" / folder.name).exists():
            continue
        shutil.copytree(folder / "runs" / folder.name, work / "runs" / folder.name)
        if (folder / "breakdown").is_dir():
            shutil.copytree(folder / "breakdown", work / "breakdown", dirs_exist_ok=True)
        copied.append(folder.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("runs", nargs="*", help="pack: <policy>-seed<k> runs of WORK/runs")
    ap.add_argument("--work", type=Path, required=True, help="the protocol seed's WORK")
    ap.add_argument("--figure", required=True, help="experiments/results/<figure>")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_intermixed_args(argv)  # options before, between or after the runs
    dest = args.results / args.figure / INPROGRESS
    if args.action == "pack":
        if not args.runs:
            ap.error("pack needs the runs to hand over, e.g. nft-seed0")
        for out in pack(args.work, dest, args.runs):
            print(f"handover: packed {out}")
    elif dest.is_dir():
        for run in unpack(dest, args.work):
            print(f"handover: unpacked {run} into {args.work}/runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
