"""Every notebook keeps the conventions and runs headlessly in the smoke profile.

Each notebook is executed with papermill in the project's kernel, with results and caches
in temporary folders, and every file it says it produces (``metadata.cmp_repro.produces``)
must exist afterwards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from cmp_utils import config
from cmp_utils.notebook_tools import build_notebook, check_notebook, strip_outputs
from cmp_utils.run_notebooks import run_notebooks

NOTEBOOKS = sorted((config.project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_MAP = [
    "00_environment", "01_data_preparation", "02_cmpm_derivation", "03_cmpc_derivation", "04_training",
    "05_cuhk_pedes", "06_flickr30k", "07_mscoco", "08_cub_flowers", "09_batch_size", "10_ablation",
    "11_feature_distribution", "12_retrieval_demo", "13_fidelity_audit",
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
        ("code", "import math\n\nfrom cmp_utils import notebook_tools"),
        ("parameters", 'profile: str = "quick"  # p\nseed: int = 0  # s\ndevice: str = "auto"  # d\ndata_dir: str = ""  # r'),
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
        ([c if c[0] != "parameters" else ("parameters", "seed: int = 0  # s") for c in _valid_cells()], "lacks 'profile'"),
        ([c if c[0] != "parameters" else ("parameters", c[1].replace('"quick"', '"paper"')) for c in _valid_cells()], 'profile: str = "quick"'),
        ([c if c[0] != "parameters" else ("parameters", c[1] + "\nx = 1 + 2") for c in _valid_cells()], "must be `name: type = literal"),
        ([c if c[0] != "parameters" else ("parameters", c[1].replace("  # s", "")) for c in _valid_cells()], "needs a comment"),
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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_profile(path, isolated_dirs):
    results, _ = isolated_dirs
    [(executed, _)] = run_notebooks([path], "smoke", output_dir=results / "executed" / "smoke")
    produces = nbformat.read(path, as_version=4).metadata["cmp_repro"]["produces"]
    missing = [item for item in produces if not (results / item.format(profile="smoke")).is_file()]
    assert not missing, f"{path.name} did not write {missing}"
    executed_notebook = json.loads(executed.read_text())
    errors = [
        output for cell in executed_notebook["cells"] for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.slow
def test_smoke_results_reproduce_when_a_shared_run_is_trained_by_another_notebook(isolated_dirs, capsys):
    """``make check-results`` in the smoke profile (what CI can afford): notebook 10's CMPM and
    CMPM+CMPC runs are the ones 05 trained first (reused from the memo); a cold rerun of 10 alone
    trains them itself, in another process, and must give every number of its metrics.csv again."""
    from cmp_utils import check_results

    results, _ = isolated_dirs
    by_name = {path.stem: path for path in NOTEBOOKS}
    first_pass = [by_name["05_cuhk_pedes"], by_name["10_ablation"]]
    if not (results / "ablation" / "smoke" / "metrics.csv").is_file():  # run alone: make the "committed" side here
        run_notebooks(first_pass, "smoke", output_dir=results / "executed" / "smoke")
    capsys.readouterr()
    status = check_results.main(["--profile", "smoke", "--cold", "--against", "files",
                                 "--notebooks", str(by_name["10_ablation"])])
    report = capsys.readouterr().out
    assert status == 0, report
    assert "every number of results/*/smoke/metrics.csv reproduced (1 experiment: ablation;" in report
