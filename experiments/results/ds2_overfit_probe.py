"""Learning-speed probe of DS2 (CPU size): train loss on the 256 shortest easy-corpus utterances.

    python experiments/results/ds2_overfit_probe.py STEPS '{"name": "A", "lr": 2e-3}' \\
        '{"name": "G", "lr": 2e-3, "num_rnn_layers": 2}' ...

Each JSON argument is one probe: ``name``, ``lr`` and DeepSpeech2 arguments merged over the
CPU-size model with the 4x time stride. Prints, every 250 steps, the mean train loss and the
greedy CER on the 64 shortest validation utterances (``ds2_probes.md``, section 5).
"""

import dataclasses
import json
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, ".")
from experiments.ds2_cpu import EASY_CORPUS  # noqa: E402
from gpjax.data.speech import decode_ids  # noqa: E402
from gpjax.incremental import build, get_config  # noqa: E402
from gpjax.metrics import cer, greedy_ctc_decode  # noqa: E402
from gpjax.models import DeepSpeech2, ctc_loss  # noqa: E402

STRIDE4 = [[2, 2], [2, 1], [1, 1]]


def shortest(split, n):
    feats, pads, labels, label_pads = split
    lengths = np.sum(1 - pads, 1)
    idx = np.argsort(lengths)[:n]
    t = -(-int(lengths[idx].max()) // 8) * 8
    return feats[idx, :t], pads[idx, :t], labels[idx], label_pads[idx]


def make_model(cfg, overrides):
    kw = {**cfg.model_kwargs, "conv_strides": STRIDE4, **overrides}
    return DeepSpeech2(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                          if isinstance(v, list) else v for k, v in kw.items()})


def val_cer(model, variables, val):
    logits, pads = jax.jit(model.apply)(variables, val[0], val[1])
    hyp = [decode_ids(h) for h in greedy_ctc_decode(logits, pads)]
    ref = [decode_ids([int(c) for c, q in zip(r, rp, strict=True) if q == 0])
           for r, rp in zip(val[2], val[3], strict=True)]
    return 100 * cer(ref, hyp)


def probe(cfg, data, val, steps, name, lr, **overrides):
    model = make_model(cfg, overrides)
    v = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                   data[0][:1], data[1][:1])
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(lr))
    opt = tx.init(v)

    @jax.jit
    def step(v, opt, batch, key):
        def loss(v):
            logits, pads = model.apply(v, batch[0], batch[1], train=True,
                                       rngs={"dropout": key})
            return ctc_loss(logits, pads, batch[2], batch[3])

        value, grads = jax.value_and_grad(loss)(v)
        updates, opt = tx.update(grads, opt, v)
        return optax.apply_updates(v, updates), opt, value

    rng, t0, hist = np.random.default_rng(0), time.time(), []
    for s in range(steps):
        i = rng.choice(len(data[0]), 16, replace=False)
        v, opt, value = step(v, opt, tuple(a[i] for a in data), jax.random.key(s))
        hist.append(float(value))
        if s % 250 == 249:
            print(f"{name} step {s + 1} loss {np.mean(hist[-250:]):.2f} "
                  f"val CER {val_cer(model, v, val):.1f} t {time.time() - t0:.0f}s", flush=True)


def main():
    base = get_config("ds2_hlstm_synthetic_small")
    cfg = dataclasses.replace(base, chunks=1, initial_chunks=1, rounds=1,
                              dataset_kwargs={**base.dataset_kwargs, **EASY_CORPUS})
    exp = build(cfg)
    data, val = shortest(exp.scenario.train, 256), shortest(exp.scenario.validation, 64)
    for arg in sys.argv[2:]:
        spec = json.loads(arg)
        probe(cfg, data, val, int(sys.argv[1]), spec.pop("name"), spec.pop("lr"), **spec)


if __name__ == "__main__":
    main()
