"""The ``gpjax`` command: your own model store, experiments, reports, plots, exports.

Your model and data (:mod:`gpjax.cli_store`)::

    gpjax init store/ --model lenet300 --data part1.npz --test test.npz
    gpjax update store/ --data part2.npz --test test.npz
    gpjax history store/

Experiments::

    gpjax list
    gpjax run --config lenet300_mnist --policy growprune,tfs,nft,nest --seeds 0,1,2 \\
        --out results/mnist
    gpjax run --config lenet300_mnist --policy growprune --epoch-scale 0.25 --rounds 3 \\
        --set prune.tolerance=0.2 --set grow_every=2 --out results/quick
    gpjax run ... --resume          # continue every (policy, seed) from its last checkpoint
    gpjax report results/mnist      # Markdown table (TFS / NFT / NeST / Ours per round)
    gpjax report results/mnist --iterations --round 9   # every pruning iteration, round 9
    gpjax run ... --set max_epochs=30 --set prune.target_params=20000   # budgets per round
    gpjax plot results/mnist        # PNGs: error, parameters, cost vs round

``--set KEY=VALUE`` sets a field of the experiment config (``batch_size``, ``n_train``,
``model_kwargs={"hidden": [300, 100]}`` as JSON...) when KEY names one, else a field of the
policy (dotted for the pruning rules: ``prune.tolerance``, ``nonrecoverable=none``). A
``POLICY:KEY=VALUE`` form sets a field of one policy only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from gpjax._cli_common import UsageError, disk_fault, disk_fault_message
from gpjax.cli_export import add_export_parser
from gpjax.cli_store import add_parsers
from gpjax.distributed import add_process_args, initialize, process_config

POLICY_NAMES = ("growprune", "tfs", "nft", "nest", "merged")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (and the command to get help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parse_list(text: str, cast=str) -> list:
    return [cast(t) for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        seeds = _parse_list(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given; e.g. --seeds 0,1,2")
    return seeds


def _positive(cast):
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {cast.__name__}, got {text!r}") \
                from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v
    parse.__name__ = cast.__name__
    return parse


def _writable_dir(path: Path) -> None:
    """Refuses an ``--out`` that is a file or cannot be written, before anything runs."""
    import os
    p = path
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"--out {path}: {p} is a file, not a directory; choose "
                         "another --out")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: {p} is not writable; choose another "
                         "--out")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_sets(sets: list[str], experiment_fields: set[str]) -> tuple[dict, dict, dict]:
    exp, pol, per_policy = {}, {}, {}
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set wants KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        target = None
        if ":" in key:
            target, key = key.split(":", 1)
            if target not in POLICY_NAMES:
                raise UsageError(f"--set {item!r}: unknown policy {target!r}")
        if target is None and key.split(".")[0] in experiment_fields:
            exp[key] = _value(value)
        elif target is None:
            pol[key] = value
        else:
            per_policy.setdefault(target, {})[key] = value
    return exp, pol, per_policy


def scale_epochs(policy, factor: float):
    """The policy with every ``*epochs`` field multiplied by ``factor`` (rounded, >= 1 unless 0)."""
    if factor == 1.0:
        return policy
    changes = {}
    for f in dataclasses.fields(policy):
        v = getattr(policy, f.name)
        if (f.name.endswith("epochs") and f.name != "max_epochs"  # a cap is kept as given
                and isinstance(v, int) and not isinstance(v, bool) and v > 0):
            changes[f.name] = max(1, round(v * factor))
    return dataclasses.replace(policy, **changes)


def _merge_overrides(*layers: dict) -> dict:
    """Dotted-key overrides, later layers winning; a key set whole (``nonrecoverable=none``)
    also drops the earlier layers' keys below it (``nonrecoverable.retrain_lr``), which would
    otherwise bring the default back."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            out = {k: v for k, v in out.items() if not k.startswith(key + ".")}
            out[key] = value
    return out


