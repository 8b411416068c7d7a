"""The experiment scripts' logic: FIG. 6's target rule and cost ratios, the stopping-rule
sweep's summary, the pruning stop reasons, and a ``--tiny`` end-to-end run of each script."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from experiments import ds2_cpu, fig6, stopping_rule
from experiments.replicates import mean_se
from gpjax.incremental.phases import (
    PruneConfig,
    Trainer,
    grow_and_train,
    new_state,
    prune_and_retrain,
)
from gpjax.models import LeNet300
from gpjax.train import OptimizerConfig, classifier_task, make_optimizer


def _curve(points):
    return [{"cost": c, "pooled_error": e} for c, e in points]


def test_cost_to_target_is_first_training_epoch_at_or_below_target():
    curve = _curve([(0.0, 1.0), (1.1, 2.5), (2.1, 1.2), (3.2, 0.95), (4.2, 0.9)])
    assert fig6.cost_to_target(curve, 1.2) == pytest.approx(2.1)   # "at or below"
    assert fig6.cost_to_target(curve, 0.95) == pytest.approx(3.2)
    assert fig6.cost_to_target(curve, 1.0) == pytest.approx(3.2)   # the start does not count
    assert fig6.cost_to_target(curve, 0.5) is None


def test_common_target_is_reached_by_every_arm():
    ours = _curve([(0.0, 0.1), (0.2, 1.6), (1.2, 1.3), (2.2, 1.25)])
    merged = _curve([(0.0, 0.1), (1.0, 1.8), (2.0, 1.4), (3.0, 1.1), (4.0, 1.2)])
    t = fig6.common_target({"growprune": ours, "merged": merged})
    assert t == pytest.approx(1.25)  # ours' best; merged's best (1.1) is lower; start ignored
    assert fig6.cost_to_target(ours, t) == pytest.approx(2.2)
    assert fig6.cost_to_target(merged, t) == pytest.approx(3.0)
    assert fig6.ratio(3.0, 2.2) == pytest.approx(3.0 / 2.2)
    assert fig6.ratio(None, 2.2) is None and fig6.ratio(3.0, None) is None


def test_fig6_merged_arm_epochs_and_the_scale_it_reports():
    spec = ["--first-epochs", "90", "--new-epochs", "15", "--all-epochs", "20",
            "--prune-percentile", "5"]
    assert fig6.policies(fig6.parse_args(spec))["merged"].all_epochs == 35
    args = fig6.parse_args([*spec, "--merged-epochs", "49"])
    assert fig6.policies(args)["merged"].all_epochs == 49
    assert fig6.describe(args).endswith("SPEC epochs and pruning step.")
    assert "Reduced from SPEC" in fig6.describe(fig6.parse_args([]))


def test_mean_se():
    m, s, n = mean_se([1.0, 3.0, None])
    assert (m, n) == (2.0, 2) and s == pytest.approx(1.0)
    assert mean_se([2.0]) == (2.0, 0.0, 1)
    m, s, n = mean_se([])
    assert math.isnan(m) and math.isnan(s) and n == 0


def test_stopping_rule_summary_aggregates_per_rule():
    base = {"start_test_error": 1.2, "iterations": 5, "failed_iterations": 1,
            "retrain_epochs": 3.0, "final_val_error": 1.3, "tolerance": 0.1, "patience": 2,
            "retrain_lr": 0.05}
    rows = [{**base, "rule": "a", "seed": 0, "final_params": 1000, "final_test_error": 1.4,
             "stopped": "patience"},
            {**base, "rule": "a", "seed": 1, "final_params": 3000, "final_test_error": 1.0,
             "stopped": "max_iterations"},
            {**base, "rule": "b", "seed": 0, "final_params": 500, "final_test_error": 2.0,
             "stopped": "patience"}]
    a, b = stopping_rule.summarise(rows)
    assert (a["rule"], a["n"], b["n"]) == ("a", 2, 1)
    assert a["final_params"] == 2000 and a["final_params_se"] == pytest.approx(1000)
    assert a["test_change"] == pytest.approx(0.0) and b["test_change"] == pytest.approx(0.8)
    assert a["stopped"] == "patience x1, max_iterations x1"


@pytest.fixture(scope="module")
def tiny_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 28, 28, 1)).astype(np.float32)
    y = (x.reshape(256, -1)[:, :10].argmax(1)).astype(np.int32)  # learnable labels
    data = (x[:192], y[:192]), (x[192:], y[192:])
    trainer = Trainer(classifier_task(LeNet300(hidden=(16, 8))),
                      make_optimizer(OptimizerConfig()), 32, 64, False)
    state = new_state(trainer, jax.random.PRNGKey(0), data[0])
    state, _ = grow_and_train(trainer, state, data[0], epochs=3, learning_rate=0.1, grow=False)
    return trainer, state, data


def test_prune_stop_reasons(tiny_model):
    trainer, state, (train, val) = tiny_model
    copy = lambda: jax.tree.map(lambda a: a.copy(), state)  # noqa: E731
    # A limit no model can meet: every iteration fails; stop after `patience` of them and
    # keep the starting model.
    cfg = PruneConfig(percentile=20, max_retrain_epochs=1, tolerance=-1000.0, patience=2,
                      max_iterations=10)
    kept, log = prune_and_retrain(trainer, copy(), train, val, cfg)
    assert log.stopped == "patience" and len(log.events) == 2
    assert not any(e["held"] for e in log.events)
    import gpjax
    start = gpjax.count_params(state.masks).active
    assert gpjax.count_params(kept.masks).active == start
    # Everything forgiven: every iteration holds, no retraining; stops at the cap.
    cfg = PruneConfig(percentile=20, tolerance=1000.0, patience=1, max_iterations=3)
    kept, log = prune_and_retrain(trainer, copy(), train, val, cfg)
    assert log.stopped == "max_iterations" and log.epochs == 0
    assert [e["held"] for e in log.events] == [True] * 3
    assert gpjax.count_params(kept.masks).active == log.events[-1]["active"] < start
    # A target size stops the phase once reached.
    cfg = PruneConfig(percentile=20, tolerance=1000.0, target_params=int(0.7 * start))
    kept, log = prune_and_retrain(trainer, copy(), train, val, cfg)
    assert log.stopped == "target" and len(log.events) == 2  # 0.8, 0.64 of start


def test_stopping_rule_tiny_end_to_end(tmp_path):
    rows = stopping_rule.main(["--tiny", "--seeds", "0", "--out", str(tmp_path)])
    assert [r["rule"] for r in rows] == list(stopping_rule.TINY_RULES)
    for r in rows:
        assert r["final_params"] <= r["start_params"]
        assert r["iterations"] == len(r["trajectory"]) <= r["max_iterations"]
        assert r["stopped"] in ("patience", "max_iterations", "exhausted", "target")
        held = [t for t in r["trajectory"] if t["held"]]
        # the kept model is the last one that held (or the start when none did)
        assert r["final_params"] == (held[-1]["active"] if held else r["start_params"])
    literal = rows[0]
    assert (literal["tolerance"], literal["patience"]) == (0.0, 1)
    assert literal["failed_iterations"] <= 1
    md = (tmp_path / "summary.md").read_text()
    assert "| literal | 0 | 1 | 0.05 | 1 |" in md and "--tiny" in md
    assert (tmp_path / "stopping_rule.png").stat().st_size > 0
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert len(saved["rows"]) == len(rows)
    assert stopping_rule.main(["--summarise", "--out", str(tmp_path)]) == saved["rows"]


def test_fig6_tiny_end_to_end(tmp_path):
    (row,) = fig6.main(["--tiny", "--seeds", "0", "--out", str(tmp_path)])
    # 600 examples in ten chunks: base on 540, update with the last 60.
    assert (row["n_base"], row["n_new"], row["n_all"]) == (540, 60, 600)
    # Tiny: 2 epochs on the new chunk + 2 on all, growth before every epoch; a pass over the
    # 10% chunk counts 0.1: ours 4 x 0.1 + 4 x 1 = 4.4; merged 4 epochs + 4 growths = 8.
    assert row["growprune_growth_cost"] == pytest.approx(4.4)
    assert row["merged_growth_cost"] == pytest.approx(8.0)
    assert row["ratio_budget"] == pytest.approx(8.0 / 4.4)
    for arm in fig6.ARMS:
        costs = [p["cost"] for p in row["curves"][arm]]
        assert costs[0] == 0.0 and np.all(np.diff(costs) > 0)
        assert row["curves"][arm][0]["pooled_error"] == pytest.approx(row["base_pooled_error"])
        assert row[f"{arm}_cost_common"] is not None  # both reach the common target
        assert row[f"{arm}_final_params"] <= row[f"{arm}_grown_params"]
    assert row["ratio_common"] == pytest.approx(row["merged_cost_common"] /
                                                row["growprune_cost_common"])
    # ours' first two epochs run on the new chunk (0.1 + 0.1 growth each)
    assert [p["phase"] for p in row["curves"]["growprune"][1:3]] == ["grow_new"] * 2
    assert row["curves"]["growprune"][1]["cost"] == pytest.approx(0.2)
    md = (tmp_path / "summary.md").read_text()
    assert "Target rules" in md and "ratio merged / ours" in md
    assert (tmp_path / "fig6.png").stat().st_size > 0


def test_ds2_cpu_tiny_end_to_end(tmp_path):
    run = ds2_cpu.main(["--tiny", "--epochs", "2", "--out", str(tmp_path),
                        "--model-kwargs", '{"conv_strides": [[2, 2], [2, 1], [1, 1]]}'])
    curve = run["curve"]
    assert [r["epoch"] for r in curve] == [1, 2] and run["n_validation"] == 10
    assert curve[1]["steps"] == 2 * (run["n_train"] // run["batch_size"])
    assert curve[1]["train_loss"] < curve[0]["train_loss"]  # CTC loss falls from its start
    for r in curve:
        assert 0.0 <= r["val_cer"] and 0.0 <= r["val_wer"]
    assert run["test_cer"] >= 0.0 and run["total_minutes"] >= run["train_minutes"] > 0
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert saved["curve"] == curve and "--tiny" in saved["command"]
    assert (tmp_path / "ds2_cpu.png").stat().st_size > 0
    assert saved["model_kwargs"]["conv_strides"] == [[2, 2], [2, 1], [1, 1]]
    assert saved["model_kwargs"]["rnn_features"] == 16  # the tiny config's, kept
    assert (tmp_path / "curve.csv").read_text().count("\n") == 3


def test_parity_table_matches_probes_against_the_reference(tmp_path):
    from experiments import parity
    from gpjax.report import write_rows

    def row(policy, seed, curve, epochs):
        return {"policy": policy, "seed": seed, "round": 1, "data_fraction": 0.2,
                "test_error": curve[-1][1], "val_error": curve[-1][1], "epochs": epochs,
                "params_recoverable": curve[-1][0],
                "prune_curve": [{"active": a, "val_error": e, "test_error": e} for a, e in curve]}

    for seed in (0, 1):  # the reference ends at 20K; the probe's curve has 1.9 / 2.1 there
        write_rows([row("tfs", seed, [(266000, 1.6), (20000, 1.8)], 90.0)],
                   tmp_path / "base" / f"tfs-seed{seed}")
        write_rows([row("growprune", seed, [(60000, 1.7), (19000, 1.9 + 0.2 * seed),
                                            (10000, 2.0)], 50.0)],
                   tmp_path / "lr05" / f"growprune-seed{seed}")
    text = parity.main([str(tmp_path / "base"), str(tmp_path / "lr05"),
                        "--reference", "base/tfs", "--out", str(tmp_path / "t.md")])
    line = next(x for x in text.splitlines() if "lr05/growprune" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["1", "lr05/growprune", "0,1"]
    assert cells[5:] == ["10.0 ± 0.0", "2.00 ± 0.00", "50.0 ± 0.0", "20.0 ± 0.0",
                         "2.00 ± 0.10", "1.80 ± 0.00", "0.20 ± 0.10"]
    assert (tmp_path / "t.md").read_text() == text


def test_protocol_page_tables_breakdowns_per_policy_and_seed(tmp_path):
    """The page's wall-time table has one line per breakdown file (policy and seed from its
    command, the rounds it timed), shares of the wall time per category, and the minutes summed
    per seed (naming the policies of a seed that lacks some, and the files that timed only some
    rounds); the paper section is that figure's table alone."""
    from experiments import protocol_page

    def totals(policy, wall, train):
        rest = (wall - train) / 6
        return {"policy": policy, "round": None, "wall_s": wall, "compile_s": 3.0,
                "train": train, **{k: rest for k in protocol_page.CATEGORIES[1:]}}

    runs = (("tfs", 0, 600.0, [0, 1, 2, 3, 4, 5]), ("growprune", 0, 300.0, [5]),
            ("tfs", 1, 660.0, [0, 2]))
    for policy, seed, wall, rounds in runs:
        (tmp_path / f"{policy}{seed}.json").write_text(json.dumps({
            "command": f"python -m benchmarks.round_breakdown --policy {policy} --seed {seed}",
            "rounds": [{"policy": policy, "round": r} for r in rounds],
            "totals": [totals(policy, wall, 0.9 * wall)]}))
    lines = protocol_page.breakdown_table(tmp_path).splitlines()
    assert lines[2].startswith("| growprune | 0 | 5 | 5.0 | 90% | 2% |")
    assert lines[3].startswith("| tfs | 0 | 0-5 | 10.0 | 90% |")
    assert lines[4].startswith("| tfs | 1 | 0, 2 | 11.0 |")
    assert lines[-1] == ("All policies together, per seed: seed 0: 15.0 min (growprune: rounds "
                         "5 only), seed 1: 11.0 min (tfs only; tfs: rounds 0, 2 only).")
    fig13 = protocol_page.paper_section("FIG. 13")
    assert fig13.startswith("FIG. 13,") and "FIG. 12" not in fig13 and "FIG. 7" not in fig13


