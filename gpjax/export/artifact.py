"""Deployable artifacts: a compact model as a ``jax.export`` function that needs only JAX.

:func:`export_model` compacts a masked model (:func:`gpjax.compact`), chooses per layer how the
artifact computes (a dense layer: the compact dense product, or a sparse one from the batch
size on where it measures faster, dense below it; a conv layer: row-GEMM matrix multiplies,
XLA's own convolution or, for a very sparse kernel, its nonzero taps, likewise), then times
whole artifacts (that choice, every
eligible layer on its fastest sparse variant, the compact dense model) against the dense model
it came from at those batch sizes, keeps the fastest that is nowhere slower, and writes a
directory::

    model.jax        jax.export serialization (StableHLO, symbolic batch dimension "b")
    weights.npz      its weights, arrays w0, w1, ... (the function's first argument, a list)
    manifest.json    input shape/dtype, classes, parameters, density, MACs, timings, versions,
                     accuracy at export (when test data are given)
    load.py          the loader below (JAX and numpy only)
    model.onnx       only with format="onnx" (weights inside; needs the ``export`` extra)

Platforms: the artifact holds one lowering per ``platforms`` entry (``jax.export``'s
multi-platform lowering; the manifest's ``platforms``) and runs on any of them. Products are
timed only for an artifact of one platform present on the exporting machine (on that device;
CSR, a CPU custom call, only for CPU); otherwise every layer is compact dense
(:data:`UNTIMED_RULE`, recorded as ``timings_us.rule``).

Loading needs ``jax`` alone (no gpjax, no flax)::

    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open(d + "/model.jax", "rb").read()))
    with np.load(d + "/weights.npz") as z:
        weights = [z[f"w{i}"] for i in range(len(z.files))]
    # The weights as constants of the compiled call (compiled once per input shape): a call
    # then passes x alone, which at batch 1 takes about a third of the time of passing the
    # 10-15 weight arrays as arguments (benchmarks/results/inference_targets.md).
    predict = jax.jit(lambda x: exported.call(weights, x))
    logits = predict(x)                           # x: [B, *manifest["input"]["shape"][1:]]
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from gpjax.chain import ModelFn
from gpjax.compact import (
    Activation,
    CompactLayer,
    CompactModel,
    apply_compact,
    chain_of,
    compact,
    conv_layer,
    layer_macs,
    linen_model_fn,
)
from gpjax.export.sparse import (
    CSR_CUSTOM_CALLS,
    conv_variants,
    default_platform,
    from_batch,
    save_npz,
    sparse_variants,
)
from gpjax.masks import apply_masks, count_params

PyTree = Any

__all__ = ["LOADER", "PLATFORMS", "UNTIMED_RULE", "export_from_state", "export_model",
           "load_artifact", "resolve_platforms", "time_calls"]

#: The platform names ``jax.export`` lowers for (it accepts any string, so they are checked here).
PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "rocm", "tpu")

#: How an artifact that cannot be timed where it is exported is computed (recorded in its
#: manifest as ``timings_us.rule``).
UNTIMED_RULE = ("compact dense: an artifact for several platforms, or for a platform this "
                "machine lacks, is not timed (a product's speed differs by platform); every "
                "layer computes its compact dense product, which every platform runs")

LOADER = '''"""Runs this exported model with JAX alone: load(directory)(x) -> logits."""
import pathlib

import jax
import numpy as np


def load(directory=pathlib.Path(__file__).parent):
    """Returns predict(x) -> logits for x of shape [B, *manifest input shape[1:]]."""
    d = pathlib.Path(directory)
    exported = jax.export.deserialize(bytearray((d / "model.jax").read_bytes()))
    if any(t in exported.mlir_module() for t in @CSR_CUSTOM_CALLS@):  # a CSR product (CPU)
        from jax.experimental import sparse  # noqa: F401  registers jaxlib's sparse kernels
    with np.load(d / "weights.npz") as z:
        weights = [z[f"w{i}"] for i in range(len(z.files))]
    # Weights as constants of the call (compiled once per input shape): x is its only argument.
    call = jax.jit(lambda x: exported.call(weights, x))
    if jax.export.default_export_platform() in exported.platforms:
        return call
    device = jax.devices(exported.platforms[0])[0]  # e.g. a CPU artifact on a GPU machine
    return lambda x: call(jax.device_put(x, device))


if __name__ == "__main__":
    import json
    m = json.loads((pathlib.Path(__file__).parent / "manifest.json").read_text())
    x = np.zeros([2, *m["input"]["shape"][1:]], m["input"]["dtype"])
    print(np.asarray(load()(x)).shape)
'''.replace("@CSR_CUSTOM_CALLS@", repr(CSR_CUSTOM_CALLS))


def time_calls(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each call in its steady state: ``repeats`` rounds over ``fns``, each
    timed call right after an untimed one of the same function; results are blocked on, so
    the timings include the computation.

    Rounds interleave the functions (machine drift hits all alike); the untimed call before
    each timed one leaves that function's weights in cache, as repeated calls of a deployed
    model do. Timed straight after the other candidates, small models measure their cache
    misses instead and the export picks the wrong one (measured in
    ``benchmarks/results/inference_targets.md``, "Steady-state timing").
    """
    for f in fns.values():
        jax.block_until_ready(f())
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            jax.block_until_ready(f())
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            out[k].append(time.perf_counter() - t0)
    return out


