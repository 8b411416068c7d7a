"""The :class:`~gpjax.models.adapter.Adapter` of a Flax NNX module.

The module is split once into its graph definition (static), its ``nnx.Param`` state
(``params``), its RNG streams (kept as constants: training reseeds them from the step key) and
every other variable (``aux``: ``BatchStat``...). ``apply`` merges them inside the traced
function, switches the module's mode (``model.train()`` / ``model.eval()``), calls it and splits
the updated ``aux`` back out: Python graph work at trace time only.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import jax

from gpjax.models.adapter import Adapter, ModelFrameworkError, key_name, lookup, nested

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class _Parts:
    """The static pieces of a split module: graph definition, state layouts, RNG constants."""

    graphdef: Any
    param_def: Any        # treedef of the Param state
    param_paths: tuple    # string paths of its leaves, in flatten order
    aux_def: Any
    aux_paths: tuple
    rng_def: Any          # treedef of the RNG streams' state
    rng_leaves: tuple     # its arrays (constants; remade as variables inside each trace)
    streams: tuple        # stream names to reseed in training


def _layout(state) -> tuple[Any, tuple]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = tuple(tuple(key_name(k) for k in path[:-1]) if _is_value_key(path[-1])
                  else tuple(key_name(k) for k in path) for path, _ in leaves)
    return treedef, paths


def _is_value_key(k: Any) -> bool:
    return getattr(k, "name", None) == "value"


def _pure(state, paths) -> dict:
    return nested(dict(zip(paths, jax.tree.leaves(state), strict=True)))


def _split(model) -> tuple[_Parts, dict, dict]:
    from flax import nnx
    graphdef, params, rng, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    param_def, param_paths = _layout(params)
    aux_def, aux_paths = _layout(rest)
    streams = tuple(sorted({getattr(v, "tag", None) or path[-2]
                            for path, v in nnx.to_flat_state(rng) if isinstance(v, nnx.RngKey)}))
    rng_leaves, rng_def = jax.tree.flatten(rng)
    parts = _Parts(graphdef, param_def, param_paths, aux_def, aux_paths, rng_def,
                   tuple(rng_leaves), streams)
    return parts, _pure(params, param_paths), _pure(rest, aux_paths)


def _merge(parts: _Parts, params: Mapping, aux: Mapping):
    from flax import nnx
    p = jax.tree.unflatten(parts.param_def, [lookup(params, k) for k in parts.param_paths])
    a = jax.tree.unflatten(parts.aux_def, [lookup(aux, k) for k in parts.aux_paths])
    rng = jax.tree.unflatten(parts.rng_def, list(parts.rng_leaves))
    return nnx.merge(parts.graphdef, p, rng, a)


def _args(x: Any) -> tuple:
    return tuple(x) if isinstance(x, tuple) else (x,)


def _check_signature(cls: type, name: str) -> None:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    if "rngs" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ModelFrameworkError(
            f"NNX model {name!r} takes no `rngs` argument: gpjax builds NNX models as "
            "Class(**model_kwargs, rngs=nnx.Rngs(seed)); Fix: add `*, rngs: nnx.Rngs` to its "
            "__init__ and pass it to its layers")


def nnx_adapter(cls: type, kwargs: Mapping[str, Any], *, instance: Any = None,
                name: str | None = None) -> Adapter:
    """The adapter of an NNX module class built as ``cls(**kwargs, rngs=nnx.Rngs(key))``, or
    of an ``instance`` (whose own arrays ``init`` returns).

    Raises:
      ModelFrameworkError: ``cls.__init__`` takes no ``rngs``.
      TypeError: the constructor refused ``kwargs`` (raised here: the model is built once to
        learn its graph).
    """
    from flax import nnx
    name = name or cls.__qualname__
    kwargs = dict(kwargs)
    if instance is None:
        _check_signature(cls, name)
        build = lambda key: cls(**kwargs, rngs=nnx.Rngs(key))  # noqa: E731
        instance = build(jax.random.PRNGKey(0))
    else:
        build = None
    parts, own_params, own_aux = _split(instance)

    def init(key: jax.Array, example: Any) -> tuple[PyTree, PyTree]:
        if build is None:
            return own_params, own_aux
        _, params, aux = _split(build(key))
        return params, aux

    def apply(params: PyTree, aux: PyTree, x: Any, *, train: bool,
              key: jax.Array | None = None) -> tuple[Any, PyTree]:
        model = _merge(parts, params, aux)
        if train:
            model.train()
            if key is not None and parts.streams:
                keys = jax.random.split(key, len(parts.streams))
                nnx.reseed(model, **dict(zip(parts.streams, keys, strict=True)))
        else:
            model.eval()
        out = model(*_args(x))
        if not train:
            return out, aux
        _, _, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
        return out, _pure(rest, parts.aux_paths)

    def bind(params: PyTree, aux: PyTree) -> Any:
        model = _merge(parts, params, aux)
        model.eval()
        return model

    return Adapter("nnx", init, apply, bind, "flax", tuple(getattr(cls, "input_kernels", ())),
                   cls, kwargs)