def resolve(config: str, policies: list[str], sets: list[str], rounds: int | None = None,
            epoch_scale: float = 1.0):
    """The experiment config and policy values a ``gpjax run`` command line describes."""
    from gpjax.incremental.configs import ExperimentConfig, get_config
    from gpjax.incremental.policies import make_policy

    try:
        cfg = get_config(config)
    except KeyError as e:
        raise UsageError(f"--config: {e.args[0]}") from None
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    exp_over, pol_over, per_policy = _split_sets(sets, fields)
    changes = {}
    for key, value in exp_over.items():
        if "." in key:
            raise UsageError(f"--set {key}: experiment fields are set whole (JSON values)")
        if key == "optimizer" and isinstance(value, dict):
            value = dataclasses.replace(cfg.optimizer, **value)
        if key == "class_rounds" and isinstance(value, list):
            value = tuple(tuple(c) for c in value)
        changes[key] = value
    if rounds is not None:
        changes["rounds"] = rounds
    try:
        cfg = dataclasses.replace(cfg, **changes)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--set: {e}") from None
    out = []
    for name in policies:
        if name not in POLICY_NAMES:
            raise UsageError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        over = _merge_overrides(cfg.policies.get(name, {}), pol_over, per_policy.get(name, {}))
        try:
            pol = make_policy(name, over)
        except KeyError as e:
            raise UsageError(f"--set: {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise UsageError(f"--set ({name}): {e}") from None
        out.append(scale_epochs(pol, epoch_scale))
    return cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    from gpjax.incremental.experiment import build
    from gpjax.incremental.loop import run, run_dir

    policies = _parse_list(args.policy)
    seeds = args.seeds if args.seeds else list(range(args.seed, args.seed + args.repeats))
    cfg, pols = resolve(args.config, policies, args.set or [], args.rounds, args.epoch_scale)
    out = Path(args.out)
    _writable_dir(out)
    _check_runs(cfg, pols, seeds, out, args)
    built = {}
    if any(p.prune.target_params is not None for p in pols):
        key = seeds[0] if cfg.data_seed is None else None
        built = {key: build(cfg, seeds[0])}
        _check_target(built[key], pols)
    out.mkdir(parents=True, exist_ok=True)
    devices = None
    if args.devices:
        import jax
        if jax.process_count() > 1:
            raise UsageError("--devices picks local devices of one process; with several "
                             "processes every device takes part. Fix: drop --devices")
        devices = jax.local_devices()[: args.devices]
    for seed in seeds:
        for pol in pols:
            key = seed if cfg.data_seed is None else None
            if key not in built:
                built = {key: build(cfg, seed)}  # data and compiled code shared by policies
            rows = run(built[key], pol, seed, out, resume=args.resume,
                       progress=not args.no_progress, devices=devices,
                       overwrite=args.overwrite)
            last = rows[-1]
            print(f"{pol.name} seed {seed}: {len(rows)} rounds, last round test error "
                  f"{last['test_error']:.2f}%, {last['params_recoverable']} params "
                  f"(non-recoverable {last.get('params_nonrecoverable')}), "
                  f"{last['epochs']:.1f} epochs -> {run_dir(out, pol, seed)}", flush=True)
    if args.report:
        rows = _load(out)
        _write_report(rows, out)
    return 0


def _check_target(exp, pols) -> None:
    """Refuses a ``prune.target_params`` above the model's connections (before any run)."""
    import jax

    from gpjax.masks import count_params, init_masks
    params, _ = exp.task.init(jax.random.PRNGKey(0), exp.example_batch)
    dense = count_params(init_masks(params)).dense
    for p in pols:
        n = p.prune.target_params
        if n is not None and n > dense:
            raise UsageError(f"--set prune.target_params={n} ({p.name}) is more than the "
                             f"model's {dense} connections; Fix: give a target <= {dense}")


def _check_runs(cfg, pols, seeds, out: Path, args) -> None:
    """Every run directory is free and holds nothing of another config: checked for all runs
    before the first starts."""
    from gpjax.incremental.loop import check_results, run_config, run_config_defaults, run_dir
    for seed in seeds:
        for pol in pols:
            d = run_dir(out, pol, seed)
            ckpt = d / "checkpoints"
            has_ckpt = ckpt.exists() and any(ckpt.iterdir())
            if not args.resume and has_ckpt:
                raise UsageError(f"{ckpt} already holds checkpoints: pass "
                                 "--resume to continue that run, or choose another --out")
            if not has_ckpt:
                check_results(d, run_config(cfg, pol, seed), overwrite=args.overwrite,
                              defaults=run_config_defaults(cfg, pol, seed))


def _load(paths) -> list[dict]:
    from gpjax.report import load_rows
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    found = []
    for p in paths:
        found += [p] if p.is_file() else sorted(p.rglob("results.json"))
    return load_rows(found) if found else []


def _write_report(rows: list[dict], out: Path) -> str:
    from gpjax.report import markdown_table
    text = markdown_table(rows)
    (out / "report.md").write_text(text)
    return text


def cmd_report(args: argparse.Namespace) -> int:
    from gpjax.report import markdown_table
    rows = _load(args.paths)
    if not rows:
        print("no readable results.json under " + ", ".join(args.paths), file=sys.stderr)
        return 1
    text = markdown_table(rows)
    if args.iterations:
        text += _iterations_text(rows, args.round)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def _iterations_text(rows: list[dict], round_index: int | None) -> str:
    """``gpjax report --iterations``: every pruning iteration of each (policy, seed, round)."""
    from gpjax.report import iteration_table, label_variants, ordered_policies
    rows = label_variants(rows)
    order = {p: i for i, p in enumerate(ordered_policies(rows))}
    parts = [iteration_table(r) for r in sorted(
        rows, key=lambda r: (order[r["policy"]], str(r["seed"]), r["round"]))
        if round_index is None or r["round"] == round_index]
    parts = [p for p in parts if p]
    head = "\n## Pruning iterations\n\n"
    return head + ("\n".join(parts) if parts else
                   "No row records its pruning iterations (`prune_log`: rows written before "
                   "it existed).\n")


def cmd_plot(args: argparse.Namespace) -> int:
    from gpjax.cli_store import plot_store
    from gpjax.incremental.store import STORE_FILE
    from gpjax.report import plot_rows
    stores = [p for p in args.paths if (Path(p) / STORE_FILE).exists()]
    for p in stores:
        for f in plot_store(p, args.out):
            print(f)
    args.paths = [p for p in args.paths if p not in stores]
    if stores and not args.paths:
        return 0
    rows = _load(args.paths)
    if not rows:
        print("no readable results.json under " + ", ".join(args.paths), file=sys.stderr)
        return 1
    out = Path(args.out or args.paths[0])
    for p in plot_rows(rows, out):
        print(p)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gpjax.incremental.configs import CONFIGS
    for name, cfg in sorted(CONFIGS.items()):
        print(f"{name:32s} model={cfg.model} data={cfg.dataset} scenario={cfg.scenario}")
    return 0


def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = _Parser(prog="gpjax", description=__doc__, formatter_class=fmt)
    ap.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    ap.add_argument("--no-compile-cache", action="store_true",
                    help="do not keep compiled XLA programs on disk (default: "
                         "$JAX_COMPILATION_CACHE_DIR, else $GPJAX_DATA_DIR/xla or "
                         "~/.cache/gpjax/xla)")
    sub = ap.add_subparsers(dest="command", required=True)
    add_parsers(sub, fmt)

    def command(name, help_, example):
        return sub.add_parser(name, help=help_, formatter_class=fmt,
                              description=f"{help_}.\n\nExample:\n  {example}")

    r = command("run", "run an experiment (policies x seeds)",
                "gpjax run --config lenet300_mnist --policy growprune,tfs --seeds 0,1,2 "
                "--out results/mnist")
    r.add_argument("--config", required=True, help="experiment name (gpjax list)")
    r.add_argument("--policy", required=True,
                   help="comma-separated: " + ",".join(POLICY_NAMES))
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--rounds", type=_positive(int), default=None,
                   help="run the first N rounds only (with --resume, a run continues for "
                        "more rounds: the old last round keeps its non-recoverable row)")
    r.add_argument("--seed", type=int, default=0, help="first seed (with --repeats)")
    r.add_argument("--repeats", type=_positive(int), default=1,
                   help="replicates: seeds seed..seed+N-1")
    r.add_argument("--seeds", type=_seeds, default=None, help="explicit seeds, e.g. 0,1,2")
    r.add_argument("--epoch-scale", type=_positive(float), default=1.0,
                   help="multiply every policy epoch count (reduced runs)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config or policy field (repeatable)")
    r.add_argument("--resume", action="store_true", help="continue from checkpoints")
    r.add_argument("--overwrite", action="store_true",
                   help="replace results that another config wrote in --out")
    r.add_argument("--devices", type=int, default=None, help="use the first N local devices")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--report", action="store_true", help="write report.md when done")
    add_process_args(r)
    r.set_defaults(func=cmd_run)
    rep = command("report", "Markdown table from results", "gpjax report results/mnist")
    rep.add_argument("paths", nargs="+", help="results.json files or directories")
    rep.add_argument("--out", default=None, help="write the table here too")
    rep.add_argument("--iterations", action="store_true",
                     help="also list every pruning iteration of every run (prune_log)")
    rep.add_argument("--round", type=int, default=None,
                     help="with --iterations: that round's only")
    rep.set_defaults(func=cmd_report)
    pl = command("plot", "PNG plots from results or of a model store's versions",
                 "gpjax plot results/mnist   (or: gpjax plot store/)")
    pl.add_argument("paths", nargs="+", help="result directories/files or model stores")
    pl.add_argument("--out", default=None, help="directory of the PNGs (default: first path)")
    pl.set_defaults(func=cmd_plot)
    add_export_parser(sub, fmt)
    ls = command("list", "list experiment configs", "gpjax list")
    ls.set_defaults(func=cmd_list)
    return ap


