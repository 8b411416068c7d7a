"""Random affine distortions of image batches (rotation, scale, shear, translation), jitted.

The MNIST protocol of the source augments training batches with affine distortions. Each image
gets its own random transform, applied by bilinear resampling about the image centre with zero
fill; the whole batch is one gather of 2x2 pixel windows (see :func:`affine_augment`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class AffineConfig(NamedTuple):
    """Ranges of the random affine distortion (each drawn uniformly per image).

    Attributes:
      rotation: max |angle| in degrees.
      scale: max relative zoom, the factor lies in [1 - scale, 1 + scale].
      shear: max |shear| in degrees.
      translate: max |shift| in pixels, per axis.
    """

    rotation: float = 12.0
    scale: float = 0.1
    shear: float = 8.0
    translate: float = 2.0


def _inverse_maps(key: jax.Array, b: int, cfg: AffineConfig) -> tuple[jax.Array, jax.Array]:
    """Per-image inverse affine maps ``A^-1`` ``[B, 2, 2]`` and shifts ``[B, 2]``.

    The forward map is ``A = zoom * R(angle) @ S(shear)``; its inverse is written out
    (``S^-1 R^T / zoom``), no linear solve.
    """
    k_rot, k_scale, k_shear, k_shift = jax.random.split(key, 4)
    deg = math.pi / 180.0
    angle = jax.random.uniform(k_rot, (b,), minval=-cfg.rotation, maxval=cfg.rotation) * deg
    zoom = jax.random.uniform(k_scale, (b,), minval=1 - cfg.scale, maxval=1 + cfg.scale)
    tan = jnp.tan(jax.random.uniform(k_shear, (b,), minval=-cfg.shear, maxval=cfg.shear) * deg)
    shift = jax.random.uniform(k_shift, (b, 2), minval=-cfg.translate, maxval=cfg.translate)
    c, s = jnp.cos(angle), jnp.sin(angle)
    # S^-1 = [[1, -t], [0, 1]], R^T = [[c, s], [-s, c]]
    inv = jnp.stack([jnp.stack([c + tan * s, s - tan * c], -1),
                     jnp.stack([-s, c], -1)], -2) / zoom[:, None, None]
    return inv, shift


def _source_coords(inv: jax.Array, shift: jax.Array, h: int, w: int
                   ) -> tuple[jax.Array, jax.Array]:
    """Input coordinates ``A^-1 (p - c - t) + c`` of every output pixel ``p``: rows and columns,
    each ``[B, H, W]`` (elementwise products: a batched 2x2 ``einsum`` is ~20x slower on CPU)."""
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    yr = jnp.arange(h, dtype=jnp.float32)[None, :, None] - cr - shift[:, 0, None, None]
    yc = jnp.arange(w, dtype=jnp.float32)[None, None, :] - cc - shift[:, 1, None, None]
    a = inv[:, :, :, None, None]
    return a[:, 0, 0] * yr + a[:, 0, 1] * yc + cr, a[:, 1, 0] * yr + a[:, 1, 1] * yc + cc


@functools.partial(jax.jit, static_argnames=("cfg",))
def affine_augment(key: jax.Array, images: jax.Array,
                   cfg: AffineConfig = AffineConfig()) -> jax.Array:
    """Applies an independent random affine distortion to every image of a batch.

    Output pixel ``p`` samples the input bilinearly at ``A^-1 (p - c - t) + c`` (``c`` the image
    centre, ``t`` the shift); samples outside the image read 0 (scipy's ``order=1,
    mode="grid-constant"``).

    The four neighbours of a sample are read by one gather of 2x2 windows from the image padded
    with a zero border (so a window straddling the edge reads the zeros it needs). That is ~6x
    faster on CPU than four scalar gathers over the flattened batch (``bench_augment.py``).

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]`` float images.
      cfg: distortion ranges.

    Returns:
      ``[B, H, W, C]``, same dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"affine_augment wants images [B, H, W, C], got shape {images.shape}; "
                         f"add a channel axis (x[..., None]) to [B, H, W] images")
    b, h, w, ch = images.shape
    inv, shift = _inverse_maps(key, b, cfg)
    sr, sc = _source_coords(inv, shift, h, w)                                  # [B, H, W]
    r0, c0 = jnp.floor(sr), jnp.floor(sc)
    fr, fc = (sr - r0)[:, None], (sc - c0)[:, None]                          # [B, 1, H, W]
    # A window whose top-left corner lies outside [-1, H-1] x [-1, W-1] is all zero fill.
    inside = ((r0 >= -1) & (r0 <= h - 1) & (c0 >= -1) & (c0 <= w - 1))[:, None]
    # Channels first, one zero-padded [H+2, W+2] plane per (image, channel), stacked as rows.
    planes = jnp.pad(jnp.moveaxis(images, -1, 1).astype(jnp.float32),
                     ((0, 0), (0, 0), (1, 1), (1, 1))).reshape(b * ch * (h + 2), w + 2)
    plane_row = (jnp.arange(b * ch, dtype=jnp.int32) * (h + 2)).reshape(b, ch, 1, 1)
    rows = jnp.clip(r0 + 1, 0, h).astype(jnp.int32)[:, None] + plane_row     # [B, C, H, W]
    cols = jnp.broadcast_to(jnp.clip(c0 + 1, 0, w).astype(jnp.int32)[:, None], rows.shape)
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(4, 5), collapsed_slice_dims=(),
                                          start_index_map=(0, 1))
    win = jax.lax.gather(planes, jnp.stack([rows, cols], -1), dims, slice_sizes=(2, 2),
                         mode="promise_in_bounds")                            # [B, C, H, W, 2, 2]
    top = win[..., 0, 0] + fc * (win[..., 0, 1] - win[..., 0, 0])
    bottom = win[..., 1, 0] + fc * (win[..., 1, 1] - win[..., 1, 0])
    out = (top + fr * (bottom - top)) * inside
    return jnp.moveaxis(out, 1, -1).astype(images.dtype)
