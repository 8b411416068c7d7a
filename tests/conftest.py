"""Shared fixtures and settings for the core test suite."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

# One persistent XLA compilation cache per test run, shared by the xdist workers and by every
# subprocess the tests start (CLI runs, kill/resume, README blocks): most of the suite's time
# is compilation, and many tests compile the same tiny models. Speed only: a cached executable
# is the one the compiler would build. The size limit turns on JAX's file lock, so a process
# never reads an entry another is still writing. Set before JAX reads its configuration.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
XLA_CACHE = Path(tempfile.gettempdir()) / f"gpjax-tests-xla-{_RUN}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(XLA_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
try:  # JAX needs filelock (dev extra) for a size limit; without it, no limit and no lock
    import filelock  # noqa: F401
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
except ImportError:
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")

# XLA's CPU backend at optimisation level 0 for the suite: compilation, not running, is most of
# its time (tiny models, few steps), and level 0 compiles ~30% faster (two end-to-end tests on
# 2 cores: 106 s against 149 s). The flag changes how fast the compiled code runs, not what it
# computes; benchmarks and experiments never see it. Subprocesses inherit it (``SUITE_XLA_FLAGS``
# for those that build their own environment).
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()

import jax  # noqa: E402

# (The environment reaches subprocesses; this process may have imported JAX already.)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_compilation_cache_max_size",
                  int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


def pytest_sessionfinish(session, exitstatus):
    """The run's cache goes with the run (the controller, after its workers, removes it)."""
    ours = os.environ.get("JAX_COMPILATION_CACHE_DIR") == str(XLA_CACHE)  # not a user's own
    if ours and not hasattr(session.config, "workerinput"):
        shutil.rmtree(XLA_CACHE, ignore_errors=True)


import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Settings for the core's property tests (applied per test, not as a global profile, so other
# test files keep their own): small and deterministic, the suite must stay fast on 2 CPU cores.
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, print_blob=True)


@contextlib.contextmanager
def x64():
    """float64 for the duration of a block, restored afterwards (no leak into other tests)."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def enable_x64():
    with x64():
        yield


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


# ------------------------------------------------------------------ compile counting
# One process-wide listener: every XLA backend compilation (jit or eager op) bumps the counter.
_COMPILES = [0]


def _on_event(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


class CompileCounter:
    """``with counter: ...`` then ``counter.count``: backend compilations inside the block."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        self._start = _COMPILES[0]
        return self

    def __exit__(self, *exc):
        self.count = _COMPILES[0] - self._start
        return False


@pytest.fixture
def compiles():
    return CompileCounter()


@pytest.fixture(autouse=True)
def _report_compiles(request):
    """With GPJAX_TEST_COMPILES=1, prints how many XLA compilations each test triggered."""
    import os

    if not os.environ.get("GPJAX_TEST_COMPILES"):
        yield
        return
    start = _COMPILES[0]
    yield
    print(f"\n[compiles] {request.node.nodeid}: {_COMPILES[0] - start}")
