"""The experiment registry: every experiment of SPEC as a named, frozen config value.

``gpjax run --config NAME`` looks names up in :data:`CONFIGS`; ``experiments/README.md`` lists
them. A config says which model, which data, how the data arrive (scenario), the training
recipe, and per-policy overrides of the policy defaults (SPEC's protocol for that dataset).
:func:`build` turns a config into the task, scenario and metric functions the loop needs.

``tiny`` variants shrink data, widths and epochs for tests; they keep the code paths.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpjax.data.stream import is_streamed, num_examples, take
from gpjax.incremental.scenarios import Scenario, class_incremental, data_incremental
from gpjax.metrics import masked_edit_distance
from gpjax.train import OptimizerConfig, Task, classifier_task

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment (serialised into checkpoints and result rows).

    Attributes:
      name: registry name.
      model: "lenet300", "lenet5", "resnet18" or "ds2".
      model_kwargs: constructor arguments of the model (e.g. ``{"hidden": [32, 16]}``).
      dataset: "mnist" (28x28), "mnist32" (the ResNet stand-in, padded to 32x32), "imagenette",
        "imagenet2012", "synthetic_an4" or "an4".
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
    heatmap: bool = False

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
             policies=_tiny_policies())

CONFIGS: dict[str, ExperimentConfig] = {}


def _register(cfg: ExperimentConfig) -> None:
    CONFIGS[cfg.name] = cfg


_register(ExperimentConfig("lenet300_mnist"))
_register(ExperimentConfig("lenet300_mnist_tiny", model_kwargs={"hidden": [32, 16]}, **_TINY))
# Class-incremental rounds start from a model that was just trained on one new class (its loss
# on the merged data is ~100): gradients are clipped, or lr 0.1 diverges to NaN there.
_CLIPPED = OptimizerConfig(clip_norm=5.0)
_register(ExperimentConfig("lenet300_mnist_classes", scenario="classes", heatmap=True,
                           class_rounds=((1, 2), (0,), (6,), (7,)), optimizer=_CLIPPED))
_register(ExperimentConfig("lenet300_mnist_classes_tiny", scenario="classes", heatmap=True,
                           optimizer=_CLIPPED,
                           class_rounds=((1, 2), (0,), (6,)), model_kwargs={"hidden": [32, 16]},
                           **{**_TINY, "n_train": 600}))
_register(ExperimentConfig("lenet5_mnist", model="lenet5"))
_register(ExperimentConfig("lenet5_mnist_tiny", model="lenet5", **_TINY))
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
_register(ExperimentConfig("ds2_hlstm_synthetic_small", model="ds2", dataset="synthetic_an4",
                           model_kwargs=_DS2_SMALL, chunks=10, initial_chunks=4, augment=False,
                           policies={k: {**v, **_ADAM_LR,
                                         **({"finetune_lr": 2e-3} if k == "nft" else {})}
                                     for k, v in _AN4.items()},
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


# ------------------------------------------------------------------------------------ building


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
    """

    config: ExperimentConfig
    task: Task
    scenario: Scenario
    example_batch: PyTree
    test_metrics: Callable[[PyTree, PyTree, PyTree], dict[str, float]]
    input_kernels: tuple[str, ...]

    def test_error(self, params: PyTree, aux: PyTree, data: PyTree) -> float:
        """The reported metric alone (``test_metrics(...)["test_error"]``)."""
        return self.test_metrics(params, aux, data)["test_error"]


def _first(data: PyTree, n: int | None) -> PyTree:
    if n is None:
        return data
    return take(data, np.arange(min(n, num_examples(data))))


def _load_data(cfg: ExperimentConfig) -> tuple[PyTree, PyTree, PyTree, str]:
    kw = dict(cfg.dataset_kwargs)
    if cfg.dataset == "mnist":
        from gpjax.data.mnist import load_mnist
        m = load_mnist(**kw)
        return (tuple(m.train), tuple(m.validation), tuple(m.test), m.source)
    if cfg.dataset in ("mnist32", "imagenette", "imagenet2012"):
        from gpjax.data.images import load_mnist_images, load_tfds_images
        d = (load_mnist_images(**kw) if cfg.dataset == "mnist32"
             else load_tfds_images(cfg.dataset, **kw))
        # TFDS sets stay streamed splits (gpjax.data.stream: ImageNet does not fit in memory;
        # training makes each block on the host with the split's crop/flip augmentation); the
        # small MNIST stand-in is materialised and trained from device memory.
        splits = []
        for split, n in ((d.train, cfg.n_train), (d.validation, cfg.n_validation),
                         (d.test, cfg.n_test)):
            if n is not None:
                split = split.subset(np.arange(min(n, len(split))))
            if cfg.dataset == "mnist32":
                s = split.to_split()
                split = (s.images, s.labels)
            splits.append(split)
        return splits[0], splits[1], splits[2], d.source
    if cfg.dataset in ("synthetic_an4", "an4"):
        from gpjax.data import speech
        if cfg.dataset == "an4":
            kw = dict(kw)
            d = speech.load_an4(kw.pop("root"), **kw)
        else:
            d = speech.load_synthetic_an4(**kw)
        out = []
        for split in (d.train, d.validation, d.test):
            out.append((split.features, split.feature_paddings(), split.labels,
                        split.label_paddings()))
        return out[0], out[1], out[2], d.source
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def _make_model(cfg: ExperimentConfig):
    from gpjax import models
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.model_kwargs.items()}
    if cfg.model == "lenet300":
        return models.LeNet300(**kw)
    if cfg.model == "lenet5":
        return models.LeNet5(**kw)
    if cfg.model == "resnet18":
        return models.ResNet18(**kw)
    if cfg.model == "ds2":
        if "conv_kernels" in kw:
            kw["conv_kernels"] = tuple(tuple(k) for k in kw["conv_kernels"])
        return models.DeepSpeech2(**kw)
    raise ValueError(f"unknown model {cfg.model!r}")


