"""Where a round's wall time goes: training, growth passes, evaluation, checkpoints, compiling.

Runs the first rounds of an experiment config through ``gpjax run``'s loop with every policy
asked for, with the library's entry points wrapped by timers (for this measurement only):
training epochs (:meth:`Trainer.epoch`), growth-gradient passes, mask updates (grow / prune),
validation evaluations (:meth:`Trainer.error`), test evaluations of the pruning curve and of
the row, checkpoint saves, and XLA compilation (from ``jax.monitoring``; compile time is also
inside the category that triggered it, so it is reported beside them, not added).

    python -m benchmarks.round_breakdown --config lenet300_mnist --policy growprune,tfs \\
        --rounds 2 --out benchmarks/results

writes ``round_breakdown_<date><suffix>.md`` / ``.json``: per policy and round, seconds and
share of the round's wall time per category, and the same summed over each policy's rounds.
``--keep DIR`` keeps the runs as ``gpjax run`` writes them (``DIR/<policy>-seed<seed>``: rows,
models, checkpoints; ``--resume`` continues them), so a protocol run can be its own
measurement. The tables are rewritten after every round, so a killed run keeps the rounds it
finished; ``--resume`` with the same ``--suffix`` continues the newest table of that suffix in
``--out`` (the first round of each resumed process is marked ``resumed``: its wall time counts
only since that process started).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax

from benchmarks.harness import (
    RESULTS_DIR,
    command_line,
    load_average,
    machine,
    versions,
    write_results,
)

CATEGORIES = ("train", "growth_gradients", "mask_update", "validation", "test", "checkpoint",
              "other")


class Clock:
    """Seconds per category; a category entered inside another is not counted twice."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.compile_s = 0.0
        self._depth = 0

    @contextlib.contextmanager
    def time(self, category: str):
        if self._depth:
            yield
            return
        self._depth += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[category] += time.perf_counter() - t0
            self._depth -= 1

    def wrap(self, owner, name: str, category: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*a, **k):
            with self.time(category):
                out = fn(*a, **k)
                jax.block_until_ready(out)
                return out

        setattr(owner, name, timed)

    def on_event(self, event: str, seconds: float, **_) -> None:
        if "compil" in event and "backend" in event:
            self.compile_s += seconds


