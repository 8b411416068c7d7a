"""The experiment registry: every experiment of the paper as a named, frozen config value.

``gpjax run --config NAME`` looks names up in :data:`CONFIGS`; ``experiments/README.md`` lists
them. A config is pure data: which model (a :data:`gpjax.models.MODELS` name or an import
path), which data (a :data:`gpjax.data.registry.DATASETS` name), how the data arrive
(scenario), the training recipe, and per-policy overrides of the policy defaults (the paper's
protocol for that dataset). :func:`gpjax.incremental.experiment.build` turns a config into the
task, scenario and metric functions the loop needs.

``tiny`` variants shrink data, widths and epochs for tests; they keep the code paths.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from gpjax.fields import ConfigError, check_range, check_types
from gpjax.train import OptimizerConfig

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment (serialised into checkpoints and result rows).

    Attributes:
      name: registry name.
      model: a model spec: "lenet300", "lenet5", "resnet18", "ds2" or "package.module:Class"
        (:func:`gpjax.models.registry.make_model`).
      model_kwargs: constructor arguments of the model (e.g. ``{"hidden": [32, 16]}``).
      dataset: "mnist" (28x28), "mnist32" (the ResNet stand-in, padded to 32x32), "imagenette",
        "imagenet2012", "synthetic_an4", "an4" or "tfds:NAME"
        (:func:`gpjax.data.registry.load_dataset`); its kind picks the task.
      dataset_kwargs: loader arguments (e.g. ``{"root": ...}`` for AN4, ``n_train`` for
        the synthetic corpus).
      n_train, n_validation, n_test: keep only the first ``n`` examples of each split (after the
        loader's seeded hold-out); None keeps all. For tests and quick runs.
      scenario: "data" (data-incremental chunks) or "classes" (class-incremental).
      chunks: K, chunks of the data-incremental scenario.
      initial_chunks: chunks of the first round.
      class_rounds: class lists of the class-incremental scenario.
      rounds: run only the first ``rounds`` rounds (None: all).
      data_seed: seed of the chunk partition; None: the run's seed (replicates then differ in
        data order as well as initialisation).
      batch_size: training mini-batch size.
      eval_batch_size: evaluation / growth-gradient batch size.
      augment: affine distortions of training batches (images only).
      optimizer: the optimiser recipe (SGD Nesterov 0.9, weight decay 1e-4).
      policies: per-policy field overrides (dotted keys), e.g. ``{"tfs": {"epochs": 90}}``.
      checkpoint_every: save inside growth/training phases every this many epochs (0: only
        after rounds and phases).
      prune_checkpoint_every: save inside pruning phases every this many held iterations.
      checkpoint_interval_s: but inside a phase not sooner than this many seconds after the
        previous save (60: a crash loses at most about a minute; on MNIST chunks an epoch is
        well under a second, and saving every 5 of them took 6-8% of a round in
        ``benchmarks/results/round_breakdown_2026-12-01.md``). 0: every time.
      length_buckets: speech only: cut each round's training and validation utterances into
        this many groups of similar length (:func:`gpjax.data.buckets.length_buckets`), each
        padded only to its own longest utterance (1: every batch padded to the longest of
        the split).
      nonrecoverable_rounds: which rounds derive the policy's non-recoverable model: "last"
        (FIG. 7 reads it off the last round; it costs a second pruning phase, ~20-25 epochs
        of retraining per MNIST round, so the tables' runs skip it elsewhere) or "all".
      heatmap: draw FIG. 5's 28x28 pixel-connection heatmap after every round.
    """

    name: str
    model: str = "lenet300"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    dataset: str = "mnist"
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)
    n_train: int | None = None
    n_validation: int | None = None
    n_test: int | None = None
    scenario: str = "data"
    chunks: int = 10
    initial_chunks: int = 1
    class_rounds: tuple = ()
    rounds: int | None = None
    data_seed: int | None = 0
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = True
    optimizer: OptimizerConfig = OptimizerConfig()
    policies: dict = dataclasses.field(default_factory=dict)
    checkpoint_every: int = 5
    prune_checkpoint_every: int = 5
    checkpoint_interval_s: float = 60.0
    length_buckets: int = 1
    nonrecoverable_rounds: str = "last"
    heatmap: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("batch_size", "eval_batch_size", "chunks", "initial_chunks", "rounds",
                     "n_train", "n_validation", "n_test", "length_buckets"):
            check_range(self, name, 1)
        for name in ("checkpoint_every", "prune_checkpoint_every", "checkpoint_interval_s"):
            check_range(self, name, 0)
        if self.nonrecoverable_rounds not in ("all", "last"):
            raise ConfigError("ExperimentConfig.nonrecoverable_rounds must be 'all' or 'last', "
                              f"got {self.nonrecoverable_rounds!r}")
        if self.initial_chunks > self.chunks:
            raise ConfigError(f"ExperimentConfig.initial_chunks ({self.initial_chunks}) must be "
                              f"at most chunks ({self.chunks})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_rounds"] = [list(c) for c in self.class_rounds]
        return d


