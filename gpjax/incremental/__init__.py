"""Incremental learning: scenarios, update policies, the round loop, cost, checkpoints.

Typical use::

    from gpjax.incremental import get_config, make_policy, run
    cfg = get_config("lenet300_mnist")
    rows = run(cfg, make_policy("growprune", cfg.policies.get("growprune")), seed=0, out="results")

or ``gpjax run --config lenet300_mnist --policy growprune --out results``.
"""

from gpjax.incremental.configs import CONFIGS, Experiment, ExperimentConfig, build, get_config
from gpjax.incremental.cost import Cost, normalised_epochs
from gpjax.incremental.loop import run, run_dir
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
    GrowPrune,
    Merged,
    NeST,
    PhaseSpec,
    Policy,
    RoundPlan,
    make_policy,
)
from gpjax.incremental.scenarios import Round, Scenario, class_incremental, data_incremental

__all__ = [
    "CONFIGS", "NFT", "POLICIES", "TFS", "Cost", "Experiment", "ExperimentConfig", "GrowPrune",
    "Merged", "NeST", "NonFiniteLossError", "PhaseLog", "PhaseSpec", "Policy", "PruneConfig",
    "Round", "RoundPlan", "Scenario", "Trainer", "build", "class_incremental",
    "data_incremental", "get_config", "grow_and_train", "make_policy", "new_state",
    "normalised_epochs", "prune_and_retrain", "run", "run_dir",
]
