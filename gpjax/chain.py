"""The layer chain of a model as :func:`gpjax.compact` reads it: typed values any framework gives.

A *chain* is a sequence of layers, each a Dense layer or a stride-1 2-D convolution, with one
activation after each and optionally 2x2 pooling after a convolution's activation; a dense
layer after a convolution flattens its feature map. Three values describe one:

* :class:`LayerSpec`: one layer: kernel and bias paths in the params pytree, kind, activation,
  padding, pooling, and the kernel's ``layout``: ``"flax"`` (Dense ``[in, out]``, Conv ``[kh,
  kw, in, out]``, feature maps ``[H, W, C]``: linen, NNX) or ``"torch"`` (Linear ``[out, in]``,
  Conv2d ``[out, in, kh, kw]``, feature maps ``[C, H, W]``: Equinox, PyTorch style);
* :class:`Chain`: the layers in order and the per-example input shape in the model's own
  layout (``(784,)``, ``(28, 28, 1)`` for NHWC models, ``(1, 28, 28)`` for Equinox CNNs). Zoo
  models declare theirs (``LeNet300.compact_chain()``), with paths that may be suffixes of the
  real ones (``fc1/kernel`` matches ``params/fc1/kernel``);
* :class:`ModelFn`: a model of any framework as a function ``forward(params, x)``, from which
  :func:`gpjax.compact.find_chain` derives the chain (kernels from the params pytree,
  activations and pooling by checking candidates against ``forward``).

The helpers here are structural only (paths, kinds, layouts): nothing in this module computes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from gpjax.masks import is_none, path_str

PyTree = Any
Activation = str | Callable[[jax.Array], jax.Array]
Padding = tuple[tuple[int, int], tuple[int, int]]
LAYOUTS = ("flax", "torch")

__all__ = ["LAYOUTS", "Chain", "LayerSpec", "ModelFn", "bias_of", "kernel_orders",
           "leaf_table", "resolve", "skeleton", "to_flax_layout"]


class LayerSpec(NamedTuple):
    """One layer of a chain as :func:`gpjax.compact` reads it from a params pytree.

    Attributes:
      kernel: "/"-joined path of the kernel leaf (``params/fc1/kernel``, ``layers/0/weight``).
      bias: path of the bias leaf, or None (no bias). Any shape with ``out`` entries
        (Equinox conv biases are ``[out, 1, 1]``).
      kind: ``"dense"`` (input flattened) or ``"conv"`` (stride 1, no dilation or groups).
      activation: applied after the bias (name in :data:`gpjax.compact.ACTIVATIONS` or a
        function).
      padding: conv only: ``((top, bottom), (left, right))``.
      pool: conv only: 2x2 pooling (stride 2) after the activation: False/None (none), True
        or ``"max"``, ``"avg"``.
      layout: the kernel's layout, ``"flax"`` (``[in, out]``, ``[kh, kw, in, out]``; the
        conv's feature maps ``[H, W, C]``) or ``"torch"`` (``[out, in]``, ``[out, in, kh,
        kw]``; feature maps ``[C, H, W]``, flattened in that order for the next dense layer).
    """

    kernel: str
    bias: str | None
    kind: str = "dense"
    activation: Activation = "identity"
    padding: Padding = ((0, 0), (0, 0))
    pool: bool | str | None = False
    layout: str = "flax"


class Chain(NamedTuple):
    """A model's layers in order and its input.

    Attributes:
      layers: one :class:`LayerSpec` per layer, input to output.
      input_shape: per-example input shape in the model's own layout (``(784,)``, ``(28, 28,
        1)``, ``(1, 28, 28)`` for a torch-layout CNN); None: the first dense kernel's rows (a
        conv chain needs it; its channel count is taken from the first kernel).
    """

    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, ...] | None = None


class ModelFn(NamedTuple):
    """A model of any framework as a function, for :func:`gpjax.compact.find_chain`.

    Attributes:
      forward: ``forward(params, x) -> outputs``: ``x`` a batch ``[B, *input_shape]``,
        outputs ``[B, out]``, in evaluation mode (no dropout; non-parameter state bound).
        Pure and jittable; ``params`` is the pytree compact is given.
      layout: the kernels' layout, ``"flax"`` (linen, NNX) or ``"torch"`` (Equinox).
      input_shape: per-example input shape in the model's own layout (``(1, 8, 8)`` for an
        Equinox CNN on 8x8 digits); None: the first kernel's rows (a dense chain only).
      kernels: the kernel paths in the order the forward applies them; None: the params
        pytree's order (definition order for Equinox; sorted keys, numbers numerically, for
        dicts), checked against the shapes.
    """

    forward: Callable[[PyTree, jax.Array], jax.Array]
    layout: str = "flax"
    input_shape: tuple[int, ...] | None = None
    kernels: tuple[str, ...] | None = None


def leaf_table(tree: PyTree) -> dict[str, Any]:
    """``{path: leaf}`` of a pytree's array leaves (``None`` leaves, as ``eqx.partition``
    leaves them, skipped), in flatten order."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    return {path_str(p): v for p, v in flat if v is not None}


def bias_of(named: dict[str, Any], kernel: str) -> str | None:
    """The bias beside a kernel: its sibling leaf ``bias`` (an NNX state's ``.../bias/value``
    beside ``.../kernel/value``), or None."""
    suffix = "/value" if kernel.endswith("/value") else ""
    base = kernel[:-len(suffix)] if suffix else kernel
    b = (base.rsplit("/", 1)[0] + "/bias" if "/" in base else "bias") + suffix
    return b if b in named else None


