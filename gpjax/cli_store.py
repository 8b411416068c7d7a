"""``gpjax init / update / history / evaluate / promote``: the model store from the command line.

Examples::

    gpjax init store/ --model lenet300 --data part1.npz --test test.npz
    gpjax init store/ --model mymodels:Classifier --model-kwargs '{"width": 64}' --data a.npz
    gpjax update store/ --data part2.npz --test test.npz --max-forgetting 0.5
    gpjax update store/ --data part2.npz --resume      # continue an interrupted update
    gpjax update store/ --data part2.npz --target-params 20000 --max-epochs 30  # a budget
    gpjax history store/            # a table of versions (--json for the manifests)
    gpjax evaluate store/ --data test.npz --version 1
    gpjax promote store/ --version 1  # roll LATEST back (or forward)
    gpjax verify store/             # every version's files against their recorded digests
    gpjax update store/ --data part3.npz --from 1   # update from another version than LATEST
    gpjax plot store/               # error, parameters and cost per version (PNG)

Data files are ``.npz`` with arrays ``x`` (float ``[N, ...]``) and ``y`` (integer labels
``[N]``; with ``--task regression`` float targets ``[N]`` or ``[N, k]``), a directory holding
``x.npy`` and ``y.npy`` (memory-mapped: for data that outgrow memory), an ArrayRecord file
(``gpjax.data.sources.write_array_record``) or ``tfds:NAME``. The model's input shape and class
count come from the first data. ``--model`` names a zoo model or a Flax linen, Flax NNX or
Equinox class (``module:Class``; see :mod:`gpjax.models.adapter`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpjax._cli_common import UsageError, disk_fault, json_object, table
from gpjax.distributed import add_process_args, is_primary
from gpjax.incremental.policies import POLICIES


def _sets(items: list[str] | None) -> tuple[dict, dict]:
    """``--set KEY=VALUE``: recipe fields (``batch_size``, ``optimizer.clip_norm``...) and
    policy fields (``prune.tolerance``, ``new_epochs``...)."""
    import dataclasses

    from gpjax.incremental.store import Recipe
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    recipe, policy = {}, {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set wants KEY=VALUE, got {item!r}")
        key, value = (t.strip() for t in item.split("=", 1))
        (recipe if key.split(".")[0] in recipe_fields else policy)[key] = value
    return recipe, policy


def _recipe(over: dict):
    from gpjax.incremental.policies import replace_nested
    from gpjax.incremental.store import Recipe
    try:
        return replace_nested(Recipe(), over)
    except KeyError as e:
        raise UsageError(f"--set: {e.args[0]}") from None


VERSION_COLUMNS = [
    ("version", "version", "{}"), ("parent", "parent", "{}"), ("policy.policy", "policy", "{}"),
    ("metrics.n_train", "train examples", "{:,}"),
    ("metrics.val_error_old", "val old %", "{:.2f}"),
    ("metrics.val_error_new", "val new %", "{:.2f}"),
    ("metrics.val_error", "val all %", "{:.2f}"), ("metrics.test_error", "test %", "{:.2f}"),
    ("metrics.forgetting", "forgetting", "{:+.2f}"), ("metrics.params", "params", "{:,}"),
    ("metrics.params_nonrecoverable", "non-rec. params", "{:,}"),
    ("metrics.test_error_nonrecoverable", "non-rec. test %", "{:.2f}"),
    ("metrics.epochs", "epochs", "{:.1f}"), ("metrics.wall_time_s", "wall s", "{:.0f}"),
    ("latest", "LATEST", "{}"),
]


def _print_version(store, manifest: dict) -> None:
    latest = store.latest()
    print(table([{**manifest, "latest": manifest["version"] == latest}], VERSION_COLUMNS))
    if not manifest.get("promoted", True):
        print(f"version {manifest['version']} kept but NOT promoted: forgetting "
              f"{manifest['metrics']['forgetting']:+.2f} points > --max-forgetting "
              f"{manifest['max_forgetting']}; LATEST stays {latest} "
              f"(`gpjax promote {store.path} --version {manifest['version']}` to use it)")


def cmd_init(args: argparse.Namespace) -> int:
    from gpjax.incremental.store import WORK, ModelStore
    path = Path(args.store).expanduser().absolute()
    existed = path.exists()
    fresh = not existed or (path.is_dir() and not any(path.iterdir()))
    try:
        if args.resume:
            store = ModelStore.open(path)
        elif args.model is None:
            raise UsageError("init needs --model NAME|module:Class")
        else:
            recipe_over, policy_over = _sets(args.set)
            store = ModelStore.create(path, model=args.model, model_kwargs=args.model_kwargs,
                                      task=args.task, policy=args.policy,
                                      policy_overrides=policy_over, recipe=_recipe(recipe_over))
        manifest = store.init(args.data, validation=args.validation, test=args.test,
                              progress=not args.no_progress, resume=args.resume)
    except Exception as e:
        # Refused input or a disk fault before anything trained: no half-made store is left.
        if (fresh and not args.resume and (isinstance(e, ValueError) or disk_fault(e))
                and not (path / WORK).exists() and is_primary()):
            _remove_new(path, existed)
        raise
    _print_version(store, manifest)
    return 0


def _remove_new(path: Path, existed: bool) -> None:
    """Removes what a failed ``init`` made: ``path`` itself, or its contents if it existed."""
    import shutil
    try:
        for p in path.iterdir() if existed else [path]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    except OSError:
        pass


def cmd_update(args: argparse.Namespace) -> int:
    from gpjax.incremental.policies import Budget
    from gpjax.incremental.store import ModelStore
    store = ModelStore.open(args.store)
    recipe_over, policy_over = _sets(args.set)
    if recipe_over:
        raise UsageError(f"--set {', '.join(recipe_over)}: the recipe is the store's, fixed at "
                         "`gpjax init`; Fix: --set only policy fields (new_epochs, "
                         "prune.tolerance, ...) in an update")
    manifest = store.update(args.data, old=args.old, validation=args.validation, test=args.test,
                            max_forgetting=args.max_forgetting, resume=args.resume,
                            progress=not args.no_progress, policy=args.policy,
                            policy_overrides=policy_over,
                            budget=Budget(args.target_params, args.max_epochs),
                            parent=args.from_version)
    _print_version(store, manifest)
    budget = manifest.get("budget", {})
    if budget.get("target_met") is False:
        print(f"version {manifest['version']} has {manifest['metrics']['params']:,} active "
              f"connections, more than --target-params {budget['target_params']:,}: recoverable "
              f"pruning stopped ({', '.join(manifest['stopped'].values())}) before reaching it")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from gpjax.incremental.store import ModelStore
    hist = ModelStore.open(args.store).history()
    if args.json:
        print(json.dumps(hist, indent=1))
        return 0
    print(table(hist, VERSION_COLUMNS + [("unreadable", "unreadable", "{}")]
                if any("unreadable" in h for h in hist) else VERSION_COLUMNS))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gpjax.incremental.integrity import DAMAGED, NO_DIGESTS
    from gpjax.incremental.store import ModelStore
    store = ModelStore.open(args.store)
    res = store.verify(args.version)
    for c in res.versions:
        if c.status == NO_DIGESTS:
            print(f"version {c.version}: no digests (written before gpjax recorded them): "
                  "not checked, not known to be damaged")
        elif c.status == DAMAGED:
            for d in c.damage:
                print(f"version {c.version}: DAMAGED {d.file}: {d.reason}")
        else:
            print(f"version {c.version}: ok ({c.files} files match their digests)")
    for p in res.problems:
        print(p)
    if res.ok:
        return 0
    if res.damaged:
        healthy = [c.version for c in res.versions if c.healthy]
        names = ", ".join(str(c.version) for c in res.damaged)
        fix = (f"make a healthy version LATEST with `gpjax promote {store.path} --version "
               f"{healthy[-1]}`, or update from it with `gpjax update {store.path} --from "
               f"{healthy[-1]} --data ...`" if healthy else "restore the store from a backup")
        print(f"damaged version(s): {names}. Fix: {fix}", file=sys.stderr)
    return 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gpjax.incremental.store import ModelStore
    store = ModelStore.open(args.store)
    res = store.evaluate(args.data, version=args.version)
    unit = "RMSE" if store.spec["task"] == "regression" else "error %"
    cols = [("version", "version", "{}"), ("n", "examples", "{:,}"),
            ("test_error", unit, "{:.4g}" if unit == "RMSE" else "{:.2f}"),
            ("test_error_nonrecoverable", f"non-recoverable {unit}", "{:.2f}")]
    print(table([res], cols))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from gpjax.incremental.store import ModelStore
    store = ModelStore.open(args.store)
    store.promote(args.version)
    print(f"LATEST of {store.path} is now version {args.version}")
    return 0


def plot_store(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """PNGs of a store's history: error, parameters and cost per version."""
    from gpjax._files import pyplot, save_figure
    from gpjax.incremental.store import ModelStore
    store = ModelStore.open(path)
    hist = [h for h in store.history() if "unreadable" not in h]  # damaged versions: no data
    plt = pyplot()
    out = Path(out or store.path)
    v = [h["version"] for h in hist]
    m = [h["metrics"] for h in hist]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("val_error_old", "validation, old data"),
                       ("val_error_new", "validation, new data"), ("test_error", "test")):
        ys = [x.get(key) for x in m]
        if any(y is not None for y in ys):
            axes[0].plot(v, [float("nan") if y is None else y for y in ys], "o-", label=label)
    axes[0].set(xlabel="version", ylabel="error %", title="error")
    axes[0].legend(fontsize=8)
    axes[1].plot(v, [x["params"] for x in m], "o-", label="recoverable")
    if any(x.get("params_nonrecoverable") for x in m):
        axes[1].plot(v, [x.get("params_nonrecoverable") or float("nan") for x in m], "s--",
                     label="non-recoverable")
    axes[1].set(xlabel="version", ylabel="active parameters", title="size")
    axes[1].legend(fontsize=8)
    axes[2].bar(v, [x["epochs"] for x in m])
    axes[2].set(xlabel="version", ylabel="normalised epochs", title="cost")
    for ax in axes:
        ax.set_xticks(v)
    fig.suptitle(f"model store {store.path.name}")
    fig.tight_layout()
    target = out / "history.png"
    save_figure(fig, target, 120)
    return [target]


