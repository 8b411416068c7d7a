"""The source's published results as data: reference values for reports and docs.

Numbers of the patent's FIG. 7 and FIG. 10-13 (US 12,393,842 B2; arXiv 1905.10952), read off
rotated table images: ``None`` marks a cell that could not be read. Every per-update table has
one entry per data fraction 10%, 20%, ..., 100% (None where the figure gives no row, e.g. the
speech protocol starts at 40%). Parameters are counts of active connections (not thousands).

:func:`paper_table` finds the table of an experiment config by name, :func:`paper_value` reads
one cell by policy and data fraction; ``docs/method.md`` prints these same tables (a test checks
they agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

#: The data fractions of the per-update tables.
FRACTIONS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))
#: The policies of the per-update tables, in the figures' column order.
PAPER_POLICIES: tuple[str, ...] = ("tfs", "nft", "nest", "growprune")

Cells = tuple[float | None, ...]


class PaperTable(NamedTuple):
    """One per-update results figure of the source.

    Attributes:
      figure: e.g. ``"FIG. 10"``.
      title: network and dataset.
      error_metric: what ``error`` holds (``"error %"``, ``"top-5 error %"``, ``"WER %"``).
      error: policy -> 10 errors (percent), one per data fraction.
      params: policy -> 10 active-parameter counts.
      epochs: policy -> 10 training costs (epochs normalised to all data of that update).
      configs: experiment-config name prefixes the table is the reference for.
    """

    figure: str
    title: str
    error_metric: str
    error: Mapping[str, Cells]
    params: Mapping[str, Cells]
    epochs: Mapping[str, Cells]
    configs: tuple[str, ...]


def _row(*values: float | None) -> Cells:
    assert len(values) == len(FRACTIONS)
    return tuple(values)


def _scaled(scale: float, *values: float | None) -> Cells:
    return _row(*(None if v is None else round(v * scale) for v in values))


def _sparse(entries: Mapping[float, float]) -> Cells:
    """Ten cells with values only at the given data fractions."""
    return _row(*(entries.get(f) for f in FRACTIONS))


_ = None  # an unreadable cell, in the tables below

FIG10 = PaperTable(
    "FIG. 10", "LeNet-300-100 on MNIST", "error %",
    error={"tfs": _row(2.27, 1.80, 1.66, 1.63, 1.58, 1.43, 1.41, _, _, 1.40),
           "nft": _row(2.27, 1.84, 1.68, 1.62, 1.66, 1.51, 1.42, 1.42, 1.43, _),
           "nest": _row(2.19, 1.72, 1.62, 1.55, 1.57, 1.41, 1.37, 1.36, 1.36, 1.34),
           "growprune": _row(2.19, 1.70, 1.60, 1.55, _, 1.39, 1.35, 1.36, 1.33, 1.33)},
    params={"tfs": _scaled(1e3, 19.4, 22.7, 23.9, 20.5, 26.5, 27.8, 25.1, 29.3, 27.8, 31.3),
            "nft": _scaled(1e3, 19.4, 20.5, 21.5, 22.7, 23.9, 29.3, 26.5, 27.8, 30.9, 32.5),
            "nest": _scaled(1e3, 13.9, 17.1, 18.4, 19.7, 20.2, 26.8, 28.2, 25.3, 25.4, 23.6),
            "growprune": _scaled(1e3, 13.9, 17.6, 17.0, 13.8, 17.0, 26.5, 21.5, _, 20.8, 21.7)},
    epochs={"tfs": _row(141, 131, 136, 131, 135, 140, 139, 141, 134, 137),
            "nft": _row(141, 136, 130, 124, 135, 109, 133, 127, 124, 131),
            "nest": _row(166, 171, 153, 172, 158, 147, 167, 189, 174, 162),
            "growprune": _row(166, 109, 93, 79, 82, _, _, _, _, 49)},
    configs=("lenet300_mnist",),
)

FIG11 = PaperTable(
    "FIG. 11", "LeNet-5 on MNIST", "error %",
    error={"tfs": _row(1.62, 1.28, 1.01, 0.97, 0.95, 0.93, 0.90, 0.90, 0.88, 0.88),
           "nft": _row(1.62, 1.30, 1.05, 0.99, 1.00, 0.97, 0.94, 0.90, 0.91, 0.90),
           "nest": _row(1.45, 1.22, 1.04, 0.93, 0.93, 0.89, 0.89, 0.88, 0.89, 0.84),
           "growprune": _row(1.45, 1.23, 0.97, 0.92, 0.93, 0.90, 0.87, 0.87, 0.87, 0.83)},
    params={"tfs": _scaled(1e3, 5.3, 5.0, 6.5, 6.5, 7.2, _, 8.0, 9.6, 10.9, 10.3),
            "nft": _scaled(1e3, 5.3, 6.5, 6.1, 6.8, 6.8, 7.6, 8.4, _, _, 10.2),
            "nest": _scaled(1e3, 4.9, 5.5, 6.1, 6.0, 6.3, 6.7, 6.9, 7.5, 8.2, _),
            "growprune": _scaled(1e3, 4.9, 5.5, 6.2, 5.9, 6.0, 7.5, 6.3, 7.7, 7.9, 6.7)},
    epochs={"tfs": _row(148, 141, 136, 151, 135, 120, 129, 131, 124, 129),
            "nft": _row(148, 126, 118, 134, _, 119, 99, 119, 127, 115),
            "nest": _row(162, 177, 187, 154, 161, 153, 168, _, 149, 161),
            "growprune": _row(162, _, 92, _, 83, 69, 66, 52, 56, 43)},
    configs=("lenet5_mnist",),
)

FIG12 = PaperTable(
    "FIG. 12", "ResNet-18 on ImageNet", "top-5 error %",
    error={p: _sparse({0.1: a, 1.0: b}) for p, a, b in
           zip(PAPER_POLICIES, (30.40, 30.40, 30.36, 30.36), (11.25, 11.27, 11.17, 11.12))},
    params={p: _sparse({0.1: a * 1e6}) for p, a in zip(PAPER_POLICIES, (2.8, 2.8, 1.9, 1.9))},
    epochs={p: _sparse({0.1: a, 1.0: b}) for p, a, b in
            zip(PAPER_POLICIES, (229, 229, 269, 269), (241, 213, 292, 86))},
    configs=("resnet18_imagenet",),
)

FIG13 = PaperTable(
    "FIG. 13", "DeepSpeech2 with H-LSTM on AN4", "WER %",
    error={p: _sparse({0.4: a, 1.0: b}) for p, a, b in
           zip(PAPER_POLICIES, (48.1, 48.1, 45.8, 45.8), (12.4, 12.6, 11.9, 11.7))},
    params={p: _sparse({1.0: a * 1e6}) for p, a in zip(PAPER_POLICIES, (7.4, 7.6, 6.1, 5.7))},
    epochs={p: _sparse({0.4: a, 1.0: b}) for p, a, b in
            zip(PAPER_POLICIES, (267, 267, 313, 313), (269, 232, 308, 88))},
    configs=("ds2_hlstm_an4", "ds2_hlstm_synthetic"),
)

#: The per-update tables, in figure order.
TABLES: tuple[PaperTable, ...] = (FIG10, FIG11, FIG12, FIG13)


class PruningResult(NamedTuple):
    """FIG. 7: one network's final model after recoverable and non-recoverable pruning."""

    network: str
    error_metric: str
    recoverable_error: float
    recoverable_params: int
    nonrecoverable_error: float
    nonrecoverable_params: int


