"""benchmarks/device_check.py, the prepared accelerator run: its quick mode runs on the CPU and
writes the JSON and Markdown it promises; a failing section is recorded and the others still
run; the budget guard skips what would not fit. Structure only: no timing is asserted."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import device_check as dc

REPO = Path(__file__).resolve().parent.parent


def test_sections_parse_in_run_order_and_unknown_ones_are_refused():
    assert dc.parse_sections("rounds,ds2,env") == ("env", "ds2", "rounds")
    with pytest.raises(argparse.ArgumentTypeError, match="Fix: choose from"):
        dc.parse_sections("env,gpu")


def test_budget_guard_skips_a_section_that_would_end_past_the_budget():
    est = dc.ESTIMATE_S["steps"]
    assert dc.should_skip("steps", 0.0, est + 1, quick=False) is None
    assert "budget" in dc.should_skip("steps", 2.0, est + 1, quick=False)
    assert dc.should_skip("steps", 2.0, 3.0, quick=True) is None   # quick: estimates are 0
    assert dc.should_skip("steps", 4.0, 3.0, quick=True) is not None


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    def boom(run):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(dc, "section_steps", boom)
    monkeypatch.setattr(dc, "section_inference", lambda run: {"rows": []})
    cfg = dc.CheckConfig(out=tmp_path, quick=True, sections=("steps", "inference"))
    res = dc.run_sections(cfg, [])
    assert res["sections"]["steps"]["status"] == "error"
    assert "planted failure" in res["sections"]["steps"]["error"]
    assert res["sections"]["inference"]["status"] == "ok"
    assert json.loads((tmp_path / "device_check.json").read_text()) == json.loads(
        json.dumps(res, default=str))
    assert "## steps: error" in (tmp_path / "device_check.md").read_text()
    # over budget before it starts: skipped, with the reason
    res = dc.run_sections(dc.CheckConfig(out=tmp_path / "b", sections=("steps",), budget_s=0), [])
    assert res["sections"]["steps"]["status"] == "skipped"
    assert "budget" in res["sections"]["steps"]["reason"]


def test_synthetic_mnist_loads_as_mnist_where_no_cache_is_found(tmp_path):
    """Without an MNIST cache in --data-dir the rounds get a synthetic set in gpjax's cache
    layout (so `gpjax run` loads it unchanged), and the run says so."""
    from gpjax.data.mnist import load_mnist

    run = dc.Run(dc.CheckConfig(out=tmp_path, quick=True, data_dir=tmp_path / "empty"))
    d, source = dc.mnist_dir(run, tmp_path / "scratch")
    assert "SYNTHETIC" in source and d == tmp_path / "scratch" / "mnist"
    m = load_mnist(d)
    assert m.train.images.shape == (1_000, 28, 28, 1) and len(m.validation) == 5_000
    assert m.test.images.dtype == np.float32 and 0 <= m.test.images.min() <= 1
    assert set(np.unique(m.train.labels)) == set(range(10))
    d2, source2 = dc.mnist_dir(dc.Run(dc.CheckConfig(out=tmp_path, data_dir=d)), tmp_path / "x")
    assert d2 == d and "SYNTHETIC" not in source2  # a cache is used as it is


# ~1 min of CPU (tiny models compiled, each section once); in `make test` so the script never
# rots between GPU loans.
def test_quick_mode_runs_on_cpu_and_writes_json_and_markdown(tmp_path):
    """The CPU smoke run of the prepared script (what a GPU session runs, at tiny sizes)."""
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--quick", "--out", str(out),
         "--data-dir", str(tmp_path / "empty"), "--sections", "env,steps,inference,ds2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "device_check.json").read_text())
    secs = res["sections"]
    assert list(secs) == ["env", "steps", "inference", "ds2"] and res["quick"]
    assert {s["status"] for s in secs.values()} == {"ok"}, {
        k: s.get("error") for k, s in secs.items()}
    assert secs["env"]["backend"] == "cpu" and secs["env"]["versions"]["jax"]
    models = [r["model"] for r in secs["steps"]["rows"]]
    assert models == ["LeNet-300-100", "LeNet-5", "ResNet-18 (small stem)"]
    for r in secs["steps"]["rows"] + secs["ds2"]["rows"]:
        assert set(r["ms_per_step"]) == {"gpjax_masked", "torch" if "torch" in r["baseline"]
                                         else "plain_jax"}
        assert r["dormant_is_zero"] and r["speedup_vs_baseline"] > 0
    assert secs["ds2"]["rows"][0]["model"] == "DeepSpeech2-H-LSTM"
    inf = secs["inference"]
    assert [r["batch"] for r in inf["rows"]] == [1, 4]
    assert inf["artifact_cpu_cuda"]["platforms"] == ["cpu", "cuda"]
    assert inf["artifact"]["measured_on"] == "cpu"
    for r in inf["rows"]:
        assert set(r["ms"]) == {"masked_dense", "artifact", "artifact_cpu_cuda"}
        assert max(r["max_abs_err"].values()) < 1e-4
    md = (out / "device_check.md").read_text()
    for head in ("# Device check", "| section | status | seconds |", "## steps:", "## ds2:",
                 "## inference:"):
        assert head in md


def test_rounds_section_reads_the_round_timer_and_names_its_data(tmp_path, monkeypatch):
    """The rounds section runs benchmarks.round_breakdown (itself tested in
    test_round_breakdown.py) in a subprocess on the data it found, and reports its rows; a
    failing run is an error that keeps the command and its output."""
    seen = {}

    def fake_run_cmd(cmd, timeout, env=None):
        seen.update(cmd=cmd, env=env)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        row = {"policy": "tfs", "round": 0, "wall_s": 2.0, "compile_s": 1.0, "train": 1.5}
        (out / "round_breakdown_x.json").write_text(json.dumps({"rounds": [row]}))
        return {"command": " ".join(cmd), "returncode": seen.get("rc", 0), "seconds": 2.0,
                "output_tail": "boom"}

    monkeypatch.setattr(dc, "_run_cmd", fake_run_cmd)
    run = dc.Run(dc.CheckConfig(out=tmp_path, quick=True, data_dir=tmp_path / "empty"))
    res = dc.section_rounds(run, tmp_path / "s1")
    assert seen["cmd"][seen["cmd"].index("--config") + 1] == "lenet300_mnist_tiny"
    assert seen["env"]["GPJAX_DATA_DIR"] == str(tmp_path / "s1" / "mnist")
    assert "SYNTHETIC" in res["data"] and res["rounds"][0]["wall_s"] == 2.0
    assert res["rounds"][0]["mask_update"] is None  # absent categories stay absent
    seen["rc"] = 1
    with pytest.raises(dc.SectionFailed) as e:
        dc.section_rounds(run, tmp_path / "s2")
    assert e.value.partial["output_tail"] == "boom" and e.value.partial["rounds"]


def test_a_subprocess_past_its_limit_is_killed_with_its_children():
    got = dc._run_cmd(["bash", "-c", "echo started; sleep 60 & sleep 60"], 1)
    assert got["returncode"] is None and "killed after" in got["output_tail"]
    assert dc._run_cmd(["bash", "-c", "exit 3"], 60)["returncode"] == 3