def add_parsers(sub, formatter) -> None:
    """The store commands' parsers, added to the ``gpjax`` command's subparsers."""
    def command(name, help_, example):
        return sub.add_parser(name, help=help_, description=f"{help_}.\n\nExample:\n  {example}",
                              formatter_class=formatter)

    policies = ",".join(POLICIES)
    i = command("init", "make a model store and its first version from data",
                "gpjax init store/ --model lenet300 --data part1.npz --test test.npz")
    i.add_argument("store", help="the store directory (new or empty)")
    i.add_argument("--model", default=None,
                   help="zoo name (lenet300, lenet5, resnet18) or package.module:Class of a "
                        "Flax linen, Flax NNX or Equinox model")
    i.add_argument("--model-kwargs", type=json_object, default={}, metavar="JSON",
                   help="constructor arguments, e.g. '{\"hidden\": [300, 100]}'")
    i.add_argument("--task", default="classifier", metavar="KIND",
                   help="classifier (integer labels y [N]; error in %%), regression (float "
                        "targets y [N] or [N, k]; MSE loss, errors are RMSEs) or "
                        "module:function returning (Task, metrics)")
    i.add_argument("--data", required=True, help=".npz (arrays x, y), a directory of x.npy + "
                   "y.npy, an .array_record file or tfds:NAME")
    i.add_argument("--validation", default=None, help="validation file (default: a held-out "
                   "fraction of each data file)")
    i.add_argument("--test", default=None, help="test file (reported only)")
    i.add_argument("--policy", default="growprune", choices=list(POLICIES),
                   help=f"update policy of the store ({policies})")
    i.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a recipe field (batch_size, validation_fraction, seed, augment, "
                        "optimizer.clip_norm) or policy field (prune.tolerance, first_epochs)")
    i.add_argument("--resume", action="store_true",
                   help="continue an interrupted init of this store (same --data)")
    i.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_process_args(i)
    i.set_defaults(func=cmd_init)

    u = command("update", "add new data to a store: a new version from LATEST",
                "gpjax update store/ --data part2.npz --test test.npz --max-forgetting 0.5")
    u.add_argument("store")
    u.add_argument("--data", required=True, help="the new examples (.npz, x.npy + y.npy directory, "
                   ".array_record or tfds:NAME)")
    u.add_argument("--old", action="append", default=None, metavar="FILE",
                   help="the earlier data, given explicitly (repeatable; default: the files "
                        "the manifests name, fingerprints checked)")
    u.add_argument("--validation", default=None, help="validation file for the new data")
    u.add_argument("--test", default=None, help="test file (reported only)")
    u.add_argument("--policy", default=None, choices=list(POLICIES),
                   help="this update's policy (default: the store's)")
    u.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a field of this update's policy (new_epochs, prune.tolerance, epochs "
                        "with --policy tfs), on top of the store's")
    u.add_argument("--from", dest="from_version", type=int, default=None, metavar="N",
                   help="update from version N instead of LATEST (e.g. the last healthy one)")
    u.add_argument("--max-forgetting", type=float, default=None, metavar="POINTS",
                   help="keep but do not promote a version whose old-data error rose more")
    u.add_argument("--target-params", type=int, default=None, metavar="N",
                   help="prune this update's model to at most N active connections (the "
                        "most accurate model the pruning makes at or under N)")
    u.add_argument("--max-epochs", type=float, default=None, metavar="E",
                   help="cap this update's cost at E normalised epochs (growth, training, "
                        "retraining and non-recoverable pruning together)")
    u.add_argument("--resume", action="store_true", help="continue an interrupted update")
    u.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_process_args(u)
    u.set_defaults(func=cmd_update)

    h = command("history", "a table of a store's versions", "gpjax history store/ --json")
    h.add_argument("store")
    h.add_argument("--json", action="store_true", help="the manifests as JSON")
    h.set_defaults(func=cmd_history)

    e = command("evaluate", "error of a version on a data file",
                "gpjax evaluate store/ --data test.npz --version 1")
    e.add_argument("store")
    e.add_argument("--data", required=True)
    e.add_argument("--version", type=int, default=None, help="default: LATEST")
    e.set_defaults(func=cmd_evaluate)

    p = command("promote", "point LATEST at a version (roll back or forward)",
                "gpjax promote store/ --version 1")
    p.add_argument("store")
    p.add_argument("--version", type=int, required=True)
    p.set_defaults(func=cmd_promote)

    v = command("verify", "check every version's files against the digests recorded when "
                "it was written", "gpjax verify store/ --version 1")
    v.add_argument("store")
    v.add_argument("--version", type=int, default=None, help="one version (default: all)")
    v.set_defaults(func=cmd_verify)