def _median_us(samples: list[float]) -> float:
    return round(float(np.median(samples)) * 1e6, 1)


def _threshold(variant: dict[str, float], dense: dict[str, float],
               batch_sizes: Sequence[int]) -> int | None:
    """The smallest measured batch size from which on ``variant`` is faster at every measured
    size (None: at none, or not at the largest)."""
    t = None
    for b in sorted(batch_sizes, reverse=True):
        if variant[str(b)] >= dense[str(b)]:
            break
        t = b
    return t


def _variants(layer: CompactLayer, k: np.ndarray, portable: bool,
              platforms: Sequence[str]) -> dict[str, tuple[dict, Callable]]:
    """The other products a layer can be computed by on ``platforms``: dense layers, the
    sparse products (:func:`~gpjax.export.sparse.sparse_variants`; CSR for CPU alone); conv
    layers, XLA's own convolution and, for a very sparse kernel, its nonzero taps alone
    (:func:`~gpjax.export.sparse.conv_variants`)."""
    if layer.kind == "dense":
        return sparse_variants(k, portable=portable, platforms=platforms)
    return conv_variants(k, layer.padding)


def resolve_platforms(platforms: Sequence[str] | None) -> tuple[str, ...]:
    """The ``jax.export`` platforms of an artifact: ``platforms`` checked against
    :data:`PLATFORMS` (order kept, repeats dropped), or this machine's default platform.

    Raises:
      ValueError: an unknown or empty platform list (one line, with a Fix).
    """
    if platforms is None:
        return (default_platform(),)
    if isinstance(platforms, str):
        platforms = platforms.split(",")
    out = tuple(dict.fromkeys(p.strip() for p in platforms if p.strip()))
    bad = [p for p in out if p not in PLATFORMS]
    if bad or not out:
        raise ValueError(f"export: unknown platform(s) {bad or list(platforms)!r}. Fix: name "
                         f"one or more of {', '.join(PLATFORMS)} (e.g. cpu,cuda)")
    return out


def _on(device: Any) -> Any:
    """A context placing computations on ``device`` (nothing when None)."""
    return jax.default_device(device) if device is not None else contextlib.nullcontext()


def _device_of(platform: str | None) -> Any:
    """The first device of ``platform`` on this machine (None: none, or no platform)."""
    if platform is None:
        return None
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        return None


def _time_layer(layer: CompactLayer, k: np.ndarray, variants: dict, batch_sizes: Sequence[int],
                repeats: int, rng: np.random.Generator) -> dict:
    """The median microseconds of each of a layer's ``variants`` and of its default product
    ("dense": ``x @ kernel``, or a conv's row-GEMM product), per batch size:
    ``{name: {batch: us}}``."""
    if layer.kind == "dense":
        dense_fn = jax.jit(lambda x, k: x @ k)
        in_shape: tuple = (k.shape[0],)
    else:
        dense_fn = jax.jit(lambda x, k: conv_layer(x, {"kernel": k}, layer.padding))
        in_shape = (*layer.in_shape[:2], k.shape[2])
    timings: dict[str, dict[str, float]] = {}
    for b in batch_sizes:
        x = jnp.asarray(rng.standard_normal((b, *in_shape), np.float32))
        fns = {"dense": lambda x=x, f=dense_fn, k=k: f(x, k)}
        for name, (vw, prod) in variants.items():
            f = jax.jit(prod)
            fns[name] = lambda x=x, f=f, vw=vw: f(x, vw)
        for name, s in time_calls(fns, repeats).items():
            timings.setdefault(name, {})[str(b)] = _median_us(s)
    return timings


