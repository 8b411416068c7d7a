"""The :class:`~gpjax.models.adapter.Adapter` of an Equinox module.

``params`` are the module's inexact arrays (``eqx.partition(model, eqx.is_inexact_array)``) as a
nested dict keyed by field names and indices; the rest of the module is static. The module is
called on one example and ``jax.vmap``-ed over the batch; training passes ``key=`` (one key per
example) when ``__call__`` takes one, evaluation uses ``eqx.nn.inference_mode``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax

from gpjax.models.adapter import Adapter, ModelFrameworkError, key_name, lookup, nested

PyTree = Any


def _args(x: Any) -> tuple:
    return tuple(x) if isinstance(x, tuple) else (x,)


def _takes(fn: Any, arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return arg in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _check_stateless(model: Any, name: str) -> None:
    import equinox as eqx
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    if any(is_index(leaf) for leaf in jax.tree.leaves(model, is_leaf=is_index)):
        raise ModelFrameworkError(
            f"Equinox model {name!r} has stateful layers (eqx.nn.State: BatchNorm, "
            "SpectralNorm), which gpjax does not drive; Fix: drop them (or use LayerNorm), or "
            "write the model in Flax NNX or linen, whose batch statistics gpjax carries")


def eqx_adapter(cls: type, kwargs: Mapping[str, Any], *, instance: Any = None,
                name: str | None = None) -> Adapter:
    """The adapter of an Equinox module class built as ``cls(**kwargs, key=key)``, or of an
    ``instance`` (whose own arrays ``init`` returns).

    Raises:
      ModelFrameworkError: ``cls`` takes no ``key``, or the module has stateful layers.
      TypeError: the constructor refused ``kwargs``.
    """
    import equinox as eqx
    name = name or cls.__qualname__
    kwargs = dict(kwargs)
    if instance is None:
        if not _takes(cls, "key"):
            raise ModelFrameworkError(
                f"Equinox model {name!r} takes no `key` argument: gpjax builds Equinox models "
                "as Class(**model_kwargs, key=jax.random.key(seed)); Fix: add `*, key` to its "
                "__init__ and split it for its layers")
        build = lambda key: cls(**kwargs, key=key)  # noqa: E731
        instance = build(jax.random.PRNGKey(0))
    else:
        build = None
    _check_stateless(instance, name)
    arrays, static = eqx.partition(instance, eqx.is_inexact_array)
    flat, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    paths = tuple(tuple(key_name(k) for k in path) for path, _ in flat)
    own = nested(dict(zip(paths, (v for _, v in flat), strict=True)))
    with_key = _takes(type(instance).__call__, "key")

    def init(key: jax.Array, example: Any) -> tuple[PyTree, PyTree]:
        if build is None:
            return own, {}
        arr = eqx.filter(build(key), eqx.is_inexact_array)
        return nested(dict(zip(paths, jax.tree.leaves(arr), strict=True))), {}

    def bind(params: PyTree, aux: PyTree) -> Any:
        arr = jax.tree.unflatten(treedef, [lookup(params, p) for p in paths])
        return eqx.nn.inference_mode(eqx.combine(arr, static), True)

    def apply(params: PyTree, aux: PyTree, x: Any, *, train: bool,
              key: jax.Array | None = None) -> tuple[Any, PyTree]:
        arr = jax.tree.unflatten(treedef, [lookup(params, p) for p in paths])
        model = eqx.nn.inference_mode(eqx.combine(arr, static), not train)
        xs = _args(x)
        if train and with_key and key is not None:
            keys = jax.random.split(key, jax.tree.leaves(xs)[0].shape[0])
            return jax.vmap(lambda k, *xi: model(*xi, key=k))(keys, *xs), aux
        return jax.vmap(lambda *xi: model(*xi))(*xs), aux

    return Adapter("equinox", init, apply, bind, "torch",
                   tuple(getattr(cls, "input_kernels", ())), cls, kwargs)
