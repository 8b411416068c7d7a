"""The ``models`` section of :mod:`benchmarks.bench_core` (issue 3, "Speed").

Times one masked SGD-with-momentum train step of LeNet-5, ResNet-18 (small stem, batch norm in
train mode) and DeepSpeech2-H-LSTM (CTC loss), gpjax (``gpjax.masked(optax.sgd(...))``, jitted,
one call per step and the timed steps in one ``lax.scan``) against the PyTorch eager references
of :mod:`benchmarks.torch_models` (forward with ``W * M``, backward, ``torch.optim.SGD`` step,
re-mask), on the same random data, round-robin with :class:`benchmarks.harness.Timer`.

Run it with ``python -m benchmarks.bench_core --only models`` (see there for the flags).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gpjax
from benchmarks.harness import Timer, best_threads, fresh_copy, med
from gpjax.models import DeepSpeech2, LeNet5, LeNet300, ResNet18, deepspeech2_loss

LR, MOMENTUM = 0.01, 0.9


@dataclass
class ModelsConfig:
    """Shapes of the models section (the full run, or tiny ones for the smoke test)."""

    lenet_batches: tuple[int, ...] = (128, 1024)
    lenet_steps: tuple[int, ...] = (10, 3)         # steps per timed call, per batch size
    resnet_batch: int = 32
    resnet_image: int = 32
    resnet_channels: int = 3
    resnet_width: int = 64
    resnet_stages: tuple[int, ...] = (2, 2, 2, 2)
    resnet_classes: int = 10
    resnet_steps: int = 2
    ds2_batch: int = 8
    ds2_frames: int = 160
    ds2_mfcc: int = 26
    ds2_conv_features: tuple[int, ...] = (32, 32, 32)
    ds2_rnn_features: int = 128
    ds2_rnn_layers: int = 3
    ds2_label_len: int = 20
    ds2_vocab: int = 29
    ds2_steps: int = 2
    mask_density: float = 0.1
    which: tuple[str, ...] = ("lenet5", "resnet18", "ds2")
    notes: list[str] = field(default_factory=list)

    def quick(self) -> None:
        """Fewer steps per timed call (``--quick``)."""
        self.lenet_steps = tuple(min(s, 2) for s in self.lenet_steps)
        self.resnet_steps = self.ds2_steps = 1

    @classmethod
    def tiny(cls) -> ModelsConfig:
        return cls(lenet_batches=(8,), lenet_steps=(2,), resnet_batch=4, resnet_image=8,
                   resnet_width=4, resnet_stages=(1, 1), resnet_steps=1, ds2_batch=2,
                   ds2_frames=24, ds2_mfcc=8, ds2_conv_features=(2, 2, 2), ds2_rnn_features=8,
                   ds2_rnn_layers=1, ds2_label_len=4, ds2_steps=1)


@dataclass
class ModelCase:
    """One model at one shape: everything both sides need.

    ``loss_fn(params, aux, batch) -> (loss, new_aux)``: the JAX loss (``aux``: BN statistics or
    ``None``); ``batches``: numpy batches (JAX side); ``torch_batches``: the same as tensors in
    PyTorch layout; ``make_torch(params, masks, aux)``: a fresh
    :class:`~benchmarks.torch_models.MaskedTorchModel` holding these parameters and masks.
    """

    name: str
    shape: str
    params: Any
    aux: Any
    masks: Any
    loss_fn: Callable
    batches: list
    torch_batches: list
    make_torch: Callable[[Any, Any, Any], Any]

    @property
    def num_params(self) -> int:
        return int(sum(np.size(p) for p in jax.tree.leaves(self.params)))


def _torch() -> Any:
    """PyTorch, or None where it is not installed (a case then has no PyTorch batches)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def init_variables(model, *args, density: float = 0.1, seed: int = 0):
    """``(params, batch_stats or None, masks)`` of ``model`` on inputs like ``args``, built in
    numpy from the shapes (no compilation): LeCun-normal kernels, zero biases (the forget
    gate's output bias 1), BN scales 1, running statistics 0/1, a random mask of the given
    density on every kernel (rank >= 2) and dormant weights 0."""
    shapes = jax.eval_shape(model.init, jax.random.key(seed), *args)
    rng = np.random.default_rng(seed)

    def value(path, s):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if len(s.shape) >= 2:
            fan_in = int(np.prod(s.shape[:-1]))
            return (rng.standard_normal(s.shape, dtype=np.float32) / np.sqrt(fan_in)).astype(
                np.float32)
        one = name.endswith("scale") or name.endswith("var") or name.endswith("f_out/bias")
        return np.full(s.shape, 1.0 if one else 0.0, np.float32)

    variables = jax.tree_util.tree_map_with_path(value, shapes)
    np_masks = jax.tree.map(lambda a: rng.random(a.shape) < density if a.ndim >= 2 else None,
                            variables["params"])
    params = jax.tree.map(lambda a, m: jnp.asarray(a if m is None else a * m),
                          variables["params"], np_masks, is_leaf=lambda x: x is None)
    masks = jax.tree.map(lambda m: None if m is None else jnp.asarray(m), np_masks,
                         is_leaf=lambda x: x is None)
    stats = variables.get("batch_stats")
    return params, None if stats is None else jax.tree.map(jnp.asarray, stats), masks


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def lenet5_case(batch: int, steps: int, density: float = 0.1, seed: int = 0) -> ModelCase:
    """LeNet-5 on random 28x28 images (``x [B, 784]``, ``y [B]``)."""
    return _mnist_case("LeNet-5", LeNet5(), batch, steps, density, seed)