def _dense_record(layer: CompactLayer, k: np.ndarray) -> dict[str, Any]:
    """A layer's manifest record before any choice: computed by its compact dense product."""
    return {"kind": layer.kind, "shape": list(k.shape), "nonzero": int(np.count_nonzero(k)),
            "compute": "dense"}


def _choose_layers(cm: CompactModel, batch_sizes: Sequence[int], repeats: int,
                   rng: np.random.Generator, portable: bool, platforms: Sequence[str]
                   ) -> tuple[list, list, list[dict], list]:
    """Per layer: the sparse product (None = dense), its weights, the measurements, and the
    alternative for the whole-artifact check.

    A sparse product is used from the batch size on where it measures faster than the dense
    one at that and every larger measured size (:func:`~gpjax.export.sparse.from_batch`); of
    several, the one that saves the most time summed over those sizes. The alternative of a
    sparse-eligible dense layer (density < 0.5) or conv layer is ``(name, product, weights,
    from_batch)`` of the variant fastest at the largest batch size, from its threshold or else
    from that size: a layer's choice can hinge on microseconds its neighbours' fusion
    changes, so the export times the artifact with every alternative too and keeps the faster
    whole.
    """
    products, weights, records, alternatives = [], [], [], []
    largest = max(batch_sizes)
    for layer, w in zip(cm.layers, cm.weights):
        k = np.asarray(w["kernel"])
        rec = _dense_record(layer, k)
        chosen, chosen_w, alt = None, w, None
        if (layer.kind == "conv" and k.size) or (
                layer.kind == "dense" and k.size and rec["nonzero"] / k.size < 0.5):
            variants = _variants(layer, k, portable, platforms)
            timings = _time_layer(layer, k, variants, batch_sizes, repeats, rng)
            rec["timings_us"] = timings
            saving, starts = {}, {}
            for n in variants:
                starts[n] = _threshold(timings[n], timings["dense"], batch_sizes)
                if starts[n] is not None:
                    saving[n] = sum(timings["dense"][str(b)] - timings[n][str(b)]
                                    for b in batch_sizes if b >= starts[n])
            if saving:
                best = max(saving, key=saving.get)
                chosen_w, chosen = variants[best]
                rec["compute"], rec["from_batch"] = best, int(starts[best])
            fastest = min(variants, key=lambda n: timings[n][str(largest)])
            alt = (fastest, variants[fastest][1], variants[fastest][0],
                   int(starts[fastest] or largest))
        products.append(chosen)
        weights.append(chosen_w)
        records.append(rec)
        alternatives.append(alt)
    return products, weights, records, alternatives


def _assemble(cm: CompactModel, products: Sequence, sparse_w: Sequence, records: Sequence[dict],
              smallest: int, at_least: int = 0) -> tuple[list, list]:
    """Weights and products of an artifact: layer ``i`` runs ``products[i]`` from batch
    ``max(records[i]["from_batch"], at_least)`` on and densely below (keeping its dense kernel
    only then); ``smallest``: the smallest batch size measured."""
    weights, prods = [], []
    for layer, w, prod, vw, rec in zip(cm.layers, cm.weights, products, sparse_w, records):
        if prod is None:
            weights.append(w)
            prods.append(None)
            continue
        t = max(rec["from_batch"], at_least)
        if t <= smallest:                       # the variant at every measured size
            weights.append({**{k: v for k, v in w.items() if k != "kernel"}, **vw})
            prods.append(prod)
        else:                                   # the default below t: keeps its kernel too
            weights.append({**w, **vw})
            below = None if layer.kind == "dense" else partial(conv_layer,
                                                                padding=layer.padding)
            prods.append(from_batch(prod, t, below))
    return weights, prods


