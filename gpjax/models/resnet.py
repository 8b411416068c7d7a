"""ResNet-18 (He et al. 2016), with batch norm and leaky ReLU 0.01, ImageNet or small-image stem.

Batch-norm running statistics live in the ``batch_stats`` collection: initialise with
``variables = model.init(key, x)`` (``{"params", "batch_stats"}``), train with
``model.apply(variables, x, train=True, mutable=["batch_stats"])`` and evaluate with
``model.apply(variables, x, train=False)``. Only ``params`` are masked (its kernels: every
convolution and the final dense layer; BN scales/biases and the FC bias are rank 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpjax.models.conv import conv_as_im2col
from gpjax.models.lenet import leaky_relu

ConvImpl = Literal["auto", "im2col", "xla"]


def _refuse_compact(name: str):
    """What ``compact_chain()`` of a residual model does: :func:`gpjax.compact` refuses it."""
    raise ValueError(f"compact cannot shrink {name}: its residual blocks need the same channels "
                     "removed on both sides of each skip connection (not implemented). Fix: "
                     "deploy the masked model, or compact a plain chain")


def conv_module(impl: ConvImpl) -> Callable[..., nn.Conv]:
    """``nn.Conv`` computing its convolution the way ``impl`` says.

    Args:
      impl: ``"im2col"``: :func:`gpjax.models.conv.conv_as_im2col` (matrix multiplies; 3.4x
        faster train steps on CPU); ``"xla"``: ``lax.conv_general_dilated`` (cuDNN on GPU);
        ``"auto"``: im2col when JAX's default backend is the CPU, XLA's otherwise (decided when
        the model is traced).

    Returns:
      ``nn.Conv`` (partially applied): same parameters, names and init whichever ``impl``.
    """
    if impl not in ("auto", "im2col", "xla"):
        raise ValueError(f"conv_impl must be 'auto', 'im2col' or 'xla', got {impl!r}")
    if impl == "xla" or (impl == "auto" and jax.default_backend() != "cpu"):
        return nn.Conv
    return partial(nn.Conv, conv_general_dilated=conv_as_im2col)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when shapes change).

    Attributes:
      features: output channels.
      strides: stride of the first convolution and of the projection.
      conv_impl: how convolutions are computed (:func:`conv_module`).
    """

    features: int
    strides: int = 1
    conv_impl: ConvImpl = "auto"

    def compact_chain(self):
        """Not a chain: :func:`gpjax.compact` refuses residual blocks (ValueError)."""
        _refuse_compact("BasicBlock")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x ``[B, H, W, C]``; train: batch statistics (True) or running ones.

        Returns:
          ``[B, H / strides, W / strides, features]``.
        """
        conv = partial(conv_module(self.conv_impl), use_bias=False)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), s, padding=1, name="conv1")(x)
        y = leaky_relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = norm(name="bn2")(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv(self.features, (1, 1), s, name="proj_conv")(x)
            x = norm(name="proj_bn")(x)
        return leaky_relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18: a stem convolution, 4 stages of 2 basic blocks (16 convs), 1 FC layer.

    With the default ImageNet stem (7x7/2 conv, 3x3/2 max pool) and 1000 classes it has
    11,689,512 parameters (torchvision's count; BN running statistics are not parameters).
    ``small_stem=True`` is the usual variant for 28-32 px inputs (CIFAR, MNIST): a 3x3/1 stem
    convolution and no max pool, so the last stage still sees 4x4 (32 px) feature maps.

    Activations are leaky ReLU 0.01 (SPEC eq. 4) instead of ReLU.

    Attributes:
      num_classes: output units.
      small_stem: small-image stem instead of the ImageNet one.
      width: channels of the first stage (64); stages have width x (1, 2, 4, 8). Tests use a
        small width; the architecture is otherwise unchanged.
      stage_sizes: blocks per stage ((2, 2, 2, 2) is ResNet-18).
      conv_impl: how convolutions are computed: ``"auto"`` (im2col matrix multiplies on CPU,
        XLA's convolutions elsewhere), ``"im2col"`` or ``"xla"``; see :func:`conv_module`.
        Parameters are the same whichever is used.
    """

    num_classes: int = 1000
    small_stem: bool = False
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    conv_impl: ConvImpl = "auto"

    input_kernels: ClassVar[tuple[str, ...]] = ("*stem_conv/kernel",)

    def compact_chain(self):
        """Not a chain: :func:`gpjax.compact` refuses ResNet-18 (ValueError)."""
        _refuse_compact("ResNet18")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch.

        Args:
          x: images ``[B, H, W, C]`` (any C; e.g. 224x224x3 for the ImageNet stem,
            32x32x1 or 32x32x3 for the small stem).
          train: use and update batch statistics (call with ``mutable=["batch_stats"]``).

        Returns:
          logits ``[B, num_classes]``.
        """
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        conv = conv_module(self.conv_impl)
        if self.small_stem:
            x = conv(self.width, (3, 3), padding=1, use_bias=False, name="stem_conv")(x)
            x = leaky_relu(norm(name="stem_bn")(x))
        else:
            x = conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False,
                        name="stem_conv")(x)
            x = leaky_relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.conv_impl,
                               name=f"stage{stage + 1}_block{block + 1}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)
