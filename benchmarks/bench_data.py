"""Data that outgrow memory (issue 32, part 3): peak memory of the store commands over ``.npy``
data, and a streamed epoch against the in-memory one.

1. **Peak RSS** of ``gpjax init`` (on the first half of the data) and ``gpjax update`` (the
   second half; it trains on both) over directories of ``x.npy`` + ``y.npy`` of MNIST-shaped
   float32 images totalling each of ``--sizes`` GB, measured by ``/usr/bin/time -v`` around the
   CLI (``Maximum resident set size``). The model is LeNet-300-100 at widths 32/16, one epoch
   per phase and one pruning iteration: the data path at the least training cost. Target:
   <= 1.2 GiB at every size. Data beyond the recipe's memory budget (256 MiB by default) are
   streamed (Grain, memory-mapped reads); smaller data take the in-memory path.
2. **Epoch speed**: a masked training epoch of LeNet-300-100 (density 0.1, batch 128) over 60,000
   MNIST-shaped images, from device-resident arrays (one jitted scan) and streamed from the
   memory-mapped ``.npy`` pair through the Grain pipeline, timed round-robin in one process
   (median of ``--repeats`` after a compiling warm-up). Target: streamed >= 0.85x the
   in-memory speed.

Usage::

    python -m benchmarks.bench_data                          # 0.1 and 1 GB, then the epochs
    python -m benchmarks.bench_data --sizes 0.1,1,4 --workdir /big/disk/tmp
    python -m benchmarks.bench_data --tiny                   # smoke run, nothing written

Results go to ``benchmarks/results/bench_data_<date>.md`` and ``.json`` (with the command).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from benchmarks.harness import (
    RESULTS_DIR,
    command_line,
    load_average,
    machine,
    versions,
    write_results,
)

GIB = 2**30
RSS_TARGET_GIB = 1.2
SPEED_TARGET = 0.85
SHAPE = (28, 28, 1)
POLICY_SETS = ["first_epochs=1", "new_epochs=1", "all_epochs=1", "grow_every=1",
               "prune.max_iterations=1", "nonrecoverable.max_iterations=1",
               "checkpoint_interval_s=1e9"]


def write_npy_dir(path: Path, n: int, seed: int, chunk: int = 16384) -> None:
    """``x.npy`` (float32 ``[n, 28, 28, 1]``) and ``y.npy`` (int64 labels: the brightest of
    ten bands) written a chunk at a time (never whole in memory)."""
    path.mkdir(parents=True, exist_ok=True)
    x = np.lib.format.open_memmap(path / "x.npy", "w+", np.float32, (n, *SHAPE))
    y = np.lib.format.open_memmap(path / "y.npy", "w+", np.int64, (n,))
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        xs = rng.random((m, *SHAPE), np.float32)
        x[s:s + m] = xs
        y[s:s + m] = xs[:, :20, :, 0].reshape(m, 10, -1).mean(-1).argmax(-1)
    x.flush()
    y.flush()
    del x, y


def peak_rss(cmd: Sequence[str], env: dict) -> tuple[float, float, int]:
    """``(peak RSS GiB, wall s, exit code)`` of a command under ``/usr/bin/time -v``."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0 or m is None:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
    return (int(m.group(1)) * 1024 / GIB if m else float("nan")), wall, p.returncode