def lenet300_case(batch: int, steps: int, density: float = 0.1, seed: int = 0) -> ModelCase:
    """LeNet-300-100 on random 28x28 images (``x [B, 784]``, ``y [B]``)."""
    return _mnist_case("LeNet-300-100", LeNet300(), batch, steps, density, seed)


def _mnist_case(name: str, model: Any, batch: int, steps: int, density: float,
                seed: int) -> ModelCase:
    """A LeNet on random 28x28 images; its PyTorch twin from :mod:`benchmarks.torch_models`."""
    torch = _torch()

    def make_torch(p, m, a):
        from benchmarks import torch_models

        cls = torch_models.TorchLeNet5 if isinstance(model, LeNet5) else \
            torch_models.TorchLeNet300
        return cls().load_jax(p, m, lr=LR, momentum=MOMENTUM)

    params, _, masks = init_variables(model, jnp.zeros((1, 784), jnp.float32),
                                      density=density, seed=seed)

    def loss_fn(p, aux, batch):
        x, y = batch
        return _ce(model.apply({"params": p}, x), y), aux

    rng = np.random.default_rng(seed)
    batches = [(rng.random((batch, 784), dtype=np.float32),
                rng.integers(0, 10, batch).astype(np.int32)) for _ in range(steps)]
    tb = [(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
          for x, y in batches] if torch else []
    return ModelCase(name, f"28x28x1, batch {batch}", params, None, masks, loss_fn,
                     batches, tb, make_torch)


def resnet18_case(cfg: ModelsConfig, seed: int = 0) -> ModelCase:
    """ResNet-18 (small stem, BN train mode) on random ``[B, H, W, C]`` images."""
    torch = _torch()
    model = ResNet18(num_classes=cfg.resnet_classes, small_stem=True, width=cfg.resnet_width,
                     stage_sizes=cfg.resnet_stages)
    b, s, c = cfg.resnet_batch, cfg.resnet_image, cfg.resnet_channels
    params, stats, masks = init_variables(model, jnp.zeros((1, s, s, c), jnp.float32),
                                          density=cfg.mask_density, seed=seed)

    def loss_fn(p, aux, batch):
        x, y = batch
        logits, upd = model.apply({"params": p, "batch_stats": aux}, x, train=True,
                                  mutable=["batch_stats"])
        return _ce(logits, y), upd["batch_stats"]

    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((b, s, s, c), dtype=np.float32),
                rng.integers(0, cfg.resnet_classes, b).astype(np.int32))
               for _ in range(cfg.resnet_steps)]
    tb = [(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
           torch.from_numpy(y.astype(np.int64))) for x, y in batches] if torch else []

    def make_torch(p, m, a):
        from benchmarks.torch_models import TorchResNet18

        return TorchResNet18(small_stem=True, stage_sizes=cfg.resnet_stages,
                             width=cfg.resnet_width).load_jax(
            p, m, batch_stats=a, lr=LR, momentum=MOMENTUM)

    return ModelCase("ResNet-18 (small stem)", f"{s}x{s}x{c}, batch {b}", params, stats, masks,
                     loss_fn, batches, tb, make_torch)


