"""The model store on MNIST through the CLI: an update against training from scratch.

Half of MNIST's 55K training images arrive first, the other half later. Store ``growprune``:
``gpjax init`` on the first half, ``gpjax update`` with the second (inherit, grow on the new half
first, then on all, prune). Store ``tfs``: the same two commands with ``--policy tfs`` (the
update trains a fresh dense model on all of it, then prunes). Both with the MNIST recipe
(affine augmentation, SGD Nesterov, the policies' default epochs) and the 10K test images.

    python -m experiments.store_mnist --out experiments/results/store_mnist

writes ``results.json`` (both stores' manifests), ``results.md`` (the table with the commands)
and each store's ``history.png``; ``--quick`` shrinks every epoch count (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

QUICK = ["--set", "first_epochs=2", "--set", "new_epochs=1", "--set", "all_epochs=1",
         "--set", "epochs=2", "--set", "prune.max_iterations=2"]


def _gpjax(*args: str, log: list[str], dry: bool = False) -> None:
    cmd = ["gpjax", *args]
    log.append(shlex.join(cmd))
    if dry:  # made by an earlier process: only recorded
        return
    print("$", log[-1], flush=True)
    subprocess.run([sys.executable, "-m", "gpjax.cli", *args], check=True)


def _policy_sets(policy: str, quick: bool) -> list[str]:
    if not quick:
        return []
    keep = {"growprune": ("first_epochs", "new_epochs", "all_epochs", "prune."),
            "tfs": ("epochs=", "prune.")}[policy]
    out = []
    for flag, value in zip(QUICK[::2], QUICK[1::2]):
        if value.startswith(keep):
            out += [flag, value]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/store_mnist")
    ap.add_argument("--quick", action="store_true", help="a few epochs only (smoke run)")
    ap.add_argument("--policy", default="growprune,tfs",
                    help="the stores to (re)make; a store already holding both versions is "
                         "kept otherwise (per-policy processes)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from gpjax.data.mnist import load_mnist
    m = load_mnist()
    x, y = m.train
    half = len(y) // 2
    data = out / "data"
    data.mkdir(exist_ok=True)
    np.savez(data / "first_half.npz", x=x[:half], y=y[:half])
    np.savez(data / "second_half.npz", x=x[half:], y=y[half:])
    np.savez(data / "test.npz", x=m.test[0], y=m.test[1])
    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() \
        else {}
    log: list[str] = []
    result: dict = {}
    for policy in ("growprune", "tfs"):
        store = out / f"store-{policy}"
        dry = policy not in args.policy.split(",")
        if store.exists() and not dry:
            import shutil
            shutil.rmtree(store)
        t0 = time.time()
        _gpjax("init", str(store), "--model", "lenet300", "--data",
               str(data / "first_half.npz"), "--test", str(data / "test.npz"), "--policy",
               policy, "--set", "augment=true", *_policy_sets(policy, args.quick),
               "--no-progress", log=log, dry=dry)
        _gpjax("update", str(store), "--data", str(data / "second_half.npz"), "--test",
               str(data / "test.npz"), "--no-progress", log=log, dry=dry)
        _gpjax("plot", str(store), log=log, dry=dry)
        from gpjax.incremental.store import ModelStore
        result[policy] = {"history": ModelStore.open(store).history(),
                          "wall_s": saved.get(policy, {}).get("wall_s") if dry
                          else time.time() - t0}
    result["commands"] = log
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = ["| store | version | train images | val old % | val new % | test % | params | "
             "non-rec. params | non-rec. test % | epochs | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt: "-" if v is None else fmt.format(v)  # noqa: E731
    for policy in ("growprune", "tfs"):
        for h in result[policy]["history"]:
            mm = h["metrics"]
            lines.append(
                f"| {policy} | {h['version']} | {mm['n_train']:,} | "
                f"{f(mm['val_error_old'], '{:.2f}')} | {f(mm['val_error_new'], '{:.2f}')} | "
                f"{f(mm['test_error'], '{:.2f}')} | {mm['params']:,} | "
                f"{f(mm.get('params_nonrecoverable'), '{:,}')} | "
                f"{f(mm.get('test_error_nonrecoverable'), '{:.2f}')} | {mm['epochs']:.1f} | "
                f"{mm['wall_time_s']:.0f} |")
    up = {p: result[p]["history"][-1]["metrics"] for p in ("growprune", "tfs")}
    lines += ["", f"The update (version 1): growprune {up['growprune']['epochs']:.1f} normalised "
              f"epochs / {up['growprune']['wall_time_s']:.0f} s vs TFS "
              f"{up['tfs']['epochs']:.1f} / {up['tfs']['wall_time_s']:.0f} s "
              f"({up['growprune']['epochs'] / max(up['tfs']['epochs'], 1e-9):.2f}x the epochs); "
              f"test error {up['growprune']['test_error']:.2f}% vs {up['tfs']['test_error']:.2f}%"
              f" at {up['growprune']['params']:,} vs {up['tfs']['params']:,} parameters.",
              "", "Commands:", "", "```bash", *result["commands"], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