def instrument(clock: Clock) -> None:
    """Wraps the entry points the loop calls (this process only)."""
    import gpjax
    from gpjax.incremental import checkpoint, experiment, loop, phases
    clock.wrap(phases.Trainer, "epoch", "train")
    clock.wrap(phases.Trainer, "error", "validation")
    clock.wrap(phases, "growth_gradients", "growth_gradients")
    clock.wrap(gpjax, "grow", "mask_update")
    clock.wrap(gpjax, "prune", "mask_update")
    clock.wrap(checkpoint.RoundCheckpointer, "save", "checkpoint")
    clock.wrap(experiment.Experiment, "test_error", "test")
    original = loop._Run.finish_round

    def finish_round(self, *a, **k):
        # The row's test metrics are computed through exp.test_metrics, a field: time it here.
        metrics = self.exp.test_metrics

        def timed(*x):
            with clock.time("test"):
                return metrics(*x)

        object.__setattr__(self.exp, "test_metrics", timed)
        try:
            return original(self, *a, **k)
        finally:
            object.__setattr__(self.exp, "test_metrics", metrics)

    loop._Run.finish_round = finish_round
    jax.monitoring.register_event_duration_secs_listener(clock.on_event)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="lenet300_mnist")
    ap.add_argument("--policy", default="growprune,tfs")
    ap.add_argument("--rounds", type=int, default=None, help="first N rounds (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="write the runs to DIR (as gpjax run --out DIR) instead of a temp dir")
    ap.add_argument("--resume", action="store_true", help="continue the runs kept in --keep")
    ap.add_argument("--epoch-scale", type=float, default=1.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--suffix", default="")
    ap.add_argument("--no-compile-cache", action="store_true",
                    help="as gpjax run --no-compile-cache (default: the same disk cache)")
    args = ap.parse_args(argv)
    from gpjax.cli import enable_compile_cache, resolve
    cache = None if args.no_compile_cache else enable_compile_cache()
    from gpjax.incremental import build, run
    cfg, pols = resolve(args.config, args.policy.split(","), args.set, args.rounds,
                        args.epoch_scale)
    clock = Clock()
    instrument(clock)
    exp = build(cfg, args.seed)
    res = {"command": command_line("benchmarks.round_breakdown", argv), "machine": machine(),
           "versions": versions(), "compile_cache": cache, "load_start": load_average(),
           "rounds": []}
    stem, res = _table(args.out, args.suffix, res, resume=args.resume)
    fresh = {"process": True}
    for pol in pols:
        with contextlib.ExitStack() as stack:
            tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory())
            marks = {"seconds": dict(clock.seconds), "compile": clock.compile_s,
                     "t": time.perf_counter()}

            def on_round(event, r, state, carry, pol=pol, marks=marks):
                if event != "round_end":
                    return
                now = time.perf_counter()
                row = {"policy": pol.name, "seed": args.seed, "round": r,
                       "wall_s": now - marks["t"],
                       "compile_s": clock.compile_s - marks["compile"]}
                for c in CATEGORIES[:-1]:
                    row[c] = clock.seconds[c] - marks["seconds"].get(c, 0.0)
                row["other"] = row["wall_s"] - sum(row[c] for c in CATEGORIES[:-1])
                if fresh.pop("process", False) and res.get("segments"):
                    row["resumed"] = True
                res["rounds"] = [x for x in res["rounds"]
                                 if (x["policy"], x["round"]) != (pol.name, r)] + [row]
                _save(stem, res)
                marks.update(seconds=dict(clock.seconds), compile=clock.compile_s, t=now)

            run(exp, pol, args.seed, tmp, progress=False, callback=on_round,
                resume=args.resume)
    res["load_end"] = load_average()
    _save(stem, res)
    print(markdown(res))
    print(f"wrote {stem}.{{md,json}}")
    return res


def _table(out: Path, suffix: str, res: dict, *, resume: bool) -> tuple[Path, dict]:
    """Where this run's tables go and what they hold so far: with ``resume`` and a
    ``suffix``, the newest ``round_breakdown_*<suffix>.json`` in ``out`` (this process's
    command, machine and load are added to its ``segments``); else a new name."""
    found = sorted(out.glob(f"round_breakdown_*{suffix}.json"), key=lambda p: p.stat().st_mtime)
    if resume and suffix and found:
        old = json.loads(found[-1].read_text())
        seg = {k: res[k] for k in ("command", "machine", "versions", "load_start")}
        old["segments"] = [*old.get("segments", []), seg]
        return found[-1].with_suffix(""), old
    stem = write_results(out, f"round_breakdown_{time.strftime('%Y-%m-%d')}{suffix}", res,
                         markdown(res))
    return stem, res


def _save(stem: Path, res: dict) -> None:
    """Rewrites ``<stem>.md`` and ``.json`` (each through a temporary file and a rename)."""
    res["totals"] = totals(res["rounds"])
    for ext, text in ((".md", markdown(res)), (".json", json.dumps(res, indent=1, default=str))):
        tmp = stem.with_name(f"{stem.name}{ext}.tmp")
        tmp.write_text(text)
        tmp.replace(stem.with_name(stem.name + ext))


def markdown(res: dict) -> str:
    head = ["policy", "round", "wall s", *CATEGORIES, "compile s (inside)"]
    lines = [f"# Where a round's wall time goes ({time.strftime('%Y-%m-%d %H:%M UTC')})", "",
             f"Command: `{res['command']}`", "", f"Machine: {res['machine']}; load average "
             f"at start {res['load_start']}, at end {res.get('load_end')}.", "",
             "Seconds and share of the round's wall time (the callback that ends a round runs "
             "after its row and checkpoints; the next round's start state is counted in it).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in [*res["rounds"], *totals(res["rounds"])]:
        name = r["policy"] if isinstance(r["round"], int) else f"**{r['policy']}**"
        cells = [name, f"{r['round']}{' (resumed)' if r.get('resumed') else ''}",
                 f"{r['wall_s']:.1f}"]
        cells += [f"{r[c]:.1f} ({100 * r[c] / r['wall_s']:.0f}%)" for c in CATEGORIES]
        cells.append(f"{r['compile_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def totals(rounds: list[dict]) -> list[dict]:
    """Per policy, and over every policy when there are several: the rounds' sums."""
    keys = ("wall_s", "compile_s", *CATEGORIES)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rounds:
        groups[r["policy"]].append(r)
    if len(groups) > 1:
        groups["all policies"] = list(rounds)
    return [{"policy": name, "round": f"sum of {len(rs)}",
             **{k: sum(r[k] for r in rs) for k in keys}} for name, rs in groups.items()]


if __name__ == "__main__":
    main()
