"""Shared test setup: results and caches go to temporary folders, never into the repository."""

from __future__ import annotations

import os

import pytest

import cmp_utils  # noqa: F401  (pins the CPU numerics before any test computes with torch: cmp_utils.core.numerics)


@pytest.fixture(scope="session")
def isolated_dirs(tmp_path_factory):
    """Temporary results and cache folders, exported as CMP_RESULTS_DIR / CMP_CACHE_DIR for the session."""
    results = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    previous = {key: os.environ.get(key) for key in ("CMP_RESULTS_DIR", "CMP_CACHE_DIR")}
    os.environ["CMP_RESULTS_DIR"], os.environ["CMP_CACHE_DIR"] = str(results), str(cache)
    yield results, cache
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def smoke_notebook_runs(request, tmp_path_factory):
    """Every notebook in the smoke profile, started in the background when the session starts if a
    collected test uses ``smoke_notebooks`` (see tests/notebook_runs.py); None otherwise."""
    from notebook_runs import SmokeNotebookRuns

    if not any("smoke_notebooks" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    runs = SmokeNotebookRuns(tmp_path_factory.mktemp("smoke_notebooks")).start(workers=1)
    try:
        yield runs
    finally:
        runs.stop()


@pytest.fixture()
def one_torch_thread():
    """The test's torch work on one CPU thread (the caller's count given back after). For the
    benchmark-style tests that are otherwise the only ones on two threads: the background notebook
    runs keep one of CI's two cores busy, and two threads sharing the other one run several times slower."""
    from cmp_utils.core import config

    with config.torch_threads(1):
        yield
