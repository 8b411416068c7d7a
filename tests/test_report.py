"""Tests for gpjax.report: rows I/O, replicate summaries, the Markdown table, plots, FIG. 5."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import PROPERTY
from hypothesis import given
from hypothesis import strategies as st

from gpjax import cli, matched, paper, report

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
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]
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
    # the same policy, seed and round under another config is another series, not a duplicate
    report.write_rows([{**rows[0], "config": "other"}], tmp_path / "other")
    both = report.load_rows([tmp_path / "runs" / "a", tmp_path / "other"])
    assert [r.get("config") for r in both] == [rows[0].get("config"), "other"]
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


# ----------------------------------------------------------------------------- matched sizes


def _curve(sizes, errors):
    return [{"active": int(a), "val_error": e + 0.1, "test_error": e} for a, e in
            zip(sizes, errors)]


@st.composite
def _monotone_curves(draw):
    """A pruning curve: sizes falling, errors rising (as pruning removes connections)."""
    n = draw(st.integers(1, 8))
    steps = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n))
    sizes = np.cumsum(steps[::-1])[::-1] + 100          # strictly decreasing, >= 101
    rises = draw(st.lists(st.floats(0.0, 0.5), min_size=n, max_size=n))
    errors = 1.0 + np.cumsum(rises)                      # non-decreasing
    size = draw(st.integers(0, int(sizes[0]) + 2000))
    return _curve(sizes, errors), size


@PROPERTY
@given(_monotone_curves())
def test_error_at_size_reads_the_largest_model_within_budget(case):
    curve, size = case
    sizes = np.array([p["active"] for p in curve])
    errors = np.array([p["test_error"] for p in curve])
    got = matched.error_at_size(curve, size)
    fits = np.flatnonzero(sizes <= size)
    if not len(fits):
        assert got is None  # beyond the curve: missing, not extrapolated
        return
    i = fits[np.argmax(sizes[fits])]
    assert got == errors[i]
    # On a monotone curve the read-off lies between the errors of the neighbouring points
    # around the budget (inclusive), and is never below the error of any larger model.
    above = np.flatnonzero(sizes > size)
    lo = errors[above[-1]] if len(above) else errors[0]
    assert lo <= got <= errors[fits[0]]
    assert (errors[sizes > size] <= got).all()


def test_error_at_size_edges():
    curve = _curve([1000, 800, 800, 500], [1.0, 1.2, 1.3, 1.6])
    assert matched.error_at_size(curve, 800) == 1.3       # equal sizes: the later point
    assert matched.error_at_size(curve, 5000) == 1.0      # above the start: the unpruned model
    assert matched.error_at_size(curve, 499) is None
    assert matched.error_at_size(curve, None) is None
    assert matched.error_at_size(curve, 900, metric="val_error") == pytest.approx(1.4)
    with pytest.raises(ValueError, match="prune_curve.*policy=tfs seed=0 round=1"):
        matched.prune_curve({"policy": "tfs", "seed": 0, "round": 1, "prune_curve": [{"x": 1}]})


def _curve_rows():
    """LeNet-300-100 config, rounds 0-1 (10%, 20%), growprune and tfs with two seeds each.

    Paper "Ours" sizes: 13.9K at 10%, 17.6K at 20%."""
    out = []
    spec = {  # (policy, round, seed): (sizes, errors)
        ("growprune", 0, 0): ([60000, 30000, 15000, 13000], [2.0, 2.1, 2.2, 2.4]),
        ("growprune", 0, 1): ([60000, 14000, 12000], [2.0, 2.3, 2.5]),
        ("tfs", 0, 0): ([266000, 40000, 20000], [1.9, 2.0, 2.1]),       # ends above 13.9K
        ("tfs", 0, 1): ([266000, 30000, 13600], [1.9, 2.05, 2.36]),
        ("growprune", 1, 0): ([40000, 17000, 16000], [1.6, 1.7, 1.8]),
        ("growprune", 1, 1): ([40000, 18000, 17500], [1.6, 1.75, 1.9]),
        ("tfs", 1, 0): ([266000, 25000, 17000], [1.5, 1.6, 1.9]),
        ("tfs", 1, 1): ([266000, 21000, 16500], [1.5, 1.62, 1.96]),
    }
    for (pol, rnd, seed), (sizes, errors) in spec.items():
        out.append({**_row(pol, seed, rnd, errors[-1], sizes[-1], 100.0),
                    "data_fraction": 0.1 * (rnd + 1), "config": "lenet300_mnist",
                    "classes": None, "prune_curve": _curve(sizes, errors)})
    return out


def test_matched_size_numbers():
    rows = _curve_rows()
    at = {(r["policy"], r["round"], r["seed"]): r for r in matched.paper_size_rows(rows)}
    assert at[("growprune", 0, 0)]["paper_size"] == 13_900
    assert at[("growprune", 0, 0)]["error_at_paper_size"] == 2.4   # 13.0K is the one that fits
    assert at[("growprune", 0, 1)]["error_at_paper_size"] == 2.5   # 14.0K > 13.9K: next one
    assert at[("tfs", 0, 0)]["error_at_paper_size"] is None        # never pruned that far
    assert at[("tfs", 0, 1)]["error_at_paper_size"] == 2.36
    assert at[("tfs", 1, 1)]["paper_size"] == 17_600
    assert at[("tfs", 1, 1)]["error_at_paper_size"] == 1.96
    # Pairs: per seed at the larger final size.
    pairs = {(r["policy"], r["round"], r["seed"]): r for r in
             matched.pair_rows(rows, "growprune")}
    assert set(pairs) == {("tfs", 0, 0), ("tfs", 0, 1), ("tfs", 1, 0), ("tfs", 1, 1)}
    p = pairs[("tfs", 0, 0)]  # finals 13.0K (ours) and 20.0K (tfs): budget 20K
    assert (p["budget"], p["error"], p["error_reference"]) == (20000, 2.1, 2.2)
    p = pairs[("tfs", 1, 1)]  # finals 17.5K and 16.5K: budget 17.5K
    assert (p["budget"], p["error"], p["error_reference"]) == (17500, 1.96, 1.9)
    # Class-incremental rounds and configs without a paper table get no paper size.
    other = [{**r, "config": "resnet18_mnist"} for r in rows[:1]] + \
            [{**r, "classes": [1, 2]} for r in rows[1:2]]
    assert [r["paper_size"] for r in matched.paper_size_rows(other)] == [None, None]


def _table_lines(text, heading):
    """The cells of the first Markdown table after ``heading``."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| round"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table


