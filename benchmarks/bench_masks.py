"""Section 4 of :mod:`benchmarks.bench_core`: prune and grow mask updates, gpjax vs PyTorch.

A prune and a grow mask update on an 11.7M-parameter pytree (the 21 ResNet-18 kernels), per
layer and global, plain and recoverable, timed round-robin against the PyTorch reference of
``torch_reference.py`` (built on ``torch.kthvalue``), and checked to give the same masks.
``cfg`` is a :class:`benchmarks.bench_core.Config` (its kernel shapes, percentiles, density,
timer and repeats).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gpjax
from benchmarks.harness import med

# The 21 kernels of ResNet-18 (ImageNet stem, 1000 classes), Flax layout: 11,678,912 weights.
# Used only if gpjax.models.ResNet18 cannot be shape-evaluated.
RESNET18_KERNELS = (
    [(7, 7, 3, 64)] + [(3, 3, 64, 64)] * 4
    + [(3, 3, 64, 128), (3, 3, 128, 128), (1, 1, 64, 128), (3, 3, 128, 128), (3, 3, 128, 128)]
    + [(3, 3, 128, 256), (3, 3, 256, 256), (1, 1, 128, 256), (3, 3, 256, 256), (3, 3, 256, 256)]
    + [(3, 3, 256, 512), (3, 3, 512, 512), (1, 1, 256, 512), (3, 3, 512, 512), (3, 3, 512, 512)]
    + [(512, 1000)]
)



def resnet18_kernel_shapes(cfg: Any) -> tuple[list[tuple[int, ...]], list[str], list[bool]]:
    """Shapes, names and input-fed flags of the ResNet-18 kernels (Flax layout)."""
    if cfg.kernel_shapes:
        shapes = list(cfg.kernel_shapes)
        return shapes, [f"kernel{i}" for i in range(len(shapes))], [i == 0 for i in
                                                                   range(len(shapes))]
    try:
        from gpjax.masks import is_kernel, path_str
        from gpjax.models import ResNet18

        model = ResNet18(num_classes=cfg.resnet_classes, width=cfg.resnet_width,
                         stage_sizes=cfg.resnet_stages)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                   jnp.zeros((1, 64, 64, 3), jnp.float32)))
        flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
        kernels = [(path_str(p), leaf.shape) for p, leaf in flat if is_kernel(leaf)]
        names = [n for n, _ in kernels]
        return [s for _, s in kernels], names, [n.startswith("stem_conv") for n in names]
    except Exception as e:  # noqa: BLE001
        cfg.notes.append(f"ResNet18 shapes hard-coded ({type(e).__name__}: {e})")
        names = [f"kernel{i}" for i in range(len(RESNET18_KERNELS))]
        return list(RESNET18_KERNELS), names, [i == 0 for i in range(len(names))]


def bench_mask_update(cfg: Any, out: dict) -> None:
    import torch

    from benchmarks import torch_reference as tr

    shapes, names, fed = resnet18_kernel_shapes(cfg)
    rng = np.random.default_rng(0)
    w_np = [(rng.standard_normal(s, dtype=np.float32) * 0.05) for s in shapes]
    m_np = [rng.random(s) < cfg.update_density for s in shapes]
    w_np = [w * m for w, m in zip(w_np, m_np)]
    g_np = [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in shapes]
    params = {n: jnp.asarray(w) for n, w in zip(names, w_np)}
    masks = {n: jnp.asarray(m) for n, m in zip(names, m_np)}
    grads = {n: jnp.asarray(g) for n, g in zip(names, g_np)}
    fed_tree = dict(zip(names, fed))
    w_t = [torch.from_numpy(w) for w in w_np]
    m_t = [torch.from_numpy(m) for m in m_np]
    g_t = [torch.from_numpy(g) for g in g_np]
    pp, gp = cfg.prune_percentile, cfg.grow_percentile
    nparams = int(sum(np.prod(s) for s in shapes))

    def jx(f):
        return lambda: jax.block_until_ready(f())

    fns = {}
    for scope in ("layer", "global"):
        for rec in (False, True):
            tag = f"prune_{scope}_{'recoverable' if rec else 'plain'}"
            fns[f"gpjax_{tag}"] = jx(functools.partial(
                gpjax.prune, params, masks, percentile=pp, scope=scope, recoverable=rec,
                input_fed=fed_tree))
            fns[f"torch_{tag}"] = functools.partial(
                tr.prune, w_t, m_t, pp, scope=scope, recoverable=rec, input_fed=fed)
        fns[f"gpjax_grow_{scope}"] = jx(functools.partial(
            gpjax.grow, params, masks, grads, percentile=gp, learning_rate=0.1, scope=scope))
        fns[f"torch_grow_{scope}"] = functools.partial(tr.grow, w_t, m_t, g_t, gp, 0.1,
                                                       scope=scope)
        fns[f"torch_kthvalue_active_{scope}"] = functools.partial(
            tr.kthvalue_only, w_t, m_t, pp, scope=scope)
        fns[f"torch_kthvalue_all_{scope}"] = functools.partial(
            tr.kthvalue_only, g_t, None, gp, scope=scope)
    s = cfg.timer.group(fns, cfg.repeats, cfg.warmup)
    ms = {k: 1e3 * med(v) for k, v in s.items()}

    # The same result on both sides (a real check, cheap: the functions are compiled already).
    agree = {}
    for scope in ("layer", "global"):
        for rec in (False, True):
            jw, jm = gpjax.prune(params, masks, percentile=pp, scope=scope, recoverable=rec,
                                 input_fed=fed_tree)
            tw, tm = tr.prune(w_t, m_t, pp, scope=scope, recoverable=rec, input_fed=fed)
            agree[f"prune_{scope}_{'recoverable' if rec else 'plain'}"] = all(
                np.array_equal(np.asarray(jm[n]), m.numpy())
                and np.array_equal(np.asarray(jw[n]), w.numpy()) for n, w, m in zip(names, tw, tm))
        jw, jm = gpjax.grow(params, masks, grads, percentile=gp, learning_rate=0.1, scope=scope)
        tw, tm = tr.grow(w_t, m_t, g_t, gp, 0.1, scope=scope)
        agree[f"grow_{scope}"] = all(
            np.array_equal(np.asarray(jm[n]), m.numpy())
            and np.allclose(np.asarray(jw[n]), w.numpy(), rtol=1e-6, atol=0)
            for n, w, m in zip(names, tw, tm))
    out["mask_update"] = {"parameters": nparams, "tensors": len(shapes), "ms": ms,
                          "samples_s": s, "same_masks_as_torch": agree,
                          "prune_percentile": pp, "grow_percentile": gp,
                          "mask_density": cfg.update_density}
    for k, v in ms.items():
        print(f"  mask update {k:36s} {v:9.1f} ms", flush=True)
