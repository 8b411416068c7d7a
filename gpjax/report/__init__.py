"""Results of incremental runs: JSON/CSV rows, replicate summaries, paper-style tables, plots.

A *row* is one dict per policy x seed x round::

    {"policy": "growprune", "seed": 0, "round": 3, "data_fraction": 0.3,
     "test_error": 1.62,            # percent
     "val_error": 1.70,             # percent
     "params_recoverable": 17000,   # active connections of the model the next round inherits
     "params_nonrecoverable": 9800, # of the optional ultra-compact model (None if not made)
     "epochs": 93.0,                # training cost of this round, epochs normalised to all data
     "epochs_cumulative": 402.0, "wall_time_s": 31.4, "examples": 5_115_000,
     "prune_curve": [{"active": 60000, "val_error": 1.6, "test_error": 1.5}, ...],
     ...}                           # free extra keys are kept

``prune_curve`` (optional; older results lack it): the model before the round's recoverable
pruning and after each held iteration, in order (:mod:`gpjax.matched`). Rows also record the
cost under the paper's reading (``epochs_paper``, ``epochs_paper_cumulative``,
``epochs_paper_by_phase``), each phase's passes (``phase_passes``), every pruning iteration
(``prune_log``), why pruning stopped (``prune_stopped``) and the budget (``max_epochs``,
``target_params``); rows written before these existed lack them, and the report shows "—"
or leaves their sections out (:func:`cost_table`, :func:`pruning_table`,
:func:`iteration_table`).

:func:`write_rows` / :func:`load_rows` store and read them (``results.json`` + ``results.csv``;
unreadable files are named and skipped), :func:`summarise` averages replicates (mean and
standard error over seeds), :func:`markdown_table` renders the comparison table in the layout of
the patent's FIG. 10 followed by FIG. 7's :func:`recoverability_table` (the last round's
recoverable vs non-recoverable models) and, for rows with curves, :func:`matched_size_tables`
(errors at the paper's size and at matched sizes of each pair of policies),
:func:`plot_rows` draws error, parameters and cost versus round and :func:`curve_figure` the
last round's error-versus-size curves. Rows of several configs are one series per (policy,
config), named ``"<policy> @ <config>"`` (:func:`label_variants`), so a report of an H-LSTM and
an LSTM run compares them instead of averaging them. FIG. 5's :func:`pixel_connection_heatmap` /
:func:`pixel_connection_heatmaps` live in :mod:`gpjax.heatmaps` and are importable from here.
Files are written atomically with the umask's mode (:mod:`gpjax._files`).

Modules: :mod:`~gpjax.report.rows` (the row format and files), :mod:`~gpjax.report.tables`
(summaries and Markdown tables), :mod:`~gpjax.report.plots` (figures).
"""

from gpjax.heatmaps import (
    pixel_connection_counts,
    pixel_connection_heatmap,
    pixel_connection_heatmaps,
)
from gpjax.report.plots import (
    build_figures,
    curve_figure,
    plot_rows,
)
from gpjax.report.rows import (
    COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    ID_KEYS,
    METRIC_FORMATS,
    POLICY_NAMES,
    POLICY_ORDER,
    RESULTS_CSV,
    RESULTS_JSON,
    VARIANT_SEP,
    Row,
    base_policy,
    columns,
    label_variants,
    load_rows,
    ordered_policies,
    policy_key,
    policy_label,
    write_rows,
)
from gpjax.report.tables import (
    cost_table,
    iteration_table,
    markdown_table,
    matched_size_tables,
    numeric_metrics,
    pruning_table,
    recoverability_table,
    summarise,
)

__all__ = [
    "COLUMNS", "FORMAT", "FORMAT_VERSION", "ID_KEYS", "METRIC_FORMATS", "POLICY_NAMES",
    "POLICY_ORDER", "RESULTS_CSV", "RESULTS_JSON", "Row", "VARIANT_SEP", "base_policy",
    "build_figures", "columns", "cost_table", "curve_figure", "iteration_table",
    "label_variants", "load_rows", "markdown_table",
    "matched_size_tables", "numeric_metrics", "recoverability_table", "ordered_policies",
    "pixel_connection_counts", "pixel_connection_heatmap", "pixel_connection_heatmaps",
    "plot_rows", "policy_key", "policy_label", "pruning_table", "summarise", "write_rows",
]