#: FIG. 7, recoverable vs non-recoverable pruning of the final (100%) model.
FIG7: tuple[PruningResult, ...] = (
    PruningResult("LeNet-300-100", "error %", 1.33, 21_700, 1.40, 12_200),
    PruningResult("LeNet-5", "error %", 0.83, 7_900, 0.88, 5_400),
    PruningResult("ResNet-18", "top-5 error %", 11.12, 3_900_000, 11.25, 2_800_000),
    PruningResult("DeepSpeech2", "WER %", 11.7, 5_700_000, 12.4, 3_100_000),
)


def paper_table(config: str | None) -> PaperTable | None:
    """The per-update table an experiment config reproduces, by name prefix, or None.

    ``lenet300_mnist*`` -> FIG. 10, ``lenet5_mnist*`` -> FIG. 11, ``resnet18_imagenet*`` ->
    FIG. 12, ``ds2_hlstm_an4*`` and ``ds2_hlstm_synthetic*`` (AN4's synthetic stand-in) ->
    FIG. 13 (reduced ``*_tiny`` and CPU-size variants included: their sizes are not the
    paper's, which a report then shows as out of reach).
    """
    if not config:
        return None
    for t in TABLES:
        if any(str(config).startswith(prefix) for prefix in t.configs):
            return t
    return None