def ds2_model(cfg: ModelsConfig) -> DeepSpeech2:
    return DeepSpeech2(vocab_size=cfg.ds2_vocab, conv_features=cfg.ds2_conv_features,
                       rnn_features=cfg.ds2_rnn_features, num_rnn_layers=cfg.ds2_rnn_layers)


def ds2_batches(cfg: ModelsConfig, steps: int, seed: int = 0) -> list:
    """``(features [B, T, F], paddings [B, T], labels [B, N], label_paddings [B, N])``, numpy;
    utterances of 85-100% of T frames and labels of N/2..N characters."""
    rng = np.random.default_rng(seed)
    b, t, n = cfg.ds2_batch, cfg.ds2_frames, cfg.ds2_label_len
    out = []
    for _ in range(steps):
        feats = rng.standard_normal((b, t, cfg.ds2_mfcc), dtype=np.float32)
        lengths = rng.integers(int(0.85 * t), t + 1, b)
        lengths[0] = t
        pads = (np.arange(t)[None, :] >= lengths[:, None]).astype(np.float32)
        labels = rng.integers(1, cfg.ds2_vocab, (b, n)).astype(np.int32)
        llen = rng.integers(max(n // 2, 1), n + 1, b)
        lpads = (np.arange(n)[None, :] >= llen[:, None]).astype(np.float32)
        out.append((feats, pads, labels * (1 - lpads).astype(np.int32), lpads))
    return out


def ds2_case(cfg: ModelsConfig, seed: int = 0) -> ModelCase:
    """DeepSpeech2-H-LSTM (no dropout) with CTC loss on random MFCC frames."""
    torch = _torch()
    model = ds2_model(cfg)
    b, t = cfg.ds2_batch, cfg.ds2_frames
    params, _, masks = init_variables(model, jnp.zeros((b, t, cfg.ds2_mfcc), jnp.float32),
                                      density=cfg.mask_density, seed=seed)

    def loss_fn(p, aux, batch):
        return deepspeech2_loss(model, p, *batch), aux

    batches = ds2_batches(cfg, cfg.ds2_steps, seed)
    tb = [(torch.from_numpy(f), torch.from_numpy(p), torch.from_numpy(lab.astype(np.int64)),
           torch.from_numpy((1 - lp).sum(1).astype(np.int64))) for f, p, lab, lp in batches
          ] if torch else []

    def make_torch(p, m, a):
        from benchmarks.torch_models import TorchDeepSpeech2

        return TorchDeepSpeech2(conv_kernels=model.conv_kernels, conv_strides=model.conv_strides,
                                num_rnn_layers=cfg.ds2_rnn_layers).load_jax(
            p, m, lr=LR, momentum=MOMENTUM)

    shape = (f"{t} frames x {cfg.ds2_mfcc} MFCC, batch {b}, conv {cfg.ds2_conv_features}, "
             f"{cfg.ds2_rnn_layers} x bi-H-LSTM {cfg.ds2_rnn_features}")
    return ModelCase("DeepSpeech2-H-LSTM", shape, params, None, masks, loss_fn, batches, tb,
                     make_torch)


def cases(cfg: ModelsConfig) -> list[ModelCase]:
    out = []
    if "lenet5" in cfg.which:
        out += [lenet5_case(b, s, cfg.mask_density)
                for b, s in zip(cfg.lenet_batches, cfg.lenet_steps, strict=True)]
    if "resnet18" in cfg.which:
        out.append(resnet18_case(cfg))
    if "ds2" in cfg.which:
        out.append(ds2_case(cfg))
    return out


# ----------------------------------------------------------------------------- JAX steps

def make_aux_steps(loss_fn: Callable, tx: optax.GradientTransformationExtraArgs):
    """(one jitted masked step, one jitted ``lax.scan`` of it over stacked batches).

    ``loss_fn(params, aux, batch) -> (loss, new_aux)``; the step maps
    ``(params, opt_state, aux, masks, batch) -> (params, opt_state, aux, loss)``, params,
    state and aux donated. The forward pass uses ``W`` directly (dormant weights are exactly 0
    under ``gpjax.masked``; see :func:`benchmarks.bench_core.make_jax_steps`).
    """

    def one(p, s, aux, m, batch):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, aux, batch)
        u, s = tx.update(g, s, p, masks=m)
        return optax.apply_updates(p, u), s, aux, loss

    def many(p, s, aux, m, batches):
        def body(carry, batch):
            p, s, aux, loss = one(*carry, m, batch)
            return (p, s, aux), loss

        (p, s, aux), losses = jax.lax.scan(body, (p, s, aux), batches)
        return p, s, aux, losses

    return jax.jit(one, donate_argnums=(0, 1, 2)), jax.jit(many, donate_argnums=(0, 1, 2))


def _run_steps(st: list, step, masks, batches) -> None:
    loss = None
    for b in batches:
        st[0], st[1], st[2], loss = step(st[0], st[1], st[2], masks, b)
    loss.block_until_ready()


def _run_scan(st: list, many, masks, stacked) -> None:
    st[0], st[1], st[2], losses = many(st[0], st[1], st[2], masks, stacked)
    losses.block_until_ready()


def case_fns(case: ModelCase, scan: bool = True) -> tuple[dict[str, Callable], dict]:
    """The functions :func:`time_group` times for one case (gpjax step/scan, torch), each
    running all of ``case.batches`` once; and the JAX states (to check the invariant)."""
    tx = gpjax.masked(optax.sgd(LR, momentum=MOMENTUM))
    step, many = make_aux_steps(case.loss_fn, tx)
    batches = [jax.tree.map(jnp.asarray, b) for b in case.batches]
    states = {"gpjax_step": [fresh_copy(case.params), tx.init(case.params),
                             fresh_copy(case.aux)]}
    fns: dict[str, Callable] = {
        "gpjax_step": functools.partial(_run_steps, states["gpjax_step"], step, case.masks,
                                        batches)}
    if scan:
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
        states["gpjax_scan"] = [fresh_copy(case.params), tx.init(case.params),
                                fresh_copy(case.aux)]
        fns["gpjax_scan"] = functools.partial(_run_scan, states["gpjax_scan"], many,
                                              case.masks, stacked)
    model_t = case.make_torch(case.params, case.masks, case.aux)
    fns["torch"] = functools.partial(model_t.train_steps, case.torch_batches)
    return fns, states


def bench_models(cfg: ModelsConfig, repeats: int, warmup: int, out: dict,
                 timer: Timer | None = None) -> None:
    """Times every case; ``out["models"]`` gets one row per case.

    ``timer``: the :class:`~benchmarks.harness.Timer` (PyTorch thread counts) to time with;
    default: PyTorch at 1 thread.
    """
    timer = timer or Timer()
    rows = []
    for case in cases(cfg):
        fns, states = case_fns(case)
        steps = len(case.batches)
        s = timer.group(fns, repeats, warmup)
        per_step = {k: 1e3 * med(v) / steps for k, v in s.items()}
        ok = {k: bool(gpjax.dormant_is_zero(st[0], case.masks)) for k, st in states.items()}
        if not all(ok.values()):
            raise AssertionError(f"dormant weights not 0 after the timed steps: {case.name}")
        row = {
            "model": case.name, "shape": case.shape, "params": case.num_params,
            "steps_per_call": steps, "ms_per_step": per_step, "samples_s": s,
            "torch_ms_per_step_by_threads": {
                str(n): 1e3 * v / steps for n, v in timer.choice["torch"].items()},
            "speedup_vs_torch_step": per_step["torch"] / per_step["gpjax_step"],
            "speedup_vs_torch_scan": per_step["torch"] / per_step["gpjax_scan"],
            "dormant_is_zero": ok,
        }
        rows.append(row)
        print(f"  models {case.name:24s} {case.shape:28.28s} " + "  ".join(
            f"{k} {v:.2f}ms" for k, v in per_step.items()), flush=True)
    out["models"] = {"rows": rows, "optimizer": f"sgd(lr={LR}, momentum={MOMENTUM})",
                     "mask_density": cfg.mask_density, "notes": cfg.notes}


def render_models(res: dict) -> list[str]:
    """Markdown lines of the models section."""
    m = res["models"]
    lines = ["## 5. Model train steps: LeNet-5, ResNet-18, DeepSpeech2-H-LSTM (ms per step)", "",
             f"Masked {m['optimizer']} step, masks {m['mask_density']:.0%} dense, random data. "
             "`gpjax step`: one jitted call per step (params, optimiser state and BN "
             "statistics donated); `gpjax scan`: the timed steps in one jitted `lax.scan`, time "
             "per step; PyTorch: `benchmarks/torch_models.py` (forward with `W * M`, backward, "
             "`torch.optim.SGD` step, re-mask), at its fastest thread count. Speedup = PyTorch "
             "time / gpjax time (> 1: gpjax faster). DeepSpeech2 without dropout (both sides).",
             "",
             "| model | shape | params | gpjax step | gpjax scan | PyTorch | speedup (step) "
             "| speedup (scan) |", "|---|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
        t = r["ms_per_step"]
        best = best_threads(r["torch_ms_per_step_by_threads"])
        lines.append(f"| {r['model']} | {r['shape']} | {r['params']:,} | "
                     f"{t['gpjax_step']:.2f} | {t['gpjax_scan']:.2f} | {t['torch']:.2f} "
                     f"({best}t) | {r['speedup_vs_torch_step']:.2f}x | "
                     f"{r['speedup_vs_torch_scan']:.2f}x |")
    ok = all(all(r["dormant_is_zero"].values()) for r in m["rows"])
    lines += ["", f"Invariant `W * M == W` after the timed gpjax steps: "
                  f"{'holds in every case' if ok else 'VIOLATED'}.", ""]
    if m.get("notes"):
        lines += ["Notes: " + "; ".join(m["notes"]), ""]
    return lines


def model_targets(res: dict) -> list[dict]:
    """The LeNet-5 >= 1.0x PyTorch eager target (issue 3), per batch size."""
    out = []
    for r in res["models"]["rows"]:
        if r["model"] == "LeNet-5":
            best = max(r["speedup_vs_torch_step"], r["speedup_vs_torch_scan"])
            out.append({"target": f"LeNet-5 masked step ({r['shape']}) >= 1.0x PyTorch eager",
                        "measured": f"{r['speedup_vs_torch_step']:.2f}x step, "
                                    f"{r['speedup_vs_torch_scan']:.2f}x scan",
                        "met": best >= 1.0})
    return out
