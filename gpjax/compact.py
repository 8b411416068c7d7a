"""Compact models: remove what grow-and-prune left dead, keep the function.

:func:`compact` turns a masked model ``(params, masks)`` into a smaller *dense* model that
computes the same outputs (to float rounding):

* a hidden unit with no output connection is removed, with its kernel column and bias;
* a hidden unit with no input connection computes a constant ``act(b)``: that constant times
  the unit's outgoing weights is folded into the next layer's bias, and the unit is removed;
* input features (pixels) with no connection are dropped: the first layer gathers the kept ones
  by an index map (for a convolution: the kept input channels);
* a convolution's output channel is a unit (all-zero filter: no input; all-zero rows in the next
  layer: no output); a dense layer fed by a flattened convolution also drops the flat features
  whose rows are all zero (an index map, as for the inputs).

Removal repeats until nothing changes (removing a unit's column can leave a unit below without
outputs; folding a unit can leave a unit above without inputs).

What it handles: a chain of layers, each a Dense or a stride-1 2-D convolution (optional 2x2
max or average pooling after the activation), one activation per layer, flattening between a
convolution and a dense layer, kernels in flax layout (``[in, out]``, ``[kh, kw, in, out]``,
NHWC: linen, NNX) or torch layout (``[out, in]``, ``[out, in, kh, kw]``, NCHW: Equinox). The
chain comes from the model (:mod:`gpjax.chain`):

* a model that declares it (``model.compact_chain()``: :class:`~gpjax.models.LeNet300`,
  :class:`~gpjax.models.LeNet5`; ResNet-18 declares a refusal), or a :class:`Chain` given;
* a :class:`ModelFn` (any framework's model as ``forward(params, x)`` with its layout) or a
  linen module: :func:`find_chain` takes the kernels from the params pytree in order and finds
  the padding (from the traced convolutions), pooling and activations whose chain computes what
  ``forward`` computes, or refuses in one line;
* ``layers=[kernel paths...]`` and ``activation=`` for a Dense chain (or ``LayerSpec`` entries).

Not handled, refused with a ValueError: residual blocks (ResNet-18: removing a channel needs the
same channel removed on both sides of every skip connection and through batch norm), recurrent
cells (H-LSTM, DeepSpeech2), normalisation layers, strided, dilated or grouped convolutions. A
folded unit feeding a *padded* convolution is kept (its constant is not uniform near the
border), with its zero filter.

The result is a :class:`CompactModel`: a plain value, callable on a batch, whose weights are
numpy arrays (``model.weights``) and whose structure (``model.layers``) is hashable, so
``jax.jit(apply_compact, static_argnums=0)(model.layers, model.weights, x)`` compiles once per
structure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gpjax.chain import (
    Activation,
    Chain,
    LayerSpec,
    ModelFn,
    bias_of,
    kernel_orders,
    leaf_table,
    resolve,
    skeleton,
    to_flax_layout,
)
from gpjax.masks import is_none, path_str

# gpjax.models (and flax) are imported where used, so that `import gpjax` stays light.

PyTree = Any

__all__ = ["ACTIVATIONS", "Chain", "CompactLayer", "CompactModel", "LayerSpec", "ModelFn",
           "activation_fn", "apply_compact", "chain_of", "compact", "conv_settings",
           "find_chain", "layer_macs", "linen_model_fn", "pool_2x2"]

def _leaky_relu(x: jax.Array) -> jax.Array:
    from gpjax.models.lenet import leaky_relu

    return leaky_relu(x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "leaky_relu": _leaky_relu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}
"""Activations known by name (a :class:`CompactModel` with named activations can be saved)."""


def activation_fn(act: Activation) -> Callable[[jax.Array], jax.Array]:
    """The function of an activation given by name (:data:`ACTIVATIONS`) or as a callable."""
    if callable(act):
        return act
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; use one of {sorted(ACTIVATIONS)} "
                         "or pass a function")
    return ACTIVATIONS[act]


class CompactLayer(NamedTuple):
    """The static structure of one layer of a :class:`CompactModel` (hashable).

    Attributes:
      kind: ``"dense"`` or ``"conv"``.
      activation: name or function.
      padding: conv padding ``((top, bottom), (left, right))``.
      pool: 2x2 pooling after the activation (conv): False (none), True or "max", "avg".
      in_shape: the per-example shape this layer reshapes its input to before the index map
        (dense: ``(n,)``; conv: ``(H, W, C)``).
      indexed: whether the layer gathers its inputs by ``weights["index"]`` (dense: flat
        features; conv: channels).
      channels_first: the first layer of a torch-layout CNN: its input arrives ``[B, C, H,
        W]`` (or flat in that order) and is transposed to ``[B, H, W, C]``.
    """

    kind: str
    activation: Activation
    padding: tuple[tuple[int, int], tuple[int, int]]
    pool: bool | str | None
    in_shape: tuple[int, ...]
    indexed: bool
    channels_first: bool = False


class CompactModel(NamedTuple):
    """A compact dense model: call it on a batch ``[B, *input_shape]`` (or any reshape of it),
    the inputs the original model takes (NCHW images for a torch-layout CNN).

    Its weights are in flax layout whatever the source (dense ``[in, out]``, conv ``[kh, kw,
    in, out]`` on NHWC feature maps).

    Attributes:
      layers: one :class:`CompactLayer` per layer (static structure).
      weights: one dict per layer: ``kernel`` (dense ``[in, out]``, conv ``[kh, kw, in, out]``),
        ``bias`` ``[out]`` and, when the layer is ``indexed``, ``index`` (int32: the kept input
        features or channels).
      input_shape: per-example input shape of the original model, in its own layout
        (``(784,)``, ``(28, 28, 1)``; ``(1, 28, 28)`` for a torch-layout CNN).
      source_kernels: the kernel path of each layer in the original params (for reports).
    """

    layers: tuple[CompactLayer, ...]
    weights: tuple[dict[str, np.ndarray], ...]
    input_shape: tuple[int, ...]
    source_kernels: tuple[str, ...] = ()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Outputs ``[B, out]`` of a batch ``x`` ``[B, *input_shape]``."""
        return apply_compact(self.layers, self.weights, x)

    def num_params(self) -> int:
        """Entries of the compact dense kernels and biases (index maps not counted)."""
        return sum(int(np.size(w["kernel"])) + int(np.size(w["bias"])) for w in self.weights)

    def nonzero(self) -> int:
        """Nonzero kernel entries (the active connections that survive)."""
        return sum(int(np.count_nonzero(w["kernel"])) for w in self.weights)

    def macs(self) -> int:
        """Multiply-accumulates per example of the compact dense computation."""
        return sum(layer_macs(layer, w["kernel"].shape)[0]
                   for layer, w in zip(self.layers, self.weights))


