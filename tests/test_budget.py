"""Updates to a budget: a size target (``--target-params N``, ``prune.target_params``) and a
cost cap (``--max-epochs E``, ``max_epochs``), in the phases, through the model store's
``gpjax update`` and through ``gpjax run --set``; bad values refused before anything is
written. Tiny models, a few epochs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest

import gpjax
from gpjax import cli
from gpjax.data.mnist import load_mnist
from gpjax.incremental import get_config, make_policy, run
from gpjax.incremental.phases import (
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.incremental.policies import Budget, with_budget
from gpjax.incremental.store import ModelStore, Recipe, StoreError
from gpjax.models import LeNet300
from gpjax.train import OptimizerConfig, classifier_task, make_optimizer

# A few epochs per phase; a pruning tolerance no model meets, so the rule alone would stop
# after `patience` failed iterations and only a target takes pruning further.
POLICY = {"first_epochs": "2", "new_epochs": "1", "all_epochs": "2", "grow_every": "1",
          "prune.max_iterations": "40", "prune.percentile": "30", "prune.tolerance": "-100",
          "prune.max_retrain_epochs": "1",
          "nonrecoverable.max_iterations": "2", "nonrecoverable.percentile": "30"}


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 28, 28, 1)).astype(np.float32)
    y = (x.reshape(256, -1)[:, :10].argmax(1)).astype(np.int32)  # learnable labels
    data = (x[:192], y[:192]), (x[192:], y[192:])
    trainer = Trainer(classifier_task(LeNet300(hidden=(16, 8))),
                      make_optimizer(OptimizerConfig()), 32, 64, False)
    state = new_state(trainer, jax.random.PRNGKey(0), data[0])
    return trainer, state, data


def _copy(state):
    return jax.tree.map(lambda a: a.copy(), state)


def test_target_prunes_past_the_accuracy_stop(tiny):
    trainer, state, (train, val) = tiny
    start = gpjax.count_params(state.masks).active
    target = int(0.5 * start)
    # No iteration can hold: without a target the rule stops after `patience` failures and
    # keeps the start; with one it goes on until the size is reached and keeps that model.
    rule = PruneConfig(percentile=20, max_retrain_epochs=1, tolerance=-1000.0, patience=2,
                       max_iterations=20)
    kept, log = prune_and_retrain(trainer, _copy(state), train, val, rule)
    assert log.stopped == "patience" and gpjax.count_params(kept.masks).active == start
    rule = PruneConfig(percentile=20, max_retrain_epochs=1, tolerance=-1000.0, patience=2,
                       max_iterations=20, target_params=target)
    kept, log = prune_and_retrain(trainer, _copy(state), train, val, rule)
    active = gpjax.count_params(kept.masks).active
    assert log.stopped == "target" and active <= target < log.events[-2]["active"]
    assert active == log.events[-1]["active"] and log.events[-1]["kept"]
    assert not any(e["held"] for e in log.events) and len(log.events) > rule.patience
    assert gpjax.dormant_is_zero(kept.params, kept.masks)


def test_caps_bound_each_phase(tiny):
    trainer, state, (train, val) = tiny
    # Growth every 2 epochs: epochs 0, 2 cost 2 passes each, 1 and 3 one; a cap of 4.5
    # allows epochs 0 and 1 (3 passes) and not epoch 2 (5).
    st, log = grow_and_train(trainer, _copy(state), train, epochs=6, learning_rate=0.1,
                             grow_every=2, max_epochs=4.5)
    assert (log.epochs, log.train_epochs, log.grad_passes, log.stopped) == (3, 2, 1, "budget")
    assert [e["epoch"] for e in log.events] == [0, 1]
    # Retraining capped at 2 epochs: the iteration that needs a third fails and ends it.
    rule = PruneConfig(percentile=20, max_retrain_epochs=3, tolerance=-1000.0, patience=5,
                       max_iterations=10)
    kept, log = prune_and_retrain(trainer, _copy(st), train, val, rule, max_epochs=2)
    assert log.stopped == "budget" and log.epochs == log.train_epochs == 2
    assert [e["retrain_epochs"] for e in log.events] == [2]
    assert gpjax.count_params(kept.masks).active == gpjax.count_params(st.masks).active


def test_budget_values_checked():
    pol = make_policy("growprune")
    b = with_budget(pol, Budget(100, 7.5))
    assert (b.prune.target_params, b.max_epochs) == (100, 7.5)
    assert with_budget(pol, Budget()) == pol
    for bad in (Budget(0, None), Budget(None, 0.0), Budget(-3, None), Budget(None, -1.0)):
        with pytest.raises(gpjax.fields.ConfigError, match="Fix:"):
            with_budget(pol, bad)
    assert pol.round_plan(1).max_epochs is None and b.round_plan(1).max_epochs == 7.5
    with pytest.raises(gpjax.fields.ConfigError, match="Fix:"):
        make_policy("growprune", {"grow_max_ratio": "0.5"})
    capped = make_policy("growprune", {"grow_max_ratio": "2"})
    assert capped.plan(1).grow_max_ratio == 2 and capped.plan(0).grow_max_ratio is None
    assert make_policy("growprune").plan(1) == pol.plan(1)  # the default leaves it as it was


def test_run_with_budget_rows(tmp_path):
    """A tiny 2-round run under a cap that stops round 0's growth and a target: every row
    within both, the budget recorded, and its records of phases and iterations adding up.
    (Iterations are forgiven here, so they hold without retraining and cost nothing: the
    target is reached after the cap.) A growth budget of 1x the parent's size leaves round 1
    without a growth step."""
    import dataclasses
    cfg = dataclasses.replace(get_config("lenet300_mnist_tiny"), rounds=2, checkpoint_every=0,
                              prune_checkpoint_every=0)
    over = {**cfg.policies["growprune"], "prune.max_iterations": 30, "prune.tolerance": 100.0,
            "prune.target_params": 3000, "max_epochs": 4.0, "nonrecoverable.tolerance": 0.0,
            "grow_max_ratio": 1.0}
    rows = run(cfg, make_policy("growprune", over), 0, tmp_path, progress=False)
    assert rows[0]["phase_passes"]["grow"]["stopped"] == "budget"
    assert rows[0]["phase_passes"]["grow"]["epochs"] == 4  # 2 epochs, each with a growth
    for r in rows:
        assert r["params_recoverable"] <= 3000 and r["target_params"] == 3000
        assert r["max_epochs"] == 4.0 and r["prune_stopped"]["prune"] == "target"
        assert r["epochs"] + (r.get("epochs_nonrecoverable") or 0.0) <= 4.0 + 1e-9
        passes = r["phase_passes"]
        its = r["prune_log"]["prune"]
        assert passes["prune"]["train_epochs"] == sum(e["retrain_epochs"] for e in its) == 0
        assert passes["prune"]["iterations"] == len(its) == r["prune_iterations"]["prune"]
        for a, b in zip(its, its[1:]):
            assert b["active"] == a["active"] - b["removed"]
        assert all("test_error" in e and 0 <= e["val_error"] <= 100 for e in its)
        # every iteration held without retraining: the paper's reading retrains each once
        assert r["epochs_paper"] == pytest.approx(r["epochs"] + len(its))
        assert r["prune_curve"][-1]["active"] == r["params_recoverable"]
    assert rows[0]["grow_limit"] is None  # round 0 has no parent
    assert rows[1]["grow_limit"] == rows[0]["params_recoverable"]
    assert rows[1]["prune_curve"][0]["active"] == rows[0]["params_recoverable"]
    assert [rows[1]["phase_passes"][p]["grad_passes"] for p in ("grow_new", "grow_all")] == [0, 0]
    assert rows[1]["phase_passes"]["grow_all"]["train_epochs"] == 2
    assert rows[1]["epochs_paper_cumulative"] == pytest.approx(
        rows[0]["epochs_paper"] + rows[1]["epochs_paper"])


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget-data")
    x, y = load_mnist().train
    for i in range(2):
        np.savez(d / f"part{i}.npz", x=x[i * 300:(i + 1) * 300], y=y[i * 300:(i + 1) * 300])
    return d


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_store_update_to_a_budget(parts, tmp_path, capsys):
    store = ModelStore.create(tmp_path / "s", model="lenet300",
                              model_kwargs={"hidden": [16, 8]}, policy_overrides=POLICY,
                              recipe=Recipe(batch_size=64, checkpoint_interval_s=0.0))
    store.init(parts / "part0.npz", progress=False)
    before = _tree_hash(store.path)
    dense = gpjax.count_params(store.load().masks).dense
    for extra, what in ((["--target-params", "0"], "--target-params"),
                        (["--max-epochs", "0"], "--max-epochs"),
                        (["--max-epochs", "-2"], "--max-epochs"),
                        (["--target-params", str(dense + 1)], str(dense))):
        capsys.readouterr()
        code = cli.main(["--no-compile-cache", "update", str(store.path), "--data",
                         str(parts / "part1.npz"), "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "Fix:" in err and what in err
        assert _tree_hash(store.path) == before  # nothing written
    with pytest.raises(StoreError, match="Fix:"):
        store.update(parts / "part1.npz", budget=Budget(target_params=dense + 5))
    start = gpjax.count_params(store.load().masks).active
    target = 150  # above the recoverable floor of a 784-16-8-10 model, under its start
    assert start > target
    code = cli.main(["--no-compile-cache", "update", str(store.path), "--data",
                     str(parts / "part1.npz"), "--no-progress", "--target-params", str(target),
                     "--max-epochs", "60"])
    assert code == 0
    m = store.manifest(1)
    b = m["budget"]
    assert (b["target_params"], b["max_epochs"]) == (target, 60.0)
    assert m["policy"]["prune"]["target_params"] == target and m["policy"]["max_epochs"] == 60.0
    assert b["target_met"] is True and b["within_max_epochs"] is True
    assert m["stopped"]["prune"] == "target"
    assert gpjax.count_params(store.load(1).masks).active == m["metrics"]["params"] <= target
    its = m["metrics"]["prune_log"]["prune"]
    assert len(its) > 2 and not any(e["held"] for e in its) and its[-1]["kept"]
    passes = m["metrics"]["phase_passes"]
    assert passes["prune"]["train_epochs"] == sum(e["retrain_epochs"] for e in its)
    assert m["metrics"]["epochs_paper"] == pytest.approx(
        m["metrics"]["epochs"] + sum(e["retrain_epochs"] == 0 for e in its))


def test_run_set_budget_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    for sets, what in ((["max_epochs=0"], "max_epochs"),
                       (["prune.target_params=0"], "target_params"),
                       (["prune.target_params=100000000"], "target_params")):
        capsys.readouterr()
        args = ["--no-compile-cache", "run", "--config", "lenet300_mnist_tiny", "--policy",
                "growprune", "--out", str(out), "--no-progress"]
        for s in sets:
            args += ["--set", s]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Fix:" in err and what in err
        assert not out.exists()