def _lookup(named: dict[str, Any], suffix: str, what: str) -> str:
    hits = [n for n in named if n == suffix or n.endswith("/" + suffix)]
    if len(hits) != 1:
        raise ValueError(f"compact: {what} needs exactly one leaf named '*{suffix}', found "
                         f"{hits or 'none'}. Fix: pass layers=[kernel paths] for this params tree")
    return hits[0]


def resolve(chain: Chain, named: dict[str, Any], what: str = "the chain") -> Chain:
    """A declared chain with its paths made full: each kernel path is the leaf of that name or
    the one leaf ending in ``/<path>``; each bias likewise, or the kernel's sibling ``bias``
    when the declared one is absent, or None.

    Raises:
      ValueError: a kernel path that matches no leaf or several.
    """
    layers = []
    for s in chain.layers:
        k = _lookup(named, s.kernel, what)
        b = None
        if s.bias is not None:
            hits = [n for n in named if n == s.bias or n.endswith("/" + s.bias)]
            b = hits[0] if len(hits) == 1 else bias_of(named, k)
        layers.append(s._replace(kernel=k, bias=b))
    return chain._replace(layers=tuple(layers))


def _natural(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def kernel_orders(named: dict[str, Any], kernels: Sequence[str] | None = None,
                  layout: str = "flax") -> list[list[str]]:
    """Candidate orders of the kernels (rank >= 2 leaves not named ``bias``): ``kernels`` as
    given, else the pytree's order and, when different, the paths sorted with their numbers
    compared as numbers (``Dense_2`` before ``Dense_10``) and the order in which their unit
    counts chain (convs, then dense layers), when that is unique."""
    if kernels is not None:
        missing = [k for k in kernels if k not in named]
        if missing:
            raise ValueError(f"compact: kernels {missing} are not leaves of params (leaves: "
                             f"{list(named)[:6]}...). Fix: use '/'-joined paths")
        return [list(kernels)]
    found = [n for n, v in named.items() if np.ndim(v) >= 2 and not _is_bias_name(n)]
    orders = [found]
    for order in (sorted(found, key=_natural), _by_units(named, found, layout)):
        if order is not None and order not in orders:
            orders.append(order)
    return orders


def _by_units(named: dict[str, Any], found: Sequence[str], layout: str) -> list[str] | None:
    """The kernels ordered so that each one's input units are the previous one's outputs,
    convs first then dense layers; None when no such order is unique."""
    def io(k: str) -> tuple[int, int]:
        shape = np.shape(named[k])
        return (shape[-2], shape[-1]) if layout == "flax" else (shape[1], shape[0])

    order: list[str] = []
    for group in ([k for k in found if np.ndim(named[k]) == 4],
                  [k for k in found if np.ndim(named[k]) == 2]):
        rest = list(group)
        outs = {io(k)[1] for k in rest}
        heads = [k for k in rest if io(k)[0] not in outs]
        if len(heads) > 1 or (rest and not heads and not order):
            return None
        nxt = heads or [k for k in rest if order and io(k)[0] % io(order[-1])[1] == 0]
        while rest:
            if len(nxt) != 1:
                return None
            order.append(nxt[0])
            rest.remove(nxt[0])
            nxt = [k for k in rest if io(k)[0] == io(order[-1])[1]]
    return order


def _is_bias_name(path: str) -> bool:
    base = path[:-len("/value")] if path.endswith("/value") else path
    return base.rsplit("/", 1)[-1] == "bias"


def skeleton(named: dict[str, Any], order: Sequence[str], layout: str) -> list[LayerSpec]:
    """The layers of a chain of these kernels (kind from the rank, bias beside each, identity
    activations, no padding or pooling: to be filled in).

    Raises:
      ValueError: a layout other than flax/torch; no kernels; a kernel of rank 3 or > 4
        (1-D/3-D convolutions, stacked recurrent weights); leaves that are neither kernels
        nor their biases (normalisation scales, embeddings); a dense layer before a conv.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"compact: layout must be 'flax' or 'torch', got {layout!r}. Fix: "
                         "'flax' for [in, out] kernels (linen, NNX), 'torch' for [out, in] "
                         "(Equinox)")
    if not order:
        raise ValueError("compact: the params hold no kernels (rank >= 2 leaves). Fix: pass "
                         "the model's params pytree")
    specs, used = [], set()
    for k in order:
        rank = np.ndim(named[k])
        if rank not in (2, 4):
            raise ValueError(f"compact: kernel {k} has rank {rank}; only dense (rank 2) and "
                             "2-D conv (rank 4) chains compact (no recurrent or 1-D/3-D conv "
                             "layers). Fix: deploy the masked model")
        kind = "dense" if rank == 2 else "conv"
        if kind == "conv" and specs and specs[-1].kind == "dense":
            raise ValueError(f"compact: conv kernel {k} follows a dense layer; only "
                             "conv-then-dense chains compact. Fix: deploy the masked model")
        b = bias_of(named, k)
        used.update({k, b})
        specs.append(LayerSpec(k, b, kind, layout=layout))
    other = [n for n in named if n not in used]
    if other:
        raise ValueError(f"compact: parameters {other[:4]} are neither kernels nor their biases "
                         "(normalisation, embeddings, a residual projection?); compact handles "
                         "plain dense/conv chains. Fix: deploy the masked model")
    return specs


def to_flax_layout(k: np.ndarray, spec: LayerSpec) -> np.ndarray:
    """A kernel in flax layout: dense ``[in, out]``, conv ``[kh, kw, in, out]``."""
    if spec.layout == "flax":
        return k
    if spec.layout != "torch":
        raise ValueError(f"compact: {spec.kernel}: layout must be 'flax' or 'torch', got "
                         f"{spec.layout!r}")
    return k.T if k.ndim == 2 else k.transpose(2, 3, 1, 0)
