"""DeepSpeech2-H-LSTM at CPU size on the synthetic AN4-like corpus: how far it gets, how fast.

    nice python -m experiments.ds2_cpu --out results/ds2_cpu        # ~24 min on 2 quiet cores
    python -m experiments.ds2_cpu --tiny --out /tmp/ds2             # seconds (tests)

Trains the ``ds2_hlstm_synthetic_small`` config's model (3 convolutions of 8 channels, 3
bidirectional H-LSTM layers of 64, 370K dense parameters) dense on the corpus' 848 training
utterances with that config's recipe (Adam, gradients clipped to norm 5, decoupled weight
decay 1e-4, cosine decay from ``--lr`` over all ``--epochs``, batch 16), as the TFS baseline's
training phase does, through the same library functions (:func:`gpjax.train.train_epoch`,
the config's task and test metrics). After every epoch: training loss and greedy-decoding WER
and CER on the 100 validation utterances; at the end, WER and CER on the 130 test utterances.

CTC models first sit on a plateau where greedy decoding emits only blanks (WER/CER 100%); how
many epochs that lasts varies with the recipe and the seed (the committed runs in
``experiments/results/ds2_cpu*/`` left it after 9 and 6 epochs; 424-848 steps through ``gpjax
run`` with other learning rates did not leave it, see experiments/README.md).

Levers for the CPU-scale search (experiments/results/ds2_probes.md): ``--corpus-kwargs``
(merged into :func:`gpjax.data.speech.load_synthetic_an4`'s arguments: ``n_train``, ``voices``,
``rate_wpm``, ``snr_db``; ``'"easy"'`` for :data:`EASY_CORPUS`), ``--buckets K`` (each epoch
runs over K length buckets of the training utterances, each cut to its own longest utterance:
less padding, so cheaper recurrent scans; one compilation per bucket), ``--sortagrad`` (the
first epoch's buckets shortest first), ``--blank-bias`` (the initial output bias of the CTC
blank), ``--model-kwargs '{"cell": "lstm"}'`` (plain LSTM cells).

Writes ``runs.json`` (settings, per-epoch curve, test figures, wall times), ``curve.csv``,
``summary.md`` and ``ds2_cpu.png`` (loss and validation CER/WER per epoch) to ``--out``, after
every epoch (a stopped run keeps its curve).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.harness import command_line
from gpjax.data.buckets import is_bucketed, length_buckets
from gpjax.data.speech import BLANK_ID
from gpjax.incremental import build, get_config
from gpjax.incremental.configs import EASY_CORPUS
from gpjax.masks import count_params, init_masks
from gpjax.train import TrainState, cosine_rates, make_optimizer, steps_per_epoch, train_epoch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/ds2_cpu"))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0,
                   help="init key = seed, training key = seed + 1 (corpus fixed)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop after the epoch that passes this training+evaluation time")
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help='JSON merged into the config\'s model arguments, e.g. '
                        '\'{"conv_strides": [[2, 2], [2, 1], [1, 1]]}\' for a 4x time stride')
    p.add_argument("--corpus-kwargs", type=json.loads, default={},
                   help='JSON merged into the corpus arguments, e.g. \'{"n_train": 2000, '
                        '"voices": ["en-us"]}\' or \'"easy"\' for EASY_CORPUS')
    p.add_argument("--buckets", type=int, default=1,
                   help="length buckets per epoch (1: every batch padded to the longest "
                        "utterance of the split)")
    p.add_argument("--sortagrad", action="store_true",
                   help="first epoch: buckets shortest first (SortaGrad); later epochs random")
    p.add_argument("--blank-bias", type=float, default=None,
                   help="initial output bias of the CTC blank (default: the dense layer's 0)")
    p.add_argument("--tiny", action="store_true", help="the tiny corpus and model (tests)")
    return p.parse_args(argv)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(ep, [r["train_loss"] for r in rows], marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training CTC loss (per utterance)")
    ax2.plot(ep, [r["val_cer"] for r in rows], marker=".", label="validation CER")
    ax2.plot(ep, [r["val_wer"] for r in rows], marker=".", label="validation WER")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("% (greedy CTC decoding)")
    ax2.legend()
    fig.suptitle("DeepSpeech2-H-LSTM (CPU size) on the synthetic AN4-like corpus")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, run: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps(run, indent=1))
    rows = run["curve"]
    with open(out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# {run['config']}: dense training on the synthetic corpus", "",
             f"Command: `{run['command']}`", "",
             f"Model arguments: `{json.dumps(run['model_kwargs'])}`; corpus arguments: "
             f"`{json.dumps(run.get('corpus_kwargs', {}))}`; length buckets (frames): "
             f"{run.get('buckets')} ({100 * run.get('padding_fraction', 0):.0f}% padding); "
             f"blank bias {run.get('blank_bias')}.", "",
             f"{run['params']:,} parameters; {run['n_train']} training, {run['n_validation']} "
             f"validation, {run['n_test']} test utterances; batch {run['batch_size']}, Adam "
             f"peak lr {run['lr']:g} (cosine over {run['epochs']} epochs), seed {run['seed']}.",
             "", "| epoch | steps | train loss | val WER % | val CER % | minutes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['steps']} | {r['train_loss']:.2f} | {r['val_wer']:.1f} | "
              f"{r['val_cer']:.1f} | {r['minutes']:.1f} |" for r in rows]
    if "test_wer" in run:
        lines += ["", f"**Test ({run['n_test']} utterances): WER {run['test_wer']:.1f}%, CER "
                      f"{run['test_cer']:.1f}%** after {run['train_minutes']:.1f} min of "
                      f"training ({run['total_minutes']:.1f} min with evaluation)."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "ds2_cpu.png")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = command_line("experiments.ds2_cpu", argv)
    name = "ds2_hlstm_synthetic_tiny" if args.tiny else "ds2_hlstm_synthetic_small"
    base = get_config(name)
    corpus = EASY_CORPUS if args.corpus_kwargs == "easy" else args.corpus_kwargs
    cfg = dataclasses.replace(base, chunks=1, initial_chunks=1, rounds=1,
                              model_kwargs={**base.model_kwargs, **args.model_kwargs},
                              dataset_kwargs={**base.dataset_kwargs, **corpus})
    exp = build(cfg)
    train, val, test = exp.scenario.train, exp.scenario.validation, exp.scenario.test
    params, aux = exp.task.init(jax.random.key(args.seed), exp.example_batch)
    if args.blank_bias is not None:
        params = {**params, "fc": {**params["fc"],
                                   "bias": params["fc"]["bias"].at[BLANK_ID].set(args.blank_bias)}}
    masks = init_masks(params)
    tx = make_optimizer(cfg.optimizer)
    state = TrainState(params, masks, aux, tx.init(params), jax.random.key(args.seed + 1))
    n = len(train[0])
    buckets = length_buckets(train, args.buckets, args.batch_size)
    buckets = list(buckets.parts) if is_bucketed(buckets) else [buckets]
    bucket_steps = [steps_per_epoch(len(b[0]), args.batch_size) for b in buckets]
    steps = sum(bucket_steps)
    padded = sum(b[0].shape[0] * b[0].shape[1] for b in buckets)
    run = {"command": command, "config": name, "params": count_params(masks).active,
           "n_train": n, "n_validation": len(val[0]), "n_test": len(test[0]),
           "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs,
           "seed": args.seed, "model_kwargs": cfg.model_kwargs,
           "corpus_kwargs": corpus, "buckets": [int(b[0].shape[1]) for b in buckets],
           "padding_fraction": 1.0 - float(np.sum(1.0 - train[1])) / padded,
           "blank_bias": args.blank_bias, "sortagrad": args.sortagrad,
           "optimizer": dataclasses.asdict(cfg.optimizer), "curve": []}
    t0, train_s = time.perf_counter(), 0.0
    for e in range(args.epochs):
        t = time.perf_counter()
        start, losses = e * steps, []
        # The buckets in a seeded random order each epoch (one bucket's batches, then the next);
        # with --sortagrad the first epoch goes from the shortest bucket to the longest.
        order = (np.arange(len(buckets)) if args.sortagrad and e == 0
                 else np.random.default_rng([args.seed, e]).permutation(len(buckets)))
        for b in order:
            rates = cosine_rates(args.lr, bucket_steps[b], start=start,
                                 total=args.epochs * steps)
            start += bucket_steps[b]
            state, loss = train_epoch(state, buckets[b], rates, task=exp.task, tx=tx,
                                      batch_size=args.batch_size)
            losses.append(float(loss) * bucket_steps[b])
        loss = sum(losses) / steps
        train_s += time.perf_counter() - t
        m = exp.test_metrics(state.params, state.aux, val)
        row = {"epoch": e + 1, "steps": (e + 1) * steps, "train_loss": loss,
               "val_wer": m["test_error"], "val_cer": m["test_cer"],
               "minutes": (time.perf_counter() - t0) / 60}
        run["curve"].append(row)
        print(json.dumps(row), flush=True)
        write_outputs(args.out, run)
        if args.minutes is not None and row["minutes"] >= args.minutes:
            break
    m = exp.test_metrics(state.params, state.aux, test)
    run.update(test_wer=m["test_error"], test_cer=m["test_cer"], train_minutes=train_s / 60,
               total_minutes=(time.perf_counter() - t0) / 60)
    write_outputs(args.out, run)
    print((args.out / "summary.md").read_text())
    return run


if __name__ == "__main__":
    main()