def test_protocol_page_compares_another_configs_runs(tmp_path):
    """``--compare`` puts other results in the page's report, one series per config, with the
    table pairing a policy run under both configs; a missing path stops before writing."""
    from experiments import protocol_page
    from gpjax.report import write_rows

    def row(config, seed, curve):
        return {"policy": "growprune", "seed": seed, "round": 0, "data_fraction": 1.0,
                "config": config, "test_error": curve[-1][1], "epochs": 10.0,
                "params_recoverable": curve[-1][0],
                "prune_curve": [{"active": a, "test_error": e} for a, e in curve]}

    here, other = tmp_path / "h", tmp_path / "l"
    (here / "intro.md").parent.mkdir()
    (here / "intro.md").write_text("# H-LSTM against LSTM\n")
    write_rows([row("hlstm", 0, [(200e3, 9.0), (100e3, 10.0)])], here / "runs" / "growprune-seed0")
    write_rows([row("lstm", 0, [(300e3, 12.0), (150e3, 13.0)])], other / "growprune-seed0")
    with pytest.raises(SystemExit):
        protocol_page.main([str(here), "--figure", "FIG. 13", "--compare", str(tmp_path / "x")])
    assert not (here / "README.md").exists()
    protocol_page.main([str(here), "--figure", "FIG. 13", "--compare", str(other)])
    text = (here / "README.md").read_text()
    assert "## The report (`gpjax report runs ../l`)" in text
    assert "Ours (GrowPrune) @ hlstm vs the other configs" in text
    # the budget is the larger final size (150K): the H-LSTM's 200K is too big, so its 100K
    assert "| 0 | 100% | Ours (GrowPrune) @ lstm | 150.0 | 13.00 | 10.00 | 1 |" in text


