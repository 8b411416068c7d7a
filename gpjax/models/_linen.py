"""The :class:`~gpjax.models.adapter.Adapter` of a Flax linen module (the calls gpjax always made).

``init`` is one jitted ``model.init({"params": key, "dropout": key}, *x, train=False)``;
``apply`` is ``model.apply({"params": params, **aux}, *x, train=...)``, with the dropout stream
and the mutable collections (``aux``'s keys) in training.
"""

from __future__ import annotations

from typing import Any

import jax

from gpjax.models.adapter import Adapter

PyTree = Any


def _args(x: Any) -> tuple:
    return tuple(x) if isinstance(x, tuple) else (x,)


def linen_adapter(model: Any) -> Adapter:
    """The adapter of a linen module taking ``(*inputs, train: bool)``.

    Args:
      model: a ``flax.linen.Module``; its class attribute ``input_kernels`` (if any) is kept.

    Returns:
      An :class:`Adapter` with ``layout="flax"``.
    """
    # One compiled program for the whole init: eager, every initializer compiles on its own
    # (a small ResNet-18: 35 s against 21 s jitted, on 2 cores; the same values bit for bit).
    init_fn = jax.jit(lambda key, *x: model.init({"params": key, "dropout": key}, *x,
                                                 train=False))

    def init(key: jax.Array, example: Any) -> tuple[PyTree, PyTree]:
        variables = dict(init_fn(key, *_args(example)))
        return variables.pop("params"), variables

    def apply(params: PyTree, aux: PyTree, x: Any, *, train: bool,
              key: jax.Array | None = None) -> tuple[Any, PyTree]:
        variables = {"params": params, **aux}
        if not train:
            return model.apply(variables, *_args(x), train=False), aux
        mutable = list(aux.keys()) or False
        rngs = None if key is None else {"dropout": key}
        out = model.apply(variables, *_args(x), train=True, rngs=rngs, mutable=mutable)
        return (out[0], dict(out[1])) if mutable else (out, aux)

    def bind(params: PyTree, aux: PyTree) -> Any:
        return model.bind({"params": params, **aux})

    return Adapter("linen", init, apply, bind, "flax",
                   tuple(getattr(model, "input_kernels", ())), model, {})
