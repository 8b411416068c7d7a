"""Sparse storage of compact models, and the other products a layer can be computed by.

Storage. :func:`save_sparse` writes a :class:`~gpjax.compact.CompactModel` to one ``.npz`` file
(uncompressed): per kernel either the dense array or CSR over its 2-D view ``[rows, out]``
(conv kernels ``[kh, kw, in, out]`` as ``[kh * kw * in, out]``): float values, column indices
in the narrowest unsigned dtype that holds the column count, row pointers in the narrowest that
holds the nonzero count; whichever is smaller in bytes. The structure is a JSON header in the
same file. :func:`load_sparse` restores exactly the same weights (bit for bit).

Products. :func:`ell_product`, :func:`segment_product` and :func:`csr_product` compute
``x @ kernel`` from the nonzeros only (a padded per-column gather-and-sum; a gather and a sorted
segment sum; ``jax.experimental.sparse`` CSR, which on CPU runs jaxlib's own CSR kernel, the
custom call :data:`CSR_CUSTOM_CALLS`, offered for CPU artifacts alone); :func:`from_batch`
uses a sparse product from a batch size on and the dense one below it. Conv layers
(:func:`conv_variants`): XLA's own convolution, and :func:`taps_product`, a sum over a very
sparse kernel's nonzero taps. The export picks, per layer, what measures fastest.

Cost model (``x [B, in]``, ``nnz`` nonzeros): every product does ``B * nnz`` multiply-adds; the
dense one ``B * in * out`` at the matrix unit's rate. A sparse product pays when its rate on
``B * nnz`` beats the dense rate on ``B * in * out``: at large ``B`` for CSR (measured in
``benchmarks/results/``), never at ``B = 1`` where a call's fixed cost dominates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jax import lax
from jax.experimental import sparse as jsparse

from gpjax.compact import ACTIVATIONS, CompactLayer, CompactModel

PyTree = Any
FORMAT = "gpjax-sparse/1"

__all__ = ["CSR_CUSTOM_CALLS", "MAX_TAP_TERMS", "conv_variants", "csr_decode", "csr_encode",
           "csr_product", "csr_weights", "default_platform", "ell_product", "ell_weights",
           "from_batch", "index_dtype",
           "load_sparse", "save_npz", "save_sparse", "segment_product", "segment_weights",
           "sparse_variants", "storage_report", "taps_product", "taps_weights"]

#: The XLA custom calls :func:`csr_product` lowers to (CPU). They are jaxlib's kernels, outside
#: ``jax.export``'s compatibility guarantees: an artifact using them needs a jaxlib that has them
#: (the one that wrote it is recorded in its manifest; ``portable=True`` avoids them).
CSR_CUSTOM_CALLS: tuple[str, ...] = ("cpu_csr_sparse_dense_ffi",)


def index_dtype(limit: int) -> np.dtype:
    """The narrowest unsigned integer dtype holding every value in ``[0, limit]``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if limit <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def csr_encode(a: np.ndarray) -> dict[str, np.ndarray]:
    """CSR of a 2-D array: ``data`` (nonzeros, row-major), ``indices`` (their columns),
    ``indptr`` (``[rows + 1]`` offsets), the index arrays in :func:`index_dtype`."""
    rows, cols = np.nonzero(a)
    indptr = np.zeros(a.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=a.shape[0]), out=indptr[1:])
    return {"data": a[rows, cols], "indices": cols.astype(index_dtype(max(a.shape[1] - 1, 0))),
            "indptr": indptr.astype(index_dtype(int(indptr[-1])))}


def csr_decode(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
               shape: tuple[int, int]) -> np.ndarray:
    """The dense 2-D array of a CSR triple (inverse of :func:`csr_encode`)."""
    out = np.zeros(shape, data.dtype)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr.astype(np.int64)))
    out[rows, indices.astype(np.int64)] = data
    return out


def _csr_bytes(a2: np.ndarray) -> int:
    nnz = int(np.count_nonzero(a2))
    return (nnz * (a2.itemsize + index_dtype(max(a2.shape[1] - 1, 0)).itemsize)
            + (a2.shape[0] + 1) * index_dtype(nnz).itemsize)


def _layer_json(layer: CompactLayer) -> dict:
    if not isinstance(layer.activation, str):
        raise ValueError(f"save_sparse: activation {layer.activation!r} has no name. Fix: build "
                         f"the compact model with an activation from {sorted(ACTIVATIONS)}")
    return {"kind": layer.kind, "activation": layer.activation,
            "padding": [list(p) for p in layer.padding], "pool": layer.pool,
            "in_shape": list(layer.in_shape), "indexed": layer.indexed,
            "channels_first": layer.channels_first}


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> int:
    """Writes arrays to an uncompressed ``.npz`` and returns its size in bytes."""
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path.stat().st_size