def layer_macs(layer: CompactLayer, kernel_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(MACs per example, output positions)`` of one layer with a dense kernel.

    A conv layer's output positions are ``OH * OW`` (before pooling); dense layers have 1.
    """
    if layer.kind == "dense":
        return int(np.prod(kernel_shape)), 1
    h, w = layer.in_shape[:2]
    (pt, pb), (pl, pr) = layer.padding
    kh, kw = kernel_shape[:2]
    pos = (h + pt + pb - kh + 1) * (w + pl + pr - kw + 1)
    return int(np.prod(kernel_shape)) * pos, pos


def conv_layer(x: jax.Array, w: dict, padding) -> jax.Array:
    """A compact conv layer's product without its bias: ``x [B, H, W, C]`` with
    ``w["kernel"]`` as rows of matrix multiplies (:func:`gpjax.models.conv.conv_as_row_gemm`),
    stride 1."""
    from gpjax.models.conv import conv_as_row_gemm

    return conv_as_row_gemm(x, w["kernel"], (1, 1), padding,
                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pool_2x2(x: jax.Array, how: bool | str = "max") -> jax.Array:
    """2x2 pooling with stride 2 of ``x`` ``[B, H, W, C]`` (an odd last row/column dropped):
    ``how`` True or ``"max"`` (:func:`~gpjax.models.lenet.max_pool_2x2`), ``"avg"`` (the mean,
    as ``nnx.avg_pool(x, (2, 2), (2, 2))``). Returns ``[B, H // 2, W // 2, C]``."""
    from gpjax.models.lenet import max_pool_2x2

    if how is True or how == "max":
        return max_pool_2x2(x)
    if how != "avg":
        raise ValueError(f"compact: pool must be False, True, 'max' or 'avg', got {how!r}")
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def apply_compact(layers: Sequence[CompactLayer], weights: Sequence[dict], x: jax.Array,
                  products: Sequence[Callable | None] | None = None) -> jax.Array:
    """Runs a compact model (pure: jit it with ``layers`` static).

    Args:
      layers: the model's :class:`CompactLayer` structure.
      weights: the model's weights (one dict per layer).
      x: ``[B, ...]``, reshaped per example to the first layer's ``in_shape`` (a
        ``channels_first`` first layer: ``[B, C, H, W]``, transposed).
      products: optional, per layer, a function ``(x, w)`` replacing the layer's product
        (dense: ``x [B, in] @ kernel``, sparse products; conv: ``x [B, H, W, C]`` convolved,
        another convolution; see :mod:`gpjax.export`), or None.

    Returns:
      ``[B, out]``.
    """
    b = x.shape[0]
    for i, (layer, w) in enumerate(zip(layers, weights)):
        if layer.kind == "dense":
            x = x.reshape(b, -1)
            if layer.indexed:
                x = jnp.take(x, w["index"], axis=1)
            prod = products[i] if products is not None else None
            x = (prod(x, w) if prod is not None else x @ w["kernel"]) + w["bias"]
        else:
            if layer.channels_first:
                h, w_, c = layer.in_shape
                x = x.reshape(b, c, h, w_).transpose(0, 2, 3, 1)
            elif x.ndim != 4:
                x = x.reshape(b, *layer.in_shape)
            if layer.indexed:
                x = jnp.take(x, w["index"], axis=3)
            prod = products[i] if products is not None else None
            x = (prod or partial(conv_layer, padding=layer.padding))(x, w) + w["bias"]
        x = activation_fn(layer.activation)(x)
        if layer.pool:
            x = pool_2x2(x, layer.pool)
    return x


# ----------------------------------------------------------------------------- structure

def _dense_chain(named: dict[str, Any], layers: Sequence[str | LayerSpec],
                 activation: Activation) -> list[LayerSpec]:
    specs = []
    for i, item in enumerate(layers):
        if isinstance(item, LayerSpec):
            specs.append(item)
            continue
        if item not in named:
            raise ValueError(f"compact: layers[{i}] = {item!r} is not a leaf of params (leaves: "
                             f"{sorted(named)[:6]}...). Fix: use '/'-joined paths")
        act = activation if i < len(layers) - 1 else "identity"
        specs.append(LayerSpec(item, bias_of(named, item), "dense", act))
    return specs


def linen_model_fn(module: Any, input_shape: Sequence[int] | None = None) -> ModelFn:
    """A Flax linen module as a :class:`ModelFn` (flax layout): ``forward(params, x)`` is
    ``module.apply`` on the variables ``params`` (or ``{"params": params}``)."""
    def forward(params: PyTree, x: jax.Array) -> jax.Array:
        v = params if isinstance(params, dict) and "params" in params else {"params": params}
        return module.apply(v, x)

    return ModelFn(forward, "flax", tuple(input_shape) if input_shape is not None else None)


def chain_of(params: PyTree, model: Any = None, *,
             layers: Sequence[str | LayerSpec] | None = None,
             activation: Activation = "leaky_relu",
             input_shape: Sequence[int] | None = None) -> Chain:
    """The chain :func:`compact` shrinks, from the first of: ``layers`` (a Dense chain's
    kernel paths, or :class:`LayerSpec` entries); ``model`` as a :class:`Chain`; a
    :class:`ModelFn` (derived by :func:`find_chain`); a model declaring ``compact_chain()``;
    a linen module (``.apply``; derived by :func:`find_chain`).

    Args:
      params: the params pytree.
      model, layers, activation, input_shape: as for :func:`compact`.

    Returns:
      The :class:`Chain` with full leaf paths; ``input_shape`` overrides the chain's.

    Raises:
      ValueError: no way to know the chain, or one the model or its params refuse.
    """
    named = leaf_table(params)
    shape = tuple(input_shape) if input_shape is not None else None
    if layers is not None:
        chain = Chain(tuple(_dense_chain(named, layers, activation)))
    elif isinstance(model, Chain):
        chain = resolve(model, named)
    elif isinstance(model, ModelFn):
        fn = model if shape is None else model._replace(input_shape=shape)
        chain = find_chain(params, fn)
    elif hasattr(model, "compact_chain"):
        chain = resolve(model.compact_chain(), named, type(model).__name__)
    elif model is not None and hasattr(model, "apply"):
        chain = find_chain(params, linen_model_fn(model, shape))
    else:
        raise ValueError(f"compact does not know the structure of {type(model).__name__}. Fix: "
                         "for a chain of Dense layers pass layers=[kernel paths in order] and "
                         "activation=, or a gpjax.chain.ModelFn(forward, layout) of the model")
    if not chain.layers:
        raise ValueError("compact: no layers given")
    return chain._replace(input_shape=shape) if shape is not None else chain


# ----------------------------------------------------------------------------- shrinking

def _effective(named: dict[str, Any], masks_named: dict[str, Any], path: str) -> np.ndarray:
    w = np.asarray(named[path])
    m = masks_named.get(path)
    return w if m is None else np.where(np.asarray(m), w, np.zeros((), w.dtype))


def _geometry(specs: Sequence[LayerSpec], kernels: Sequence[np.ndarray],
              input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per layer, the per-example input shape (for a dense layer: before it flattens it),
    from flax-layout kernels and the internal (NHWC) input shape."""
    shapes, shape = [], tuple(input_shape)
    for i, (s, k) in enumerate(zip(specs, kernels)):
        shapes.append(shape)
        if s.kind == "conv":
            if len(shape) != 3 or k.ndim != 4 or shape[2] != k.shape[2]:
                raise ValueError(f"compact: layer {i} ({s.kernel}) is a conv with kernel "
                                 f"{k.shape} but its input is {shape}. Fix: check the layer order")
            (pt, pb), (pl, pr) = s.padding
            oh, ow = shape[0] + pt + pb - k.shape[0] + 1, shape[1] + pl + pr - k.shape[1] + 1
            shape = (oh // 2, ow // 2, k.shape[3]) if s.pool else (oh, ow, k.shape[3])
            if min(shape[:2]) < 1:
                raise ValueError(f"compact: layer {i} ({s.kernel}) leaves no feature map "
                                 f"({shape}). Fix: check the input shape")
        else:
            n = int(np.prod(shape))
            if k.ndim != 2 or k.shape[0] != n:
                raise ValueError(f"compact: layer {i} ({s.kernel}) has kernel {k.shape} but "
                                 f"receives {n} features. Fix: check the layer order")
            shape = (k.shape[1],)
    return shapes


def _internal_shape(chain: Chain, first: LayerSpec, kernel: np.ndarray) -> tuple[int, ...]:
    """The chain's per-example input shape in the compact model's NHWC terms (a torch CNN's
    ``(C, H, W)`` becomes ``(H, W, C)``; a conv's channels come from its kernel)."""
    shape = chain.input_shape
    if first.kind == "dense":
        return tuple(shape) if shape is not None else (int(kernel.shape[0]),)
    if shape is None or len(shape) != 3:
        raise ValueError(f"compact: a chain starting with a conv needs input_shape (H, W, C) "
                         f"or, torch layout, (C, H, W); got {shape}. Fix: pass input_shape=")
    h, w = (shape[1], shape[2]) if first.layout == "torch" else (shape[0], shape[1])
    return (int(h), int(w), int(kernel.shape[2]))


def _model_input_shape(internal: tuple[int, ...], first: LayerSpec) -> tuple[int, ...]:
    if first.kind == "conv" and first.layout == "torch":
        return (internal[2], internal[0], internal[1])
    return internal


class _Stack(NamedTuple):
    """The chain's masked weights in flax layout, ready to shrink."""

    specs: list[LayerSpec]
    kernels: list[np.ndarray]     # flax layout; a dense layer's rows in NHWC-flatten order
    biases: list[np.ndarray]      # [out]
    shapes: list[tuple[int, ...]]  # per layer input (see _geometry)
    input_shape: tuple[int, ...]   # internal (NHWC)


def _stack(named: dict[str, Any], masks_named: dict[str, Any], chain: Chain) -> _Stack:
    """Masked kernels of the chain in flax layout, the dense rows after a torch conv
    permuted from its ``[C, H, W]`` flatten order to ``[H, W, C]``, biases as ``[out]``."""
    specs = list(chain.layers)
    kernels = [to_flax_layout(_effective(named, masks_named, s.kernel), s) for s in specs]
    shape = _internal_shape(chain, specs[0], kernels[0])
    shapes = _geometry(specs, kernels, shape)
    for i in range(1, len(specs)):
        prev = specs[i - 1]
        if specs[i].kind == "dense" and prev.kind == "conv" and prev.layout == "torch":
            h, w, c = shapes[i]
            k = kernels[i]
            kernels[i] = k.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(k.shape)
    biases = []
    for s, k in zip(specs, kernels):
        b = (np.asarray(named[s.bias]).reshape(-1).astype(k.dtype) if s.bias else
             np.zeros(k.shape[-1], k.dtype))
        if b.shape != (k.shape[-1],):
            raise ValueError(f"compact: bias {s.bias} has {b.size} entries for {k.shape[-1]} "
                             "units. Fix: check the chain's bias paths")
        biases.append(b)
    return _Stack(specs, kernels, biases, shapes, shape)


def _units(shape: tuple[int, ...], spec: LayerSpec) -> int:
    return shape[-1] if spec.kind == "conv" else int(np.prod(shape))


def _shrink(specs: Sequence[LayerSpec], k3: list[np.ndarray], biases: list[np.ndarray]) -> None:
    """Removes dead units from ``k3`` (kernels as ``[group, in units, out]``) and ``biases``
    in place until nothing changes (folding constant units into the next bias)."""
    changed = True
    while changed:
        changed = False
        for i in range(len(specs) - 1):
            nxt = specs[i + 1]
            no_in = ~k3[i].any(axis=(0, 1))
            no_out = ~k3[i + 1].any(axis=(0, 2))
            foldable = nxt.kind == "dense" or nxt.padding == ((0, 0), (0, 0))
            remove = no_out | (no_in & foldable)
            if not remove.any():
                continue
            fold = no_in & ~no_out & foldable
            if fold.any():
                const = np.asarray(activation_fn(specs[i].activation)(
                    jnp.asarray(biases[i][fold])), k3[i + 1].dtype)
                biases[i + 1] = biases[i + 1] + np.einsum(
                    "c,gco->o", const, k3[i + 1][:, fold, :]).astype(biases[i + 1].dtype)
            keep = ~remove
            k3[i] = k3[i][:, :, keep]
            biases[i] = biases[i][keep]
            k3[i + 1] = k3[i + 1][:, keep, :]
            changed = True


def _layer(st: _Stack, i: int, k: np.ndarray, shrink: bool) -> tuple[CompactLayer, dict]:
    """Layer ``i`` of the compact model from its shrunk ``[group, in, out]`` kernel ``k``."""
    s, kshape, in_shape = st.specs[i], st.kernels[i].shape, st.shapes[i]
    prev_conv = i > 0 and st.specs[i - 1].kind == "conv"
    index = None
    if s.kind == "conv":
        kernel = k.reshape(*kshape[:2], k.shape[1], k.shape[2])
        if i == 0 and shrink:
            used = kernel.any(axis=(0, 1, 3))
            if not used.all():
                index = np.flatnonzero(used).astype(np.int32)
                kernel = kernel[:, :, used, :]
        elif i > 0:
            in_shape = (*in_shape[:2], k.shape[1])
    else:
        kernel = k.reshape(k.shape[0] * k.shape[1], k.shape[2])
        in_shape = ((kernel.shape[0],) if prev_conv else (k.shape[1],) if i > 0
                    else (int(np.prod(in_shape)),))
        if shrink and (i == 0 or prev_conv):
            used = kernel.any(axis=1)
            if not used.all():
                index = np.flatnonzero(used).astype(np.int32)
                kernel = kernel[used]
    w = {"kernel": np.ascontiguousarray(kernel), "bias": np.ascontiguousarray(st.biases[i])}
    if index is not None:
        w["index"] = index
    first_torch_conv = i == 0 and s.kind == "conv" and s.layout == "torch"
    return CompactLayer(s.kind, s.activation, s.padding, s.pool, tuple(in_shape),
                        index is not None, first_torch_conv), w


def _build(named: dict[str, Any], masks_named: dict[str, Any], chain: Chain,
           shrink: bool) -> CompactModel:
    """The compact model of a resolved chain (see :func:`compact`)."""
    st = _stack(named, masks_named, chain)
    prev = [_units(st.shapes[0], st.specs[0])] + [k.shape[-1] for k in st.kernels[:-1]]
    k3 = [k.reshape(-1, p, k.shape[-1]) for k, p in zip(st.kernels, prev)]
    if shrink:
        _shrink(st.specs, k3, st.biases)
    built = [_layer(st, i, k, shrink) for i, k in enumerate(k3)]
    return CompactModel(tuple(b[0] for b in built), tuple(b[1] for b in built),
                        _model_input_shape(st.input_shape, st.specs[0]),
                        tuple(s.kernel for s in st.specs))


def compact(params: PyTree, masks: PyTree, model: Any = None, *,
            layers: Sequence[str | LayerSpec] | None = None,
            activation: Activation = "leaky_relu",
            input_shape: Sequence[int] | None = None, shrink: bool = True) -> CompactModel:
    """A smaller dense model computing what the masked model computes.

    Args:
      params: the model's params pytree (Flax variables ``{"params": ...}`` or the inner dict,
        an NNX ``nnx.Param`` state as a pure dict, Equinox's ``eqx.partition`` params).
      masks: its masks pytree (``None`` leaves: unmasked).
      model: where the chain comes from (:func:`chain_of`): a model declaring
        ``compact_chain()`` (:class:`~gpjax.models.LeNet300`, :class:`~gpjax.models.LeNet5`),
        a :class:`Chain`, a :class:`ModelFn` (any framework: ``forward(params, x)`` and its
        layout) or a linen module (both derived by :func:`find_chain`).
      layers: instead of ``model``, a chain of Dense layers in order: their kernel paths
        ("/"-joined, e.g. ``params/Dense_0/kernel``; each bias is the sibling ``bias`` leaf if
        present), or :class:`LayerSpec` entries (for convolutions).
      activation: the hidden layers' activation when ``layers`` are paths (the last layer has
        none): a name in :data:`ACTIVATIONS` or a function.
      input_shape: per-example input shape in the model's own layout; default: the chain's
        (a Dense chain: the first kernel's rows; LeNet-5: ``(28, 28, 1)``).
      shrink: False keeps every unit and input (the masked model in this form, original widths:
        a baseline to compare with).

    Returns:
      A :class:`CompactModel` whose outputs equal the masked model's (``model.apply(
      apply_masks(params, masks), x)``) to float rounding, for any ``x`` ``[B,
      *input_shape]`` in the model's own input layout.

    Raises:
      ValueError: a structure it cannot handle (ResNet-18's skips, recurrent cells, an unknown
        model without ``layers``), or layers whose shapes do not chain.
    """
    pflat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_none)[0]
    mflat = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)[0]
    if len(mflat) != len(pflat):
        raise ValueError("compact: masks do not mirror params. Fix: build masks from these "
                         "params (gpjax.init_masks(params))")
    masks_named = {path_str(p): m for p, m in mflat}
    chain = chain_of(params, model, layers=layers, activation=activation,
                     input_shape=input_shape)
    return _build(leaf_table(params), masks_named, chain, shrink)


# ----------------------------------------------------------------------------- deriving

_POOLS: tuple[bool | str, ...] = (False, "max", "avg")
_PROBE = 16  # random examples the derived chain is checked on


def conv_settings(forward: Callable, params: PyTree, x: jax.Array) -> list[dict[str, Any]]:
    """The parameters of every ``conv_general_dilated`` that ``forward(params, x)`` traces to,
    in order (sub-computations included): ``padding``, ``window_strides``, ``lhs_dilation``,
    ``rhs_dilation``, ``feature_group_count``, ...

    Raises:
      ValueError: a strided, dilated or grouped convolution (compact handles stride 1 only).
    """
    from jax.extend.core import ClosedJaxpr, Jaxpr

    found: list[dict[str, Any]] = []

    def walk(jaxpr: Jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append(dict(eqn.params))
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if isinstance(sub, ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(forward)(params, x).jaxpr)
    for p in found:
        plain = (set(p["window_strides"]) | set(p["lhs_dilation"]) | set(p["rhs_dilation"])
                 | {p["feature_group_count"], p["batch_group_count"]})
        if plain != {1}:
            raise ValueError(f"compact: the model has a strided, dilated or grouped convolution "
                             f"(strides {tuple(p['window_strides'])}, dilation "
                             f"{tuple(p['rhs_dilation'])}, groups {p['feature_group_count']}); "
                             "compact handles stride-1 chains. Fix: deploy the masked model")
    return found


def _conv_options(specs: Sequence[LayerSpec], named: dict[str, Any],
                  traced: Sequence[dict]) -> list[list[LayerSpec]]:
    """Per layer, the candidate specs: a conv's padding (the traced one when every conv was
    traced, else valid or same) times its pooling (none, max, average); a dense layer: as is."""
    convs = [i for i, s in enumerate(specs) if s.kind == "conv"]
    options = []
    for i, s in enumerate(specs):
        if s.kind == "dense":
            options.append([s])
            continue
        kh, kw = to_flax_layout(np.asarray(named[s.kernel]), s).shape[:2]
        if len(traced) == len(convs):
            pads = [tuple(tuple(int(a) for a in p) for p in traced[convs.index(i)]["padding"])]
        else:
            pads = [((0, 0), (0, 0)), (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))]
        options.append([s._replace(padding=p, pool=q) for p in pads for q in _POOLS])
    return options


def _with_activations(chain: Chain, hidden: Activation, final: Activation) -> Chain:
    n = len(chain.layers)
    return chain._replace(layers=tuple(s._replace(activation=hidden if i < n - 1 else final)
                                       for i, s in enumerate(chain.layers)))


def find_chain(params: PyTree, fn: ModelFn, *, seed: int = 0) -> Chain:
    """The chain of a model of any framework, derived and checked against its function.

    The kernels (rank >= 2 leaves) are taken in ``fn.kernels`` order, else the pytree's (or,
    if those shapes do not chain, sorted with numbers as numbers); each has its sibling bias;
    a conv's padding is read from the traced ``forward``; then one hidden activation of
    :data:`ACTIVATIONS` (the last layer: identity, else one of them) and, per conv, no, max or
    average 2x2 pooling are chosen so that the chain's outputs equal ``fn.forward(params, x)``
    on random inputs (to float rounding). Anything else (a skip connection, recurrence, an
    activation or pooling compact does not know) matches no candidate and is refused.

    Args:
      params: the params pytree ``fn.forward`` takes.
      fn: the model as a :class:`ModelFn`.
      seed: seeds the random inputs of the check.

    Returns:
      The :class:`Chain` (full leaf paths, ``input_shape`` in the model's own layout).

    Raises:
      ValueError: one line saying why the model is not a chain compact handles.
    """
    named = leaf_table(params)
    orders = kernel_orders(named, fn.kernels, fn.layout)
    skeletons = []
    for order in orders:
        try:
            skeletons.append(skeleton(named, order, fn.layout))
        except ValueError:
            if order is orders[-1] and not skeletons:
                raise
    if fn.input_shape is None:
        first = skeletons[0][0]
        if first.kind == "conv":
            raise ValueError("compact: a model starting with a conv needs its input shape. "
                             "Fix: ModelFn(..., input_shape=(H, W, C) or, torch, (C, H, W))")
        k = to_flax_layout(np.asarray(named[first.kernel]), first)
        fn = fn._replace(input_shape=(int(k.shape[0]),))
    fn = fn._replace(input_shape=tuple(int(d) for d in fn.input_shape))
    x = np.random.default_rng(seed).standard_normal((_PROBE, *fn.input_shape)).astype(np.float32)
    try:
        ref = np.asarray(jax.jit(fn.forward)(params, jnp.asarray(x)), np.float32)
    except Exception as e:  # the user's model: any error means the input shape does not fit
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"compact: the model fails on inputs [B, {fn.input_shape}] "
                         f"({type(e).__name__}: {first}). Fix: give its per-example input "
                         "shape (input_shape=)") from None
    tol = 1e-4 * max(1.0, float(np.abs(ref).max(initial=0.0)))
    best = np.inf
    traced = conv_settings(fn.forward, params, jnp.asarray(x[:1]))
    names = tuple(ACTIVATIONS)
    pairs = [(f, h) for f in ("identity", *names) for h in names]  # (final, hidden)
    idx = jnp.asarray([[names.index(f), names.index(h)] for f, h in pairs], jnp.int32)
    for specs in skeletons:
        for chain, cm in _fitting(named, specs, fn, traced):
            if ref.shape != (_PROBE, cm.weights[-1]["kernel"].shape[-1]):
                continue
            ys = np.asarray(_all_activations(cm.layers, cm.weights, jnp.asarray(x), idx))
            errs = np.abs(ys - ref).reshape(len(pairs), -1).max(axis=1)
            best = min(best, float(errs.min()))
            ok = np.flatnonzero(errs <= tol)
            if ok.size:
                final, hidden = pairs[int(ok[0])]
                return _with_activations(chain, hidden, final)
    raise ValueError(
        f"compact: no chain of the kernels {orders[0][:6]} computes what the model computes "
        f"(closest max |difference| {best:.3g}; outputs {ref.shape[1:]}): a residual (skip) "
        "connection, recurrence, or an activation or pooling compact does not know. Fix: "
        "deploy the masked model, or give the chain as gpjax.chain.Chain([LayerSpec...])")


@partial(jax.jit, static_argnums=0)
def _all_activations(layers: tuple[CompactLayer, ...], weights: tuple[dict, ...], x: jax.Array,
                     idx: jax.Array) -> jax.Array:
    """The outputs of ``layers`` for every ``(final, hidden)`` pair of activation indices
    into :data:`ACTIVATIONS` in ``idx`` ``[P, 2]``: ``[P, B, out]`` (one compilation)."""
    fns = [ACTIVATIONS[n] for n in ACTIVATIONS]

    def run(pair: jax.Array) -> jax.Array:
        def hidden(h: jax.Array) -> jax.Array:
            return jax.lax.switch(pair[1], fns, h)

        def final(h: jax.Array) -> jax.Array:
            return jax.lax.switch(pair[0], fns, h)

        n = len(layers)
        acts = tuple(c._replace(activation=hidden if i < n - 1 else final)
                     for i, c in enumerate(layers))
        return apply_compact(acts, weights, x)

    return jax.vmap(run)(idx)


def _fitting(named: dict[str, Any], specs: list[LayerSpec], fn: ModelFn,
             traced: Sequence[dict]):
    """Yields ``(chain, unshrunk compact model)`` for every padding/pooling of these layers
    whose shapes fit (activations to be chosen)."""
    import itertools

    for combo in itertools.product(*_conv_options(specs, named, traced)):
        chain = Chain(tuple(combo), fn.input_shape)
        try:
            cm = _build(named, {}, chain, shrink=False)
        except ValueError:
            continue
        yield chain, cm
