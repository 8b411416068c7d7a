"""Result rows on disk: the row format, policy names, ``results.json`` / ``results.csv``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpjax._files import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
FORMAT = "gpjax-results"
FORMAT_VERSION = 1

#: Standard columns, in CSV order; extra keys follow, sorted.
COLUMNS = ("policy", "seed", "round", "data_fraction", "test_error", "val_error",
           "params_recoverable", "params_nonrecoverable", "epochs", "epochs_cumulative",
           "wall_time_s", "examples")
#: Keys that identify a row rather than measure something.
ID_KEYS = ("policy", "seed", "round")

#: Canonical policy keys in the paper's column order, and their display names.
POLICY_ORDER = ("tfs", "nft", "nest", "merged", "growprune")
POLICY_NAMES = {"tfs": "TFS", "nft": "NFT", "nest": "NeST", "merged": "Merged",
                "growprune": "Ours (GrowPrune)"}
_POLICY_ALIASES = {"ours": "growprune", "grow_prune": "growprune", "gp": "growprune",
                   "trainfromscratch": "tfs", "networkfinetuning": "nft", "finetune": "nft",
                   "mergedtraining": "merged"}

#: How metrics are shown in tables and plots: (label, scale, decimals).
METRIC_FORMATS: dict[str, tuple[str, float, int]] = {
    "test_error": ("error %", 1.0, 2),
    "val_error": ("val. error %", 1.0, 2),
    "params_recoverable": ("params (K)", 1e-3, 1),
    "params_nonrecoverable": ("params non-rec. (K)", 1e-3, 1),
    "epochs": ("epochs", 1.0, 1),
    "epochs_cumulative": ("cumulative epochs", 1.0, 1),
    "wall_time_s": ("wall time (s)", 1.0, 1),
    "examples": ("examples (M)", 1e-6, 2),
}

Row = dict[str, Any]

#: Joins a policy and the config it ran under when a report holds several configs
#: (:func:`label_variants`): ``"growprune @ ds2_lstm_synthetic_cpu"``.
VARIANT_SEP = " @ "


# ----------------------------------------------------------------------------- policies


def _split_variant(name: str) -> tuple[str, str]:
    base, _, variant = str(name).partition(VARIANT_SEP)
    return base, variant


def base_policy(name: str) -> str:
    """Canonical key of a policy name without its variant (``"NeST @ cfg"`` -> ``"nest"``)."""
    k = re.sub(r"[^a-z0-9]", "", _split_variant(name)[0].lower())
    return _POLICY_ALIASES.get(k, k)


def policy_key(name: str) -> str:
    """Canonical lower-case key of a policy name (``"NeST"`` -> ``"nest"``, ``"Ours"`` ->
    ``"growprune"``; ``"Ours @ cfg"`` -> ``"growprune @ cfg"``); unknown names are lower-cased."""
    variant = _split_variant(name)[1]
    return base_policy(name) + (VARIANT_SEP + variant if variant else "")


def policy_label(name: str) -> str:
    """Display name of a policy (``"growprune"`` -> ``"Ours (GrowPrune)"``, ``"growprune @
    cfg"`` -> ``"Ours (GrowPrune) @ cfg"``)."""
    base, variant = _split_variant(name)
    label = POLICY_NAMES.get(base_policy(base), base)
    return label + (VARIANT_SEP + variant if variant else "")


def _policy_sort(name: str) -> tuple[str, int, str]:
    k, variant = base_policy(name), _split_variant(name)[1]
    return (variant, POLICY_ORDER.index(k) if k in POLICY_ORDER else len(POLICY_ORDER), k)


def label_variants(rows: Iterable[Row]) -> list[Row]:
    """Rows of several configs as one series per (policy, config).

    Rows of one config are returned as they are. When ``rows`` hold more than one ``config``
    (say an H-LSTM and an LSTM run of the same policies), each row's ``policy`` becomes
    ``"<policy> @ <config>"`` (copies; rows already so named are kept), so that summaries,
    tables and plots never average runs of different configs as if they were seeds, and
    matched sizes pair policies of the same config only. Idempotent.
    """
    rows = list(rows)
    if len({r.get("config") for r in rows}) < 2:
        return rows
    return [r if VARIANT_SEP in str(r["policy"]) else
            {**r, "policy": f"{r['policy']}{VARIANT_SEP}{r.get('config')}"} for r in rows]


def ordered_policies(rows: Iterable[Row]) -> list[str]:
    """The policies present in ``rows``, in the order TFS / NFT / NeST / Merged / Ours / others."""
    return sorted({r["policy"] for r in rows}, key=_policy_sort)


# ----------------------------------------------------------------------------- I/O


def _plain(v: Any) -> Any:
    """numpy/jax scalars and arrays as plain Python values (for JSON)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return v


def _check_rows(rows: Sequence[Row]) -> None:
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise TypeError(f"row {i} is a {type(r).__name__}; rows must be dicts")
        missing = [k for k in ID_KEYS if k not in r]
        if missing:
            raise ValueError(f"row {i} lacks {missing}; every row needs policy, seed and round "
                             f"(got keys {sorted(r)})")


def columns(rows: Sequence[Row]) -> list[str]:
    """CSV columns: the standard ones present (or always, for the core ones), then extras."""
    keys = set().union(*(r.keys() for r in rows)) if rows else set()
    return list(COLUMNS) + sorted(keys - set(COLUMNS))


def write_rows(rows: Sequence[Row], out_dir: str | os.PathLike, *,
               metadata: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Writes ``results.json`` and ``results.csv`` into ``out_dir``, each atomically.

    Args:
      rows: result rows (see the module doc); each needs ``policy``, ``seed``, ``round``.
      out_dir: directory (created if missing).
      metadata: JSON-able run information stored in ``results.json`` (config, command, git
        revision...).

    Returns:
      ``(json_path, csv_path)``.
    """
    rows = [_plain(dict(r)) for r in rows]
    _check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": FORMAT_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "metadata": _plain(dict(metadata or {})), "columns": columns(rows), "rows": rows}
    try:
        text = json.dumps(doc, indent=1, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"result rows/metadata must be JSON-serialisable: {e}") from e
    json_path, csv_path = out / RESULTS_JSON, out / RESULTS_CSV
    atomic_write_text(json_path, text + "\n")

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=doc["columns"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else
                        json.dumps(r[k]) if isinstance(r.get(k), (list, dict, bool)) else r[k])
                    for k in doc["columns"]})
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _parse_csv_value(s: str) -> Any:
    if s == "":
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s[:1] in "[{" or s in ("true", "false", "null"):
        try:
            return json.loads(s)
        except ValueError:
            pass
    return s