def _export(cm: CompactModel, weights: Sequence[dict], products: Sequence, in_shape: tuple,
            dtype: Any, platforms: Sequence[str] | None) -> tuple[jax_export.Exported, list]:
    flat, treedef = jax.tree.flatten(list(weights))
    layers = cm.layers

    def infer(flat_w, x):
        return apply_compact(layers, jax.tree.unflatten(treedef, flat_w), x, products)

    (b,) = jax_export.symbolic_shape("b")
    specs = ([jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in flat],
             jax.ShapeDtypeStruct((b, *in_shape), dtype))
    # Only sparse products that measured faster bring the CSR custom calls in (portable=False).
    checks = [jax_export.DisabledSafetyCheck.custom_call(t) for t in CSR_CUSTOM_CALLS]
    exp = jax_export.export(jax.jit(infer), platforms=platforms,
                            disabled_checks=checks)(*specs)
    if tuple(platforms or ()) != ("cpu",) and any(t in exp.mlir_module() for t in CSR_CUSTOM_CALLS):
        raise ValueError(f"export: a CSR product (a jaxlib CPU kernel) cannot run on "
                         f"{', '.join(platforms or ())}. Fix: export with portable=True "
                         "(--portable) or for --platforms cpu alone")
    return exp, [np.asarray(a) for a in flat]


def _time_artifacts(cm: CompactModel, candidates: dict, original: Callable,
                    batch_sizes: Sequence[int], repeats: int, rng: np.random.Generator,
                    in_shape: tuple, dtype: Any, platforms: Sequence[str] | None
                    ) -> tuple[dict, dict[str, dict[str, float]]]:
    """Exports every candidate ``{name: (weights, products)}`` and times it beside the
    original model, round-robin: ``({name: (exported, flat weights)}, {name: {batch: us}})``."""
    built = {n: _export(cm, w, p, in_shape, dtype, platforms) for n, (w, p) in candidates.items()}
    callers = {n: _caller(exp, flat) for n, (exp, flat) in built.items()}
    timing: dict[str, dict[str, float]] = {}
    for b in batch_sizes:
        x = jnp.asarray(rng.standard_normal((b, *in_shape)).astype(dtype))
        fns = {"original": lambda x=x: original(x)}
        for n, f in callers.items():
            fns[n] = lambda x=x, f=f: f(x)
        for n, s in time_calls(fns, repeats).items():
            timing.setdefault(n, {})[str(b)] = _median_us(s)
    return built, timing


def _pick_artifact(cm: CompactModel, chosen: tuple, alternatives: Sequence, original: Callable,
                   batch_sizes: Sequence[int], repeats: int, rng: np.random.Generator,
                   in_shape: tuple, dtype: Any, platforms: Sequence[str] | None
                   ) -> tuple[str, dict, dict, list[dict], bool]:
    """Times whole artifacts beside the original model and picks the fastest that is nowhere
    slower than it (else the fastest): ``(name, built, timing, layer records, never
    slower)``.

    Candidates: the per-layer choice ("chosen"); every sparse-eligible layer on its
    alternative ("alternative", when that differs); the compact dense model ("dense"); and the
    per-layer choice used only from the batch size where the whole of it beat the dense
    artifact ("switched": layers timed alone mislead at small batches, where the artifact's
    fixed cost dominates). The fastest is the one with the least time summed over the batch
    sizes.
    """
    products, weights, recs = chosen
    smallest = min(batch_sizes)
    candidates = {"chosen": _assemble(cm, products, weights, recs, smallest)}
    alt_recs = [{**r, "compute": a[0], "from_batch": a[3]} if a else r
                for r, a in zip(recs, alternatives)]
    if alt_recs != recs:
        candidates["alternative"] = _assemble(
            cm, [a[1] if a else None for a in alternatives],
            [a[2] if a else w for a, w in zip(alternatives, weights)], alt_recs, smallest)
    t = None
    if len(candidates) > 1 or any(p is not None for p in products):
        candidates["dense"] = (list(cm.weights), [None] * len(products))
        built, timing = _time_artifacts(cm, candidates, original, batch_sizes, repeats, rng,
                                        in_shape, dtype, platforms)
        t = _threshold(timing["chosen"], timing["dense"], batch_sizes)
        if t is not None and t > smallest:
            candidates["switched"] = _assemble(cm, products, weights, recs, smallest, t)
    if "switched" in candidates or "dense" not in candidates:  # (re)time what is new
        built, timing = _time_artifacts(cm, candidates, original, batch_sizes, repeats, rng,
                                        in_shape, dtype, platforms)
    ok = [n for n in built
          if all(timing[n][str(b)] <= timing["original"][str(b)] for b in batch_sizes)]
    name = min(ok or list(built), key=lambda n: sum(timing[n].values()))
    out = alt_recs if name == "alternative" else recs
    for rec in out:
        if name == "dense" and rec["compute"] != "dense":
            rec["compute"] = "dense"
            rec.pop("from_batch", None)
        elif name == "switched" and "from_batch" in rec:
            rec["from_batch"] = max(rec["from_batch"], t)
    return name, built, timing, out, name in ok


