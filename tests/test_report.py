"""Tests for gpjax.report: rows I/O, replicate summaries, the Markdown table, plots, FIG. 5."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from gpjax import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(policy, seed, rnd, err, params, epochs, **extra):
    return {"policy": policy, "seed": seed, "round": rnd, "data_fraction": rnd / 10,
            "test_error": err, "val_error": err + 0.1, "params_recoverable": params,
            "params_nonrecoverable": params // 2, "epochs": epochs,
            "epochs_cumulative": epochs * rnd, "wall_time_s": 1.5, "examples": 1000 * rnd,
            **extra}


@pytest.fixture
def rows():
    """Two rounds; growprune and tfs with 3 seeds, nest with 1; given out of order."""
    out = []
    errs = {("growprune", 1): [2.19, 2.25, 2.13], ("growprune", 2): [1.70, 1.74, 1.78],
            ("tfs", 1): [2.27, 2.31, 2.35], ("tfs", 2): [1.80, 1.90, 1.70]}
    params = {("growprune", 1): [13900, 14100, 14000], ("growprune", 2): [17600, 17400, 17500],
              ("tfs", 1): [19400, 19400, 19400], ("tfs", 2): [22700, 22600, 22800]}
    epochs = {("growprune", 1): [166, 166, 166], ("growprune", 2): [109, 111, 107],
              ("tfs", 1): [141, 141, 141], ("tfs", 2): [131, 130, 132]}
    for rnd in (2, 1):
        for pol in ("growprune", "tfs"):
            for seed in range(3):
                out.append(_row(pol, seed, rnd, errs[(pol, rnd)][seed],
                                params[(pol, rnd)][seed], float(epochs[(pol, rnd)][seed]),
                                alpha=40.0, tag=f"s{seed}"))
    out.append(_row("nest", 0, 1, 2.19, 13900, 166.0))
    out.append(_row("nest", 0, 2, 1.72, 17100, 171.0))
    return out


def test_summarise_mean_and_standard_error(rows):
    summ = report.summarise(rows)
    assert [(s["policy"], s["round"]) for s in summ] == [
        ("tfs", 1), ("tfs", 2), ("nest", 1), ("nest", 2), ("growprune", 1), ("growprune", 2)]
    s = next(s for s in summ if s["policy"] == "tfs" and s["round"] == 2)
    assert s["n"] == 3 and s["seeds"] == [0, 1, 2]
    vals = [1.80, 1.90, 1.70]
    mean = sum(vals) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert s["test_error_mean"] == pytest.approx(1.80)
    assert s["test_error_se"] == pytest.approx(sd / math.sqrt(3))
    assert s["test_error_se"] == pytest.approx(0.057735, abs=1e-6)
    assert s["params_recoverable_mean"] == pytest.approx(22700)
    assert s["params_recoverable_se"] == pytest.approx(math.sqrt(1e4) / math.sqrt(3))
    assert s["alpha_mean"] == 40.0 and s["alpha_se"] == 0.0  # numeric extras summarised too
    assert "tag_mean" not in s
    one = next(s for s in summ if s["policy"] == "nest" and s["round"] == 1)
    assert one["n"] == 1 and one["test_error_mean"] == 2.19 and one["test_error_se"] is None
    # Missing values are skipped, not counted as zero.
    part = report.summarise([_row("tfs", 0, 1, 2.0, 1, 1.0), {**_row("tfs", 1, 1, 4.0, 1, 1.0),
                                                               "val_error": None}])
    assert part[0]["test_error_mean"] == 3.0 and part[0]["val_error_mean"] == 2.1
    assert part[0]["val_error_se"] is None


def test_markdown_table_numbers_and_layout(rows):
    text = report.markdown_table(rows)
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["round", "data",
                      "error % TFS", "error % NeST", "error % Ours (GrowPrune)",
                      "params (K) TFS", "params (K) NeST", "params (K) Ours (GrowPrune)",
                      "epochs TFS", "epochs NeST", "epochs Ours (GrowPrune)"]
    r1 = [c.strip() for c in lines[2].strip("|").split("|")]
    r2 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert r1[:2] == ["1", "10%"] and r2[:2] == ["2", "20%"]
    # TFS round 2: errors 1.80/1.90/1.70 -> 1.80 ± 0.06; params 22.7K ± 0.06K; epochs 131 ± 0.6
    assert r2[2] == "1.80 ± 0.06"
    assert r2[5] == "22.7 ± 0.1"
    assert r2[8] == "131.0 ± 0.6"
    # NeST has one seed: plain values.
    assert r1[3] == "2.19" and r1[6] == "13.9" and r1[9] == "166.0"
    # Ours round 2: 1.74 ± 0.02309 ; 17.5K ± 0.0577K ; 109 ± 1.15
    assert r2[4] == "1.74 ± 0.02" and r2[7] == "17.5 ± 0.1" and r2[10] == "109.0 ± 1.2"
    assert "mean ± standard error over seeds (n = 1, 3)" in text

    # Policy names are matched case-insensitively and NFT/Merged columns appear in paper order.
    more = rows + [_row("NFT", 0, 1, 2.27, 19400, 141.0), _row("Merged", 0, 1, 2.2, 14000, 200.0)]
    header = [c.strip() for c in report.markdown_table(more, metrics=("test_error",))
              .splitlines()[0].strip("|").split("|")]
    assert header == ["round", "data", "error % TFS", "error % NFT", "error % NeST",
                      "error % Merged", "error % Ours (GrowPrune)"]
    single = report.markdown_table([r for r in rows if r["seed"] == 0],
                                   metrics=("test_error", "params_nonrecoverable"))
    assert "| 2 | 20% | 1.80 | 1.72 | 1.70 | 11.3 | 8.6 | 8.8 |" in single
    assert "single run" in single
    # A policy with no row for a round shows a dash.
    gap = report.markdown_table([_row("tfs", 0, 1, 2.0, 1000, 1.0),
                                 _row("nest", 0, 2, 1.5, 2000, 1.0)], metrics=("test_error",))
    assert "| 1 | 10% | 2.00 | — |" in gap and "| 2 | 20% | — | 1.50 |" in gap


def test_write_and_load_round_trip(tmp_path, rows):
    rows = rows + [{**_row("tfs", 5, 1, 2.0, 1000, 1.0), "params_nonrecoverable": None,
                    "flag": True, "per_layer": [1, 2], "nested": {"a": 1}}]
    jp, cp = report.write_rows(rows, tmp_path / "out", metadata={"config": "tiny", "seeds": [0]})
    assert jp.name == "results.json" and cp.name == "results.csv"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    doc = json.loads(jp.read_text())
    assert doc["format"] == "gpjax-results" and doc["metadata"]["config"] == "tiny"
    assert doc["columns"][:12] == list(report.COLUMNS)

    assert report.load_rows([jp]) == rows
    assert report.load_rows([tmp_path / "out"]) == rows
    from_csv = report.load_rows(cp)
    assert len(from_csv) == len(rows)
    for a, b in zip(rows, from_csv):
        for k in report.COLUMNS:
            assert b[k] == a.get(k), k
        assert b["tag"] == a.get("tag")
    last = from_csv[-1]
    assert last["flag"] is True and last["per_layer"] == [1, 2] and last["nested"] == {"a": 1}
    assert last["params_nonrecoverable"] is None

    # Several run directories (one per seed) below a parent are merged; duplicates warn.
    report.write_rows([rows[0]], tmp_path / "runs" / "a")
    report.write_rows([rows[1]], tmp_path / "runs" / "b")
    assert len(report.load_rows([tmp_path / "runs"])) == 2
    with pytest.warns(UserWarning, match="duplicate result row"):
        assert len(report.load_rows([tmp_path / "runs" / "a", jp])) == len(rows)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json"):
        report.load_rows([tmp_path / "empty"])
    with pytest.raises(ValueError, match="lacks"):
        report.write_rows([{"policy": "tfs", "round": 1}], tmp_path)


def _drawn(ax):
    """Policy label -> the data line of its error-bar series."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