def _read_one(path: Path) -> list[Row]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [{k: _parse_csv_value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    doc = json.loads(path.read_text())
    if isinstance(doc, list):
        return doc
    if isinstance(doc, Mapping) and isinstance(doc.get("rows"), list):
        return list(doc["rows"])
    raise ValueError(f"{path} is not a results file (expected a list of rows or a dict with "
                     f"'rows'; written by gpjax.report.write_rows)")


def load_rows(paths: Sequence[str | os.PathLike] | str | os.PathLike, *,
              on_error: str = "warn") -> list[Row]:
    """Reads rows from result files or directories and concatenates them.

    Args:
      paths: ``results.json`` / ``results.csv`` files, or directories: a directory's own
        ``results.json`` if it has one, otherwise every ``results.json`` below it (e.g. one
        output directory per seed or policy).
      on_error: what an unreadable file does (truncated or invalid JSON, not a results file,
        rows without policy/seed/round, no permission): ``"warn"`` skips it with one line
        ``gpjax: skipped <path>: <reason>`` on stderr, so the other runs are still reported;
        ``"raise"`` raises ``ValueError`` naming the file.

    Returns:
      The rows of every readable file (empty when none was). Where the same (policy, seed,
      round, config) appears twice, the later file wins, with a warning.

    Raises:
      FileNotFoundError: a path does not exist or a directory holds no results.
      ValueError: ``on_error="raise"`` and a file cannot be read.
    """
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            own = p / RESULTS_JSON
            found = [own] if own.is_file() else sorted(p.rglob(RESULTS_JSON))
            if not found:
                raise FileNotFoundError(f"no {RESULTS_JSON} in or below {p}; pass the --out "
                                        f"directory of a run (or the results file itself)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"results path {p} does not exist")
    by_id: dict[tuple, Row] = {}
    for f in files:
        try:
            rows = _read_one(f)
            if not isinstance(rows, list):
                raise ValueError("expected a list of rows")
            _check_rows(rows)
        except (OSError, ValueError, TypeError) as e:  # JSON/Unicode errors are ValueErrors
            reason = " ".join(str(e).split()) or type(e).__name__
            if on_error == "raise":
                raise ValueError(f"cannot read results file {f}: {reason}") from e
            print(f"gpjax: skipped {f}: {reason}", file=sys.stderr, flush=True)
            continue
        for r in rows:  # runs of two configs are two series (label_variants), not duplicates
            ident = (str(r["policy"]), r["seed"], r["round"], r.get("config"))
            if ident in by_id:
                warnings.warn(f"duplicate result row policy={ident[0]} seed={ident[1]} "
                              f"round={ident[2]} config={ident[3]}; keeping the one from {f}",
                              stacklevel=2)
            by_id[ident] = dict(r)
    return list(by_id.values())