def save_sparse(path: str | os.PathLike, model: CompactModel, *,
                kernels: str = "auto") -> int:
    """Writes a compact model to ``path`` (an ``.npz``) and returns the bytes written.

    Args:
      path: file to write (overwritten).
      model: a :class:`~gpjax.compact.CompactModel` with named activations.
      kernels: ``"auto"`` (per kernel, dense or CSR, whichever is smaller), ``"dense"`` or
        ``"csr"`` (every kernel).

    Returns:
      The file's size in bytes.
    """
    if kernels not in ("auto", "dense", "csr"):
        raise ValueError(f"kernels must be 'auto', 'dense' or 'csr', got {kernels!r}")
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, (layer, w) in enumerate(zip(model.layers, model.weights)):
        meta = _layer_json(layer)
        k = np.asarray(w["kernel"])
        k2 = k.reshape(-1, k.shape[-1])
        use_csr = kernels == "csr" or (kernels == "auto" and _csr_bytes(k2) < k2.nbytes)
        meta["kernel_shape"] = list(k.shape)
        meta["kernel_format"] = "csr" if use_csr else "dense"
        if use_csr:
            for name, a in csr_encode(k2).items():
                arrays[f"{i}/kernel.{name}"] = a
        else:
            arrays[f"{i}/kernel"] = k
        arrays[f"{i}/bias"] = np.asarray(w["bias"])
        if "index" in w:
            idx = np.asarray(w["index"])
            arrays[f"{i}/index"] = idx.astype(index_dtype(int(idx.max(initial=0))))
        layers.append(meta)
    header = {"format": FORMAT, "input_shape": list(model.input_shape), "layers": layers,
              "source_kernels": list(model.source_kernels)}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return save_npz(path, arrays)


def load_sparse(path: str | os.PathLike) -> CompactModel:
    """Reads a model written by :func:`save_sparse` (the same weights, bit for bit)."""
    with np.load(path) as z:
        if "header" not in z.files:
            raise ValueError(f"{path} is not a gpjax sparse model (no header). Fix: write it "
                             "with gpjax.save_sparse")
        header = json.loads(bytes(z["header"]).decode())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
        layers, weights = [], []
        for i, meta in enumerate(header["layers"]):
            shape = tuple(meta["kernel_shape"])
            if meta["kernel_format"] == "csr":
                k2 = csr_decode(z[f"{i}/kernel.data"], z[f"{i}/kernel.indices"],
                                z[f"{i}/kernel.indptr"], (int(np.prod(shape[:-1])), shape[-1]))
                k = k2.reshape(shape)
            else:
                k = z[f"{i}/kernel"]
            w = {"kernel": k, "bias": z[f"{i}/bias"]}
            if meta["indexed"]:
                w["index"] = z[f"{i}/index"].astype(np.int32)
            weights.append(w)
            layers.append(CompactLayer(meta["kind"], meta["activation"],
                                       tuple(tuple(p) for p in meta["padding"]), meta["pool"],
                                       tuple(meta["in_shape"]), meta["indexed"],
                                       meta.get("channels_first", False)))
    return CompactModel(tuple(layers), tuple(weights), tuple(header["input_shape"]),
                        tuple(header["source_kernels"]))


def _flat(tree: PyTree, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": np.asarray(leaf)
            for i, leaf in enumerate(jax.tree.leaves(tree))}