def _tiny_policies(train: int = 2, new: int = 1, all_: int = 2, first: int = 3) -> dict:
    prune = {"prune.max_iterations": 3, "prune.max_retrain_epochs": 1,
             "nonrecoverable.max_iterations": 3, "nonrecoverable.max_retrain_epochs": 1,
             "prune.percentile": 20.0, "nonrecoverable.percentile": 30.0,
             "prune.tolerance": 0.0, "nonrecoverable.tolerance": 100.0}
    grow = {"grow_every": 1, "growth_percentile": 80.0, "seed_density": 0.3}
    return {
        "growprune": {"new_epochs": new, "all_epochs": all_, "first_epochs": first, **grow,
                      **prune},
        "merged": {"all_epochs": new + all_, "first_epochs": first, **grow, **prune},
        "tfs": {"epochs": train, **prune},
        "nft": {"epochs": train, "finetune_epochs": train, **prune},
        "nest": {"epochs": first, **grow, **prune},
    }


# SPEC protocols per dataset (epochs; the pruning rule is the policies' default).
_IMAGENET = {"growprune": {"new_epochs": 20, "all_epochs": 30, "first_epochs": 120},
             "merged": {"all_epochs": 50, "first_epochs": 120},
             "tfs": {"epochs": 90}, "nft": {"epochs": 90, "finetune_epochs": 90},
             "nest": {"epochs": 120}}
_AN4 = {"growprune": {"new_epochs": 20, "all_epochs": 30, "first_epochs": 150},
        "merged": {"all_epochs": 50, "first_epochs": 150},
        "tfs": {"epochs": 120}, "nft": {"epochs": 120, "finetune_epochs": 120},
        "nest": {"epochs": 150}}

_TINY = dict(n_train=300, n_validation=100, n_test=200, chunks=3, batch_size=32, augment=False,
             eval_batch_size=100, checkpoint_every=2, prune_checkpoint_every=2,
             checkpoint_interval_s=0.0,
             policies=_tiny_policies())

CONFIGS: dict[str, ExperimentConfig] = {}


def _register(cfg: ExperimentConfig) -> None:
    CONFIGS[cfg.name] = cfg


_register(ExperimentConfig("lenet300_mnist"))
_register(ExperimentConfig("lenet300_mnist_tiny", model_kwargs={"hidden": [32, 16]}, **_TINY))
# Class-incremental rounds start from a model that was just trained on one new class (its loss
# on the merged data is ~100): gradients are clipped, or lr 0.1 diverges to NaN there.
_CLIPPED = OptimizerConfig(clip_norm=5.0)
# FIG. 5 draws the non-recoverable model's pixel map after every round.
_register(ExperimentConfig("lenet300_mnist_classes", scenario="classes", heatmap=True,
                           class_rounds=((1, 2), (0,), (6,), (7,)), optimizer=_CLIPPED,
                           nonrecoverable_rounds="all"))
