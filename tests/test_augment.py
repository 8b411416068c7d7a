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


@pytest.mark.parametrize("cfg,shape", [
    (AffineConfig(), (4, 28, 28, 2)),
    (AffineConfig(30.0, 0.2, 15.0, 3.0), (4, 28, 28, 2)),
    # Non-square, three channels, shifts of up to 8 px: many 2x2 windows straddle the border or
    # lie wholly outside, where the zero fill must come out as scipy's.
    (AffineConfig(20.0, 0.3, 10.0, 8.0), (3, 9, 13, 3)),
])
def test_matches_scipy_affine_transform(cfg, shape):
    b, h, w, ch = shape
    x = jax.random.uniform(jax.random.key(2), shape)
    key = jax.random.key(3)
    out = np.asarray(affine_augment(key, x, cfg))
    inv, shift = map(np.asarray, _inverse_maps(key, b, cfg))
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for i in range(b):
        # input coordinate = inv @ (out - centre - shift) + centre = inv @ out + offset
        offset = centre - inv[i] @ (centre + shift[i])
        for c in range(ch):
            ref = ndimage.affine_transform(np.asarray(x[i, ..., c], np.float64), inv[i],
                                           offset=offset, order=1, mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(out[i, ..., c], ref, atol=2e-5)
    if shape[1:3] == (9, 13):
        assert (out == 0).mean() > 0.05  # the shifts did push samples off the image


def test_rejects_unbatched_images():
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        affine_augment(jax.random.key(0), jnp.zeros((28, 28, 1)))


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
