"""Incremental learning: scenarios, update policies, the round loop, cost, checkpoints.

Typical use::

    from gpjax.incremental import get_config, make_policy, run
    cfg = get_config("lenet300_mnist")
    rows = run(cfg, make_policy("growprune", cfg.policies.get("growprune")), seed=0, out="results")

or ``gpjax run --config lenet300_mnist --policy growprune --out results``.
"""

from gpjax.incremental.configs import CONFIGS, ExperimentConfig, get_config
from gpjax.incremental.cost import Cost, normalised_epochs
from gpjax.incremental.experiment import Experiment, build
from gpjax.incremental.lock import DirectoryLock, DirectoryLockedError
from gpjax.incremental.loop import ResultsConflictError, run, run_dir
from gpjax.incremental.phases import (
    NonFiniteLossError,
    PhaseLog,
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.incremental.policies import (
    NFT,
    POLICIES,
    TFS,
    Budget,
    GrowPrune,
    Merged,
    NeST,
    PhaseSpec,
    Policy,
    RoundPlan,
    make_policy,
    with_budget,
)
from gpjax.incremental.runner import RoundData, UpdateLog, nonrecoverable, start_state, update
from gpjax.incremental.scenarios import Round, Scenario, class_incremental, data_incremental
from gpjax.incremental.store import ModelStore, Recipe, StoreError

__all__ = [
    "Budget", "CONFIGS", "Cost", "DirectoryLock", "DirectoryLockedError", "Experiment",
    "ExperimentConfig", "GrowPrune", "Merged", "ModelStore", "NFT", "NeST",
    "NonFiniteLossError", "POLICIES", "PhaseLog", "PhaseSpec", "Policy", "PruneConfig",
    "Recipe", "ResultsConflictError", "Round", "RoundData", "RoundPlan", "Scenario",
    "StoreError", "TFS", "Trainer", "UpdateLog", "build", "class_incremental",
    "data_incremental", "get_config", "grow_and_train", "make_policy", "new_state",
    "nonrecoverable", "normalised_epochs", "prune_and_retrain", "run", "run_dir",
    "start_state", "update", "with_budget",
]
