"""The cost model and what the logs and rows record of it: passes per phase, pruning iterations,
the cost under the paper's reading, the report's cost and pruning sections (old rows without
these fields included), and the numbers the results pages quote (experiments/row_facts.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import PROPERTY
from hypothesis import given
from hypothesis import strategies as st

from experiments import row_facts
from gpjax.incremental.cost import Cost
from gpjax.incremental.phases import (
    ITERATION_FIELDS,
    PhaseLog,
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.incremental.runner import UpdateLog, update_record
from gpjax.masks import count_params
from gpjax.models import LeNet300
from gpjax.report import cost_table, iteration_table, markdown_table, pruning_table
from gpjax.train import OptimizerConfig, classifier_task, make_optimizer


def _iteration(i, active, removed, retrain, held, **extra):
    return {"iteration": i, "active": active, "removed": removed, "val_error_pruned": 0.02,
            "val_error": 0.01, "retrain_epochs": retrain, "held": held, "kept": held, **extra}


@PROPERTY
@given(st.lists(st.integers(0, 3), max_size=12), st.integers(0, 5))
def test_paper_epochs_count_one_retraining_per_iteration_at_least(retrains, grads):
    log = PhaseLog("prune", epochs=float(sum(retrains) + grads), train_epochs=sum(retrains),
                   grad_passes=grads,
                   events=[_iteration(i, 100 - i, 1, r, True) for i, r in enumerate(retrains)])
    assert log.paper_epochs() == log.epochs + retrains.count(0)
    assert log.paper_epochs() == grads + sum(max(r, 1) for r in retrains)
    assert PhaseLog.from_dict(log.to_dict()) == log
    # growth/training phases: their epoch events are not iterations
    grow = PhaseLog("grow", 7.0, events=[{"epoch": 0, "loss": 1.0}])
    assert grow.paper_epochs() == 7.0


def test_cost_counts_both_readings_and_old_dicts():
    c = Cost(n_available=1000)
    c.add("grow_new", 10, 100)                       # 10 epochs over a tenth: 1.0
    c.add("prune", 3, 1000, paper_epochs=8)          # 3 counted, 8 under the paper's reading
    assert c.epochs == pytest.approx(4.0) and c.epochs_paper == pytest.approx(9.0)
    assert c.paper_by_phase == pytest.approx({"grow_new": 1.0, "prune": 8.0})
    assert c.remaining(6.0, 100) == pytest.approx(20.0) and c.remaining(None, 100) is None
    assert c.remaining(3.0, 1000) == 0.0
    old = {"n_available": 1000, "epochs": 2.0, "raw_epochs": 2.0, "examples": 0,
           "wall_time_s": 0.0, "by_phase": {"grow": 2.0}}  # a checkpoint written before
    back = Cost.from_dict(old)
    assert back.epochs_paper == 2.0 and back.paper_by_phase == {"grow": 2.0}


def test_update_record_adds_up():
    cost = Cost(1000)
    grow = PhaseLog("grow_all", 6.0, train_epochs=4, grad_passes=2)
    prune = PhaseLog("prune", 4.0, train_epochs=4, stopped="patience", events=[
        _iteration(0, 95, 5, 0, True), _iteration(1, 90, 5, 3, False),
        _iteration(2, 86, 4, 1, True)])
    for pl in (grow, prune):
        cost.add(pl.name, pl.epochs, 1000, paper_epochs=pl.paper_epochs())
    log = UpdateLog("inherit", cost, phases=[grow, prune],
                    events={"prune": {"iterations": 3, "reference_error": 0.01}},
                    stopped={"prune": "patience"})
    rec = update_record(log)
    assert rec["epochs_paper"] == pytest.approx(11.0)  # 6 + 4 + the iteration held at once
    assert rec["phase_passes"]["prune"] == {"epochs": 4.0, "train_epochs": 4, "grad_passes": 0,
                                            "stopped": "patience", "iterations": 3, "held": 2,
                                            "failed": 1}
    assert "iterations" not in rec["phase_passes"]["grow_all"]
    assert [e["val_error"] for e in rec["prune_log"]["prune"]] == [1.0] * 3  # percent
    assert rec["prune_stopped"] == {"prune": "patience"}


def test_prune_events_record_removals_and_measures():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 28, 28, 1)).astype(np.float32)
    y = (x.reshape(160, -1)[:, :10].argmax(1)).astype(np.int32)
    train, val = (x[:128], y[:128]), (x[128:], y[128:])
    trainer = Trainer(classifier_task(LeNet300(hidden=(8, 8))),
                      make_optimizer(OptimizerConfig()), 32, 64, False)
    state = new_state(trainer, jax.random.PRNGKey(0), train)
    state, glog = grow_and_train(trainer, state, train, epochs=2, learning_rate=0.1,
                                 grow_every=1, percentile=95.0)
    assert (glog.train_epochs, glog.grad_passes, glog.epochs) == (2, 2, 4)
    start = count_params(state.masks).active
    rule = PruneConfig(percentile=20, max_retrain_epochs=1, tolerance=-1000.0, patience=3,
                       max_iterations=10)
    _, log = prune_and_retrain(trainer, state, train, val, rule,
                               measure=lambda s: {"test_error": 12.5})
    before = start
    for e in log.events:
        assert before - e["removed"] == e["active"] and e["removed"] > 0
        assert e["test_error"] == 12.5 and e["retrain_epochs"] == 1 and not e["kept"]
        assert set(e) == set(ITERATION_FIELDS) | {"test_error"}
        before = e["active"]
    assert log.train_epochs == log.epochs == len(log.events) == 3


def _row(policy, seed, rnd, epochs, paper=None, log=None):
    r = {"policy": policy, "seed": seed, "round": rnd, "data_fraction": 0.1 * (rnd + 1),
         "test_error": 1.0, "params_recoverable": 1000, "epochs": epochs}
    if paper is not None:
        r.update(epochs_paper=paper, prune_log={"prune": log or []},
                 prune_stopped={"prune": "patience"})
    return r


def test_report_sections_for_new_rows_and_none_for_old():
    its = [_iteration(0, 1000, 50, 0, True, test_error=1.1),
           _iteration(1, 998, 2, 2, True, test_error=1.0)]
    new = [_row("tfs", s, 0, 100.0, 150.0, its) for s in (0, 1)] + \
          [_row("growprune", s, 0, 30.0, 60.0, its) for s in (0, 1)]
    old = [_row("tfs", s, 0, 100.0) for s in (0, 1)]
    text = cost_table(new)
    assert "| 0 | Ours (GrowPrune) | 2 | 30.0 ± 0.0 | 60.0 ± 0.0 | 0.30x | 0.40x |" in text
    table = pruning_table(new)
    # 2 seeds x 2 iterations; the second removes 2 of 1000 (< 0.5%)
    assert "| 0 | Ours (GrowPrune) | 2 | 4 | 4 | 0 | 2 | 4 | patience x2 |" in table
    detail = iteration_table(new[0])
    assert "| 1 | 998 | 2 | 2 | 0.02 | 0.01 | 1.00 | yes | yes |" in detail
    assert cost_table(old) == pruning_table(old) == iteration_table(old[0]) == ""
    report = markdown_table(old)
    assert "Cost: counted" not in report and "iteration by iteration" not in report
    assert "Cost: counted" in markdown_table(new + [_row("nft", 0, 0, 90.0)])


def test_row_facts_on_made_up_curves():
    c = [{"active": 1000, "test_error": 1.0}, {"active": 950, "test_error": 1.0},
         {"active": 948, "test_error": 0.9}, {"active": 947, "test_error": 0.95}]
    rows = [{"prune_curve": c}, {"prune_curve": c[:2]}, {}]
    assert row_facts.small_steps(rows) == (2, 4)
    assert row_facts.tail_changes(rows) == [pytest.approx(0.95 - 0.9)]
    m, se = row_facts.mean_se([1.0, 2.0, 3.0])
    assert (m, se) == (2.0, pytest.approx(1 / 3 ** 0.5))
