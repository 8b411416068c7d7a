"""Affine augmentation against scipy.ndimage's independent bilinear affine resampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from gpjax.data.augment import AffineConfig, _inverse_maps, affine_augment


def test_zero_ranges_are_identity():
    x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
    out = affine_augment(jax.random.key(1), x, AffineConfig(0.0, 0.0, 0.0, 0.0))
    np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-6)


@pytest.mark.parametrize("cfg", [AffineConfig(), AffineConfig(30.0, 0.2, 15.0, 3.0)])
def test_matches_scipy_affine_transform(cfg):
    x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 2))
    key = jax.random.key(3)
    out = np.asarray(affine_augment(key, x, cfg))
    inv, shift = map(np.asarray, _inverse_maps(key, 4, cfg))
    centre = np.array([13.5, 13.5])
    for b in range(4):
        # input coordinate = inv @ (out - centre - shift) + centre = inv @ out + offset
        offset = centre - inv[b] @ (centre + shift[b])
        for c in range(2):
            ref = ndimage.affine_transform(np.asarray(x[b, ..., c], np.float64), inv[b],
                                           offset=offset, order=1, mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(out[b, ..., c], ref, atol=2e-5)


def test_seeded_and_varied():
    x = jax.random.uniform(jax.random.key(4), (3, 28, 28, 1))
    a = affine_augment(jax.random.key(5), x)
    b = affine_augment(jax.random.key(5), x)
    c = affine_augment(jax.random.key(6), x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    assert a.shape == x.shape and a.dtype == x.dtype
    # mass is roughly preserved by a mild distortion (zoom within 10%)
    ratio = jnp.sum(a) / jnp.sum(x)
    assert 0.6 < float(ratio) < 1.4