def test_plots_files_and_drawn_data(tmp_path, rows):
    figs = report.build_figures(rows)
    assert set(figs) == {"error", "params", "cost"}
    ax = figs["error"].axes[0]
    lines = _drawn(ax)
    assert list(lines) == ["TFS", "NeST", "Ours (GrowPrune)"]
    np.testing.assert_allclose(lines["TFS"].get_xdata(), [1, 2])
    np.testing.assert_allclose(lines["TFS"].get_ydata(), [2.31, 1.80])
    np.testing.assert_allclose(lines["Ours (GrowPrune)"].get_ydata(), [2.19, 1.74])
    # Error bars: the s.e. over seeds (TFS round 2: 0.0577).
    bars = next(c for c in ax.containers if c.get_label() == "TFS")
    seg = bars.lines[2][0].get_segments()[1]
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * 0.057735, abs=1e-5)
    p_lines = _drawn(figs["params"].axes[0])
    np.testing.assert_allclose(p_lines["NeST"].get_ydata(), [13.9, 17.1])
    np.testing.assert_allclose(p_lines["NeST non-recoverable"].get_ydata(), [6.95, 8.55])
    cost_left, cost_right = figs["cost"].axes[:2]
    c_lines = _drawn(cost_left)
    np.testing.assert_allclose(c_lines["Ours (GrowPrune)"].get_ydata(), [166, 109])
    c_lines = _drawn(cost_right)
    np.testing.assert_allclose(c_lines["Ours (GrowPrune)"].get_ydata(), [166, 218])
    for f in figs.values():
        plt.close(f)

    paths = report.plot_rows(rows, tmp_path / "plots")
    assert [p.name for p in paths] == ["error_vs_round.png", "params_vs_round.png",
                                       "cost_vs_round.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, p


def test_pixel_heatmaps_count_mask_sums(tmp_path):
    rng = np.random.default_rng(0)
    m1 = rng.random((784, 300)) < 0.05
    m1[:28] = False  # first image row: no connections (pixels may lose all of them)
    m2 = m1.copy()
    m2[28 * 14: 28 * 14 + 28, :50] = True  # a "new digit" stroke in row 14
    counts = report.pixel_connection_heatmap(m1, tmp_path / "one.png", title="round 1")
    np.testing.assert_array_equal(counts, m1.sum(axis=1).reshape(28, 28))
    assert counts[0].sum() == 0 and counts.sum() == m1.sum()
    stack = report.pixel_connection_heatmaps({"{1,2}": m1, "+{0}": m2.astype(np.float32) * 0.3},
                                             tmp_path / "rounds.png", suptitle="FIG. 5")
    assert stack.shape == (2, 28, 28)
    np.testing.assert_array_equal(stack[1], m2.sum(axis=1).reshape(28, 28))
    assert (stack[1, 14] >= 50).all()
    for name in ("one.png", "rounds.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
    with pytest.raises(ValueError, match="transposed"):
        report.pixel_connection_counts(m1.T)


def test_policy_names():
    assert report.policy_key("NeST") == "nest" and report.policy_key("Ours") == "growprune"
    assert report.policy_label("growprune") == "Ours (GrowPrune)"
    assert report.policy_label("custom") == "custom"
    assert report.ordered_policies([{"policy": p} for p in ("zeta", "growprune", "NFT", "tfs")]) \
        == ["tfs", "NFT", "growprune", "zeta"]


def test_empty_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        report.markdown_table([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.load_rows([Path(tmp_path) / "missing.json"])
