"""End-to-end tests of the incremental loop on a tiny configuration (300 MNIST images, 3 rounds,
a LeNet-300-100 of widths 32-16, a few epochs): every policy, cost accounting, inheritance,
recoverability, non-recoverable compaction, NaN handling, kill-and-resume (subprocess), and
4-device data parallelism (subprocess with a forced host device count)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import SUITE_XLA_FLAGS

import gpjax
from gpjax.incremental import build, get_config, make_policy, run
from gpjax.incremental.phases import NonFiniteLossError
from gpjax.report import load_rows

CONFIG = "lenet300_mnist_tiny"
POLICIES = ("growprune", "tfs", "nft", "nest", "merged")
# Fields that legitimately differ between two runs of the same seed.
TIMING = {"wall_time_s", "eval_time_s"}


@pytest.fixture(scope="module")
def cache_dir():
    """The suite's persistent XLA compilation cache (``conftest.XLA_CACHE``), which the
    in-process runs fill and the kill/resume subprocesses read (speed only)."""
    return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


def _env(cache: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update({"JAX_COMPILATION_CACHE_DIR": str(cache),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PLATFORMS": "cpu", **extra})
    return env


@pytest.fixture(scope="module")
def experiment():
    return build(get_config(CONFIG), 0)


@pytest.fixture(scope="module")
def runs(experiment, tmp_path_factory):
    """All five policies, 3 rounds; masks and params recorded at round starts and ends."""
    out = tmp_path_factory.mktemp("runs")
    # Checkpoints only after phases and rounds here (saving costs time, not results: the
    # kill/resume test compares its checkpoint-every-2-epochs run with these rows).
    cfg = dataclasses.replace(experiment.config, checkpoint_every=0, prune_checkpoint_every=0)
    experiment = dataclasses.replace(experiment, config=cfg)
    results = {}
    for name in POLICIES:
        trace = []

        def callback(event, r, state, carry, trace=trace):
            trace.append((event, r, jax.tree.map(np.asarray, state.masks),
                          jax.tree.map(np.asarray, state.params),
                          None if carry is None else jax.tree.map(np.asarray, carry)))

        released = []
        clear = jax.clear_caches
        jax.clear_caches = lambda r=released, c=clear: (r.append(1), c())
        try:  # the last policy drops its compiled programs after every round
            rows = run(experiment, make_policy(name, cfg.policies[name]), 0, out,
                       progress=False, callback=callback,
                       release_compiled_at=0.0 if name == "merged" else None)
        finally:
            jax.clear_caches = clear
        assert len(released) == (len(rows) if name == "merged" else 0)
        results[name] = (rows, trace)
    return out, results


def _masks_equal(a, b) -> bool:
    la = jax.tree.leaves(a)
    lb = jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def test_rows_and_files(runs):
    out, results = runs
    for name, (rows, _) in results.items():
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert [r["policy"] for r in rows] == [name] * 3
        for r in rows:
            for key in ("data_fraction", "test_error", "val_error", "params_recoverable",
                        "params_nonrecoverable", "epochs", "epochs_cumulative", "wall_time_s",
                        "examples", "config"):
                assert key in r, key
            assert 0.0 <= r["test_error"] <= 100.0
        assert [r["data_fraction"] for r in rows] == pytest.approx([1 / 3, 2 / 3, 1.0])
        saved = load_rows(out / f"{name}-seed0")
        assert len(saved) == 3


def test_round_models_saved_and_prune_curve(runs, experiment):
    """Every round's recoverable and non-recoverable models are kept (``models/``), equal to
    what the row reports; the row's pruning curve ends at the round's model."""
    from gpjax.cli_export import load_for_export
    from gpjax.incremental.loop import load_round_models
    out, results = runs
    rows, trace = results["growprune"]
    d = out / "growprune-seed0"
    for r, row in enumerate(rows):
        got = load_round_models(d, r)
        assert gpjax.count_params(got["recoverable"]["masks"]).active == \
            row["params_recoverable"]
        # The non-recoverable model is derived in the last round only (the config's
        # nonrecoverable_rounds="last").
        nonrec = row["params_nonrecoverable"]
        assert (nonrec is not None) == (r == len(rows) - 1) == (got["nonrecoverable"] is not None)
        if nonrec is not None:
            assert gpjax.count_params(got["nonrecoverable"]["masks"]).active == nonrec
        assert _masks_equal(got["recoverable"]["masks"], trace[2 * r + 1][2])
        curve = row["prune_curve"]
        assert curve[-1]["active"] == row["params_recoverable"]
        assert curve[-1]["test_error"] == pytest.approx(row["test_error"], abs=1e-4)
        assert all(a["active"] > b["active"] for a, b in zip(curve, curve[1:]))
    x = load_for_export(d)  # the last round's non-recoverable model, for `gpjax export`
    assert gpjax.count_params(x["masks"]).active == rows[-1]["params_nonrecoverable"]
    assert x["input_shape"] == [28, 28, 1]


def test_cost_accounting(runs):
    _, results = runs
    p = make_policy("growprune", get_config(CONFIG).policies["growprune"])
    rows, _ = results["growprune"]
    for r in rows:
        assert r["epochs"] == pytest.approx(sum(r["epochs_by_phase"].values()))
        assert r["examples"] > 0
    assert np.allclose(np.cumsum([r["epochs"] for r in rows]),
                       [r["epochs_cumulative"] for r in rows])
    # Round 0: first_epochs of training + one gradient evaluation per growth (G = 1).
    assert rows[0]["epochs_by_phase"]["grow"] == pytest.approx(2 * p.first_epochs)
    # Later rounds: epochs over the new chunk count n_new / n_all each.
    for r in rows[1:]:
        frac = r["n_new"] / r["n_available"]
        assert r["epochs_by_phase"]["grow_new"] == pytest.approx(2 * p.new_epochs * frac)
        assert r["epochs_by_phase"]["grow_all"] == pytest.approx(2 * p.all_epochs)
    assert rows[1]["epochs_by_phase"]["grow_new"] == pytest.approx(2 * p.new_epochs / 2)
    assert rows[2]["epochs_by_phase"]["grow_new"] == pytest.approx(2 * p.new_epochs / 3)
    # Training-only baselines: their epochs over all data, 1 each.
    t = make_policy("tfs", get_config(CONFIG).policies["tfs"])
    for r in results["tfs"][0]:
        assert r["epochs_by_phase"]["train"] == pytest.approx(t.epochs)
        # Pruning retrains over all data, whole epochs.
        assert r["epochs_by_phase"]["prune"] == pytest.approx(round(r["epochs_by_phase"]["prune"]))


def test_growprune_inherits_masks(runs):
    _, results = runs
    for name in ("growprune", "merged"):
        _, trace = results[name]
        ends = {r: (m, p, c) for ev, r, m, p, c in trace if ev == "round_end"}
        starts = {r: (m, p, c) for ev, r, m, p, c in trace if ev == "round_start"}
        for r in (1, 2):
            # The round starts from last round's recoverable model: same masks and weights.
            assert _masks_equal(starts[r][0], ends[r - 1][0])
            assert _masks_equal(starts[r][0], ends[r - 1][2]["masks"])
            np.testing.assert_array_equal(jax.tree.leaves(starts[r][1])[0],
                                          jax.tree.leaves(ends[r - 1][1])[0])
        # Round 0 starts from a sparse seed.
        assert gpjax.density(starts[0][0]) < 0.5


def test_baselines_start_points(runs):
    _, results = runs
    # TFS: a fresh dense model every round.
    for ev, _, masks, _, _ in results["tfs"][1]:
        if ev == "round_start":
            assert gpjax.density(masks) == 1.0
    # NeST: a fresh sparse seed every round, not the last model.
    starts = [m for ev, _, m, _, _ in results["nest"][1] if ev == "round_start"]
    assert all(gpjax.density(m) < 0.5 for m in starts)
    # NFT: the carried model is dense; the next round fine-tunes exactly it.
    trace = results["nft"][1]
    ends = {r: c for ev, r, _, _, c in trace if ev == "round_end"}
    for ev, r, masks, params, _ in trace:
        if ev == "round_start":
            assert gpjax.density(masks) == 1.0
            if r > 0:
                for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ends[r - 1]["params"]),
                                strict=True):
                    np.testing.assert_array_equal(a, b)
    for r in results["nft"][0]:
        assert r["params_recoverable"] < r["params_dense"]  # the pruned copy is what is reported


def test_recoverable_keeps_neurons_and_nonrecoverable_is_smaller(runs, experiment):
    _, results = runs
    for name, (rows, trace) in results.items():
        for r in rows:
            assert r["dead_units"] == 0, (name, r["round"])
        assert rows[-1]["params_nonrecoverable"] < rows[-1]["params_recoverable"], name
        for ev, _, masks, _, _ in trace:
            if ev == "round_end":
                dead = gpjax.dead_units(masks, input_fed=experiment.input_kernels)
                assert all(d.inputs == 0 and d.outputs == 0 for d in dead.values()), name


def test_nan_names_round_phase_epoch_and_keeps_last_good(experiment, tmp_path):
    # NFT fine-tunes from round 1 on: an absurd fine-tuning rate blows up there.
    pol = make_policy("nft", {**experiment.config.policies["nft"], "finetune_lr": 1e30})
    with pytest.raises(NonFiniteLossError, match=r"round 1 .*phase 'finetune', epoch 0"):
        run(experiment, pol, 0, tmp_path, progress=False)
    from gpjax.incremental.loop import _Run
    r = _Run(experiment, pol, 0, tmp_path / "nft-seed0", resume=True, progress=False,
             devices=None, max_to_keep=3)
    try:
        step, tree, meta = r.ckpt.restore_latest(r.template())
    finally:
        r.ckpt.close()
    # The newest checkpoint is the end of round 0: finite, and what a resume starts from.
    assert meta["round"] == 0 and meta["round_done"] and len(meta["rows"]) == 1
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree["state"].params))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree["carry"]["params"]))


def test_checkpoint_interval_skips_saves_inside_phases_only(experiment):
    from gpjax.incremental.loop import _optimizer
    from gpjax.incremental.phases import Trainer
    from gpjax.incremental.runner import RoundData, update
    cfg = experiment.config
    pol = make_policy("growprune", cfg.policies["growprune"])
    rd = experiment.scenario.round(0)
    trainer = Trainer(experiment.task, _optimizer(cfg.optimizer), cfg.batch_size,
                      cfg.eval_batch_size, False)
    results = {}
    for interval in (0.0, 1e9):
        saves = []
        state, _, _ = update(trainer, pol.plan(0), RoundData(rd.new, rd.all, rd.validation),
                             pol.prune, key=jax.random.PRNGKey(0),
                             example_batch=experiment.example_batch,
                             snapshot=lambda st, cn, prog, saves=saves: saves.append(prog),
                             checkpoint_every=1, prune_checkpoint_every=1,
                             checkpoint_interval_s=interval)
        results[interval] = (saves, jax.tree.map(np.asarray, state.params))
    every, gated = results[0.0][0], results[1e9][0]
    assert any(p["inner"] > 0 for p in every)  # saves inside phases; the same after phases
    assert [p["phase"] for p in gated] == [1, 2] and all(p["inner"] == 0 for p in gated)
    def key(p):
        return p["phase"], p["cost"]["epochs"], p["cost"]["examples"]

    assert [key(p) for p in every if p["inner"] == 0] == [key(p) for p in gated]
    chex.assert_trees_all_equal(results[0.0][1], results[1e9][1])


def test_resume_with_other_config_says_what_differs(runs, experiment):
    from gpjax.incremental.checkpoint import CheckpointMismatchError

    out, _ = runs
    pol = make_policy("tfs", {**experiment.config.policies["tfs"], "prune.tolerance": 0.5})
    with pytest.raises(CheckpointMismatchError, match="tolerance"):
        run(experiment, pol, 0, out, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run(experiment, make_policy("tfs", experiment.config.policies["tfs"]), 0, out,
            progress=False)


def test_resume_continues_a_run_for_more_rounds(runs, experiment, tmp_path):
    """``--rounds 1`` then ``--resume`` without it: the rows of an uninterrupted 3-round run
    (round 0 keeps the non-recoverable model it derived as the old last round)."""
    _, results = runs
    cfg = dataclasses.replace(experiment.config, checkpoint_every=0, prune_checkpoint_every=0)
    pol = make_policy("tfs", cfg.policies["tfs"])
    first = run(dataclasses.replace(cfg, rounds=1), pol, 0, tmp_path, progress=False)
    assert len(first) == 1 and first[0]["params_nonrecoverable"] is not None
    rows = run(cfg, pol, 0, tmp_path, resume=True, progress=False)
    want = _comparable(results["tfs"][0])
    got = _comparable(rows)
    nonrec = {k for k in got[0] if k.endswith("_nonrecoverable")}
    assert [{k: v for k, v in r.items() if k not in nonrec} for r in got] == \
        [{k: v for k, v in r.items() if k not in nonrec} for r in want]
    assert got[1:] == want[1:] and got[0]["params_nonrecoverable"] is not None


def _steps(ckpt: Path) -> list[int]:
    if not ckpt.exists():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_after_sigkill_matches_uninterrupted(runs, tmp_path, cache_dir):
    _, results = runs
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gpjax", "run", "--config", CONFIG, "--policy", "growprune",
           "--out", str(out), "--no-progress"]
    ckpt = out / "growprune-seed0" / "checkpoints"
    proc = subprocess.Popen(cmd, env=_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        # Kill once the run is inside round 1 (well past its first checkpoints).
        while proc.poll() is None:
            if len(_steps(ckpt)) and max(_steps(ckpt)) >= 9:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(_steps(ckpt))
    assert not (out / "growprune-seed0" / "results.json").exists() or len(
        load_rows(out / "growprune-seed0")) < 3
    res = subprocess.run(cmd + ["--resume"], env=_env(cache_dir), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = load_rows(out / "growprune-seed0")
    assert killed_at >= 9
    assert _comparable(rows) == _comparable(results["growprune"][0])


FOUR_DEVICES = r"""
import json, sys
import jax, numpy as np
from gpjax.incremental import build, get_config, make_policy, run
assert jax.device_count() == 4, jax.devices()
import dataclasses
cfg = dataclasses.replace(get_config("lenet300_mnist_tiny"), rounds=1, checkpoint_every=0,
                          prune_checkpoint_every=0)