def test_matched_size_markdown_section():
    rows = _curve_rows()
    text = report.markdown_table(rows)
    assert "## Matched sizes" in text and "at or under" in text
    lines = _table_lines(text, "### At the paper's size")
    assert lines[0] == ["round", "data", "paper size (K)", "paper TFS", "paper Ours (GrowPrune)",
                        "TFS", "Ours (GrowPrune)"]
    r0, r1 = lines[2], lines[3]
    assert r0[:5] == ["0", "10%", "13.9", "2.27", "2.19"]
    assert r0[5] == "2.36 (1/2)"                       # one tfs seed never got that small
    assert r0[6] == "2.45 ± 0.05"                      # mean of 2.4, 2.5; s.e. 0.05
    assert r1[:5] == ["1", "20%", "17.6", "1.80", "1.70"]
    assert r1[5] == "1.93 ± 0.03" and r1[6] == "1.80 ± 0.10"
    pair = _table_lines(text, "### Ours (GrowPrune) vs each baseline")
    assert pair[0] == ["round", "data", "baseline", "size (K)", "baseline", "Ours (GrowPrune)",
                       "seeds"]
    # round 0: budgets 20.0K and 13.6K -> 16.8 ± 3.2 K; tfs 2.1, 2.36; ours 2.2, 2.5
    assert pair[2] == ["0", "10%", "TFS", "16.8 ± 3.2", "2.23 ± 0.13", "2.35 ± 0.15", "2"]
    # Older rows (no curve) report exactly as before.
    old = [{k: v for k, v in r.items() if k != "prune_curve"} for r in rows]
    plain = report.markdown_table(old)
    assert "Matched sizes" not in plain and text.startswith(plain.rstrip("\n"))
    assert "curve" not in report.build_figures(old)
    plt.close("all")


