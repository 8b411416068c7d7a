"""Shared fixtures and settings for the core test suite."""

from __future__ import annotations

import contextlib

import jax
import pytest
from hypothesis import settings

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