_register(ExperimentConfig("lenet300_mnist_classes_tiny", scenario="classes", heatmap=True,
                           optimizer=_CLIPPED, nonrecoverable_rounds="all",
                           class_rounds=((1, 2), (0,), (6,)), model_kwargs={"hidden": [32, 16]},
                           **{**_TINY, "n_train": 600}))
# Dense LeNet-5 from scratch at lr 0.1 (TFS, NFT round 0) diverges to NaN in its first epoch
# on a 5.5K-image chunk; every policy gets the same clipped recipe (FIG. 11's pages say which
# runs had it: experiments/results/fig11/shows.md).
_register(ExperimentConfig("lenet5_mnist", model="lenet5", optimizer=_CLIPPED))
_register(ExperimentConfig("lenet5_mnist_tiny", model="lenet5", optimizer=_CLIPPED, **_TINY))
_register(ExperimentConfig("resnet18_mnist", model="resnet18", dataset="mnist32",
                           model_kwargs={"num_classes": 10, "small_stem": True},
                           policies=_IMAGENET, augment=False))
_register(ExperimentConfig("resnet18_mnist_tiny", model="resnet18", dataset="mnist32",
                           model_kwargs={"num_classes": 10, "small_stem": True, "width": 4,
                                         "stage_sizes": [1, 1, 1, 1]},
                           **{**_TINY, "n_train": 150, "n_validation": 50, "n_test": 50}))
_register(ExperimentConfig("resnet18_imagenette", model="resnet18", dataset="imagenette",
                           model_kwargs={"num_classes": 10}, policies=_IMAGENET, augment=False,
                           batch_size=64, eval_batch_size=100))
_register(ExperimentConfig("resnet18_imagenette_tiny", model="resnet18", dataset="imagenette",
                           model_kwargs={"num_classes": 10, "width": 4,
                                         "stage_sizes": [1, 1, 1, 1]},
                           dataset_kwargs={"image_size": 64},
                           **{**_TINY, "n_train": 150, "n_validation": 50, "n_test": 50}))
_register(ExperimentConfig("resnet18_imagenet", model="resnet18", dataset="imagenet2012",
                           model_kwargs={"num_classes": 1000}, policies=_IMAGENET, augment=False,
                           batch_size=256, eval_batch_size=250))
_register(ExperimentConfig("resnet18_imagenet_tiny", model="resnet18", dataset="imagenet2012",
                           model_kwargs={"num_classes": 1000, "width": 4,
                                         "stage_sizes": [1, 1, 1, 1]},
                           dataset_kwargs={"image_size": 64},
                           **{**_TINY, "n_train": 150, "n_validation": 50, "n_test": 50}))
_DS2_SMALL = {"rnn_features": 64, "conv_features": [8, 8, 8], "num_rnn_layers": 3}
# The CPU-size speech model (_DS2_SMALL: 370K dense parameters, 3 bidirectional H-LSTM layers
# of 64) trains with Adam (peak 2e-3, cosine to 0, gradients clipped to norm 5): the SGD lr 0.1
# recipe is the image one. Retraining while pruning restarts from 5e-4 (a quarter of the peak,
# as the SGD rule's 0.05 is half of 0.1 or less).
_ADAM = OptimizerConfig(name="adam", clip_norm=5.0)
_ADAM_LR = {"learning_rate": 2e-3, "prune.retrain_lr": 5e-4, "nonrecoverable.retrain_lr": 5e-4}
_register(ExperimentConfig("ds2_hlstm_synthetic", model="ds2", dataset="synthetic_an4",
                           chunks=10, initial_chunks=4, policies=_AN4, augment=False,
                           batch_size=16, eval_batch_size=32))
_AN4_ADAM = {k: {**v, **_ADAM_LR, **({"finetune_lr": 2e-3} if k == "nft" else {})}
             for k, v in _AN4.items()}