def test_two_configs_are_separate_series_never_averaged():
    """Rows of two configs (an H-LSTM and an LSTM run, say) are one series per (policy,
    config): means never mix them, pairs stay within a config, labels name the config."""
    a = _curve_rows()
    b = [{**r, "config": "lenet300_wide", "test_error": r["test_error"] + 1.0,
          "prune_curve": [{**c, "test_error": c["test_error"] + 1.0} for c in r["prune_curve"]]}
         for r in a if r["policy"] == "growprune" or r["round"] == 0]
    rows = a + b
    summ = {(s["policy"], s["round"]): s for s in report.summarise(rows)}
    assert summ[("growprune @ lenet300_mnist", 1)]["test_error_mean"] == pytest.approx(1.85)
    assert summ[("growprune @ lenet300_wide", 1)]["test_error_mean"] == pytest.approx(2.85)
    assert ("tfs @ lenet300_wide", 1) not in summ and ("growprune", 1) not in summ
    assert report.label_variants(a) == a                      # one config: unchanged
    assert report.label_variants(report.label_variants(rows)) == report.label_variants(rows)
    assert report.policy_label("gp @ x") == "Ours (GrowPrune) @ x"
    assert report.base_policy("NeST @ x") == "nest" and report.policy_key("Ours @ x") == \
        "growprune @ x"
    text = report.markdown_table(rows)
    header = _table_lines(text, "| round")[0]
    # config-major order: each config's policies in paper order
    assert header[2:6] == [f"error % {p} @ lenet300_{c}" for c in ("mnist", "wide")
                           for p in ("TFS", "Ours (GrowPrune)")]
    # one pair table per config's GrowPrune, pairing it with that config's TFS only
    mnist = _table_lines(text, "### Ours (GrowPrune) @ lenet300_mnist vs each baseline")
    wide = _table_lines(text, "### Ours (GrowPrune) @ lenet300_wide vs each baseline")
    assert [r[2] for r in mnist[2:]] == ["TFS @ lenet300_mnist"] * 2
    assert [r[:3] for r in wide[2:]] == [["0", "10%", "TFS @ lenet300_wide"]]
    assert wide[2][4:6] == ["3.23 ± 0.13", "3.35 ± 0.15"]     # the first config's + 1 point
    # and per policy run under both configs, the first config against the other, per seed
    cells = _table_lines(text, "### Ours (GrowPrune) @ lenet300_mnist vs the other configs")
    assert cells[0] == ["round", "data", "config", "size (K)", "config",
                        "Ours (GrowPrune) @ lenet300_mnist", "seeds"]
    # round 0: same sizes, so budgets 13.0K and 12.0K; errors 2.4, 2.5 and each + 1
    assert cells[2] == ["0", "10%", "Ours (GrowPrune) @ lenet300_wide", "12.5 ± 0.5",
                        "3.45 ± 0.05", "2.45 ± 0.05", "2"]
    assert [r[0] for r in cells[2:]] == ["0", "1"]
    tfs = _table_lines(text, "### TFS @ lenet300_mnist vs the other configs")
    assert [r[:3] for r in tfs[2:]] == [["0", "10%", "TFS @ lenet300_wide"]]
    fig = report.curve_figure(rows)
    labels = [ln.get_label() for ln in fig.axes[0].lines if not ln.get_label().startswith("_")]
    assert labels[:3] == ["TFS @ lenet300_mnist", "Ours (GrowPrune) @ lenet300_mnist",
                          "Ours (GrowPrune) @ lenet300_wide"]
    plt.close("all")