def load_artifact(directory: str | os.PathLike) -> Callable[[Any], jax.Array]:
    """``predict(x)`` of an exported directory (what ``load.py`` in it does)."""
    d = Path(directory)
    exported = jax_export.deserialize(bytearray((d / "model.jax").read_bytes()))
    with np.load(d / "weights.npz") as z:
        flat = [z[f"w{i}"] for i in range(len(z.files))]
    return _caller(exported, flat)


def _caller(exported: jax_export.Exported, flat: Sequence[np.ndarray]) -> Callable:
    """``predict(x)``: the exported call jitted with its weights as constants (numpy arrays
    closed over become constants of the compiled program; device arrays would be passed as
    arguments on every call, which at batch 1 costs about twice the call itself). An artifact
    without this machine's default platform runs on a device of its first platform (a CPU
    artifact on a GPU machine: on the CPU); one whose platforms are all absent fails here."""
    weights = [np.asarray(a) for a in flat]
    call = jax.jit(lambda x: exported.call(weights, x))
    if default_platform() in exported.platforms:
        return call
    device = jax.devices(exported.platforms[0])[0]  # e.g. a CPU artifact on a GPU machine
    return lambda x: call(jax.device_put(x, device))


def _original_forward(model: Any, params: PyTree, masks: PyTree, aux: PyTree | None,
                      cm_full: CompactModel) -> Callable[[Any], jax.Array]:
    """The dense model the artifact came from (masked weights, original widths)."""
    masked = apply_masks(params, masks)
    if isinstance(model, ModelFn):
        g = jax.jit(model.forward)
        return lambda x: g(masked, x)
    if hasattr(model, "apply"):
        variables = masked if isinstance(masked, dict) and "params" in masked else {
            "params": masked, **(aux or {})}
        f = jax.jit(lambda v, x: model.apply(v, x))
        return lambda x: f(variables, x)
    f = jax.jit(apply_compact, static_argnums=0)
    return lambda x: f(cm_full.layers, cm_full.weights, x)


def _accuracy(predict: Callable, test_data: tuple, batch: int = 1024) -> float:
    x, y = np.asarray(test_data[0]), np.asarray(test_data[1])
    hits = 0
    for i in range(0, len(x), batch):
        hits += int(np.sum(np.argmax(np.asarray(predict(x[i:i + batch])), -1) == y[i:i + batch]))
    return hits / max(len(x), 1)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _onnx(cm: CompactModel, in_shape: tuple, path: Path) -> None:
    from jax2onnx import to_onnx  # the onnx extra

    weights = jax.tree.map(jnp.asarray, list(cm.weights))
    fn = lambda x: apply_compact(cm.layers, weights, x)  # noqa: E731
    proto = to_onnx(fn, [("B", *in_shape)], model_name="gpjax_compact")
    path.write_bytes(proto.SerializeToString())


def _chain_source(model: Any, in_shape: tuple[int, ...], layers: Sequence[str] | None) -> Any:
    """The model as :func:`gpjax.compact.chain_of` should read it, given the example's
    per-example shape: a :class:`ModelFn` without an input shape gets it; a linen module that
    declares no chain becomes a ModelFn."""
    if layers is not None:
        return model
    if isinstance(model, ModelFn):
        return model if model.input_shape is not None else model._replace(input_shape=in_shape)
    if model is not None and hasattr(model, "apply") and not hasattr(model, "compact_chain"):
        return linen_model_fn(model, in_shape)
    return model


