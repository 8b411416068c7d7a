"""Training cost, counted the paper's way (SPEC "Metrics").

An epoch over ``n`` examples, in a round where ``N`` training examples are available, counts
``n / N`` normalised epochs: an epoch over one new chunk of ten counts 0.1. Growth-gradient
evaluations (a pass over the data with parameters frozen), training and pruning-retraining all
count; evaluation passes (validation, test) do not. Wall time and examples processed are
recorded beside it.

The same count under the paper's reading of pruning ("after each pruning iteration retrain",
:meth:`gpjax.incremental.phases.PhaseLog.paper_epochs`) is kept beside it (``epochs_paper``):
gpjax's rule skips retraining when an iteration already holds, so its counted pruning cost is
lower than the paper's reading of the same iterations. ``docs/method.md`` ("Cost") states the
model.
"""

from __future__ import annotations

import dataclasses
import time


def normalised_epochs(epochs: float, n: int, n_available: int) -> float:
    """``epochs`` over ``n`` examples expressed in epochs over all ``n_available`` examples."""
    if n_available <= 0:
        raise ValueError(f"n_available must be positive, got {n_available}")
    return float(epochs) * n / n_available


@dataclasses.dataclass
class Cost:
    """Running cost of one round.

    Attributes:
      n_available: training examples available in the round (N).
      epochs: normalised epochs so far.
      raw_epochs: epochs over each phase's own data, summed (not normalised).
      examples: examples processed (training steps and gradient evaluations).
      wall_time_s: seconds spent in phases (restored runs add the time before the restart).
      by_phase: normalised epochs per phase name.
      epochs_paper: normalised epochs under the paper's reading (every pruning iteration
        retrains at least one epoch); equals ``epochs`` where no pruning iteration held
        without retraining.
      paper_by_phase: ``epochs_paper`` per phase name.
    """

    n_available: int
    epochs: float = 0.0
    raw_epochs: float = 0.0
    examples: int = 0
    wall_time_s: float = 0.0
    by_phase: dict = dataclasses.field(default_factory=dict)
    epochs_paper: float = 0.0
    paper_by_phase: dict = dataclasses.field(default_factory=dict)

    def add(self, phase: str, epochs: float, n: int, examples: int = 0,
            wall_time_s: float = 0.0, paper_epochs: float | None = None) -> float:
        """Adds ``epochs`` over ``n`` examples (``paper_epochs`` of them under the paper's
        reading; default ``epochs``); returns their normalised epochs."""
        e = normalised_epochs(epochs, n, self.n_available)
        p = normalised_epochs(epochs if paper_epochs is None else paper_epochs, n,
                              self.n_available)
        self.epochs_paper += p
        self.paper_by_phase[phase] = self.paper_by_phase.get(phase, 0.0) + p
        self.epochs += e
        self.raw_epochs += float(epochs)
        self.examples += int(examples)
        self.wall_time_s += float(wall_time_s)
        self.by_phase[phase] = self.by_phase.get(phase, 0.0) + e
        return e

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def remaining(self, cap: float | None, n: int) -> float | None:
        """Passes over ``n`` examples left under a cap of ``cap`` normalised epochs (None: no
        cap)."""
        if cap is None:
            return None
        return max(cap - self.epochs, 0.0) * self.n_available / n

    @classmethod
    def from_dict(cls, d: dict) -> Cost:
        """The cost :meth:`to_dict` wrote; one saved before ``epochs_paper`` existed (an older
        checkpoint) reads its counted epochs as its paper ones (a round is resumed inside its
        last phase, pruning, so the phases it holds are growth or training ones, where the two
        agree)."""
        d = dict(d)
        d.setdefault("epochs_paper", d.get("epochs", 0.0))
        d.setdefault("paper_by_phase", dict(d.get("by_phase", {})))
        return cls(**d)


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self):
        self._t = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t
        return False
