"""The main job (`make demo`): a model store on MNIST, updated when new data arrive.

MNIST's 55K training images arrive in two parts. The store's first version is made from the
first part (``gpjax init``: a sparse seed grown and pruned); when the second part arrives,
``gpjax update`` makes version 1 from version 0 (inherit, grow on the new part first, then on
all data, prune). For the cost, a copy of version 0 is updated the expensive way, by
retraining from scratch on all data (``gpjax update --policy tfs``). The updated model is then
exported (``gpjax export``) and the artifact evaluated with JAX alone.

    python -m experiments.demo --out results/demo          # see experiments/results/demo
    python -m experiments.demo --out results/demo --quick  # a smoke run (a few epochs)

Writes to ``--out``: ``results.json`` (both stores' histories, the artifact's test error, the
commands, the machine), ``results.md`` (the tables and the commands) and each store's history
plot. :func:`markdown` turns ``results.json`` into the tables the README shows
(``python -m experiments.readme_tables`` regenerates them from the committed file).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIRST_EPOCHS = 30
"""Growth epochs of version 0 (the policy's default, 90, is the paper's protocol)."""

QUICK_INIT = ["--set", "first_epochs=2", "--set", "prune.max_iterations=2"]
QUICK_UPDATE = ["--set", "new_epochs=1", "--set", "all_epochs=1", "--set", "prune.max_iterations=2"]
QUICK_RETRAIN = ["--set", "epochs=2", "--set", "prune.max_iterations=2"]


def _gpjax(*args: str, log: list[str]) -> float:
    """Runs ``gpjax ARGS`` as a user would; returns its wall time in seconds."""
    log.append(shlex.join(["gpjax", *args]))
    print("$", log[-1], flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "gpjax.cli", *args], check=True)
    return time.time() - t0


def _write_parts(out: Path, quick: bool) -> dict[str, Path]:
    """MNIST's training images as two arrivals, plus the test set, as ``.npz`` files."""
    from gpjax.data.mnist import load_mnist
    m = load_mnist()
    x, y = m.train
    if quick:  # a smoke run: 2K + 2K images
        x, y = x[:4000], y[:4000]
    half = len(y) // 2
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = {"first": data / "first.npz", "second": data / "second.npz",
             "test": data / "test.npz"}
    np.savez(files["first"], x=x[:half], y=y[:half])
    np.savez(files["second"], x=x[half:], y=y[half:])
    np.savez(files["test"], x=m.test[0], y=m.test[1])
    return files


def _artifact_error(artifact: Path, test: Path) -> float:
    """Test error (%) of an exported artifact, computed in a fresh process by its ``load.py``
    (JAX and numpy only)."""
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import load; "
            "z = np.load(sys.argv[2]); predict = load.load(sys.argv[1]); "
            "err = np.mean(np.concatenate([np.argmax(np.asarray(predict(z['x'][i:i + 1000])), -1)"
            " for i in range(0, len(z['y']), 1000)]) != z['y']); print(100 * err)")
    out = subprocess.run([sys.executable, "-c", code, str(artifact), str(test)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(out: Path, quick: bool) -> dict:
    """Makes both stores and the artifact under ``out``; returns what ``results.json`` holds."""
    from gpjax.incremental.store import ModelStore
    files = _write_parts(out, quick)
    log: list[str] = []
    store, scratch = out / "store", out / "store-retrained"
    for d in (store, scratch, out / "artifact"):
        shutil.rmtree(d, ignore_errors=True)
    init_sets = QUICK_INIT if quick else ["--set", f"first_epochs={FIRST_EPOCHS}"]
    wall = {"init": _gpjax("init", str(store), "--model", "lenet300", "--data",
                           str(files["first"]), "--test", str(files["test"]), "--set",
                           "augment=true", *init_sets, "--no-progress", log=log)}
    shutil.copytree(store, scratch)
    log.append(f"cp -r {store} {scratch}")
    wall["update"] = _gpjax("update", str(store), "--data", str(files["second"]), "--test",
                            str(files["test"]), *(QUICK_UPDATE if quick else []), "--no-progress",
                            log=log)
    retrain_sets = QUICK_RETRAIN if quick else []
    wall["retrain"] = _gpjax("update", str(scratch), "--data", str(files["second"]), "--test",
                             str(files["test"]), "--policy", "tfs", *retrain_sets,
                             "--no-progress", log=log)
    _gpjax("plot", str(store), log=log)
    _gpjax("export", str(store), "--out", str(out / "artifact"), "--test", str(files["test"]),
           log=log)
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    return {"update": ModelStore.open(store).history(),
            "retrained": ModelStore.open(scratch).history()[-1],
            "artifact": {"test_error": _artifact_error(out / "artifact", files["test"]),
                         "parameters": manifest["parameters"],
                         "accuracy": manifest.get("accuracy")},
            "wall_s": wall, "quick": quick, "commands": log,
            "machine": {"processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()}}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(result: dict) -> str:
    """The README's tables: the store's history and the update against retraining."""
    rows = ["| version | data | train images | val error old % | val error new % | test % "
            "| active params | epochs |",
            "|---|---|---|---|---|---|---|---|"]
    for h in result["update"]:
        m = h["metrics"]
        rows.append(f"| {h['version']} | {'first part' if h['version'] == 0 else '+ second'} | "
                    f"{m['n_train']:,} | {_pct(m['val_error_old'])} | "
                    f"{_pct(m['val_error_new'])} | {_pct(m['test_error'])} | {m['params']:,} | "
                    f"{m['epochs']:.1f} |")
    up, re_ = result["update"][-1]["metrics"], result["retrained"]["metrics"]
    cmp_ = ["| version 1 made by | test % | active params | epochs (normalised) | cost |",
            "|---|---|---|---|---|",
            f"| `gpjax update` (grow and prune from version 0) | {_pct(up['test_error'])} | "
            f"{up['params']:,} | {up['epochs']:.1f} | {up['epochs'] / re_['epochs']:.2f}x |",
            f"| retraining from scratch (`--policy tfs`) | {_pct(re_['test_error'])} | "
            f"{re_['params']:,} | {re_['epochs']:.1f} | 1.00x |"]
    art = result["artifact"]
    p = art["parameters"]
    tail = (f"The exported artifact (`gpjax export`: the non-recoverable model, "
            f"{p['active']:,} active connections, compacted to {p['compact_dense']:,} dense "
            f"weights of which {p['compact_nonzero']:,} non-zero) has test error "
            f"{art['test_error']:.2f}% run by its `load.py` with JAX alone.")
    return "\n".join(rows) + "\n\n" + "\n".join(cmp_) + "\n\n" + tail + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/demo", help="output directory")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few images and epochs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(out, args.quick)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    cmds = "\n".join(result["commands"])
    (out / "results.md").write_text(f"{text}\nCommands:\n\n```bash\n{cmds}\n```\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