def enable_compile_cache(directory: str | Path | None = None) -> str | None:
    """Keeps compiled XLA programs on disk (JAX's persistent compilation cache), so a resumed
    run, the next policy or seed, or the next round's recurring shapes load them instead of
    compiling again. Leaves a cache directory already configured (``JAX_COMPILATION_CACHE_DIR``
    or ``jax.config``) as it is; else uses ``directory``, default ``<data_dir>/xla``
    (:func:`gpjax.data.cache.data_dir`). Programs that compile in under a second are not kept
    (JAX's default). Speed only: a cached program is the one the compiler would build.

    Returns:
      The cache directory in use (None if it cannot be created).
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    from gpjax.data.cache import data_dir
    path = Path(directory) if directory is not None else data_dir() / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """The ``gpjax`` command. User errors (bad input, a busy or foreign directory, a model
    that cannot be imported) print one line and exit 2; ``--debug`` shows the traceback."""
    args = parser().parse_args(argv)
    if not args.no_compile_cache:
        enable_compile_cache()
    try:
        if hasattr(args, "process_id"):  # gpjax run / init / update: join the other processes
            initialize(process_config(args))
        return args.func(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"gpjax: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # out of space, permissions, read-only: one line, not a traceback
        fault = disk_fault(e)
        if fault is None or args.debug:
            raise
        print(f"gpjax: error: {disk_fault_message(fault, *_fault_context(args))}",
              file=sys.stderr)
        return 2


def _fault_context(args: argparse.Namespace) -> tuple[str, str]:
    """The directory a command writes and how to continue it after a disk fault."""
    if args.command == "run":
        return str(args.out), "rerun the same command with --resume"
    where = str(getattr(args, "store", None) or getattr(args, "source", "."))
    if args.command in ("init", "update"):
        if (Path(where) / "work").exists():
            return where, "rerun the same command with --resume"
        return where, "rerun the same command"
    if args.command == "export":
        return str(args.out), "rerun the same command"
    return where, "rerun the same command"


def _user_errors() -> tuple[type[BaseException], ...]:
    from gpjax.data.npz import DataFileError
    from gpjax.fields import ConfigError
    from gpjax.incremental.checkpoint import CheckpointMismatchError
    from gpjax.incremental.lock import DirectoryLockedError
    from gpjax.incremental.loop import ResultsConflictError
    from gpjax.incremental.phases import NonFiniteLossError
    from gpjax.incremental.store import StoreError
    from gpjax.models.registry import ModelFrameworkError, ModelImportError
    return (UsageError, DataFileError, ConfigError, CheckpointMismatchError, DirectoryLockedError,
            ResultsConflictError, StoreError, ModelImportError, FileExistsError,
            NonFiniteLossError, ModelFrameworkError)


USER_ERRORS = _user_errors()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