_FIG7_BY_FIGURE = {"FIG. 10": "LeNet-300-100", "FIG. 11": "LeNet-5", "FIG. 12": "ResNet-18",
                   "FIG. 13": "DeepSpeech2"}


def fig7_row(config: str | None) -> PruningResult | None:
    """FIG. 7's row for the network an experiment config trains (via :func:`paper_table`)."""
    table = paper_table(config)
    if table is None:
        return None
    return next(r for r in FIG7 if r.network == _FIG7_BY_FIGURE[table.figure])


def fraction_index(fraction: float | None) -> int | None:
    """Position of a data fraction (0.1, ..., 1.0; or percent 10 ... 100) in the tables, or None
    when it is not one of them (e.g. 1/3 of a three-chunk run)."""
    if fraction is None:
        return None
    f = float(fraction) / (100.0 if float(fraction) > 1.0 + 1e-9 else 1.0)
    for i, g in enumerate(FRACTIONS):
        if abs(f - g) < 1e-6:
            return i
    return None


def paper_value(table: PaperTable, what: str, policy: str,
                fraction: float | None) -> float | None:
    """One cell: ``what`` in ``("error", "params", "epochs")``, a policy key of
    :data:`PAPER_POLICIES`, a data fraction. None when unreadable or not in the figure."""
    if what not in ("error", "params", "epochs"):
        raise ValueError(f"what must be 'error', 'params' or 'epochs', got {what!r}")
    i = fraction_index(fraction)
    cells: Sequence[float | None] | None = getattr(table, what).get(policy)
    return None if i is None or cells is None else cells[i]


def _cell(v: float | None, scale: float = 1.0, dec: int = 2) -> str:
    return "?" if v is None else f"{v * scale:.{dec}f}"


def markdown_tables() -> str:
    """All of the tables above as Markdown ("?" = unreadable, "" = no such row in the figure);
    ``docs/method.md`` embeds exactly this text."""
    out = ["FIG. 7, the final model after recoverable and non-recoverable pruning:", "",
           "| network | metric | recoverable: error, params | non-recoverable: error, params |",
           "|---|---|---:|---:|"]
    for r in FIG7:
        out.append(f"| {r.network} | {r.error_metric} | {r.recoverable_error:.2f}, "
                   f"{r.recoverable_params:,} | {r.nonrecoverable_error:.2f}, "
                   f"{r.nonrecoverable_params:,} |")
    for t in TABLES:
        big = any(v is not None and v >= 1e6 for c in t.params.values() for v in c)
        unit, scale = ("M", 1e-6) if big else ("K", 1e-3)
        sparse = t.figure in ("FIG. 12", "FIG. 13")
        note = "; only the rows the text gives, ? = not given" if sparse else "; ? = unreadable"
        out += ["", f"{t.figure}, {t.title} ({t.error_metric}; parameters in {unit}; epochs "
                    f"normalised to all data of the update{note}). Columns TFS / NFT / NeST / "
                    f"Ours:", "",
                f"| data | {t.error_metric} | params ({unit}) | epochs |", "|---|---|---|---|"]
        for i, f in enumerate(FRACTIONS):
            cols = [[getattr(t, what)[p][i] for p in PAPER_POLICIES]
                    for what in ("error", "params", "epochs")]
            if sparse and all(v is None for c in cols for v in c):
                continue  # the figure gives no row for this data fraction
            line = [f"{f:.0%}",
                    " ".join(_cell(v) for v in cols[0]),
                    " ".join(_cell(v, scale, 1) for v in cols[1]),
                    " ".join(_cell(v, 1.0, 0) for v in cols[2])]
            out.append("| " + " | ".join(line) + " |")
    return "\n".join(out) + "\n"