def test_pruning_tail_bound_on_made_up_rows():
    from experiments.pruning_tail import seed_summary, tail_start

    curve = [{"active": a, "test_error": e} for a, e in
             [(1000, 2.0), (900, 1.5), (895, 1.4), (894, 1.3), (893, 1.2)]]
    assert tail_start(curve, 0.01) == 2  # 900 -> 895 removes 0.56%
    assert tail_start(curve[:2], 0.01) is None
    rows = [{"round": 0, "prune_curve": curve, "test_error": 1.2, "params_recoverable": 893},
            {"round": 1, "prune_curve": curve[:2], "test_error": 1.5,
             "params_recoverable": 900}]
    timer = {0: {"wall_s": 100.0, "validation": 10.0, "test": 10.0},
             1: {"wall_s": 50.0, "validation": 5.0, "test": 5.0}}
    s = seed_summary(rows, timer, 0.01)
    assert s["tail_iterations"] == [2, 0]
    assert math.isclose(s["saved_s"], 20.0 * 2 / 5)  # 2 of round 0's 5 evaluations
    assert math.isclose(s["eval_share"], 30.0 / 150.0)
    assert math.isclose(s["eval_share_with_rule"], (30.0 - 8.0) / (150.0 - 8.0))
    assert s["size_ratio"] == [895 / 893]
    assert s["last_round_stop"] is None and s["last_round_final"] == (900, 1.5)
