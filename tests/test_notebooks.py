"""Every notebook keeps the conventions and runs headlessly in the smoke profile.

Each notebook is executed with papermill in the project's kernel, with results and caches
in temporary folders, and every file it says it produces (``metadata.cmp_repro.produces``)
must exist afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
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


# ---------------------------------------------------------------------------------------------
# Every notebook in the smoke profile, once, in two lanes at once
# ---------------------------------------------------------------------------------------------
# The smoke runs use one thread each, so one lane would leave the second of CI's two cores idle.
# Notebooks that train or reuse the same memoised run never run at the same time: every
# cuhk_pedes experiment notebook (05, 09-13) is in lane A in their usual order, 05 first; 12 also
# reuses 06's flickr30k run and waits for it. Notebooks in neither lane (new ones) run after both,
# in order. CHECK_RESULTS is the cold rerun of notebook 10 checked below, once 10 has run.
CHECK_RESULTS = "check-results --cold 10_ablation"
LANES = (
    ["05_cuhk_pedes", "09_batch_size", "10_ablation", "11_feature_distribution", "12_retrieval_demo",
     "13_fidelity_audit", "04_training"],
    ["06_flickr30k", "07_mscoco", "08_cub_flowers", CHECK_RESULTS, "00_environment", "01_data_preparation",
     "02_cmpm_derivation", "03_cmpc_derivation"],
)
WAITS_FOR = {"12_retrieval_demo": ["06_flickr30k"], CHECK_RESULTS: ["05_cuhk_pedes", "10_ablation"]}
# One process per lane runs its notebooks one by one (run_notebooks, as `make reproduce` does) and
# answers each with one line: the executed copy, or the traceback.
LANE_WORKER = """
import json, sys, traceback
from cmp_utils.run_notebooks import run_notebooks
for line in sys.stdin:
    job = json.loads(line)
    try:
        [(executed, _)] = run_notebooks([job["path"]], "smoke", output_dir=job["output_dir"])
        reply = {"executed": str(executed)}
    except BaseException:
        reply = {"error": traceback.format_exc()}
    print("@@lane " + json.dumps(reply), flush=True)
"""


def _check_results_cold(path: Path) -> dict:
    """``make check-results`` in the smoke profile, cold, for notebook ``path`` alone."""
    completed = subprocess.run([sys.executable, "-m", "cmp_utils.check_results", "--profile", "smoke", "--cold",
                                "--notebooks", str(path)], cwd=config.project_root(), capture_output=True, text=True)
    return {"returncode": completed.returncode, "stdout": completed.stdout, "stderr": completed.stderr}


@pytest.fixture(scope="session")
def smoke_notebooks(isolated_dirs):
    """Every notebook executed once in the smoke profile (results and caches of ``isolated_dirs``):
    {notebook stem: {"executed": path} or {"error": text}, CHECK_RESULTS: {"returncode", "stdout", "stderr"}}."""
    results, _ = isolated_dirs
    output_dir = results / "executed" / "smoke"
    by_name = {path.stem: path for path in NOTEBOOKS}
    outcomes: dict[str, dict] = {}
    done = {name: threading.Event() for lane in LANES for name in lane}

    def run_lane(names):
        worker = None
        try:
            for name in names:
                for before in WAITS_FOR.get(name, []):
                    if before in done:
                        done[before].wait()
                if name == CHECK_RESULTS:
                    outcomes[name] = _check_results_cold(by_name["10_ablation"])
                elif name in by_name:
                    if worker is None:
                        worker = subprocess.Popen([sys.executable, "-c", LANE_WORKER], cwd=config.project_root(),
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True)
                    worker.stdin.write(json.dumps({"path": str(by_name[name]), "output_dir": str(output_dir)}) + "\n")
                    worker.stdin.flush()
                    log = []
                    for line in worker.stdout:
                        if line.startswith("@@lane "):
                            outcomes[name] = json.loads(line[len("@@lane "):])
                            break
                        log.append(line)
                    else:
                        outcomes[name] = {"error": "the lane's process ended early:\n" + "".join(log)[-4000:]}
                        worker = None
                done[name].set()
        except BaseException as error:  # never leave a waiting lane hanging
            for name in names:
                outcomes.setdefault(name, {"error": f"lane stopped: {error!r}"})
        finally:
            for name in names:
                done[name].set()
            if worker is not None:
                worker.stdin.close()
                worker.wait()

    threads = [threading.Thread(target=run_lane, args=(lane,)) for lane in LANES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in sorted(set(by_name) - set(done)):  # notebooks in neither lane: after both, one by one
        try:
            [(executed, _)] = run_notebooks([by_name[name]], "smoke", output_dir=output_dir)
            outcomes[name] = {"executed": str(executed)}
        except Exception as error:
            outcomes[name] = {"error": f"{error!r}"}
    return outcomes


def test_every_notebook_is_in_at_most_one_lane():
    names = [name for lane in LANES for name in lane]
    assert len(names) == len(set(names))
    assert set(names) - {CHECK_RESULTS} <= set(NOTEBOOK_MAP)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_profile(path, isolated_dirs, smoke_notebooks):
    results, _ = isolated_dirs
    outcome = smoke_notebooks[path.stem]
    assert "error" not in outcome, outcome["error"]
    executed = Path(outcome["executed"])
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
def test_smoke_results_reproduce_when_a_shared_run_is_trained_by_another_notebook(smoke_notebooks):
    """``make check-results`` in the smoke profile (what CI can afford): notebook 10's CMPM and
    CMPM+CMPC runs are the ones 05 trained first (reused from the memo); a cold rerun of 10 alone
    trains them itself, in another process, and must give every number of its metrics.csv again.
    (The rerun is run by ``smoke_notebooks``, beside the other notebooks, once 05 and 10 have run.)"""
    assert "error" not in smoke_notebooks["05_cuhk_pedes"] and "error" not in smoke_notebooks["10_ablation"]
    outcome = smoke_notebooks[CHECK_RESULTS]
    report = outcome["stdout"]
    assert outcome["returncode"] == 0, report + outcome["stderr"][-4000:]
    assert "every number of results/*/smoke/metrics.csv reproduced (1 experiment: ablation)" in report
