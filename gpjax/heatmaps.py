"""FIG. 5: per-input-pixel counts of active first-layer connections, drawn as heatmaps.

After a class-incremental round the pixels feeding many connections trace the new digit's
shape. :func:`pixel_connection_counts` computes the counts from the first kernel's mask,
:func:`pixel_connection_heatmap` / :func:`pixel_connection_heatmaps` draw one or several rounds.
(Also importable from :mod:`gpjax.report`.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpjax._files import pyplot, save_figure


def pixel_connection_counts(first_kernel_mask: Any,
                            shape: tuple[int, int] | None = (28, 28)) -> np.ndarray:
    """Per-input-pixel number of active connections into the first hidden layer.

    Args:
      first_kernel_mask: the first layer's mask (or kernel: nonzero counts as active), shape
        ``[prod(shape), H]`` (Flax ``Dense`` layout ``[in, out]``).
      shape: the image shape the inputs unflatten to; None: square (``sqrt(in)`` per side).

    Returns:
      An int array of ``shape``: ``mask.sum(axis=1)`` reshaped.
    """
    m = np.asarray(first_kernel_mask)
    if shape is None:
        side = math.isqrt(m.shape[0]) if m.ndim == 2 else 0
        if m.ndim != 2 or side * side != m.shape[0]:
            raise ValueError(f"cannot infer a square image shape from a first-layer mask of "
                             f"shape {m.shape}; pass shape=(height, width)")
        shape = (side, side)
    n_in = int(np.prod(shape))
    if m.ndim != 2 or m.shape[0] != n_in:
        hint = (" (it looks transposed: pass mask.T)" if m.ndim == 2 and m.shape[1] == n_in
                else "")
        raise ValueError(f"first_kernel_mask must have shape [{n_in}, H] for {shape} images, got "
                         f"{m.shape}{hint}; pass masks['params']['Dense_0']['kernel'] of the "
                         f"first layer")
    return (m != 0).sum(axis=1).astype(np.int64).reshape(shape)


def pixel_connection_heatmap(first_kernel_mask: Any, out_path: str | os.PathLike, *,
                             title: str | None = None,
                             shape: tuple[int, int] | None = (28, 28),
                             dpi: int = 120) -> np.ndarray:
    """Draws FIG. 5: active connections from each input pixel to the first hidden layer.

    Args:
      first_kernel_mask: first-layer mask ``[prod(shape), H]`` (bool, or a kernel: nonzero =
        active).
      out_path: the PNG to write.
      title: figure title.
      shape: image shape.
      dpi: resolution.

    Returns:
      The counts drawn (``shape``, int).
    """
    return pixel_connection_heatmaps([first_kernel_mask], out_path,
                                     titles=[title] if title else None, shape=shape, dpi=dpi)[0]


def pixel_connection_heatmaps(masks: Sequence[Any] | Mapping[str, Any],
                              out_path: str | os.PathLike, *,
                              titles: Sequence[str] | None = None,
                              shape: tuple[int, int] | None = (28, 28),
                              ncols: int | None = None,
                              shared_scale: bool = True, suptitle: str | None = None,
                              dpi: int = 120) -> np.ndarray:
    """FIG. 5 for several rounds: one heatmap panel per first-layer mask.

    Args:
      masks: first-layer masks in round order, or a mapping panel title -> mask (e.g.
        ``{"round 1: {1,2}": m1, "round 2: +{0}": m2}``).
      out_path: the PNG to write.
      titles: panel titles (default: the mapping's keys, or "round i").
      shape: image shape.
      ncols: panels per row (default: all in one row, up to 5).
      shared_scale: one colour scale for all panels (comparable counts) or one per panel.
      suptitle: overall title.
      dpi: resolution.

    Returns:
      The counts, ``[len(masks), *shape]``.
    """
    plt = pyplot()
    if isinstance(masks, Mapping):
        titles = list(titles) if titles is not None else [str(k) for k in masks]
        masks = list(masks.values())
    masks = list(masks)
    if not masks:
        raise ValueError("pixel_connection_heatmaps needs at least one mask")
    if titles is None:
        titles = [f"round {i + 1}" for i in range(len(masks))] if len(masks) > 1 else [None]
    counts = np.stack([pixel_connection_counts(m, shape) for m in masks])
    n = len(masks)
    ncols = ncols or min(n, 5)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols + 0.6, 2.8 * nrows + 0.4),
                             squeeze=False, layout="constrained")
    vmax = max(int(counts.max()), 1)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        im = ax.imshow(counts[i], cmap="viridis", vmin=0,
                       vmax=vmax if shared_scale else max(int(counts[i].max()), 1))
        ax.set_xticks([])
        ax.set_yticks([])
        if titles[i]:
            ax.set_title(titles[i], fontsize="medium")
        if not shared_scale:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="connections")
    if shared_scale:
        fig.colorbar(im, ax=list(axes.flat), fraction=0.046, pad=0.04, label="connections")
    if suptitle:
        fig.suptitle(suptitle)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi)
    plt.close(fig)
    return counts
