"""One model type for the driver: Flax linen, Flax NNX and Equinox models as :class:`Adapter`.

The driver (tasks, epochs, growth gradients, the store) sees every model the same way::

    params, aux = adapter.init(key, example)                  # example: inputs [1, ...]
    outputs, aux = adapter.apply(params, aux, x, train=True, key=key)

``params`` are the trainable arrays as a nested dict with string keys (the pytree the masks
mirror: leaf paths such as ``"conv1/kernel"``, ``"layers/0/weight"``), ``aux`` every other
variable as a nested dict (batch statistics; ``{}`` when there are none). ``x`` is one array
``[B, ...]`` or a tuple of them (passed to the model as positional arguments: speech models take
``(features, paddings)``). ``key`` feeds dropout in training; evaluation (``train=False``) is
deterministic and returns ``aux`` unchanged.

By framework (:func:`as_adapter` picks one from a model, :func:`from_class` from a class):

- **linen** (``flax.linen.Module``): ``model.init/apply(..., train=...)``, the dropout stream
  ``"dropout"``, mutable collections (``batch_stats``) as ``aux``; kernels ``[..., in, out]``.
- **NNX** (``flax.nnx.Module``): built with ``rngs=nnx.Rngs(key)``; ``params`` the
  ``nnx.Param`` state, ``aux`` every other variable but the RNG streams (whose keys come from the
  step key through ``nnx.reseed``). Split and merge happen inside the traced function (the
  graph definition is static), so a jitted step walks no Python graph; ``model.train()`` /
  ``model.eval()`` switch dropout and batch norm. Kernels ``[..., in, out]``.
- **Equinox** (``equinox.Module``): built with ``key=``; ``params`` the inexact arrays
  (``eqx.partition(model, eqx.is_inexact_array)``), the rest static; called on one example and
  ``jax.vmap``-ed over the batch, dropout through ``key=`` (one key per example), evaluation
  through ``eqx.nn.inference_mode``. Kernels ``[out, in, ...]`` (``layout="torch"``). Stateful
  layers (``eqx.nn.State``: BatchNorm, SpectralNorm) are refused.

A model class may name its input-fed kernels in a class attribute ``input_kernels`` (fnmatch
patterns over the leaf paths of ``params``, e.g. ``("conv1/kernel",)``); see ``gpjax.prune``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

PyTree = Any
FRAMEWORKS = ("linen", "nnx", "equinox")


class ModelFrameworkError(ValueError):
    """A model of no supported framework, or one the adapter cannot build; the message says
    the convention and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class Adapter:
    """A model as the driver sees it (hashable by identity: a static jit argument).

    Attributes:
      framework: "linen", "nnx" or "equinox".
      init: ``init(key, example) -> (params, aux)``; ``example`` holds the inputs of one or a
        few examples (``[b, ...]`` or a tuple of them).
      apply: ``apply(params, aux, x, *, train: bool, key=None) -> (outputs, aux)``; ``x``
        ``[B, ...]`` (or a tuple); the returned ``aux`` is updated in training (batch
        statistics), unchanged in evaluation; ``key`` drives dropout in training.
      bind: ``bind(params, aux) -> model``: the framework's own model holding these arrays (a
        bound linen module, an NNX module, an Equinox module), e.g. for export.
      layout: kernel axes: "flax" (``[..., in, out]``) or "torch" (``[out, in, ...]``), as
        ``gpjax.prune(layout=)`` takes them.
      input_kernels: fnmatch patterns of the kernels fed by the network input.
      module: the linen module, or the NNX/Equinox class the adapter builds.
      kwargs: the NNX/Equinox constructor's keyword arguments (besides ``rngs``/``key``).
    """

    framework: str
    init: Callable[..., tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[Any, PyTree]]
    bind: Callable[[PyTree, PyTree], Any]
    layout: str = "flax"
    input_kernels: tuple[str, ...] = ()
    module: Any = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def forward(self, aux: PyTree) -> Callable[[PyTree, Any], Any]:
        """``forward(params, x) -> outputs``: the model in evaluation mode with ``aux`` bound
        (pure, jittable; what ``gpjax.chain.ModelFn(forward, layout, input_shape, kernels)``
        takes for compact/export)."""
        return lambda params, x: self.apply(params, aux, x, train=False)[0]

    def kernel_paths(self, params: PyTree, aux: PyTree, example: Any) -> tuple[str, ...]:
        """The kernels (rank >= 2 params) in the order the forward pass first multiplies by
        them (see :func:`kernel_order`)."""
        return kernel_order(self, params, aux, example)


def framework_of(obj: Any) -> str | None:
    """"linen", "nnx" or "equinox" for a model class or instance of that framework, else None
    (the frameworks are imported only when installed)."""
    cls = obj if isinstance(obj, type) else type(obj)
    for name, base in _bases():
        if issubclass(cls, base):
            return name
    return None


def _bases():
    import flax.linen as nn
    yield "linen", nn.Module
    try:
        from flax import nnx
        yield "nnx", nnx.Module
    except ImportError:  # pragma: no cover - flax < 0.8
        pass
    try:
        import equinox as eqx
        yield "equinox", eqx.Module
    except ImportError:  # pragma: no cover - equinox is optional
        pass


def _refuse(what: str) -> ModelFrameworkError:
    return ModelFrameworkError(
        f"{what} is not a Flax linen, Flax NNX or Equinox model; Fix: subclass flax.linen.Module, "
        "flax.nnx.Module or equinox.Module (or pass a gpjax.models.adapter.Adapter)")