def test_curve_plot(tmp_path):
    rows = _curve_rows()
    fig = report.curve_figure(rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curves = [ln for ln in ax.lines if len(ln.get_xdata()) > 1]
    # last round (1): tfs seeds 0, 1 then growprune seeds 0, 1 (paper order)
    np.testing.assert_array_equal(curves[0].get_xdata(), [266000, 25000, 17000])
    np.testing.assert_array_equal(curves[3].get_ydata(), [1.6, 1.75, 1.9])
    star = [ln for ln in ax.lines if ln.get_label().startswith("paper Ours")]
    assert star and star[0].get_xdata()[0] == 17_600 and star[0].get_ydata()[0] == 1.70
    plt.close(fig)
    paths = report.plot_rows(rows, tmp_path)
    assert paths[-1].name == "error_vs_params_last_round.png"
    assert paths[-1].read_bytes()[:8] == PNG_MAGIC
    plt.close("all")


def test_paper_tables_hold_the_figures_numbers():
    f10, f11 = paper.paper_table("lenet300_mnist"), paper.paper_table("lenet5_mnist_tiny")
    assert f10.figure == "FIG. 10" and f11.figure == "FIG. 11"
    assert paper.paper_table("resnet18_mnist") is None and paper.paper_table(None) is None
    assert paper.paper_table("ds2_hlstm_synthetic_cpu").figure == "FIG. 13"
    assert paper.fig7_row("ds2_hlstm_synthetic_cpu").network == "DeepSpeech2"
    assert [None if v is None else v / 1e3 for v in f10.params["growprune"]] == \
        [13.9, 17.6, 17.0, 13.8, 17.0, 26.5, 21.5, None, 20.8, 21.7]
    assert f10.error["growprune"] == (2.19, 1.70, 1.60, 1.55, None, 1.39, 1.35, 1.36, 1.33, 1.33)
    assert f10.error["tfs"] == (2.27, 1.80, 1.66, 1.63, 1.58, 1.43, 1.41, None, None, 1.40)
    assert [None if v is None else v / 1e3 for v in f10.params["tfs"]] == \
        [19.4, 22.7, 23.9, 20.5, 26.5, 27.8, 25.1, 29.3, 27.8, 31.3]
    assert [v / 1e3 for v in f11.params["growprune"]] == \
        [4.9, 5.5, 6.2, 5.9, 6.0, 7.5, 6.3, 7.7, 7.9, 6.7]
    assert f11.error["growprune"] == (1.45, 1.23, 0.97, 0.92, 0.93, 0.90, 0.87, 0.87, 0.87, 0.83)
    assert f11.error["tfs"] == (1.62, 1.28, 1.01, 0.97, 0.95, 0.93, 0.90, 0.90, 0.88, 0.88)
    assert [None if v is None else v / 1e3 for v in f11.params["tfs"]] == \
        [5.3, 5.0, 6.5, 6.5, 7.2, None, 8.0, 9.6, 10.9, 10.3]
    assert paper.paper_value(f10, "params", "growprune", 0.8) is None
    assert paper.paper_value(f10, "epochs", "growprune", 100) == 49  # percent accepted too
    assert paper.paper_value(f10, "error", "growprune", 1 / 3) is None
    with pytest.raises(ValueError, match="'error', 'params' or 'epochs'"):
        paper.paper_value(f10, "size", "growprune", 0.1)


def test_method_doc_tables_match_the_data_module():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    assert paper.markdown_tables() in doc
    assert "shared/spec" not in doc and "SPEC.md" not in doc


# ----------------------------------------------------------------------------- safe files


def test_unreadable_results_file_is_named_and_skipped(tmp_path, capsys, rows):
    report.write_rows(rows[:3], tmp_path / "runs" / "good")
    bad = tmp_path / "runs" / "bad" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"format": "gpjax-results", "rows": [')   # a run killed mid-write
    odd = tmp_path / "runs" / "odd" / "results.json"
    odd.parent.mkdir(parents=True)
    odd.write_text('{"rows": [{"policy": "tfs"}]}')             # rows without seed/round
    got = report.load_rows([tmp_path / "runs"])
    assert got == rows[:3]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"gpjax: skipped {bad}: ") and "Expecting value" in err[0]
    assert err[1].startswith(f"gpjax: skipped {odd}: ") and "lacks" in err[1]
    with pytest.raises(ValueError, match=re.escape(f"cannot read results file {bad}")):
        report.load_rows([bad], on_error="raise")
    assert report.load_rows([bad, odd]) == []
    capsys.readouterr()
    # The command reports what it can read (exit 0) and fails only when nothing could be read.
    assert cli.main(["report", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr()
    assert "| round |" in out.out and f"skipped {bad}" in out.err
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "results.json").write_text("not json")
    assert cli.main(["report", str(only_bad)]) == 1
    assert "skipped" in capsys.readouterr().err


def test_result_files_and_plots_get_the_umask_mode(tmp_path, rows):
    old = os.umask(0o022)
    try:
        jp, cp = report.write_rows(rows, tmp_path / "out")
        png = tmp_path / "out" / "heat.png"  # every PNG goes through the same save_figure
        report.pixel_connection_heatmap(np.ones((4, 3)), png, shape=(2, 2), dpi=20)
        for p in (jp, cp, png):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        os.umask(0o077)
        report.write_rows(rows, tmp_path / "private")
        assert stat.S_IMODE((tmp_path / "private" / "results.json").stat().st_mode) == 0o600
        # A file left at 0600 (by an older version) gets the umask's mode on its next write.
        os.umask(0o022)
        os.chmod(jp, 0o600)
        report.write_rows(rows, tmp_path / "out")
        assert stat.S_IMODE(jp.stat().st_mode) == 0o644
    finally:
        os.umask(old)
        plt.close("all")


def test_recoverability_table_is_fig7_of_the_last_round():
    def row(policy, seed, rnd, frac, err, params, nerr, nparams):
        return {**_row(policy, seed, rnd, err, params, 50.0), "data_fraction": frac,
                "test_error_nonrecoverable": nerr, "params_nonrecoverable": nparams,
                "config": "lenet300_mnist"}

    rows = [row("tfs", s, 9, 1.0, 1.40 + 0.02 * s, 30000, 1.50 + 0.02 * s, 15000)
            for s in range(2)]
    rows += [row("growprune", 0, 9, 1.0, 1.30, 20000, 1.36, 11000),
             {**row("growprune", 0, 8, 0.9, 1.5, 9, 1.6, 5), "params_nonrecoverable": None}]
    text = report.recoverability_table(rows)
    assert "round 9" in text
    assert "| TFS | 2 | 100% | 1.41 ± 0.01 | 30.0 ± 0.0 | 1.51 ± 0.01 | 15.0 ± 0.0 |" in text
    assert "| Ours (GrowPrune) | 1 | 100% | 1.30 | 20.0 | 1.36 | 11.0 |" in text
    assert "| paper (LeNet-300-100) | | 100% | 1.33 | 21.7 | 1.40 | 12.2 |" in text
    assert "FIG. 7" in report.markdown_table(rows)
    # Not all the data yet: no paper row; no non-recoverable model in the last round: nothing.
    assert "paper" not in report.recoverability_table(
        [{**r, "data_fraction": 0.5} for r in rows])
    assert report.recoverability_table(
        [{**r, "params_nonrecoverable": None} for r in rows]) == ""
