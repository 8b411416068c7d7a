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


def _killed_after_round_0(work, monkeypatch, suffix="_t") -> list[str]:
    """A round-timed tiny TFS run of 2 rounds, killed after round 0 as a session's end would;
    returns its argv (``--keep work/runs --out work/breakdown``)."""
    argv = ["--config", "lenet300_mnist_tiny", "--policy", "tfs", "--rounds", "2", "--keep",
            str(work / "runs"), "--out", str(work / "breakdown"), "--suffix", suffix]
    save = round_breakdown._save

    def save_then_die(stem, res):
        save(stem, res)
        raise KeyboardInterrupt

    monkeypatch.setattr(round_breakdown, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        round_breakdown.main(argv)
    monkeypatch.setattr(round_breakdown, "_save", save)
    return argv


def test_a_killed_breakdown_keeps_its_rounds_and_resume_continues_the_table(tmp_path,
                                                                             monkeypatch):
    argv = _killed_after_round_0(tmp_path, monkeypatch)
    (table,) = (tmp_path / "breakdown").glob("round_breakdown_*_t.json")
    assert [r["round"] for r in json.loads(table.read_text())["rounds"]] == [0]
    res = round_breakdown.main([*argv, "--resume"])
    assert list((tmp_path / "breakdown").glob("round_breakdown_*_t.json")) == [table]
    stored = json.loads(table.read_text())
    assert [(r["round"], r.get("resumed", False)) for r in stored["rounds"]] == [(0, False),
                                                                              (1, True)]
    assert len(stored["segments"]) == 1 and stored["totals"] == res["totals"]
    assert "1 (resumed)" in table.with_suffix(".md").read_text()
    assert [r["round"] for r in load_rows(tmp_path / "runs")] == [0, 1]


def test_handover_carries_a_killed_run_to_a_fresh_work_directory(tmp_path, monkeypatch):
    """pack on the old machine, unpack on a new one, resume: the rows and the table go on."""
    from experiments import handover

    old, new, repo = tmp_path / "old", tmp_path / "new", tmp_path / "results"
    argv = _killed_after_round_0(old, monkeypatch, suffix="_figx_tfs_seed0")
    # Options between the action and the runs parse too (plain parse_args refuses this order).
    assert handover.main(["pack", "--work", str(old), "--figure", "figx", "--results", str(repo),
                          "tfs-seed0"]) == 0
    packed = repo / "figx" / "inprogress" / "tfs-seed0"
    steps = [p.name for p in (packed / "runs" / "tfs-seed0" / "checkpoints").iterdir()
             if p.is_dir()]
    assert len(steps) == 1  # only the newest step travels
    assert handover.main(["unpack", "--work", str(new), "--figure", "figx",
                          "--results", str(repo)]) == 0
    argv = [a.replace(str(old), str(new)) for a in argv]
    round_breakdown.main([*argv, "--resume"])
    assert [r["round"] for r in load_rows(new / "runs")] == [0, 1]
    (table,) = (new / "breakdown").glob("round_breakdown_*_figx_tfs_seed0.json")
    # Round 0 is not run again: its timer row is the old machine's, round 1 the resumed one.
    assert [(r["round"], r.get("resumed", False))
            for r in json.loads(table.read_text())["rounds"]] == [(0, False), (1, True)]
    # A second unpack leaves a run that is already there alone.
    assert handover.unpack(repo / "figx" / "inprogress", new) == []


def test_write_results_never_overwrites_an_earlier_result(tmp_path):
    from benchmarks.harness import write_results

    first = write_results(tmp_path, "bench_x", {"run": 1}, "first\n")
    second = write_results(tmp_path, "bench_x", {"run": 2}, "second\n")
    assert first.name == "bench_x" and second.name == "bench_x_2"
    assert (tmp_path / "bench_x.md").read_text() == "first\n"
    assert json.loads((tmp_path / "bench_x_2.json").read_text()) == {"run": 2}