def as_adapter(model: Any) -> Adapter:
    """The :class:`Adapter` of a model instance (an Adapter is returned as it is).

    A linen module is wrapped as it is. An NNX or Equinox *instance* keeps its own arrays:
    ``init`` returns them whatever the key (build from the class with :func:`from_class` to have
    the key choose the initial weights).

    Raises:
      ModelFrameworkError: ``model`` is of no supported framework.
    """
    if isinstance(model, Adapter):
        return model
    kind = framework_of(model)
    if kind == "linen":
        from gpjax.models._linen import linen_adapter
        return linen_adapter(model)
    if kind == "nnx":
        from gpjax.models._nnx import nnx_adapter
        return nnx_adapter(type(model), {}, instance=model)
    if kind == "equinox":
        from gpjax.models._eqx import eqx_adapter
        return eqx_adapter(type(model), {}, instance=model)
    raise _refuse(f"{type(model).__name__} ({type(model).__module__})")


def from_class(cls: type, kwargs: Mapping[str, Any], *, name: str | None = None) -> Any:
    """A model from its class: a linen module ``cls(**kwargs)`` (as before), or the
    :class:`Adapter` of an NNX/Equinox class, whose ``init(key, ...)`` builds
    ``cls(**kwargs, rngs=nnx.Rngs(key))`` / ``cls(**kwargs, key=key)``.

    Raises:
      ModelFrameworkError: ``cls`` is of no supported framework, or an NNX/Equinox constructor
        takes neither ``rngs`` nor ``key``.
      TypeError: the constructor refused ``kwargs``.
    """
    label = name or f"{getattr(cls, '__module__', '?')}:{getattr(cls, '__qualname__', cls)}"
    kind = framework_of(cls) if isinstance(cls, type) else None
    if kind == "linen":
        return cls(**kwargs)
    if kind == "nnx":
        from gpjax.models._nnx import nnx_adapter
        return nnx_adapter(cls, kwargs, name=label)
    if kind == "equinox":
        from gpjax.models._eqx import eqx_adapter
        return eqx_adapter(cls, kwargs, name=label)
    if isinstance(cls, type):
        raise _refuse(f"model {label!r}")
    return cls(**kwargs)  # a factory function: whatever it returns, checked by as_adapter


def nested(flat: Mapping[tuple[str, ...], Any]) -> dict:
    """``{("a", "b"): v}`` -> ``{"a": {"b": v}}``."""
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def lookup(tree: Mapping, path: tuple[str, ...]) -> Any:
    """``tree[p0][p1]...``."""
    for k in path:
        tree = tree[k]
    return tree


def key_name(k: Any) -> str:
    """A jax key-path entry as a string (``DictKey('a')`` -> "a", ``SequenceKey(0)`` -> "0")."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _inlined(jaxpr) -> list:
    """The equations of a jaxpr with the bodies of ``pjit``/``custom_jvp``/``custom_vjp``
    calls spliced in (their variables renamed onto the caller's)."""
    out = []
    for eqn in jaxpr.eqns:
        sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") \
            or eqn.params.get("fun_jaxpr")
        inner = getattr(sub, "jaxpr", sub)
        if inner is not None and hasattr(inner, "eqns") and eqn.primitive.name != "scan" \
                and len(inner.invars) == len(eqn.invars):
            out.append(("call", eqn, inner))
        else:
            out.append(("eqn", eqn, None))
    return out


_CONTRACTIONS = ("dot_general", "conv_general_dilated")


def kernel_order(adapter: Adapter, params: PyTree, aux: PyTree,
                 example: Any) -> tuple[str, ...]:
    """Leaf paths of the kernels (rank >= 2 params) in the order the evaluation forward pass
    first contracts them (``dot_general``/``conv``), then any never contracted, in tree order.

    A kernel counts as used where it, or a value made from it alone (cast, transpose, reshape,
    mask), meets a contraction. This is the chain ``gpjax.compact`` follows: for a plain
    Dense/Conv chain, the layers from input to output.
    """
    from gpjax.masks import leaf_names
    names = leaf_names(params)
    leaves = jax.tree.leaves(params)
    kernels = [i for i, p in enumerate(leaves) if getattr(p, "ndim", 0) >= 2]
    treedef = jax.tree.structure(params)

    def fwd(*ks):
        flat = list(leaves)
        for i, k in zip(kernels, ks, strict=True):
            flat[i] = k
        return adapter.apply(jax.tree.unflatten(treedef, flat), aux, example, train=False)[0]

    closed = jax.make_jaxpr(fwd)(*[leaves[i] for i in kernels])
    origin = {v: i for v, i in zip(closed.jaxpr.invars, kernels, strict=True)}
    order: list[int] = []
    _walk(closed.jaxpr, origin, order)
    order += [i for i in kernels if i not in order]
    return tuple(names[i] for i in order)


def _walk(jaxpr, origin: dict, order: list) -> None:
    for kind, eqn, inner in _inlined(jaxpr):
        srcs = {origin[v] for v in eqn.invars if not hasattr(v, "val") and v in origin}
        if kind == "call":
            sub = {iv: origin[v] for iv, v in zip(inner.invars, eqn.invars, strict=True)
                   if not hasattr(v, "val") and v in origin}
            _walk(inner, sub, order)
            continue
        if not srcs:
            continue
        if eqn.primitive.name in _CONTRACTIONS:
            order.extend(i for i in sorted(srcs) if i not in order)
        elif len(srcs) == 1:
            for o in eqn.outvars:
                origin[o] = next(iter(srcs))


__all__ = ["FRAMEWORKS", "Adapter", "ModelFrameworkError", "as_adapter", "framework_of",
           "from_class", "kernel_order"]
