"""Scenarios: how the training data arrive, round by round.

A :class:`Scenario` holds a training set, a validation set (held out once, before any round)
and a fixed test set, each a pytree of arrays with a leading example axis (e.g.
``(images [N, 28, 28, 1], labels [N])``, or the arrays of a speech split) or a streamed split
(:mod:`gpjax.data.stream`: ImageNet, chunked without decoding), plus, for every
round, the indices of the training examples available in that round and of those that are new.

* :func:`data_incremental`: the training set split randomly (seeded) into ``K`` equal chunks;
  round ``r`` (0-based) has chunks ``0 .. initial + r - 1``, the last of them being the new data
  (SPEC: MNIST's 55K in ten chunks, start from one; AN4 starts from four).
* :func:`class_incremental`: rounds defined by lists of classes (FIG. 5: ``{1, 2}``, then
  ``+{0}``, ...); round ``r`` has every training example of the classes seen so far, the new
  data being those of the classes added in round ``r``. Validation and test are restricted to
  the classes seen so far (a model cannot be asked about digits it has never seen).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpjax.data.stream import num_examples, take

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Round:
    """The data of one round.

    Attributes:
      index: 0-based round number.
      new: training examples that arrived in this round.
      all: every training example available in this round (``new`` included).
      validation, test: evaluation data of this round.
      new_indices, all_indices: positions in the scenario's training set.
      fraction: ``len(all) / len(full training set)`` (the paper's "data %").
      classes: classes seen so far (class-incremental) or ``None``.
    """

    index: int
    new: PyTree
    all: PyTree
    validation: PyTree
    test: PyTree
    new_indices: np.ndarray
    all_indices: np.ndarray
    fraction: float
    classes: tuple[int, ...] | None = None

    @property
    def n_new(self) -> int:
        return len(self.new_indices)

    @property
    def n_all(self) -> int:
        return len(self.all_indices)


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """Training data arriving in rounds; build with :func:`data_incremental` or
    :func:`class_incremental`.

    Attributes:
      train, validation, test: data pytrees (leading example axis).
      all_indices: per round, training indices available (sorted by arrival).
      new_indices: per round, training indices new in that round.
      eval_indices: per round, ``(validation indices, test indices)`` or ``None`` for all.
      classes: per round, classes seen so far, or ``None``.
      description: what it is (goes into result files).
    """

    train: PyTree
    validation: PyTree
    test: PyTree
    all_indices: tuple[np.ndarray, ...]
    new_indices: tuple[np.ndarray, ...]
    eval_indices: tuple[tuple[np.ndarray, np.ndarray] | None, ...]
    classes: tuple[tuple[int, ...] | None, ...]
    description: str = ""

    @property
    def num_rounds(self) -> int:
        return len(self.all_indices)

    def round(self, r: int) -> Round:
        """The data of round ``r`` (0-based)."""
        if not 0 <= r < self.num_rounds:
            raise IndexError(f"round {r} out of range 0..{self.num_rounds - 1}")
        ev = self.eval_indices[r]
        val = self.validation if ev is None else take(self.validation, ev[0])
        test = self.test if ev is None else take(self.test, ev[1])
        n = num_examples(self.train)
        new, all_ = take(self.train, self.new_indices[r]), take(self.train, self.all_indices[r])
        return Round(r, new, all_, val, test, self.new_indices[r], self.all_indices[r],
                     len(self.all_indices[r]) / n, self.classes[r])

    def __iter__(self):
        return (self.round(r) for r in range(self.num_rounds))

    def truncated(self, rounds: int) -> Scenario:
        """The first ``rounds`` rounds only."""
        k = max(1, min(rounds, self.num_rounds))
        return dataclasses.replace(self, all_indices=self.all_indices[:k],
                                   new_indices=self.new_indices[:k],
                                   eval_indices=self.eval_indices[:k], classes=self.classes[:k])


def split_chunks(n: int, chunks: int, seed: int) -> list[np.ndarray]:
    """A seeded random partition of ``range(n)`` into ``chunks`` (near-)equal chunks.

    Sizes differ by at most one when ``chunks`` does not divide ``n``.
    """
    if not 1 <= chunks <= n:
        raise ValueError(f"need 1 <= chunks <= n, got chunks={chunks}, n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(c) for c in np.array_split(perm, chunks)]


def data_incremental(train: PyTree, validation: PyTree, test: PyTree, *, chunks: int = 10,
                     initial: int = 1, seed: int = 0, description: str = "") -> Scenario:
    """Data-incremental rounds: ``chunks`` random chunks, starting with ``initial`` of them.

    Round ``r`` has chunks ``0 .. initial + r - 1``; its new data are chunk ``initial + r - 1``
    (for round 0: all of its ``initial`` chunks). There are ``chunks - initial + 1`` rounds.

    Args:
      train, validation, test: data pytrees with a leading example axis. The validation set is
        the one held out once (e.g. MNIST's 5K); it and the test set are the same every round.
      chunks: K.
      initial: chunks in the first round (1 for MNIST/ImageNet, 4 for AN4).
      seed: seed of the partition (the scenario seed: replicates may share or vary it).
      description: free text recorded in results.
    """
    if not 1 <= initial <= chunks:
        raise ValueError(f"need 1 <= initial <= chunks, got initial={initial}, chunks={chunks}")
    parts = split_chunks(num_examples(train), chunks, seed)
    all_idx, new_idx = [], []
    for r in range(chunks - initial + 1):
        k = initial + r
        all_idx.append(np.concatenate(parts[:k]))
        new_idx.append(np.concatenate(parts[:k]) if r == 0 else parts[k - 1])
    rounds = len(all_idx)
    return Scenario(train, validation, test, tuple(all_idx), tuple(new_idx), (None,) * rounds,
                    (None,) * rounds,
                    description or f"data-incremental: {chunks} chunks (seed {seed}), "
                                   f"start with {initial}")


def _labels_of(data: PyTree, labels: np.ndarray | None) -> np.ndarray:
    if labels is not None:
        return np.asarray(labels).reshape(-1)
    if isinstance(data, (tuple, list)) and len(data) >= 2:
        return np.asarray(data[1]).reshape(-1)
    if isinstance(data, dict) and "labels" in data:
        return np.asarray(data["labels"]).reshape(-1)
    if hasattr(data, "labels"):
        return np.asarray(data.labels).reshape(-1)
    raise ValueError("class_incremental: cannot find labels in the data; pass labels=")


def class_incremental(train: PyTree, validation: PyTree, test: PyTree,
                      class_rounds: Sequence[Sequence[int]], *,
                      train_labels: np.ndarray | None = None,
                      validation_labels: np.ndarray | None = None,
                      test_labels: np.ndarray | None = None,
                      description: str = "") -> Scenario:
    """Class-incremental rounds (FIG. 5): round ``r`` adds the classes ``class_rounds[r]``.

    Labels are read from the data (second element of a tuple, ``"labels"`` key or attribute)
    unless given. Validation and test of round ``r`` hold the classes seen so far only.

    Args:
      class_rounds: e.g. ``[[1, 2], [0], [6], [7]]``.
    """
    if not class_rounds or any(len(c) == 0 for c in class_rounds):
        raise ValueError(f"class_rounds must be non-empty lists of classes, got {class_rounds}")
    flat = [int(c) for cs in class_rounds for c in cs]
    if len(set(flat)) != len(flat):
        raise ValueError(f"a class appears in two rounds: {class_rounds}")
    y_tr = _labels_of(train, train_labels)
    y_va = _labels_of(validation, validation_labels)
    y_te = _labels_of(test, test_labels)
    seen: list[int] = []
    all_idx, new_idx, ev, classes = [], [], [], []
    for cs in class_rounds:
        new = np.flatnonzero(np.isin(y_tr, list(cs)))
        if new.size == 0:
            raise ValueError(f"class_incremental: no training example of classes {list(cs)}")
        seen += [int(c) for c in cs]
        all_idx.append(np.flatnonzero(np.isin(y_tr, seen)))
        new_idx.append(new)
        ev.append((np.flatnonzero(np.isin(y_va, seen)), np.flatnonzero(np.isin(y_te, seen))))
        classes.append(tuple(seen))
    return Scenario(train, validation, test, tuple(all_idx), tuple(new_idx), tuple(ev),
                    tuple(classes),
                    description or f"class-incremental: {[list(c) for c in class_rounds]}")


def _data_scenario(cfg: Any, train: PyTree, validation: PyTree, test: PyTree, *, seed: int,
                   description: str) -> Scenario:
    return data_incremental(train, validation, test, chunks=cfg.chunks,
                            initial=cfg.initial_chunks, seed=seed, description=description)


def _class_scenario(cfg: Any, train: PyTree, validation: PyTree, test: PyTree, *, seed: int,
                    description: str) -> Scenario:
    del seed  # the class order is the config's
    return class_incremental(train, validation, test, cfg.class_rounds, description=description)


SCENARIOS = {"data": _data_scenario, "classes": _class_scenario}
"""Scenario kinds of an experiment config (its ``scenario`` field):
``SCENARIOS[kind](cfg, train, validation, test, seed=, description=) -> Scenario``."""