exp = build(cfg, 0)
pol = make_policy("growprune", {**cfg.policies["growprune"], "nonrecoverable": "none"})
out = {}
for n in (4, 1):
    final = {}
    def cb(ev, r, state, carry, final=final):
        if ev == "round_end":
            final["params"] = [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]
    rows = run(exp, pol, 0, sys.argv[1] + f"/d{n}", progress=False, devices=jax.devices()[:n],
               callback=cb)
    out[n] = {"rows": [{k: r[k] for k in ("test_error", "val_error", "params_recoverable",
                                          "epochs", "devices")} for r in rows],
              "params": final["params"]}
# The 4-device run's checkpoints restore on 1 device (different mesh): nothing left to run.
again = run(exp, pol, 0, sys.argv[1] + "/d4", resume=True, progress=False,
            devices=jax.devices()[:1])
out["resumed"] = [r["test_error"] for r in again]
json.dump(out, open(sys.argv[1] + "/out.json", "w"))
"""


def test_four_devices_match_one(tmp_path, cache_dir):
    env = _env(cache_dir, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {SUITE_XLA_FLAGS}")
    env.pop("JAX_COMPILATION_CACHE_DIR")
    res = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    four, one = out["4"]["rows"], out["1"]["rows"]
    assert out["resumed"] == [r["test_error"] for r in four]
    assert [r["devices"] for r in four] == [4] and [r["devices"] for r in one] == [1]
    for a, b in zip(four, one, strict=True):
        # Float tolerance: reduction order differs across devices; on 100-200 evaluation
        # images a flipped prediction moves the error by 0.5-1 point.
        assert math.isclose(a["epochs"], b["epochs"], rel_tol=1e-9)
        assert abs(a["test_error"] - b["test_error"]) <= 1.0
        assert abs(a["params_recoverable"] - b["params_recoverable"]) <= 0.01 * b[
            "params_recoverable"]
    for a, b in zip(out["4"]["params"], out["1"]["params"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # ~50 s; in `make test-all` (the suite is at CI's 15 min edge)
def test_speech_rows_report_wer_and_cer(tmp_path):
    """A speech config's row: ``test_error`` is the corpus WER and ``test_cer`` the corpus CER
    (percent) of the greedy CTC decoding of the test split, as gpjax.metrics scores the final
    model's decoding against the corpus transcripts; the non-recoverable model's likewise."""
    from gpjax.data.speech import decode_ids, load_synthetic_an4
    from gpjax.metrics import cer, greedy_ctc_decode, wer
    from gpjax.models import DeepSpeech2

    # Two length buckets of training utterances (batch 8 of the round's 20).
    cfg = dataclasses.replace(get_config("ds2_hlstm_synthetic_tiny"), rounds=1,
                              checkpoint_every=0, prune_checkpoint_every=0, length_buckets=2,
                              batch_size=8)
    policy = make_policy("tfs", {**cfg.policies["tfs"], "epochs": 2, "prune.max_iterations": 1,
                                 "nonrecoverable.max_iterations": 1})
    ends = []

    def callback(event, r, state, carry):
        if event == "round_end":
            ends.append(jax.tree.map(np.asarray, {"params": state.params, **state.aux}))

    (row,) = run(cfg, policy, 0, tmp_path, progress=False, callback=callback)
    for key in ("test_error", "test_cer", "test_error_nonrecoverable",
                "test_cer_nonrecoverable"):
        assert math.isfinite(row[key]) and row[key] >= 0.0, (key, row[key])
    assert load_rows(tmp_path / "tfs-seed0")[0]["test_cer"] == pytest.approx(row["test_cer"])
    test = load_synthetic_an4(**cfg.dataset_kwargs).test
    model = DeepSpeech2(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in cfg.model_kwargs.items()})
    logits, pads = jax.jit(model.apply)(ends[0], test.features, test.feature_paddings())
    hyps = [decode_ids(h) for h in greedy_ctc_decode(logits, pads)]
    assert row["test_cer"] == pytest.approx(100 * cer(test.transcripts, hyps), abs=1e-6)
    assert row["test_error"] == pytest.approx(100 * wer(test.transcripts, hyps), abs=1e-6)
