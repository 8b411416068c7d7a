"""LeNet-300-100 and LeNet-5, plus the activation and pooling every model of the zoo shares.

Conventions the grow/prune core relies on (they hold in every model of :mod:`gpjax.models`):

* every kernel (a parameter of rank >= 2) is prunable and growable; biases and normalisation
  parameters (rank 1) are not masked;
* a kernel's last axis is its output units, axis -2 its input units, leading axes are spatial
  (Flax ``Dense`` is ``(in, out)``, ``Conv`` is ``(kh, kw, in, out)``);
* the kernels fed directly by the network input (pixels, MFCCs: not neurons) are listed as
  fnmatch patterns over "/"-joined parameter paths in the class attribute ``input_kernels``,
  to be passed as ``gpjax.prune(..., input_fed=Model.input_kernels)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpjax.chain import Chain, LayerSpec
from gpjax.models.conv import conv_as_row_gemm  # noqa: F401  (its home before conv.py)

LEAKY_SLOPE = 0.01
"""Negative slope of the leaky ReLU used everywhere (SPEC eq. 4): no neuron dies while pruned."""


def leaky_relu(x: jax.Array) -> jax.Array:
    """Leaky ReLU with slope :data:`LEAKY_SLOPE` (0.01) on the negative side.

    Args:
      x: any array.

    Returns:
      ``x`` where ``x >= 0``, ``0.01 * x`` elsewhere; same shape and dtype.
    """
    return jnp.where(x >= 0, x, LEAKY_SLOPE * x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 by reshaping, not by ``lax.reduce_window``.

    A reshape to ``[B, H/2, 2, W/2, 2, C]`` followed by a max is much cheaper for XLA on CPU
    than ``reduce_window`` and its backward (select-and-scatter); a probe measured plain
    ``nn.max_pool`` LeNet-5 at 0.4-0.5x PyTorch eager and this pooling at 1.2-1.5x.
    An odd trailing row/column is dropped, as ``nn.max_pool(..., padding="VALID")`` does.

    Args:
      x: ``[B, H, W, C]``.

    Returns:
      ``[B, H // 2, W // 2, C]``.
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def as_images(x: jax.Array, height: int = 28, width: int = 28) -> jax.Array:
    """Accepts images ``[B, H, W, C]`` or flat vectors ``[B, H*W]`` and returns ``[B, H, W, C]``.

    Args:
      x: ``[B, H, W, C]``, or ``[B, height * width]`` (one channel).
      height: height of a flat input.
      width: width of a flat input.

    Returns:
      ``[B, H, W, C]``.
    """
    if x.ndim == 2:
        return x.reshape(x.shape[0], height, width, 1)
    if x.ndim != 4:
        raise ValueError(f"expected [B, H, W, C] or [B, H*W], got shape {x.shape}")
    return x


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 MLP with leaky ReLU (266,610 parameters dense).

    Attributes:
      num_classes: output units (10 for MNIST).
      hidden: widths of the hidden layers (``(300, 100)``).

    Layers are named ``fc1``, ``fc2``, ... ; ``fc1`` is fed by the pixels.
    """

    num_classes: int = 10
    hidden: Sequence[int] = (300, 100)

    input_kernels: ClassVar[tuple[str, ...]] = ("*fc1/kernel",)

    def compact_chain(self) -> Chain:
        """The layer chain for :func:`gpjax.compact`: ``fc1 .. fc<n>``, leaky ReLU between;
        input: the first kernel's rows."""
        n = len(self.hidden) + 1
        return Chain(tuple(
            LayerSpec(f"fc{i + 1}/kernel", f"fc{i + 1}/bias", "dense",
                      "leaky_relu" if i < n - 1 else "identity") for i in range(n)))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch.

        Args:
          x: ``[B, 28, 28, 1]`` or ``[B, 784]`` (any ``[B, ...]``; flattened inside).
          train: unused (no dropout or batch norm); accepted so all image models share one
            calling convention.

        Returns:
          logits ``[B, num_classes]``.
        """
        del train
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = leaky_relu(nn.Dense(width, name=f"fc{i + 1}")(x))
        return nn.Dense(self.num_classes, name=f"fc{len(self.hidden) + 1}")(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 5x5 6, pool, conv 5x5 16, pool, FC 120, FC 84, FC 10 (61,706 parameters).

    Which layout: the classic LeCun (1998) one, in which the 28x28 MNIST digit is zero-padded to
    32x32 before the first 5x5 convolution (here: ``padding=2`` on conv1, the same thing), so
    the second pooling leaves 5x5x16 = 400 features for FC 120. That gives
    156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 parameters, the closest of the standard
    layouts to the 59K the source quotes (valid convolutions on the unpadded 28x28 image give
    4x4x16 = 256 features and 44,426 parameters, 25% short; 61.7K is 4.6% over, and the
    original's partial C3 connection table would remove 900 of those). The grown-and-pruned
    models the source reports are 5-11K parameters either way.

    Pooling is the reshape-based :func:`max_pool_2x2` and the convolutions are computed as
    matrix products by :func:`conv_as_row_gemm` (both for speed on CPU; see there; the
    parameters are those of ``nn.Conv``). Leaky ReLU 0.01.

    Attributes:
      num_classes: output units.
    """

    num_classes: int = 10

    input_kernels: ClassVar[tuple[str, ...]] = ("*conv1/kernel",)

    def compact_chain(self) -> Chain:
        """The layer chain for :func:`gpjax.compact`: two padded/valid 5x5 convs with leaky
        ReLU and 2x2 max pooling, three dense layers; input ``(28, 28, C)``."""
        conv = [LayerSpec("conv1/kernel", "conv1/bias", "conv", "leaky_relu", ((2, 2), (2, 2)),
                          True),
                LayerSpec("conv2/kernel", "conv2/bias", "conv", "leaky_relu", ((0, 0), (0, 0)),
                          True)]
        dense = [LayerSpec(f"fc{i}/kernel", f"fc{i}/bias", "dense",
                           "leaky_relu" if i < 3 else "identity") for i in (1, 2, 3)]
        return Chain((*conv, *dense), (28, 28, 1))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch.

        Args:
          x: ``[B, 28, 28, 1]`` or ``[B, 784]``.
          train: unused; accepted for a calling convention shared with the other image models.

        Returns:
          logits ``[B, num_classes]``.
        """
        del train
        x = as_images(x)
        conv = partial(nn.Conv, conv_general_dilated=conv_as_row_gemm)
        x = max_pool_2x2(leaky_relu(conv(6, (5, 5), padding=2, name="conv1")(x)))
        x = max_pool_2x2(leaky_relu(conv(16, (5, 5), padding="VALID", name="conv2")(x)))
        x = x.reshape(x.shape[0], -1)
        x = leaky_relu(nn.Dense(120, name="fc1")(x))
        x = leaky_relu(nn.Dense(84, name="fc2")(x))
        return nn.Dense(self.num_classes, name="fc3")(x)
