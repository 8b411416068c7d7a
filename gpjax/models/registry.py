"""One lookup for models: the zoo by name, any Flax linen, Flax NNX or Equinox class by path.

A *model spec* is a name of :data:`MODELS` (``"lenet300"``, ``"lenet5"``, ``"resnet18"``,
``"ds2"``) or an import path ``"package.module:ClassName"`` of a user's model class, plus
constructor keyword arguments. Specs are plain data: configs, checkpoints and the model store's
manifests record them, and :func:`make_model` rebuilds the model from them. The framework is
read from the class (a subclass of ``flax.linen.Module``, ``flax.nnx.Module`` or
``equinox.Module``): a linen class gives the module ``Class(**kwargs)`` as always, an NNX or
Equinox class its :class:`~gpjax.models.adapter.Adapter`, which builds
``Class(**kwargs, rngs=nnx.Rngs(key))`` / ``Class(**kwargs, key=key)`` from the driver's
initialisation key. Tasks take either (:mod:`gpjax.tasks`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gpjax.models.adapter import Adapter, ModelFrameworkError, as_adapter, from_class
from gpjax.models.deepspeech2 import DeepSpeech2
from gpjax.models.lenet import LeNet5, LeNet300
from gpjax.models.resnet import ResNet18

MODELS: dict[str, Callable[..., Any]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "resnet18": ResNet18,
    "ds2": DeepSpeech2,
}
"""The zoo's model classes by name."""


class ModelImportError(ImportError):
    """A model spec names a class that cannot be imported."""


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples Flax module fields use (nested: ``conv_kernels``)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def model_class(spec: str, *, search_path: str | Path | None = None) -> Callable[..., Any]:
    """The class a model spec names.

    Args:
      spec: a key of :data:`MODELS` or ``"package.module:ClassName"``.
      search_path: a directory put on ``sys.path`` first (where a user's module file lives).

    Raises:
      ModelImportError: the module or the class cannot be imported; the message says how.
    """
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise ModelImportError(
            f"unknown model {spec!r}: use one of {', '.join(sorted(MODELS))} or an import path "
            "'package.module:ClassName' of your own Flax linen, Flax NNX or Equinox model")
    module_name, _, attr = spec.partition(":")
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelImportError(
            f"cannot import module {module_name!r} of model {spec!r} ({e}); put its directory "
            "on PYTHONPATH or run from the directory holding it") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelImportError(f"module {module_name!r} has no attribute {attr!r} "
                                   f"(model {spec!r}); check the class name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelImportError(f"model {spec!r} is not a class or callable")
    return obj


def make_model(spec: str, kwargs: Mapping[str, Any] | None = None, *,
               search_path: str | Path | None = None) -> Any:
    """The model of a spec: a linen module ``spec(**kwargs)``, or the
    :class:`~gpjax.models.adapter.Adapter` of an NNX/Equinox class; JSON lists in ``kwargs``
    become tuples.

    Raises:
      ModelImportError: see :func:`model_class`.
      ModelFrameworkError: the class is of none of the three frameworks, or an NNX/Equinox
        constructor takes neither ``rngs`` nor ``key`` (the message says the convention).
      ValueError: the constructor refused ``kwargs`` (the message names them).
    """
    cls = model_class(spec, search_path=search_path)
    try:
        model = from_class(cls, _tuples(dict(kwargs or {})), name=spec)
    except TypeError as e:
        raise ValueError(f"model {spec!r} does not take the arguments {dict(kwargs or {})}: "
                         f"{e}; Fix: pass its constructor's keyword arguments with "
                         "--model-kwargs") from e
    if not isinstance(cls, type):  # a factory function: its product must be a model
        try:
            as_adapter(model)
        except ModelFrameworkError:
            raise ModelFrameworkError(
                f"model {spec!r} returned a {type(model).__name__}, not a Flax linen, Flax NNX "
                "or Equinox model; Fix: name a model class (or a function returning a "
                "model)") from None
    return model


def make_adapter(spec: str, kwargs: Mapping[str, Any] | None = None, *,
                 search_path: str | Path | None = None) -> Adapter:
    """The :class:`~gpjax.models.adapter.Adapter` of a spec's model (:func:`make_model`)."""
    return as_adapter(make_model(spec, kwargs, search_path=search_path))


__all__ = ["MODELS", "ModelFrameworkError", "ModelImportError", "make_adapter", "make_model",
           "model_class"]
