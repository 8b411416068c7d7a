"""Update policies: ours (GrowPrune), its Merged ablation, and the TFS / NFT / NeST baselines.

A policy is a frozen dataclass value (every number a field) that says, for each round, *which
phases run, on which data, from which starting state* (:meth:`Policy.plan`). The one training
loop (:mod:`gpjax.incremental.loop`) executes the plan with the phases of
:mod:`gpjax.incremental.phases`; no policy owns a loop.

Defaults are SPEC's MNIST protocol: ours grows 15 epochs on the new chunk then 20 on all data;
TFS / NFT train 60 epochs; NeST grows 90 epochs; all then prune with the same recoverable
rule (:class:`~gpjax.incremental.phases.PruneConfig`) for a fair size comparison, and all use
the same strong recipe (SGD Nesterov 0.9, weight decay 1e-4 from the experiment config, lr 0.1
cosine to 0 per phase, affine augmentation from the experiment config).

Stopping rule (shared default, ``PRUNE``): beta = 5% of active connections per iteration;
up to 3 one-epoch cosine restarts from 0.05 to recover; an iteration holds when validation
error is back within 0.2 points (10 of 5K images) of the error the pruning phase started
from; stop after 2 failed iterations in a row and keep the last model that held. Why: our
sweep (``experiments/stopping_rule.py``, ``experiments/results/stopping_rule.md``, 3 seeds)
found the literal "no loss at all" rule stops by chance at the 5th-6th iteration (132K
parameters) of a LeNet-300-100 whose kept models held their test error down to ~25K; tolerance
0.2 with patience 2 reached 24 ± 7K parameters at +0.03 ± 0.04 test-error points, 0.1 with
patience 2 34 ± 12K, and a 0.01 retraining rate stopped at 107 ± 11K (details in
:class:`~gpjax.incremental.phases.PruneConfig`).
Non-recoverable pruning (optional, on by default) continues from the recoverable model with
neurons allowed to go and the same rule measured from the recoverable model's error; its
result is reported but never inherited, and its epochs are reported separately
(``epochs_nonrecoverable``), not in the update's cost.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

from gpjax.fields import ConfigError, check_range, check_types
from gpjax.incremental.phases import PruneConfig

PRUNE = PruneConfig()
"""The recoverable pruning rule every policy uses by default (see the module docstring)."""

NONRECOVERABLE = PruneConfig(recoverable=False)
"""The non-recoverable post-processing rule (same numbers, neurons may be removed)."""

Start = Literal["inherit", "fresh_dense", "fresh_sparse", "carry_dense"]


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """One phase of a round's plan.

    Attributes:
      kind: "grow" (grow_and_train with growth), "train" (grow_and_train without growth) or
        "prune" (recoverable prune_and_retrain).
      data: "new" (the round's new chunk) or "all" (every example available).
      epochs: training epochs (grow/train).
      learning_rate: peak of the phase's cosine schedule (grow/train).
      grow_every: G, epochs between growth steps.
      percentile: alpha, growth percentile of the gradient magnitudes.
      scope: "layer" (a percentile per tensor) or "global".
      init: grown weights start at ``-lr * g`` ("descent") or ``+lr * g`` ("patent", the
        source's literal wording; see :func:`gpjax.grow`).
      name: name in logs and checkpoints.
    """

    kind: Literal["grow", "train", "prune"]
    data: Literal["new", "all"] = "all"
    epochs: int = 0
    learning_rate: float = 0.1
    grow_every: int = 1
    percentile: float = 90.0
    scope: str = "layer"
    init: str = "descent"
    name: str = ""


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """What a policy does in one round.

    Attributes:
      start: the starting model: "inherit" (last round's recoverable model, params and masks),
        "fresh_dense" (random init, all connections), "fresh_sparse" (random init, masks at
        ``seed_density``), "carry_dense" (last round's dense model, NFT).
      phases: the phases, in order.
      carry_after: index of the phase after which the model is the one the next round starts
        from (NFT: after training, before pruning a copy); -1: after the last phase.
      seed_density: mask density of a fresh sparse start.
      max_epochs: a cap on the round's normalised epochs (:attr:`Policy.max_epochs`).
      grow_max_ratio: growth phases skip their growth steps once the model has at least this
        many times the start model's active connections (None: no limit).
    """

    start: Start
    phases: tuple[PhaseSpec, ...]
    carry_after: int = -1
    seed_density: float = 1.0
    max_epochs: float | None = None
    grow_max_ratio: float | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Fields shared by every policy.

    Attributes:
      learning_rate: peak learning rate of every growth/training phase (cosine to 0).
      prune: the recoverable pruning rule (shared so model sizes compare fairly);
        ``prune.target_params`` prunes each round to at most that many active connections
        (``gpjax update --target-params``).
      nonrecoverable: the optional non-recoverable rule (None: skip it).
      max_epochs: a cap on each round's cost in normalised epochs, as counted
        (``gpjax update --max-epochs``; None: no cap). Phases run in order until the next
        epoch (growth/training) or retraining epoch (pruning) would pass it, then stop; the
        non-recoverable post-processing gets what is left. The round's cost is then at most
        the cap, exactly (the check is made before each pass, not after).
    """

    name: ClassVar[str] = ""
    learning_rate: float = 0.1
    prune: PruneConfig = PRUNE
    nonrecoverable: PruneConfig | None = NONRECOVERABLE
    max_epochs: float | None = None

    def plan(self, round_index: int) -> RoundPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def round_plan(self, round_index: int) -> RoundPlan:
        """:meth:`plan` with the policy's cap (:attr:`max_epochs`): what the runners execute."""
        return dataclasses.replace(self.plan(round_index), max_epochs=self.max_epochs)

    def __post_init__(self) -> None:
        check_types(self)
        if getattr(self, "grow_max_ratio", None) is not None and not self.grow_max_ratio >= 1:
            raise ConfigError(f"{type(self).__name__}.grow_max_ratio must be at least 1 (a "
                              f"multiple of the parent's size), got {self.grow_max_ratio!r}; "
                              "Fix: give k >= 1, or none for no limit")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise ConfigError(f"{type(self).__name__}.max_epochs must be a positive number of "
                              f"normalised epochs, got {self.max_epochs!r}; Fix: give E > 0, "
                              "or none for no cap")
        for f in dataclasses.fields(self):
            if f.name == "max_epochs":
                continue
            if f.name.endswith("epochs") or f.name == "grow_every":
                check_range(self, f.name, 1 if f.name == "grow_every" else 0)
            elif f.name.endswith(("learning_rate", "_lr")):
                check_range(self, f.name, 0, low_open=True)
            elif f.name.endswith("percentile"):
                check_range(self, f.name, 0, 100, high_open=True)
            elif f.name.endswith("density"):
                check_range(self, f.name, 0, 1, low_open=True)
        for name, allowed in (("growth_scope", ("layer", "global")),
                              ("growth_init", ("descent", "patent"))):
            if getattr(self, name, allowed[0]) not in allowed:
                raise ConfigError(f"{type(self).__name__}.{name} must be one of {allowed}, "
                                  f"got {getattr(self, name)!r}")

    def _prune(self) -> PhaseSpec:
        return PhaseSpec("prune", "all", name="prune")


@dataclasses.dataclass(frozen=True)
class GrowPrune(Policy):
    """Ours: inherit, grow on the new chunk first, then on all data, then prune recoverably.

    Round 0 has no model to inherit: it grows from a sparse seed on the initial data for
    ``first_epochs`` (NeST's schedule, which is why FIG. 10's first row is the same for NeST and
    ours), then prunes.

    Attributes:
      new_epochs: N1, growth epochs on the new chunk (SPEC MNIST: 15).
      all_epochs: N2, growth epochs on all data (SPEC MNIST: 20).
      grow_every: G, epochs between growth steps (each growth is one gradient-evaluation pass,
        which counts in the cost). 5: three growths on the new chunk and four on all data per
        update, enough to reopen what pruning closed while costing <20% extra passes.
      growth_percentile: alpha; connections whose epoch-mean |gradient| is in the top
        ``100 - alpha`` % of their layer's entries are grown (dormant ones only). 90 grows at
        most 10% of a layer per growth; SPEC's 30-50 would re-densify the model every time.
      first_epochs: growth epochs of round 0 (SPEC MNIST NeST: 90).
      seed_density: mask density of round 0's sparse seed (every neuron connected).
      growth_scope: percentile per layer ("layer") or over all layers ("global").
      growth_init: "descent" (grown weights start at ``-lr * g``, lowering the loss) or
        "patent" (``+lr * g``, the literal wording).
      grow_max_ratio: an update's growth budget relative to the parent's size: its growth
        phases skip their growth steps (and the gradient passes they cost) once the model has
        at least ``grow_max_ratio`` times the inherited model's active connections. A step
        is checked before it runs, so one step may end above the limit by at most its own
        growth (<= ``100 - growth_percentile`` % of each tensor). None (default, the paper's
        method): no limit. Round 0 has no parent and is not limited.
    """

    name: ClassVar[str] = "growprune"
    new_epochs: int = 15
    all_epochs: int = 20
    grow_every: int = 5
    growth_percentile: float = 90.0
    first_epochs: int = 90
    seed_density: float = 0.1
    growth_scope: str = "layer"
    growth_init: str = "descent"
    grow_max_ratio: float | None = None

    def _grow(self, data: str, epochs: int, name: str) -> PhaseSpec:
        return PhaseSpec("grow", data, epochs, self.learning_rate, self.grow_every,
                         self.growth_percentile, self.growth_scope, self.growth_init, name)

    def plan(self, round_index: int) -> RoundPlan:
        if round_index == 0:
            return RoundPlan("fresh_sparse", (self._grow("all", self.first_epochs, "grow"),
                                              self._prune()), seed_density=self.seed_density)
        phases = []
        if self.new_epochs > 0:
            phases.append(self._grow("new", self.new_epochs, "grow_new"))
        if self.all_epochs > 0:
            phases.append(self._grow("all", self.all_epochs, "grow_all"))
        return RoundPlan("inherit", (*phases, self._prune()),
                         grow_max_ratio=self.grow_max_ratio)


@dataclasses.dataclass(frozen=True)
class Merged(GrowPrune):
    """FIG. 6 ablation: ours without "new data first" (growth on all data only).

    ``all_epochs`` defaults to 35, the same number of growth epochs as ours (15 + 20), so the
    two differ only in the data of the first 15; ours then costs 21.5 normalised epochs, this
    35. Round 0 is identical to ours.
    """

    name: ClassVar[str] = "merged"
    new_epochs: int = 0
    all_epochs: int = 35


@dataclasses.dataclass(frozen=True)
class TFS(Policy):
    """Train from scratch (FIG. 8): a fresh dense model trained on all data, then pruned.

    Attributes:
      epochs: training epochs (SPEC MNIST: 60).
    """

    name: ClassVar[str] = "tfs"
    epochs: int = 60

    def plan(self, round_index: int) -> RoundPlan:
        return RoundPlan("fresh_dense", (PhaseSpec("train", "all", self.epochs,
                                                   self.learning_rate, name="train"),
                                         self._prune()))


@dataclasses.dataclass(frozen=True)
class NFT(Policy):
    """Network fine-tuning (FIG. 9): one dense model fine-tuned on all data every round; a copy
    is pruned for inference (the dense one is what the next round fine-tunes).

    Attributes:
      epochs: training epochs of round 0 (SPEC MNIST: 60).
      finetune_epochs: fine-tuning epochs of later rounds (SPEC MNIST: 60).
      finetune_lr: peak rate of fine-tuning (the tuned recipe's 0.1 by default: a strong
        baseline; a lower rate is a field away).
    """

    name: ClassVar[str] = "nft"
    epochs: int = 60
    finetune_epochs: int = 60
    finetune_lr: float = 0.1

    def plan(self, round_index: int) -> RoundPlan:
        if round_index == 0:
            train = PhaseSpec("train", "all", self.epochs, self.learning_rate, name="train")
            return RoundPlan("fresh_dense", (train, self._prune()), carry_after=0)
        train = PhaseSpec("train", "all", self.finetune_epochs, self.finetune_lr, name="finetune")
        return RoundPlan("carry_dense", (train, self._prune()), carry_after=0)


@dataclasses.dataclass(frozen=True)
class NeST(Policy):
    """NeST: grow-and-prune from a sparse seed, from scratch, on all data, every round.

    Attributes:
      epochs: growth epochs (SPEC MNIST: 90).
      grow_every: G (as ours).
      growth_percentile: alpha (as ours).
      seed_density: density of the sparse seed (every neuron connected).
      growth_scope, growth_init: as ours.
    """

    name: ClassVar[str] = "nest"
    epochs: int = 90
    grow_every: int = 5
    growth_percentile: float = 90.0
    seed_density: float = 0.1
    growth_scope: str = "layer"
    growth_init: str = "descent"

    def plan(self, round_index: int) -> RoundPlan:
        grow = PhaseSpec("grow", "all", self.epochs, self.learning_rate, self.grow_every,
                         self.growth_percentile, self.growth_scope, self.growth_init, "grow")
        return RoundPlan("fresh_sparse", (grow, self._prune()), seed_density=self.seed_density)


POLICIES: dict[str, type[Policy]] = {c.name: c for c in (GrowPrune, TFS, NFT, NeST, Merged)}
"""Policy classes by CLI name."""


def _coerce(value: Any, current: Any, key: str) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if isinstance(current, bool):
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{key}: expected a boolean, got {value!r}")
        if low in ("none", "null") and not isinstance(current, str):
            return None
        for kind, cast in ((int, int), (float, float)):
            if isinstance(current, kind):
                try:
                    return cast(value)
                except ValueError:
                    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") \
                        from None
        if current is None:
            for cast in (int, float):
                try:
                    return cast(value)
                except ValueError:
                    pass
    return value


def replace_nested(obj: Any, overrides: dict[str, Any], _prefix: str = "") -> Any:
    """``dataclasses.replace`` with dotted keys (``"prune.tolerance"``) and string values
    coerced to the field's type. Unknown keys raise ``KeyError`` listing the valid ones."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise KeyError(f"{type(obj).__name__} has no field {head!r}; fields: {sorted(names)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = _coerce(value, getattr(obj, head), _prefix + key)
    for head, sub in nested.items():
        current = direct.get(head, getattr(obj, head))
        if current is None:
            if head == "nonrecoverable":
                current = NONRECOVERABLE
            else:
                raise KeyError(f"{head} is None; set it before its fields")
        direct[head] = replace_nested(current, sub, f"{_prefix}{head}.")
    return dataclasses.replace(obj, **direct)


class Budget(NamedTuple):
    """What an update may end with and spend (``gpjax update --target-params N --max-epochs
    E``).

    Attributes:
      target_params: at most this many active connections in the recoverable model
        (:attr:`PruneConfig.target_params`); None: the stopping rule decides.
      max_epochs: at most this many normalised epochs, as counted (:attr:`Policy.max_epochs`);
        None: no cap.
    """

    target_params: int | None = None
    max_epochs: float | None = None


def with_budget(policy: Policy, budget: Budget) -> Policy:
    """``policy`` with ``budget``'s size target and cost cap (a None leaves the policy's own).

    Raises:
      ConfigError: a value is not positive (the message says the fix).
    """
    changes: dict[str, Any] = {}
    if budget.target_params is not None:
        changes["prune"] = dataclasses.replace(policy.prune, target_params=budget.target_params)
    if budget.max_epochs is not None:
        changes["max_epochs"] = budget.max_epochs
    return dataclasses.replace(policy, **changes)


def make_policy(name: str, overrides: dict[str, Any] | None = None) -> Policy:
    """The policy ``name`` (growprune, tfs, nft, nest, merged) with field overrides."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}")
    return replace_nested(POLICIES[name](), dict(overrides or {}))


def policy_to_dict(policy: Policy) -> dict:
    """A JSON-serialisable description (name + every field)."""
    return {"policy": policy.name, **dataclasses.asdict(policy)}