def _speech_task(model) -> Task:
    from gpjax.models import BLANK_ID, ctc_loss

    def init(key, batch):
        feats, pads = batch[0], batch[1]
        variables = model.init({"params": key, "dropout": key}, feats[:1], pads[:1])
        variables = dict(variables)
        return variables.pop("params"), variables

    def loss(params, aux, batch, key):
        feats, pads, labels, lpads = batch
        logits, lp = model.apply({"params": params, **aux}, feats, pads, train=True,
                                 rngs={"dropout": key})
        return ctc_loss(logits.astype(jnp.float32), lp, labels, lpads), aux

    def frozen_loss(params, aux, batch):
        feats, pads, labels, lpads = batch
        logits, lp = model.apply({"params": params, **aux}, feats, pads, train=False)
        return ctc_loss(logits.astype(jnp.float32), lp, labels, lpads)

    def example_errors(params, aux, batch):
        # Per-utterance character error rate of the greedy decoding (jittable), the
        # validation measure of the stopping rule; the reported test metric is WER.
        feats, pads, labels, lpads = batch
        logits, lp = model.apply({"params": params, **aux}, feats, pads, train=False)
        best = jnp.argmax(logits, -1)
        prev = jnp.concatenate([jnp.full_like(best[:, :1], -1), best[:, :-1]], 1)
        valid = (best != BLANK_ID) & (best != prev) & (lp < 0.5)
        ref_len = jnp.sum(1.0 - lpads, 1).astype(jnp.int32)
        dist = jax.vmap(masked_edit_distance)(best, valid, labels, ref_len)
        return dist / jnp.maximum(ref_len, 1).astype(jnp.float32)

    return Task(init, loss, frozen_loss, example_errors, tuple(model.input_kernels))


def _speech_errors(model, params, aux, data, batch_size: int) -> dict[str, float]:
    """Corpus WER and CER (percent) of the greedy CTC decoding of ``data`` (one pass)."""
    from gpjax.data.speech import decode_ids
    from gpjax.metrics import cer, greedy_ctc_decode, wer
    feats, pads, labels, lpads = data
    refs, hyps = [], []
    apply = jax.jit(lambda p, a, f, q: model.apply({"params": p, **a}, f, q, train=False))
    for s in range(0, len(feats), batch_size):
        logits, lp = apply(params, aux, jnp.asarray(feats[s:s + batch_size]),
                           jnp.asarray(pads[s:s + batch_size]))
        hyps += [decode_ids(h) for h in greedy_ctc_decode(logits, lp)]
        for lab, lpad in zip(labels[s:s + batch_size], lpads[s:s + batch_size], strict=True):
            refs.append(decode_ids(lab[np.asarray(lpad) < 0.5]))
    return {"test_error": 100.0 * wer(refs, hyps), "test_cer": 100.0 * cer(refs, hyps)}


def build(cfg: ExperimentConfig, seed: int = 0) -> Experiment:
    """Loads the data and makes the task and scenario of ``cfg`` for run seed ``seed``."""
    train, val, test, source = _load_data(cfg)
    train, val, test = _first(train, cfg.n_train), _first(val, cfg.n_validation), _first(
        test, cfg.n_test)
    model = _make_model(cfg)
    if cfg.model == "ds2":
        task = _speech_task(model)

        def test_metrics(params, aux, data):
            return _speech_errors(model, params, aux, data, cfg.eval_batch_size)
    else:
        augment = None
        if cfg.augment:
            from gpjax.data.augment import affine_augment
            augment = affine_augment
        task = classifier_task(model, augment=augment)

        def test_metrics(params, aux, data):
            from gpjax.train import evaluate
            return {"test_error": 100.0 * evaluate(params, aux, data, task=task,
                                                   batch_size=cfg.eval_batch_size)}
    data_seed = seed if cfg.data_seed is None else cfg.data_seed
    desc = f"{cfg.name} ({source})"
    if cfg.scenario == "data":
        scenario = data_incremental(train, val, test, chunks=cfg.chunks,
                                    initial=cfg.initial_chunks, seed=data_seed,
                                    description=desc)
    elif cfg.scenario == "classes":
        scenario = class_incremental(train, val, test, cfg.class_rounds, description=desc)
    else:
        raise ValueError(f"unknown scenario {cfg.scenario!r}")
    if cfg.rounds is not None:
        scenario = scenario.truncated(cfg.rounds)
    example = train.examples(np.arange(2)) if is_streamed(train) else take(train, np.arange(2))
    return Experiment(cfg, task, scenario, example, test_metrics, tuple(model.input_kernels))


@functools.cache
def experiment_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(ExperimentConfig))


__all__ = ["CONFIGS", "Experiment", "ExperimentConfig", "build", "get_config"]
