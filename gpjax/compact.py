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

What it handles: a chain of layers, each a Dense (``[in, out]`` kernel) or a stride-1 2-D
convolution (``[kh, kw, in, out]``, NHWC, optional 2x2 max pooling after the activation), one
activation per layer, flattening between a convolution and a dense layer. That covers
:class:`~gpjax.models.LeNet300`, :class:`~gpjax.models.LeNet5` (both inferred from the model) and
any chain of Dense layers a user defines (pass ``layers=[kernel paths...]`` and
``activation=``). Not handled, refused with a ValueError: residual blocks (ResNet-18: removing a
channel needs the same channel removed on both sides of every skip connection and through batch
norm), recurrent cells (H-LSTM, DeepSpeech2), strided or dilated convolutions. A folded unit
feeding a *padded* convolution is kept (its constant is not uniform near the border), with its
zero filter.

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

from gpjax.masks import is_none, path_str

# gpjax.models (and flax) are imported where used, so that `import gpjax` stays light.

PyTree = Any
Activation = str | Callable[[jax.Array], jax.Array]

__all__ = ["ACTIVATIONS", "CompactLayer", "CompactModel", "LayerSpec", "activation_fn",
           "apply_compact", "compact", "layer_macs"]

def _leaky_relu(x: jax.Array) -> jax.Array:
    from gpjax.models.lenet import leaky_relu

    return leaky_relu(x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "leaky_relu": _leaky_relu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
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


class LayerSpec(NamedTuple):
    """One layer of a chain as :func:`compact` reads it from a params pytree.

    Attributes:
      kernel: "/"-joined path of the kernel leaf (``params/fc1/kernel``).
      bias: path of the bias leaf, or None (no bias).
      kind: ``"dense"`` (kernel ``[in, out]``, input flattened) or ``"conv"`` (``[kh, kw, in,
        out]``, stride 1, NHWC).
      activation: applied after the bias (name in :data:`ACTIVATIONS` or a function).
      padding: conv only: ``((top, bottom), (left, right))``.
      pool: conv only: 2x2 max pooling (stride 2) after the activation.
    """

    kernel: str
    bias: str | None
    kind: str = "dense"
    activation: Activation = "identity"
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    pool: bool = False


class CompactLayer(NamedTuple):
    """The static structure of one layer of a :class:`CompactModel` (hashable).

    Attributes:
      kind: ``"dense"`` or ``"conv"``.
      activation: name or function.
      padding: conv padding ``((top, bottom), (left, right))``.
      pool: 2x2 max pooling after the activation (conv).
      in_shape: the per-example shape this layer reshapes its input to before the index map
        (dense: ``(n,)``; conv: ``(H, W, C)``).
      indexed: whether the layer gathers its inputs by ``weights["index"]`` (dense: flat
        features; conv: channels).
    """

    kind: str
    activation: Activation
    padding: tuple[tuple[int, int], tuple[int, int]]
    pool: bool
    in_shape: tuple[int, ...]
    indexed: bool


class CompactModel(NamedTuple):
    """A compact dense model: call it on a batch ``[B, *input_shape]`` (or any reshape of it).

    Attributes:
      layers: one :class:`CompactLayer` per layer (static structure).
      weights: one dict per layer: ``kernel`` (dense ``[in, out]``, conv ``[kh, kw, in, out]``),
        ``bias`` ``[out]`` and, when the layer is ``indexed``, ``index`` (int32: the kept input
        features or channels).
      input_shape: per-example input shape of the original model (``(784,)``, ``(28, 28, 1)``).
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


def apply_compact(layers: Sequence[CompactLayer], weights: Sequence[dict], x: jax.Array,
                  products: Sequence[Callable | None] | None = None) -> jax.Array:
    """Runs a compact model (pure: jit it with ``layers`` static).

    Args:
      layers: the model's :class:`CompactLayer` structure.
      weights: the model's weights (one dict per layer).
      x: ``[B, ...]``, reshaped per example to the first layer's ``in_shape``.
      products: optional, per layer, a function ``(x, w)`` replacing the layer's product
        (dense: ``x [B, in] @ kernel``, sparse products; conv: ``x [B, H, W, C]`` convolved,
        another convolution; see :mod:`gpjax.export`), or None.

    Returns:
      ``[B, out]``.
    """
    from gpjax.models.lenet import max_pool_2x2

    b = x.shape[0]
    for i, (layer, w) in enumerate(zip(layers, weights)):
        if layer.kind == "dense":
            x = x.reshape(b, -1)
            if layer.indexed:
                x = jnp.take(x, w["index"], axis=1)
            prod = products[i] if products is not None else None
            x = (prod(x, w) if prod is not None else x @ w["kernel"]) + w["bias"]
        else:
            if x.ndim != 4:
                x = x.reshape(b, *layer.in_shape)
            if layer.indexed:
                x = jnp.take(x, w["index"], axis=3)
            prod = products[i] if products is not None else None
            x = (prod or partial(conv_layer, padding=layer.padding))(x, w) + w["bias"]
        x = activation_fn(layer.activation)(x)
        if layer.pool:
            x = max_pool_2x2(x)
    return x


# ----------------------------------------------------------------------------- structure

def _lookup(named: dict[str, Any], suffix: str, what: str) -> str:
    hits = [n for n in named if n == suffix or n.endswith("/" + suffix)]
    if len(hits) != 1:
        raise ValueError(f"compact: {what} needs exactly one leaf named '*{suffix}', found "
                         f"{hits or 'none'}. Fix: pass layers=[kernel paths] for this params tree")
    return hits[0]


def _bias_of(named: dict[str, Any], kernel: str) -> str | None:
    b = kernel.rsplit("/", 1)[0] + "/bias" if "/" in kernel else "bias"
    return b if b in named else None


def infer_layers(model: Any, named: dict[str, Any]) -> tuple[list[LayerSpec], tuple[int, ...]]:
    """The layer chain and per-example input shape of a model :func:`compact` knows."""
    from gpjax.models.lenet import LeNet5, LeNet300

    if isinstance(model, LeNet300):
        n = len(model.hidden) + 1
        specs = []
        for i in range(n):
            k = _lookup(named, f"fc{i + 1}/kernel", "LeNet300")
            specs.append(LayerSpec(k, _bias_of(named, k), "dense",
                                   "leaky_relu" if i < n - 1 else "identity"))
        return specs, (int(named[specs[0].kernel].shape[0]),)
    if isinstance(model, LeNet5):
        c1, c2 = (_lookup(named, f"conv{i}/kernel", "LeNet5") for i in (1, 2))
        specs = [LayerSpec(c1, _bias_of(named, c1), "conv", "leaky_relu", ((2, 2), (2, 2)), True),
                 LayerSpec(c2, _bias_of(named, c2), "conv", "leaky_relu", ((0, 0), (0, 0)), True)]
        for i in range(3):
            k = _lookup(named, f"fc{i + 1}/kernel", "LeNet5")
            specs.append(LayerSpec(k, _bias_of(named, k), "dense",
                                   "leaky_relu" if i < 2 else "identity"))
        return specs, (28, 28, int(named[c1].shape[2]))
    name = type(model).__name__
    if name in ("ResNet18", "BasicBlock"):
        raise ValueError(f"compact cannot shrink {name}: its residual blocks need the same "
                         "channels removed on both sides of each skip connection (not "
                         "implemented). Fix: deploy the masked model, or compact a plain chain")
    raise ValueError(f"compact does not know the structure of {name}. Fix: for a chain of "
                     "Dense layers pass layers=[kernel paths in order] and activation=")


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
        specs.append(LayerSpec(item, _bias_of(named, item), "dense", act))
    return specs


# ----------------------------------------------------------------------------- shrinking

def _effective(named: dict[str, Any], masks_named: dict[str, Any], path: str) -> np.ndarray:
    w = np.asarray(named[path])
    m = masks_named.get(path)
    return w if m is None else np.where(np.asarray(m), w, np.zeros((), w.dtype))


def _geometry(specs: list[LayerSpec], kernels: list[np.ndarray],
              input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per layer, the per-example input shape (before flattening for dense layers)."""
    shapes, shape = [], tuple(input_shape)
    for i, (s, k) in enumerate(zip(specs, kernels)):
        if s.kind == "conv":
            if len(shape) != 3 or shape[2] != k.shape[2] or k.ndim != 4:
                raise ValueError(f"compact: layer {i} ({s.kernel}) is a conv with kernel "
                                 f"{k.shape} but its input is {shape}. Fix: check the layer order")
            shapes.append(shape)
            (pt, pb), (pl, pr) = s.padding
            oh, ow = shape[0] + pt + pb - k.shape[0] + 1, shape[1] + pl + pr - k.shape[1] + 1
            shape = (oh // 2, ow // 2, k.shape[3]) if s.pool else (oh, ow, k.shape[3])
        else:
            n = int(np.prod(shape))
            if k.ndim != 2 or k.shape[0] != n:
                raise ValueError(f"compact: layer {i} ({s.kernel}) has kernel {k.shape} but "
                                 f"receives {n} features. Fix: check the layer order")
            shapes.append((n,))
            shape = (k.shape[1],)
    return shapes


def _in_view(spec: LayerSpec, k: np.ndarray, prev_units: int) -> np.ndarray:
    """A kernel as ``[group, units of the previous layer, out]``."""
    return k.reshape(-1, prev_units, k.shape[-1])


def compact(params: PyTree, masks: PyTree, model: Any = None, *,
            layers: Sequence[str | LayerSpec] | None = None,
            activation: Activation = "leaky_relu",
            input_shape: Sequence[int] | None = None, shrink: bool = True) -> CompactModel:
    """A smaller dense model computing what the masked model computes.

    Args:
      params: the model's params pytree (Flax variables ``{"params": ...}`` or the inner dict).
      masks: its masks pytree (``None`` leaves: unmasked).
      model: a :class:`~gpjax.models.LeNet300` or :class:`~gpjax.models.LeNet5` instance
        (structure inferred); anything else needs ``layers``.
      layers: a chain of Dense layers in order: their kernel paths ("/"-joined, e.g.
        ``params/Dense_0/kernel``; each bias is the sibling ``bias`` leaf if present), or
        :class:`LayerSpec` entries (for convolutions).
      activation: the hidden layers' activation when ``layers`` are paths (the last layer has
        none): a name in :data:`ACTIVATIONS` or a function.
      input_shape: per-example input shape; default: inferred (a Dense chain: the first
        kernel's rows; LeNet-5: ``(28, 28, 1)``).
      shrink: False keeps every unit and input (the masked model in this form, original widths:
        a baseline to compare with).

    Returns:
      A :class:`CompactModel` whose outputs equal ``model.apply(apply_masks(params, masks),
      x)`` to float rounding, for any ``x`` ``[B, *input_shape]``.

    Raises:
      ValueError: a structure it cannot handle (ResNet-18's skips, recurrent cells, an unknown
        model without ``layers``), or layers whose shapes do not chain.
    """
    named = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    mflat, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    if treedef.num_leaves != len(named):
        raise ValueError("compact: masks do not mirror params. Fix: build masks from these "
                         "params (gpjax.init_masks(params))")
    masks_named = {path_str(p): m for p, m in mflat}
    if layers is not None:
        specs = _dense_chain(named, layers, activation)
        shape = tuple(input_shape) if input_shape is not None else None
    elif model is not None:
        specs, shape = infer_layers(model, named)
        shape = tuple(input_shape) if input_shape is not None else shape
    else:
        raise ValueError("compact needs the model (LeNet300, LeNet5) or layers=[kernel paths]")
    if not specs:
        raise ValueError("compact: no layers given")
    kernels = [_effective(named, masks_named, s.kernel) for s in specs]
    if shape is None:
        shape = (kernels[0].shape[0],) if specs[0].kind == "dense" else None
        if shape is None:
            raise ValueError("compact: a chain starting with a conv needs input_shape=(H, W, C)")
    shapes = _geometry(specs, kernels, shape)
    biases = [np.asarray(named[s.bias]).astype(k.dtype) if s.bias else
              np.zeros(k.shape[-1], k.dtype) for s, k in zip(specs, kernels)]
    n = len(specs)
    # units of each layer's input: features/channels of the input, then previous outputs
    prev = [shapes[0][-1] if specs[0].kind == "conv" else shapes[0][0]]
    prev += [k.shape[-1] for k in kernels[:-1]]
    k3 = [_in_view(s, k, p) for s, k, p in zip(specs, kernels, prev)]
    kshape = [k.shape for k in kernels]  # leading dims, for reshaping back
    changed = shrink
    while changed:
        changed = False
        for i in range(n - 1):
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
    out_layers, weights = [], []
    for i, (s, k) in enumerate(zip(specs, k3)):
        w: dict[str, np.ndarray] = {}
        in_shape = shapes[i]
        if s.kind == "conv":
            kernel = k.reshape(*kshape[i][:2], k.shape[1], k.shape[2])
            index = None
            if i == 0 and shrink:
                used = kernel.any(axis=(0, 1, 3))
                if not used.all():
                    index = np.flatnonzero(used).astype(np.int32)
                    kernel = kernel[:, :, used, :]
            else:
                in_shape = (*shapes[i][:2], k.shape[1])
        else:
            kernel = k.reshape(k.shape[0] * k.shape[1], k.shape[2])
            if i > 0 and specs[i - 1].kind == "conv":
                in_shape = (kernel.shape[0],)
            elif i > 0:
                in_shape = (k.shape[1],)
            index = None
            if shrink and (i == 0 or specs[i - 1].kind == "conv"):
                used = kernel.any(axis=1)
                if not used.all():
                    index = np.flatnonzero(used).astype(np.int32)
                    kernel = kernel[used]
        w["kernel"] = np.ascontiguousarray(kernel)
        w["bias"] = np.ascontiguousarray(biases[i])
        if index is not None:
            w["index"] = index
        out_layers.append(CompactLayer(s.kind, s.activation, s.padding, s.pool, tuple(in_shape),
                                       index is not None))
        weights.append(w)
    return CompactModel(tuple(out_layers), tuple(weights), tuple(shape),
                        tuple(s.kernel for s in specs))
