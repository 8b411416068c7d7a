"""What every benchmark here shares: timing, the PyTorch thread choice, machine info, results.

* :class:`Timer`: times a group of functions round-robin (so load changes on a shared machine
  hit every case alike); functions named ``torch*`` are timed at each of its thread counts and
  reported at the fastest, the per-count medians kept in ``Timer.choice``. The thread counts are
  a value passed in, never a module global.
* :func:`med`, :func:`pct`: median and percentiles of samples.
* :func:`machine`, :func:`versions`, :func:`load_average`, :func:`command_line`: run metadata.
* :func:`write_results`: ``<out>/<stem>.md`` and ``<out>/<stem>.json``.

Importing this module sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already (before
PyTorch starts its OpenMP threads): spinning OpenMP workers of a PyTorch call otherwise take
CPU from the JAX call timed right after it in a round-robin group.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def med(samples: Sequence[float]) -> float:
    """The median of timing samples."""
    return statistics.median(samples)


def pct(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of timing samples."""
    s = sorted(samples)
    if not s:
        raise ValueError("pct of no samples")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def default_threads() -> tuple[int, ...]:
    """1 and the number of CPUs (PyTorch is timed at both and counted at its fastest)."""
    return tuple(sorted({1, os.cpu_count() or 1}))


def parse_threads(text: str | None) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; None -> :func:`default_threads`."""
    return tuple(int(t) for t in text.split(",")) if text else default_threads()


def _with_threads(fn: Callable[[], object], n: int) -> Callable[[], object]:
    import torch

    def run():
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return fn()

    return run


@dataclass
class Timer:
    """Round-robin timing with the PyTorch thread count chosen per case.

    Attributes:
      threads: ``torch.set_num_threads`` values each ``torch*`` function is timed at.
      choice: per ``torch*`` case name, median seconds at each thread count (filled by
        :meth:`group`; a later group with the same name overwrites it).
    """

    threads: tuple[int, ...] = (1,)
    choice: dict[str, dict[int, float]] = field(default_factory=dict)

    def group(self, fns: dict[str, Callable[[], object]], repeats: int,
              warmup: int = 1, steady: bool = False) -> dict[str, list[float]]:
        """Seconds per call of each function, run round-robin ``repeats`` times after warm-up.

        Every function must block until its result is ready (``jax.block_until_ready``).
        ``steady``: each timed call follows an untimed one of the same function, so it finds
        its weights in cache as repeated calls of a deployed model do (inference latency; see
        :func:`gpjax.export.time_calls`).
        Returns, per name, the samples (for ``torch*``: those of the fastest thread count).
        """
        expanded: dict[str, Callable[[], object]] = {}
        for name, fn in fns.items():
            if name.startswith("torch"):
                for n in self.threads:
                    expanded[f"{name}@{n}"] = _with_threads(fn, n)
            else:
                expanded[name] = fn
        for fn in expanded.values():
            for _ in range(warmup):
                fn()
        raw: dict[str, list[float]] = {name: [] for name in expanded}
        for _ in range(repeats):
            for name, fn in expanded.items():
                if steady:
                    fn()
                t0 = time.perf_counter()
                fn()
                raw[name].append(time.perf_counter() - t0)
        samples = {}
        for name in fns:
            if name.startswith("torch"):
                per = {n: raw[f"{name}@{n}"] for n in self.threads}
                self.choice[name] = {n: med(v) for n, v in per.items()}
                samples[name] = min(per.values(), key=med)
            else:
                samples[name] = raw[name]
        return samples

    def choice_json(self) -> dict[str, dict[str, float]]:
        """:attr:`choice` with string keys (for JSON)."""
        return {k: {str(n): v for n, v in d.items()} for k, d in self.choice.items()}


def best_threads(by_threads: dict) -> str:
    """The thread count (key) with the smallest time."""
    return min(by_threads, key=by_threads.get)


def fresh_copy(tree: Any) -> Any:
    """A copy of a pytree of arrays (via host memory: no compilation per shape)."""
    import jax.numpy as jnp
    import numpy as np

    return jax.tree.map(lambda a: jnp.asarray(np.array(a)), tree)


def machine() -> str:
    """OS, architecture, CPU model and count."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    omp = os.environ.get("OMP_WAIT_POLICY")
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs"
            + (f", OMP_WAIT_POLICY={omp}" if omp else ""))


def versions(**extra: str) -> dict[str, str]:
    """Versions of Python, JAX, jaxlib, flax, optax, numpy, gpjax (and ``extra``)."""
    import flax
    import jaxlib
    import numpy as np
    import optax

    import gpjax

    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "gpjax": gpjax.__version__, **extra}


def load_average() -> list[float]:
    """1/5/15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``python -m <module> <args>`` as run (``argv`` None: ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return f"python -m {module}" + (" " + shlex.join(args) if args else "")


def write_results(out: Path, stem: str, res: dict, markdown: str) -> Path:
    """Writes ``<out>/<stem>.md`` and ``.json``; returns the stem path. An existing result is
    never overwritten: a second run of the day gets ``<stem>_2``, then ``_3``, ..."""
    out.mkdir(parents=True, exist_ok=True)
    base, k = stem, 1
    while (out / f"{stem}.md").exists() or (out / f"{stem}.json").exists():
        k += 1
        stem = f"{base}_{k}"
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    return out / stem
