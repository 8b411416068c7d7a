"""Random affine distortions of image batches (rotation, scale, shear, translation), jitted.

The MNIST protocol of the source augments training batches with affine distortions. Each image
gets its own random transform, applied by bilinear resampling about the image centre with zero
fill; the whole batch is one vmapped ``map_coordinates``.
"""

from __future__ import annotations

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


def affine_augment(key: jax.Array, images: jax.Array,
                   cfg: AffineConfig = AffineConfig()) -> jax.Array:
    """Applies an independent random affine distortion to every image of a batch.

    Output pixel ``p`` samples the input bilinearly at ``A^-1 (p - c - t) + c`` (``c`` the image
    centre, ``t`` the shift); samples outside the image read 0.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]`` float images.
      cfg: distortion ranges.

    Returns:
      ``[B, H, W, C]``, same dtype.
    """
    b, h, w, ch = images.shape
    inv, shift = _inverse_maps(key, b, cfg)
    centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0], jnp.float32)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing="ij")
    grid = jnp.stack([rows.ravel(), cols.ravel()], -1) - centre          # [H*W, 2]
    src = jnp.einsum("bij,bpj->bpi", inv, grid[None] - shift[:, None]) + centre  # [B, H*W, 2]
    r0, c0 = jnp.floor(src[..., 0]), jnp.floor(src[..., 1])
    fr, fc = src[..., 0] - r0, src[..., 1] - c0
    flat = images.reshape(b * h * w, ch).astype(jnp.float32)
    base = (jnp.arange(b, dtype=jnp.int32) * (h * w))[:, None]
    out = jnp.zeros((b, h * w, ch), jnp.float32)
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                        (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1)
        idx = (jnp.clip(r, 0, h - 1) * w + jnp.clip(c, 0, w - 1)).astype(jnp.int32)
        vals = jnp.take(flat, idx + base, axis=0)                            # [B, H*W, C]
        out = out + vals * (wgt * inside)[..., None]
    return out.reshape(b, h, w, ch).astype(images.dtype)