def rss_rows(sizes_gb: Sequence[float], work: Path, hidden: str) -> list[dict]:
    """One row per size: peak RSS and wall time of ``gpjax init`` and ``gpjax update``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    per = 4 * int(np.prod(SHAPE)) + 8
    rows = []
    for gb in sizes_gb:
        d = work / f"{gb}GB"
        n_half = int(gb * 1e9 / per / 2)
        for i in range(2):
            write_npy_dir(d / f"part{i}", n_half, seed=i)
        gpjax = [sys.executable, "-m", "gpjax"]
        sets = [a for s in POLICY_SETS for a in ("--set", s)]
        init = [*gpjax, "init", str(d / "store"), "--model", "lenet300", "--model-kwargs",
                json.dumps({"hidden": json.loads(hidden)}), "--data", str(d / "part0"),
                "--no-progress", *sets]
        update = [*gpjax, "update", str(d / "store"), "--data", str(d / "part1"),
                  "--no-progress"]
        r_init, w_init, c_init = peak_rss(init, env)
        r_upd, w_upd, c_upd = peak_rss(update, env)
        data_gb = 2 * n_half * per / 1e9
        rows.append({"size_gb": gb, "data_gb": data_gb, "examples": 2 * n_half,
                     "init_rss_gib": r_init, "init_wall_s": w_init, "init_exit": c_init,
                     "update_rss_gib": r_upd, "update_wall_s": w_upd, "update_exit": c_upd})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(d)
    return rows


def epoch_times(work: Path, n: int, repeats: int,
                block_mib: Sequence[int] = (16,)) -> dict[str, list[tuple[float, float]]]:
    """``{case: [(wall s, CPU s), ...]}`` of a masked LeNet-300-100 epoch, in memory and
    streamed from a memory-mapped ``.npy`` pair (Grain pipeline, blocks of each of
    ``block_mib`` MiB)."""
    import gpjax
    from gpjax.data.pipeline import DataConfig, SourceSplit
    from gpjax.data.sources import NpyDirSource
    from gpjax.models import LeNet300
    from gpjax.train import (
        OptimizerConfig,
        TrainState,
        classifier_task,
        make_optimizer,
        steps_per_epoch,
        train_epoch,
    )

    write_npy_dir(work / "mnist", n, seed=0)
    split = SourceSplit([NpyDirSource(work / "mnist")])
    x, y = split.examples(np.arange(n))
    mem = (jax.device_put(x), jax.device_put(y))
    del x, y
    task = classifier_task(LeNet300())
    tx = make_optimizer(OptimizerConfig())
    rates = np.full(steps_per_epoch(n, 128), 0.05, np.float32)
    k_init, k_mask, k_run = jax.random.split(jax.random.key(0), 3)
    params, aux = task.init(k_init, (mem[0][:2],))
    masks = gpjax.init_masks(params, density=0.1, key=k_mask)
    params = gpjax.apply_masks(params, masks)
    states = {}
    cases = {"in memory (device-resident arrays, one scan)": (mem, DataConfig())}
    for mib in block_mib:
        cases[f"streamed (memory-mapped .npy, Grain blocks of {mib} MiB)"] = (
            split, DataConfig(block_bytes=mib * 2**20))
    for name in cases:
        states[name] = TrainState(params, masks, aux, tx.init(params), k_run)

    def run(name):
        t0, c0 = time.perf_counter(), time.process_time()
        data, cfg = cases[name]
        states[name], loss = train_epoch(states[name], data, rates, task=task, tx=tx,
                                         batch_size=128, scan=True, data_config=cfg)
        jax.block_until_ready(loss)
        return time.perf_counter() - t0, time.process_time() - c0

    for name in cases:  # compile
        states[name] = jax.tree.map(lambda a: a.copy(), states[name])
        run(name)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name in cases:
            times[name].append(run(name))
    return times


def markdown(rows: list[dict], times: dict, cmd: str, meta: dict) -> tuple[str, bool]:
    """The results as Markdown and whether both targets hold."""
    lines = [f"# Data that outgrow memory ({meta['date']})", "",
             f"Command: `{cmd}`", "",
             f"Machine: {meta['machine']}; load average at start {meta['load_start']}, at "
             f"end {meta['load_end']}. **Other jobs shared the 2 cores during this run**: wall "
             "times are inflated and noisy; the CPU seconds are steadier.", ""]
    if rows:
        lines += ["## Peak RSS of the store commands over `.npy` data", "",
                  "| data GB | examples | init peak RSS GiB | init wall s | update peak RSS GiB | "
                  "update wall s |", "|---:|---:|---:|---:|---:|---:|"]
    ok = True
    for r in rows:
        lines.append(f"| {r['data_gb']:.2f} | {r['examples']:,} | {r['init_rss_gib']:.2f} | "
                     f"{r['init_wall_s']:.0f} | {r['update_rss_gib']:.2f} | "
                     f"{r['update_wall_s']:.0f} |")
        ok &= max(r["init_rss_gib"], r["update_rss_gib"]) <= RSS_TARGET_GIB
        ok &= r["init_exit"] == 0 and r["update_exit"] == 0
    if rows:
        lines += ["", f"Target: <= {RSS_TARGET_GIB} GiB at every size: "
                      f"{'met' if ok else 'NOT met'}.", ""]
    speed_ok = True
    if times:
        med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
        mem_k, str_k = list(times)[:2]  # the first streamed case: the library's default
        speed = med[mem_k] / med[str_k]
        speed_ok = speed >= SPEED_TARGET
        lines += [f"## One training epoch, {meta['examples']:,} MNIST-shaped images, side by "
                  "side", "",
                  "| case | median wall s | min wall s | median CPU s | speed vs in memory |",
                  "|---|---:|---:|---:|---:|"]
        for k, v in times.items():
            lines.append(f"| {k} | {med[k]:.3f} | {min(w for w, _ in v):.3f} | "
                         f"{cpu[k]:.3f} | {med[mem_k] / med[k]:.2f}x |")
        lines += ["", f"Target: streamed >= {SPEED_TARGET}x the in-memory speed: measured "
                      f"{speed:.2f}x (median wall): {'met' if speed_ok else 'NOT met'}.", ""]
    return "\n".join(lines), ok and speed_ok


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.1,1", help="data sizes in GB (comma-separated)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--examples", type=int, default=60_000, help="epoch benchmark's images")
    ap.add_argument("--hidden", default="[32, 16]", help="the RSS runs' LeNet widths (JSON)")
    ap.add_argument("--workdir", default=None, help="where the data are written (deleted)")
    ap.add_argument("--block-mib", default="16", help="streamed block sizes timed, MiB "
                                                      "(comma-separated; the first is judged)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-epoch", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 0.002 GB, 512 images")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results; "
                                                "with --tiny nothing is written unless given)")
    args = ap.parse_args(argv)
    sizes = [0.002] if args.tiny else [float(s) for s in args.sizes.split(",")]
    n = 512 if args.tiny else args.examples
    repeats = 1 if args.tiny else args.repeats
    meta = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "load_start": load_average(), "versions": versions(), "examples": n}
    work = Path(tempfile.mkdtemp(prefix="bench_data_", dir=args.workdir))
    try:
        rows = [] if args.skip_rss else rss_rows(sizes, work, args.hidden)
        times = {} if args.skip_epoch else epoch_times(
            work, n, repeats, [int(b) for b in args.block_mib.split(",")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_end"] = load_average()
    cmd = command_line("benchmarks.bench_data", argv)
    text, ok = markdown(rows, times, cmd, meta)
    print(text)
    if args.out or not args.tiny:
        res = {**meta, "command": cmd, "rss": rows, "epoch_times": times, "targets_met": ok}
        stem = write_results(Path(args.out) if args.out else RESULTS_DIR,
                             f"bench_data_{meta['date']}", res, text)
        print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
