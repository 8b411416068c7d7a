"""eSpeak NG, from the PyPI wheel ``espeakng-loader``, as a deterministic speech synthesiser.

:func:`espeak_synthesize` drives ``libespeak-ng.so`` through ctypes in worker processes
(:mod:`gpjax.data.speech._espeak_worker`, run as a script in a fresh interpreter):
``espeak_Initialize`` with ``AUDIO_OUTPUT_SYNCHRONOUS`` and a synth callback collecting 22,050
Hz int16 samples.

Determinism: eSpeak NG keeps internal state between utterances, so in one process the same
call does not give the same samples twice (they differ from about the 64th sample on, even with
its random seed and libc's ``srand`` reset; a fresh process replaying the same calls does
repeat them). Each utterance is therefore synthesised in a freshly forked copy of a worker
process that has only initialised the library (no other synthesis), with eSpeak's random seed
set per utterance: every utterance is a pure function of its job, whatever the number of
workers. Linux (or any POSIX system with ``fork``) is needed.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpjax.data.cache import DataUnavailableError

__all__ = ["ESPEAK_RATE", "ESPEAK_SPEC", "espeak_synthesize", "espeakng_loader_version"]

ESPEAK_SPEC = "espeakng-loader>=0.2.4,<0.3"
"""The wheel the synthesis needs (``pip install 'gpjax-incremental[speech]'``)."""
ESPEAK_RATE = 22_050
"""eSpeak NG's output sample rate, Hz."""
_WORKER = Path(__file__).with_name("_espeak_worker.py")


def espeakng_loader_version() -> str:
    """The installed ``espeakng-loader`` version, ``"none"`` when it is not installed."""
    try:
        return importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _espeak_paths() -> tuple[str, str, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise DataUnavailableError(
            "The synthetic AN4 corpus needs eSpeak NG from the PyPI wheel 'espeakng-loader', "
            f"which is not installed. Fix: pip install '{ESPEAK_SPEC}' (or "
            "pip install 'gpjax-incremental[speech]'), or use load_an4 with CMU's AN4.") from None
    if not hasattr(os, "fork"):
        raise DataUnavailableError(
            "Synthesising the corpus needs os.fork (Linux or macOS): each utterance is spoken "
            "by a freshly forked process for determinism. Fix: synthesise it on Linux/macOS "
            "and copy the cache file (synthetic_an4-*.npz) here.")
    lib, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    if not Path(lib).is_file():
        raise DataUnavailableError(f"espeakng-loader is installed but {lib} is missing. Fix: "
                                   f"pip install --force-reinstall '{ESPEAK_SPEC}'.")
    return lib, data, espeakng_loader_version()


def _run_worker(lib: str, data: str, jobs: list[dict]) -> list[np.ndarray]:
    proc = subprocess.run([sys.executable, "-I", str(_WORKER), lib, data],
                          input=json.dumps(jobs).encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("eSpeak NG synthesis failed: "
                           + proc.stderr.decode(errors="replace").strip()[-2000:])
    buf = proc.stdout
    (rate,) = struct.unpack_from("<i", buf, 0)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"eSpeak NG runs at {rate} Hz, expected {ESPEAK_RATE}.")
    pos, out = 4, []
    for _ in jobs:
        (size,) = struct.unpack_from("<q", buf, pos)
        pos += 8
        out.append(np.frombuffer(buf[pos:pos + size], np.int16).copy())
        pos += size
    return out


def espeak_synthesize(jobs: Sequence[dict], *, workers: int | None = None) -> list[np.ndarray]:
    """Speaks texts with eSpeak NG (from ``espeakng-loader``), each from a fresh library state.

    Args:
      jobs: dicts with ``text`` (str), ``voice`` (e.g. ``"en-us+f3"``), ``rate`` (words per
        minute, 80-450), ``pitch`` (0-100), ``range`` (pitch range, 0-100), ``wordgap`` (extra
        pause between words, 10 ms units) and ``seed`` (eSpeak's noise generator).
      workers: parallel worker processes (default ``min(4, cpu_count)``); the output does not
        depend on it.

    Returns:
      One int16 ``[S_i]`` array per job at 22,050 Hz.

    Raises:
      DataUnavailableError: ``espeakng-loader`` is not installed.
      RuntimeError: the synthesis failed (an unknown voice, say).
    """
    lib, data, _ = _espeak_paths()
    jobs = list(jobs)
    if not jobs:
        return []
    workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(jobs)))
    bounds = np.linspace(0, len(jobs), workers + 1).astype(int)
    chunks = [jobs[a:b] for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda c: _run_worker(lib, data, c), chunks))
    return [a for part in results for a in part]
