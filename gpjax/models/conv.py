"""Convolutions computed as matrix multiplies, for XLA on CPU.

Both functions here are drop-ins for ``lax.conv_general_dilated`` (pass one to
``nn.Conv(..., conv_general_dilated=...)``: the parameters, their names and their init stay
those of ``nn.Conv``). XLA's CPU convolutions, their backward passes above all, are several
times slower than its matrix multiplies for the same arithmetic (issue 3's probes: plain
LeNet-5 train steps at 0.4-0.6x PyTorch eager, ResNet-18 small stem at 0.29x); written as
GEMMs, the forward and backward passes are matrix products plus cheap slicing and padding.

* :func:`conv_as_row_gemm` (LeNet-5): each output row is one product with a block-Toeplitz
  matrix built from the kernel; for narrow images and few channels.
* :func:`conv_as_im2col` (ResNet): the ``KH * KW`` shifted (strided) views of the input are
  concatenated along channels, ``[B * OH * OW, KH * KW * C]``, and multiplied by the kernel
  reshaped to ``[KH * KW * C, O]``; any size, any stride.

Both handle NHWC inputs, HWIO kernels (Flax's layout), no dilation and one feature group, with
``"VALID"``/``"SAME"`` or explicit padding; anything else goes to ``lax.conv_general_dilated``
unchanged. Outputs equal ``lax.conv_general_dilated``'s up to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["conv_as_im2col", "conv_as_row_gemm"]

Padding = str | Sequence[tuple[int, int]]
ConvFn = Callable[..., jax.Array]


def _is_unit(d: Any) -> bool:
    return d is None or tuple(d) == (1, 1)


def _padded_nhwc(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                 padding: Padding, lhs_dilation: Any, rhs_dilation: Any,
                 dimension_numbers: Any, feature_group_count: int,
                 batch_group_count: int, *, strided: bool) -> jax.Array | None:
    """``lhs`` with the convolution's padding applied, or None when the GEMM forms do not
    handle this convolution (layout, dilation, groups; strides unless ``strided``)."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        return None
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
            or not (_is_unit(lhs_dilation) and _is_unit(rhs_dilation))
            or feature_group_count != 1 or batch_group_count != 1
            or (not strided and tuple(window_strides) != (1, 1))):
        return None
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = [tuple(int(q) for q in p) for p in padding]
    if any(q < 0 for p in pads for q in p):
        return None
    if any(q for p in pads for q in p):
        lhs = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    return lhs


def _gemm_conv(*, strided: bool) -> Callable[[Callable[..., jax.Array]], ConvFn]:
    """Makes a ``lax.conv_general_dilated`` drop-in of a GEMM body.

    The body ``body(x, rhs, window_strides, precision, preferred_element_type)`` gets the
    padded NHWC input; convolutions it does not handle (see :func:`_padded_nhwc`) go to
    ``lax.conv_general_dilated`` unchanged.
    """

    def wrap(body: Callable[..., jax.Array]) -> ConvFn:
        def conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                 padding: Padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count: int = 1,
                 batch_group_count: int = 1, precision=None,
                 preferred_element_type=None) -> jax.Array:
            args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, batch_group_count)
            x = _padded_nhwc(lhs, rhs, *args, strided=strided)
            if x is None:
                return lax.conv_general_dilated(
                    lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                    feature_group_count=feature_group_count,
                    batch_group_count=batch_group_count, precision=precision,
                    preferred_element_type=preferred_element_type)
            return body(x, rhs, tuple(window_strides), precision, preferred_element_type)

        conv.__name__ = conv.__qualname__ = body.__name__
        conv.__doc__ = body.__doc__
        return conv

    return wrap


@_gemm_conv(strided=False)
def conv_as_row_gemm(x, rhs, window_strides, precision, preferred_element_type) -> jax.Array:
    """A small stride-1 2-D convolution as one matrix multiply per output row.

    Each output row is a matrix product of the ``KH`` input rows it sees,
    ``[B * OH, KH * W * C]``, with a block-Toeplitz matrix ``[KH * W * C, OW * O]`` built from
    the kernel (``T[i, v, c, u, o] = k[i, v - u, c, o]`` where ``0 <= v - u < KW``, else 0):
    the same sums as the convolution, in another order. The Toeplitz matrix repeats each
    kernel entry ``OW`` times, so this only pays for narrow images and few channels (LeNet-5:
    ~1x PyTorch eager instead of 0.4-0.6x). Strided convolutions go to XLA.

    Signature: that of ``lax.conv_general_dilated``
    ``(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
    preferred_element_type=None)``.

    Args:
      lhs: ``[B, H, W, C]``.
      rhs: ``[KH, KW, C, O]``.
      window_strides, padding, ...: as ``lax.conv_general_dilated``.

    Returns:
      ``[B, OH, OW, O]``, what ``lax.conv_general_dilated`` returns (up to float rounding).
    """
    del window_strides  # (1, 1)
    kh, kw, c, o = rhs.shape
    b, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    rows = jnp.stack([x[:, i:i + oh] for i in range(kh)], axis=2)        # [B, OH, KH, W, C]
    sel = (np.arange(w)[:, None, None] - np.arange(ow)[None, :, None]
           == np.arange(kw)[None, None, :]).astype(rhs.dtype)            # [W, OW, KW]
    toeplitz = jnp.einsum("vuj,ijco->ivcuo", sel, rhs, precision=precision)
    y = jnp.dot(rows.reshape(b * oh, kh * w * c), toeplitz.reshape(kh * w * c, ow * o),
                precision=precision, preferred_element_type=preferred_element_type)
    return y.reshape(b, oh, ow, o)


@_gemm_conv(strided=True)
def conv_as_im2col(x, rhs, window_strides, precision, preferred_element_type) -> jax.Array:
    """A 2-D convolution as one matrix multiply over image patches (im2col).

    .. math:: y[b, p, q, o] = \\sum_{i, j, c} x[b, s_h p + i, s_w q + j, c] \\, k[i, j, c, o]

    computed as ``patches @ k.reshape(KH * KW * C, O)`` with
    ``patches[b, p, q, (i, j, c)] = x[b, s_h p + i, s_w q + j, c]`` (the padded input's
    ``KH * KW`` strided views side by side). The backward pass is two matrix products and the
    transposes of the slices (pads and adds). Costs ``KH * KW`` times the input's memory for the
    patches; ResNet-18 small stem on CPU: a train step 3.4x faster than XLA's convolutions
    (batch 32, 32x32x1: 1.6 s instead of 5.4 s).

    Signature: that of ``lax.conv_general_dilated`` (see :func:`conv_as_row_gemm`).

    Args:
      lhs: ``[B, H, W, C]``.
      rhs: ``[KH, KW, C, O]``.
      window_strides, padding, ...: as ``lax.conv_general_dilated``.

    Returns:
      ``[B, OH, OW, O]``, what ``lax.conv_general_dilated`` returns (up to float rounding).
    """
    kh, kw, c, o = rhs.shape
    sh, sw = window_strides
    b, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    views = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
             for i in range(kh) for j in range(kw)]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    y = jnp.dot(patches.reshape(b * oh * ow, kh * kw * c), rhs.reshape(kh * kw * c, o),
                precision=precision, preferred_element_type=preferred_element_type)
    return y.reshape(b, oh, ow, o)
