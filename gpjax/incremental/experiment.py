"""From a config (pure data) to what the incremental loop runs: task, scenario, test metrics.

:func:`build` makes the model by one lookup (:func:`gpjax.models.registry.make_model`), loads the
data by one loader (:func:`gpjax.data.registry.load_dataset`), picks the task of the data's kind
(:func:`gpjax.tasks.make_task`) and cuts the data into the config's scenario.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from gpjax.data.registry import first, load_dataset, materialise
from gpjax.data.stream import is_streamed, take
from gpjax.fields import ConfigError
from gpjax.incremental.configs import ExperimentConfig
from gpjax.incremental.scenarios import SCENARIOS, Scenario
from gpjax.models.registry import make_model
from gpjax.tasks import Task, make_task

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """What the loop needs, built from a config.

    Attributes:
      config: the config.
      task: the model's task.
      scenario: the data rounds.
      example_batch: a small batch for initialisation.
      test_metrics: ``test_metrics(params, aux, data) -> {field: percent}``: the test figures
        of a result row from one evaluation pass: ``test_error`` (error %, WER % for speech)
        and, for speech, ``test_cer`` (CER % of the same greedy decoding); validation uses the
        task's per-example error.
      input_kernels: the model's input-fed kernel patterns.
      model: the Flax module.
    """

    config: ExperimentConfig
    task: Task
    scenario: Scenario
    example_batch: PyTree
    test_metrics: Callable[[PyTree, PyTree, PyTree], dict[str, float]]
    input_kernels: tuple[str, ...]
    model: Any = None

    def test_error(self, params: PyTree, aux: PyTree, data: PyTree) -> float:
        """The reported metric alone (``test_metrics(...)["test_error"]``)."""
        return self.test_metrics(params, aux, data)["test_error"]


def example_batch(train: PyTree, n: int = 2) -> PyTree:
    """The first ``n`` examples of a split, as arrays (for initialising a model)."""
    return train.examples(np.arange(n)) if is_streamed(train) else take(train, np.arange(n))


def build(cfg: ExperimentConfig, seed: int = 0) -> Experiment:
    """Loads the data and makes the task and scenario of ``cfg`` for run seed ``seed``."""
    data = load_dataset(cfg.dataset, **cfg.dataset_kwargs)
    if cfg.length_buckets > 1 and data.kind != "speech":
        raise ConfigError(f"length_buckets={cfg.length_buckets} is for speech data; "
                          f"{cfg.dataset!r} is {data.kind!r} data: set length_buckets=1")
    splits = [first(s, n) for s, n in ((data.train, cfg.n_train),
                                       (data.validation, cfg.n_validation),
                                       (data.test, cfg.n_test))]
    if data.in_memory:
        splits = [materialise(s) for s in splits]
    train, val, test = splits
    model = make_model(cfg.model, cfg.model_kwargs)
    augment = None
    if cfg.augment:
        from gpjax.data.augment import affine_augment
        augment = affine_augment
    task, test_metrics = make_task(data.kind, model, augment=augment,
                                   eval_batch_size=cfg.eval_batch_size)
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r}; choose from "
                         f"{', '.join(sorted(SCENARIOS))}")
    scenario = SCENARIOS[cfg.scenario](cfg, train, val, test,
                                       seed=seed if cfg.data_seed is None else cfg.data_seed,
                                       description=f"{cfg.name} ({data.source})")
    if cfg.rounds is not None:
        scenario = scenario.truncated(cfg.rounds)
    return Experiment(cfg, task, scenario, example_batch(train), test_metrics,
                      tuple(getattr(model, "input_kernels", ())), model)


__all__ = ["Experiment", "build", "example_batch"]
