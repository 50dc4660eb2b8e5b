"""Every notebook keeps the conventions and runs headlessly in the smoke profile.

Each notebook is executed with papermill in the project's kernel, with results and caches
in temporary folders, and every file it says it produces (``metadata.cmp_repro.produces``)
must exist afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from cmp_utils.core import config
from cmp_utils.reporting.notebook_tools import build_notebook, check_notebook, strip_outputs

from notebook_runs import AFTER, CHECK_RESULTS, ORDER, SmokeNotebookRuns

NOTEBOOKS = sorted((config.project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_MAP = [
    "00_environment",
    "01_data_preparation",
    "02_cmpm_derivation",
    "03_cmpc_derivation",
    "04_training",
    "05_cuhk_pedes",
    "06_flickr30k",
    "07_mscoco",
    "08_cub_flowers",
    "09_batch_size",
    "10_ablation",
    "11_feature_distribution",
    "12_retrieval_demo",
    "13_fidelity_audit",
    "14_cmpm_family",
]


def test_notebooks_exist_and_follow_the_map():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert path.stem in NOTEBOOK_MAP, f"{path.name} is not in the README's notebook map"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_conventions(path):
    assert check_notebook(path) == []


def _valid_cells():
    return [
        ("md", "# Title\n\nPurpose.\n\nProduces: nothing."),
        ("code", "import math\n\nfrom cmp_utils.reporting import notebook_tools"),
        (
            "parameters",
            'profile: str = "quick"  # p\nseed: int = 0  # s\ndevice: str = "auto"  # d\ndata_dir: str = ""  # r',
        ),
        ("code", "notebook_tools.check_parameters(globals())\nx = math.pi"),
    ]


def test_checker_accepts_a_valid_notebook(tmp_path):
    path = build_notebook(_valid_cells(), [], tmp_path / "99_valid.ipynb")
    assert check_notebook(path) == []


def test_checker_rejects_outputs_and_strip_removes_them(tmp_path):
    path = build_notebook(_valid_cells(), [], tmp_path / "99_outputs.ipynb")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="hello")]
    notebook.cells[1].execution_count = 3
    nbformat.write(notebook, path)
    assert any("outputs" in problem for problem in check_notebook(path))
    assert strip_outputs(path) is True
    assert check_notebook(path) == []


@pytest.mark.parametrize(
    "cells, expected",
    [
        ([c for c in _valid_cells() if c[0] != "parameters"], "exactly one cell tagged 'parameters'"),
        (
            [c if c[0] != "parameters" else ("parameters", "seed: int = 0  # s") for c in _valid_cells()],
            "lacks 'profile'",
        ),
        (
            [c if c[0] != "parameters" else ("parameters", c[1].replace('"quick"', '"paper"')) for c in _valid_cells()],
            'profile: str = "quick"',
        ),
        (
            [c if c[0] != "parameters" else ("parameters", c[1] + "\nx = 1 + 2") for c in _valid_cells()],
            "must be `name: type = literal",
        ),
        (
            [c if c[0] != "parameters" else ("parameters", c[1].replace("  # s", "")) for c in _valid_cells()],
            "needs a comment",
        ),
        ([("md", "no title")] + _valid_cells()[1:], "'# Title'"),
    ],
    ids=["no-parameters-cell", "no-profile", "profile-not-quick", "not-literal", "no-comment", "no-title"],
)
def test_checker_rejects_broken_conventions(tmp_path, cells, expected):
    path = build_notebook(cells, [], tmp_path / "99_broken.ipynb")
    problems = check_notebook(path)
    assert any(expected in problem for problem in problems), problems


def test_checker_rejects_bad_names(tmp_path):
    path = build_notebook(_valid_cells(), [], tmp_path / "Bad Name.ipynb")
    assert any("NN_snake_case" in problem for problem in check_notebook(path))


# ---------------------------------------------------------------------------------------------
# Every notebook in the smoke profile, once (tests/notebook_runs.py; started by conftest.py)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smoke_notebooks(smoke_notebook_runs, tmp_path_factory):
    """(results folder, {notebook stem or CHECK_RESULTS: outcome}) of the smoke runs, all finished;
    a second worker joins the background one, since the other tests are done by now."""
    runs = smoke_notebook_runs or SmokeNotebookRuns(tmp_path_factory.mktemp("smoke_notebooks")).start(workers=1)
    runs.add_worker()
    return runs.results, runs.wait()


def test_every_notebook_is_scheduled_once_after_what_it_reuses():
    assert sorted(ORDER) == sorted(set(ORDER)) and set(ORDER) - {CHECK_RESULTS} <= set(NOTEBOOK_MAP)
    assert all(name in ORDER and set(before) <= set(ORDER) for name, before in AFTER.items())


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_profile(path, smoke_notebooks):
    results, outcomes = smoke_notebooks  # the runs' own results and cache folders
    outcome = outcomes[path.stem]
    assert "error" not in outcome, outcome["error"]
    executed = Path(outcome["executed"])
    produces = nbformat.read(path, as_version=4).metadata["cmp_repro"]["produces"]
    missing = [item for item in produces if not (results / item.format(profile="smoke")).is_file()]
    assert not missing, f"{path.name} did not write {missing}"
    executed_notebook = json.loads(executed.read_text())
    errors = [
        output
        for cell in executed_notebook["cells"]
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.slow
def test_smoke_results_reproduce_when_a_shared_run_is_trained_by_another_notebook(smoke_notebooks):
    """``make check-results`` in the smoke profile (what CI can afford): notebook 10's CMPM and
    CMPM+CMPC runs are the ones 05 trained first (reused from the memo); a cold rerun of 10 alone
    trains them itself, in another process, and must give every number of its metrics.csv again.
    (The rerun is one of the ``smoke_notebooks`` jobs, once 05 and 10 have run.)"""
    _, outcomes = smoke_notebooks
    assert "error" not in outcomes["05_cuhk_pedes"] and "error" not in outcomes["10_ablation"]
    outcome = outcomes[CHECK_RESULTS]
    report = outcome["stdout"]
    assert outcome["returncode"] == 0, report + outcome["stderr"][-4000:]
    assert "every number of results/*/smoke/metrics.csv reproduced (1 experiment: ablation;" in report