def storage_report(params: PyTree, masks: PyTree, model: CompactModel,
                   directory: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk of the same weights four ways (files written into ``directory``).

    Returns:
      ``{"dense_float32": params as float32 arrays, "masked_checkpoint": params + boolean masks,
      "compact_dense": the compact model, dense kernels, "compact_sparse": the compact model,
      dense or CSR per kernel}``, all uncompressed ``.npz``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    f32 = jax.tree.map(lambda p: np.asarray(p, np.float32), params)
    masks_only = [m for m in jax.tree.leaves(masks) if m is not None]
    return {
        "dense_float32": save_npz(d / "dense_float32.npz", _flat(f32, "p")),
        "masked_checkpoint": save_npz(d / "masked_checkpoint.npz",
                                      {**_flat(params, "p"), **_flat(masks_only, "m")}),
        "compact_dense": save_sparse(d / "compact_dense.npz", model, kernels="dense"),
        "compact_sparse": save_sparse(d / "compact_sparse.npz", model, kernels="auto"),
    }


# ----------------------------------------------------------------------------- products

def ell_weights(kernel: np.ndarray) -> dict[str, np.ndarray]:
    """Per output column, its nonzero rows padded to the longest column: ``ell_index``
    ``[out, m]`` (int32; padding points at row 0) and ``ell_value`` ``[out, m]`` (0 padding)."""
    mask = kernel != 0
    m = max(int(mask.sum(axis=0).max(initial=0)), 1)
    idx = np.zeros((kernel.shape[1], m), np.int32)
    val = np.zeros((kernel.shape[1], m), kernel.dtype)
    for o in range(kernel.shape[1]):
        rows = np.flatnonzero(mask[:, o])
        idx[o, :rows.size] = rows
        val[o, :rows.size] = kernel[rows, o]
    return {"ell_index": idx, "ell_value": val}


def ell_product(x: jax.Array, w: dict) -> jax.Array:
    """``x @ kernel`` ``[B, out]`` from :func:`ell_weights`: a gather and a sum per column."""
    return jnp.einsum("bom,om->bo", jnp.take(x, w["ell_index"], axis=1), w["ell_value"])


def segment_weights(kernel: np.ndarray) -> dict[str, np.ndarray]:
    """The nonzeros sorted by column: ``seg_row``, ``seg_col`` (int32) and ``seg_value``."""
    cols, rows = np.nonzero(kernel.T)
    return {"seg_row": rows.astype(np.int32), "seg_col": cols.astype(np.int32),
            "seg_value": kernel[rows, cols]}


def segment_product(x: jax.Array, w: dict, *, out: int) -> jax.Array:
    """``x @ kernel`` ``[B, out]`` from :func:`segment_weights`: gather, scale, segment sum."""
    contrib = (jnp.take(x, w["seg_row"], axis=1) * w["seg_value"]).T      # [nnz, B]
    return jax.ops.segment_sum(contrib, w["seg_col"], num_segments=out,
                               indices_are_sorted=True).T


def csr_weights(kernel: np.ndarray) -> dict[str, np.ndarray]:
    """CSR of ``kernel.T`` (``[out, in]``, rows = output units): ``csr_data``, ``csr_indices``
    (input columns, int32) and ``csr_indptr`` (``[out + 1]``, int32)."""
    m = jsparse.BCSR.fromdense(jnp.asarray(np.ascontiguousarray(kernel.T)))
    return {"csr_data": np.asarray(m.data), "csr_indices": np.asarray(m.indices, np.int32),
            "csr_indptr": np.asarray(m.indptr, np.int32)}


def csr_product(x: jax.Array, w: dict, *, shape: tuple[int, int]) -> jax.Array:
    """``x @ kernel`` ``[B, out]`` from :func:`csr_weights`: ``(kernel.T @ x.T).T`` with
    ``kernel.T`` as ``jax.experimental.sparse.BCSR`` of ``shape`` ``(in, out)``."""
    m = jsparse.BCSR((w["csr_data"], w["csr_indices"], w["csr_indptr"]),
                     shape=(shape[1], shape[0]))
    return (m @ x.T).T


def from_batch(product: Callable, threshold: int, below: Callable | None = None) -> Callable:
    """``product(x, w)`` for batches of at least ``threshold`` rows, ``below(x, w)`` under it
    (default ``x @ w["kernel"]``).

    With a symbolic batch size (``jax.export``) the choice is a ``lax.cond`` on it, so one
    artifact keeps the dense product for small batches and the sparse one for large.
    """
    if below is None:
        def below(x: jax.Array, w: dict) -> jax.Array:
            return x @ w["kernel"]

    def dispatch(x: jax.Array, w: dict) -> jax.Array:
        b = x.shape[0]
        if isinstance(b, int):
            return product(x, w) if b >= threshold else below(x, w)
        return lax.cond(jnp.asarray(b) >= threshold, lambda x: product(x, w),
                        lambda x: below(x, w), x)

    return dispatch


#: The most kernel nonzeros :func:`taps_product` is offered for: it unrolls one slice-and-add
#: per nonzero, so its program (and compile time, ~3.6 s at 794) grows with them.
MAX_TAP_TERMS = 256


def taps_weights(kernel: np.ndarray) -> dict[str, np.ndarray]:
    """``{"tap_values": [nnz]}``: a conv kernel's nonzeros in ``np.nonzero`` order."""
    return {"tap_values": np.asarray(kernel)[np.nonzero(kernel)]}


def taps_product(x: jax.Array, w: dict, *, taps: tuple[tuple[int, int, int, int], ...],
                 kernel_shape: tuple[int, int, int, int], padding) -> jax.Array:
    """A stride-1 convolution from its nonzero taps alone (a direct sparse convolution):

    .. math:: y[b, p, q, o] = \\sum_{(i, j, c, o) \\in \\text{taps}} v_{ijco} \\,
       x_{\\text{pad}}[b, p + i, q + j, c]

    one shifted slice of the padded input per nonzero ``v`` (``w["tap_values"]``, in the order
    of ``taps``, static ``(i, j, c, o)`` indices). ``B * OH * OW * nnz`` multiply-adds and no
    patch matrix: it pays for a very sparse first layer (a recoverable LeNet-5's conv1 keeps a
    dozen of its 150 weights), not for a denser one.

    Args:
      x: ``[B, H, W, C]``.
      w: ``{"tap_values": [nnz]}`` (:func:`taps_weights`).
      taps: the nonzeros' kernel indices, ``np.argwhere(kernel)`` as tuples.
      kernel_shape: ``(KH, KW, C, O)``.
      padding: ``((top, bottom), (left, right))``.

    Returns:
      ``[B, OH, OW, O]``.
    """
    kh, kw, _, o = kernel_shape
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    v = w["tap_values"]
    outs = [jnp.zeros((x.shape[0], oh, ow), x.dtype) for _ in range(o)]
    for n, (i, j, c, oc) in enumerate(taps):
        outs[oc] = outs[oc] + v[n] * xp[:, i:i + oh, j:j + ow, c]
    return jnp.stack(outs, -1)


def conv_variants(kernel: np.ndarray, padding) -> dict[str, tuple[dict, Callable]]:
    """The other ways to compute a compact conv layer than its default row-GEMM product
    (:func:`gpjax.compact.conv_layer`), ``{name: (weights, product)}``: ``"conv_xla"``, XLA's
    own convolution (faster for some shapes on CPU, slower for others: measured per layer),
    and, for a kernel of at most :data:`MAX_TAP_TERMS` nonzeros, ``"conv_taps"``
    (:func:`taps_product`)."""
    kernel = np.asarray(kernel)

    def conv_xla(x: jax.Array, w: dict) -> jax.Array:
        return lax.conv_general_dilated(x, w["kernel"], (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out: dict[str, tuple[dict, Callable]] = {"conv_xla": ({"kernel": kernel}, conv_xla)}
    if 0 < np.count_nonzero(kernel) <= MAX_TAP_TERMS:
        taps = tuple(map(tuple, np.argwhere(kernel).tolist()))
        out["conv_taps"] = (taps_weights(kernel),
                            partial(taps_product, taps=taps, kernel_shape=kernel.shape,
                                    padding=tuple(map(tuple, padding))))
    return out


def default_platform() -> str:
    """This machine's default ``jax.export`` platform name (``"cpu"``, ``"cuda"``, ...)."""
    if hasattr(jax_export, "default_export_platform"):
        return jax_export.default_export_platform()
    backend = jax.default_backend()  # a JAX without it: its backend name ("gpu": CUDA)
    return "cuda" if backend == "gpu" else backend


def sparse_variants(kernel: np.ndarray, *, portable: bool = False,
                    platforms: Sequence[str] | None = None
                    ) -> dict[str, tuple[dict[str, np.ndarray], Callable]]:
    """The sparse ways to compute ``x @ kernel``: ``{name: (weights, product)}``.

    ``ell`` and ``segment_sum`` (gathers and sums: every platform); ``csr`` only for an
    artifact whose one platform is ``"cpu"`` and not ``portable``: its kernel is jaxlib's CPU
    custom call (:data:`CSR_CUSTOM_CALLS`), which no other platform has.

    Args:
      kernel: ``[in, out]``.
      portable: leave out ``csr`` whatever the platform.
      platforms: the ``jax.export`` platforms the product is for (default: this machine's).
    """
    if platforms is None:
        platforms = (default_platform(),)
    out = {"ell": (ell_weights(kernel), ell_product),
           "segment_sum": (segment_weights(kernel),
                           partial(segment_product, out=int(kernel.shape[1])))}
    if not portable and tuple(platforms) == ("cpu",):
        out["csr"] = (csr_weights(kernel), partial(csr_product, shape=tuple(kernel.shape)))
    return out