_register(ExperimentConfig("ds2_hlstm_synthetic_small", model="ds2", dataset="synthetic_an4",
                           model_kwargs=_DS2_SMALL, chunks=10, initial_chunks=4, augment=False,
                           policies=_AN4_ADAM, optimizer=_ADAM, batch_size=16,
                           eval_batch_size=65))
# The CPU-size recipe that recognises words (experiments/results/ds2_cpu_easy: test WER 11.0%,
# CER 4.0% after 80 epochs on all the data): 2 recurrent layers of 64 (the third kept the
# 3-layer model on CTC's all-blank plateau, experiments/results/ds2_probes.md section 5), a 4x
# time stride, the easy corpus conditions and 8 length buckets.
EASY_CORPUS = {"voices": ["en-us"], "rate_wpm": [150, 170], "snr_db": [30.0, 40.0]}
"""An easier synthetic corpus: one voice, a narrow speaking rate, little noise."""
_DS2_CPU = {**_DS2_SMALL, "num_rnn_layers": 2, "conv_strides": [[2, 2], [2, 1], [1, 1]]}
# Round 0 grows from a half-dense seed: from the 10% seed the CPU-size model stays near CTC's
# plateau after 150 growth epochs (validation CER 52.8%); 0.5 is the sparsest seed level with
# TFS's round 0 on validation CER (12.9% at 117K vs 12.5%), experiments/results/ds2_cpu_round0.
_GROWN = ("growprune", "merged", "nest")
_AN4_ADAM_CPU = {k: {**v, **({"seed_density": 0.5} if k in _GROWN else {})}
                 for k, v in _AN4_ADAM.items()}
_register(ExperimentConfig("ds2_hlstm_synthetic_cpu", model="ds2", dataset="synthetic_an4",
                           model_kwargs=_DS2_CPU, dataset_kwargs=EASY_CORPUS, chunks=10,
                           initial_chunks=4, augment=False, length_buckets=8,
                           policies=_AN4_ADAM_CPU,
                           optimizer=_ADAM, batch_size=16, eval_batch_size=65))
# The same recipe with plain LSTM cells (the H-LSTM comparison at CPU size).
_register(ExperimentConfig("ds2_lstm_synthetic_cpu", model="ds2", dataset="synthetic_an4",
                           model_kwargs={**_DS2_CPU, "cell": "lstm"}, dataset_kwargs=EASY_CORPUS,
                           chunks=10, initial_chunks=4, augment=False, length_buckets=8,
                           policies=_AN4_ADAM_CPU,
                           optimizer=_ADAM, batch_size=16, eval_batch_size=65))
_register(ExperimentConfig("ds2_hlstm_an4", model="ds2", dataset="an4", chunks=10,
                           initial_chunks=4, policies=_AN4, augment=False, batch_size=16,
                           eval_batch_size=32, dataset_kwargs={"root": "an4"}))
_register(ExperimentConfig("ds2_hlstm_synthetic_tiny", model="ds2", dataset="synthetic_an4",
                           model_kwargs={"rnn_features": 16, "conv_features": [4, 4, 4],
                                         "num_rnn_layers": 1},
                           dataset_kwargs={"n_train": 60, "n_test": 20, "n_validation": 10},
                           chunks=3, initial_chunks=1,
                           **{k: v for k, v in _TINY.items()
                              if k not in ("n_train", "n_validation", "n_test", "chunks")}))
_register(ExperimentConfig("ds2_hlstm_an4_tiny", model="ds2", dataset="an4",
                           model_kwargs={"rnn_features": 16, "conv_features": [4, 4, 4],
                                         "num_rnn_layers": 1},
                           dataset_kwargs={"root": "an4"},
                           **{**_TINY, "n_train": 60, "n_validation": 10, "n_test": 20}))


def get_config(name: str) -> ExperimentConfig:
    """The registered config ``name`` (``KeyError`` lists the known ones)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]


@functools.cache
def experiment_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(ExperimentConfig))


__all__ = ["CONFIGS", "ExperimentConfig", "get_config"]
