"""benchmarks/round_breakdown.py on the tiny config: the categories add up to at most the
round's wall time, and ``--keep`` leaves a run as ``gpjax run`` writes it. No timing asserted."""

from __future__ import annotations

import json

import pytest

from benchmarks import round_breakdown
from gpjax.report import load_rows


def test_breakdown_categories_add_up_and_keep_writes_a_run(tmp_path):
    res = round_breakdown.main(["--config", "lenet300_mnist_tiny", "--policy", "tfs",
                                "--rounds", "2", "--keep", str(tmp_path / "runs"),
                                "--out", str(tmp_path / "res")])
    assert [(r["policy"], r["round"]) for r in res["rounds"]] == [("tfs", 0), ("tfs", 1)]
    for r in res["rounds"]:
        timed = sum(r[c] for c in round_breakdown.CATEGORIES[:-1])
        assert r["train"] > 0 and r["validation"] > 0 and r["test"] > 0
        assert timed <= r["wall_s"] + 1e-6 and r["other"] >= -1e-6
    (total,) = res["totals"]
    assert total["wall_s"] == sum(r["wall_s"] for r in res["rounds"])
    rows = load_rows(tmp_path / "runs")
    assert [(r["policy"], r["round"]) for r in rows] == [("tfs", 0), ("tfs", 1)]
    assert list((tmp_path / "res").glob("round_breakdown_*.md"))


def test_a_killed_breakdown_keeps_its_rounds_and_resume_continues_the_table(tmp_path,
                                                                             monkeypatch):
    argv = ["--config", "lenet300_mnist_tiny", "--policy", "tfs", "--rounds", "2", "--keep",
            str(tmp_path / "runs"), "--out", str(tmp_path / "res"), "--suffix", "_t"]
    save = round_breakdown._save

    def save_then_die(stem, res):
        save(stem, res)
        raise KeyboardInterrupt  # as a session's end kills the process after round 0

    monkeypatch.setattr(round_breakdown, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        round_breakdown.main(argv)
    (table,) = (tmp_path / "res").glob("round_breakdown_*_t.json")
    assert [r["round"] for r in json.loads(table.read_text())["rounds"]] == [0]
    monkeypatch.setattr(round_breakdown, "_save", save)
    res = round_breakdown.main([*argv, "--resume"])
    assert list((tmp_path / "res").glob("round_breakdown_*_t.json")) == [table]
    stored = json.loads(table.read_text())
    assert [(r["round"], r.get("resumed", False)) for r in stored["rounds"]] == [(0, False),
                                                                              (1, True)]
    assert len(stored["segments"]) == 1 and stored["totals"] == res["totals"]
    assert "1 (resumed)" in table.with_suffix(".md").read_text()
    assert [r["round"] for r in load_rows(tmp_path / "runs")] == [0, 1]


def test_write_results_never_overwrites_an_earlier_result(tmp_path):
    from benchmarks.harness import write_results

    first = write_results(tmp_path, "bench_x", {"run": 1}, "first\n")
    second = write_results(tmp_path, "bench_x", {"run": 2}, "second\n")
    assert first.name == "bench_x" and second.name == "bench_x_2"
    assert (tmp_path / "bench_x.md").read_text() == "first\n"
    assert json.loads((tmp_path / "bench_x_2.json").read_text()) == {"run": 2}