def export_model(model: Any, params: PyTree, masks: PyTree, out_dir: str | os.PathLike, *,
                 example_input: Any, aux: PyTree | None = None,
                 classes: Sequence[str] | None = None, source: str | None = None,
                 test_data: tuple[Any, Any] | None = None, format: str = "jax",
                 batch_sizes: Sequence[int] = (1, 32, 1024), repeats: int = 20,
                 layers: Sequence[str] | None = None, activation: Activation = "leaky_relu",
                 platforms: Sequence[str] | None = None, seed: int = 0,
                 portable: bool = False) -> dict:
    """Compacts a masked model and writes a JAX-only inference artifact to ``out_dir``.

    Args:
      model: the model, as :func:`gpjax.compact` takes it: a zoo model declaring its chain
        (:class:`~gpjax.models.LeNet300`, :class:`~gpjax.models.LeNet5`), a linen module, a
        :class:`~gpjax.compact.ModelFn` (an NNX or Equinox model as ``forward(params, x)`` and
        its kernel layout; its ``input_shape`` defaults to ``example_input``'s), a
        :class:`~gpjax.compact.Chain`, or None with ``layers`` for a Dense chain. The
        artifact takes the inputs the model takes, batched (an Equinox CNN's ``[B, C, H,
        W]``).
      params: its params (the inner ``params`` dict or full variables ``{"params": ...}``).
      masks: its masks pytree.
      out_dir: directory to create; must not exist (nothing is ever overwritten).
      example_input: a batch ``[B, ...]``: fixes the per-example input shape and dtype.
      aux: non-parameter variables (batch statistics); must be empty (models with batch norm
        are not compacted).
      classes: class names, recorded in the manifest.
      source: where the model came from (a run directory, a checkpoint), recorded.
      test_data: ``(x, labels)``: accuracy of the artifact and of the original, recorded.
      format: ``"jax"`` (``jax.export``) or ``"onnx"`` (also writes ``model.onnx``, the
        compact dense model with its weights inside, symbolic batch ``B``; needs the ``onnx``
        extra and jax2onnx, see pyproject.toml).
      batch_sizes: batch sizes the per-layer choice and the final check are measured at.
      repeats: timed calls per measurement (medians recorded).
      layers, activation: a Dense chain's structure, as for :func:`gpjax.compact`.
      platforms: ``jax.export`` lowering platforms, names from :data:`PLATFORMS` (default:
        this machine's). One platform present here: the products are timed on its device and
        only those it has are offered (CSR for ``"cpu"`` alone). Several platforms (one
        multi-platform artifact), or one absent here: nothing is timed, every layer is compact
        dense (:data:`UNTIMED_RULE`), and the artifact is run here only where one of its
        platforms is (else its accuracy at export is None).
      seed: seeds the random inputs of the measurements.
      portable: only operations under ``jax.export``'s compatibility guarantees (no CSR
        product, whose CPU kernel is a jaxlib custom call; the manifest's ``custom_calls``
        lists those an artifact uses, and its ``versions`` the jaxlib that has them).

    Returns:
      The manifest (also written to ``out_dir/manifest.json``).

    Raises:
      ValueError: ``out_dir`` exists; a structure :func:`gpjax.compact` cannot handle; an
        unknown format or, for ONNX, a missing extra.
    """
    out = Path(out_dir)
    if out.exists():
        raise ValueError(f"export: {out} already exists. Fix: choose a new directory or remove it")
    if format not in ("jax", "onnx"):
        raise ValueError(f"export: format must be 'jax' or 'onnx', got {format!r}")
    try:
        import flatbuffers  # noqa: F401  (jax.export serialization)
    except ImportError:
        raise ValueError("export: jax.export serialization needs flatbuffers. Fix: pip install "
                         "flatbuffers (a dependency of gpjax-incremental)") from None
    if format == "onnx":
        try:
            import jax2onnx  # noqa: F401
            import onnx  # noqa: F401
        except ImportError:
            raise ValueError("export: format='onnx' needs jax2onnx and onnx. Fix: pip install "
                             "'gpjax-incremental[onnx]' && pip install --no-deps "
                             "jax2onnx==0.17.1") from None
    if aux:
        raise ValueError(f"export: models with non-parameter state ({sorted(aux)}) are not "
                         "supported. Fix: export a model without batch norm")
    x0 = np.asarray(example_input)
    if x0.ndim < 2:
        raise ValueError(f"export: example_input must be a batch [B, ...], got shape {x0.shape}")
    in_shape, dtype = tuple(x0.shape[1:]), x0.dtype
    targets = resolve_platforms(platforms)
    chain = chain_of(params, _chain_source(model, in_shape, layers), layers=layers,
                     activation=activation)
    cm = compact(params, masks, chain)
    cm_full = compact(params, masks, chain, shrink=False)
    rng = np.random.default_rng(seed)
    here = default_platform()
    run_on = next((p for p in dict.fromkeys((here, *targets))
                   if p in targets and _device_of(p) is not None), None)
    measured_on = run_on if len(targets) == 1 else None
    with _on(_device_of(run_on)):  # timed, and checked, on the device it is exported for
        original = _original_forward(model, params, masks, aux, cm_full)
        if measured_on is None:  # UNTIMED_RULE
            layer_recs = [_dense_record(layer, np.asarray(w["kernel"]))
                          for layer, w in zip(cm.layers, cm.weights)]
            exp, flat = _export(cm, cm.weights, [None] * len(cm.layers), in_shape, dtype,
                                targets)
            name, timing, never_slower = "dense", {}, None
        else:
            products, weights, layer_recs, alternatives = _choose_layers(
                cm, batch_sizes, repeats, rng, portable, targets)
            name, built, timing, layer_recs, never_slower = _pick_artifact(
                cm, (products, weights, layer_recs), alternatives, original, batch_sizes,
                repeats, rng, in_shape, dtype, targets)
            exp, flat = built[name]

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        (tmp / "model.jax").write_bytes(exp.serialize())
        save_npz(tmp / "weights.npz", {f"w{i}": a for i, a in enumerate(flat)})
        (tmp / "load.py").write_text(LOADER)
        if format == "onnx":
            _onnx(cm, in_shape, tmp / "model.onnx")
        counts = count_params(masks)
        accuracy = None
        with _on(_device_of(run_on)):
            if test_data is not None:  # the artifact's: None where no platform of it is here
                accuracy = {"artifact": (_accuracy(load_artifact(tmp), test_data)
                                         if run_on is not None else None),
                            "original": _accuracy(original, test_data),
                            "examples": int(len(test_data[0]))}
            if run_on is not None:  # it loads and runs
                jax.block_until_ready(load_artifact(tmp)(x0[:2]))
        artifact_macs = 0
        for layer, w, rec in zip(cm.layers, cm.weights, layer_recs):
            macs, pos = layer_macs(layer, w["kernel"].shape)
            dense_macs = rec["compute"] in ("dense", "conv_xla")
            rec["macs"] = macs if dense_macs else rec["nonzero"] * pos
            artifact_macs += rec["macs"]
        active_macs = sum(int(np.count_nonzero(w["kernel"]))
                          * layer_macs(layer, w["kernel"].shape)[1]
                          for layer, w in zip(cm_full.layers, cm_full.weights))
        y = exp.out_avals[0]
        manifest = {
            "format": "gpjax-export/1",
            "files": {"function": "model.jax", "weights": "weights.npz", "loader": "load.py",
                      **({"onnx": "model.onnx"} if format == "onnx" else {})},
            "input": {"shape": [None, *in_shape], "dtype": str(dtype)},
            "output": {"shape": [None, *map(int, y.shape[1:])], "dtype": str(y.dtype)},
            "classes": list(classes) if classes is not None else None,
            "parameters": {"dense": counts.dense, "active": counts.active,
                           "compact_dense": cm.num_params(), "compact_nonzero": cm.nonzero(),
                           "artifact_arrays": int(sum(a.size for a in flat))},
            "density": counts.active / max(counts.dense, 1),
            "macs_per_example": {"dense": cm_full.macs(), "active": active_macs,
                                 "compact_dense": cm.macs(), "artifact": artifact_macs},
            "layers": [{"source": s, **r} for s, r in zip(cm.source_kernels, layer_recs)],
            "timings_us": {"batch_sizes": list(batch_sizes), "repeats": repeats,
                           "median": timing, "chosen": name,
                           "never_slower": never_slower, "measured_on": measured_on,
                           "rule": None if measured_on else UNTIMED_RULE},
            "accuracy": accuracy,
            "source": source,
            "versions": {"gpjax": _version("gpjax-incremental"), "jax": jax.__version__,
                         "jaxlib": _version("jaxlib")},
            "platforms": list(exp.platforms),
            "custom_calls": [t for t in CSR_CUSTOM_CALLS if t in exp.mlir_module()],
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export_from_state(model: Any, params: PyTree, masks: PyTree, aux: PyTree | None,
                      out_dir: str | os.PathLike, *, example_input: Any, **kwargs: Any) -> dict:
    """:func:`export_model` for a state loaded from a store, run or checkpoint (the CLI's
    entry point): ``(model, params, masks, aux)`` as a :class:`~gpjax.train.TrainState` holds
    them; keyword arguments as :func:`export_model`."""
    return export_model(model, params, masks, out_dir, example_input=example_input, aux=aux,
                        **kwargs)
