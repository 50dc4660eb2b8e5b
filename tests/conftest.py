"""Shared test setup: results and caches go to temporary folders, never into the repository."""

from __future__ import annotations

import os

import pytest

import cmp_utils  # noqa: F401  (pins the CPU numerics before any test computes with torch: cmp_utils.numerics)


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
