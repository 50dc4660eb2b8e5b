"""JupyterLab friction: saving a notebook leaves `git status` clean, `make lab` as root, conda list.

The save test works on a copy of the notebooks inside a temporary git repository (so it can never
dirty the real tree), with the notebook git filter installed by the Makefile's own `git-filter` step.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from lab_helpers import ROOT, VENV, free_port, make_lab, start_server, stop_server

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TOKEN = "lab-test-token"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def _api(port: int, path: str, method: str = "GET", body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/contents/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture()
def notebook_repo(tmp_path):
    """A git repository holding a committed copy of notebooks/ and .gitattributes, filter installed."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in (".gitattributes", ".gitignore"):  # .gitignore: JupyterLab's .ipynb_checkpoints/
        shutil.copy(ROOT / name, repo / name)
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "config", "user.email", "test@example.invalid")
    _git(repo, "config", "user.name", "lab test")
    installed = subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "git-filter", f"VENV={VENV}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0 and "installed" in installed.stdout, installed.stdout + installed.stderr
    _git(repo, "-c", "filter.nbstripout.clean=cat", "add", "notebooks", ".gitattributes", ".gitignore")  # as stripped
    _git(repo, "commit", "-q", "-m", "notebooks")
    return repo


def _as_jupyterlab_saves_after_running(content: dict) -> dict:
    """What a JupyterLab session adds before saving: the kernel's full language_info, outputs,
    execution counts, per-cell execution timing, a collapsed heading."""
    content = copy.deepcopy(content)
    content["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": "3.11.7",
    }
    count = 0
    for cell in content["cells"]:
        if cell["cell_type"] == "code":
            count += 1
            cell["execution_count"] = count
            cell["outputs"] = [
                {"name": "stdout", "output_type": "stream", "text": f"ran cell {count}\n"},
                {
                    "data": {"text/plain": ["<Figure>"], "image/png": "iVBORw0KGgo="},
                    "metadata": {},
                    "output_type": "display_data",
                },
            ]
            cell["metadata"]["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00.000000Z"}
            cell["metadata"]["scrolled"] = True
        else:
            cell["metadata"]["jp-MarkdownHeadingCollapsed"] = True
    return content


def test_saving_a_notebook_through_the_server_leaves_git_clean(notebook_repo, tmp_path):
    port = free_port()
    server = start_server(make_lab(port, TOKEN), port, TOKEN, tmp_path / "server.log", cwd=notebook_repo)
    committed = {path.name: (notebook_repo / "notebooks" / path.name).read_bytes() for path in NOTEBOOKS}
    name = "05_cuhk_pedes.ipynb"
    try:
        for path in NOTEBOOKS:  # open and save unchanged: byte-identical
            model = _api(port, f"{path.name}?content=1")
            _api(port, path.name, "PUT", {"type": "notebook", "format": "json", "content": model["content"]})
            assert (notebook_repo / "notebooks" / path.name).read_bytes() == committed[path.name], path.name
        assert _git(notebook_repo, "-c", "filter.nbstripout.clean=cat", "status", "--porcelain") == ""
        # a kernel was started (JupyterLab fills language_info from it), nothing run, saved: byte-identical
        model = _api(port, f"{name}?content=1")
        after_run = _as_jupyterlab_saves_after_running(model["content"])
        opened = copy.deepcopy(model["content"])
        opened["metadata"]["language_info"] = after_run["metadata"]["language_info"]
        _api(port, name, "PUT", {"type": "notebook", "format": "json", "content": opened})
        assert (notebook_repo / "notebooks" / name).read_bytes() == committed[name]
        assert _git(notebook_repo, "status", "--porcelain") == ""
        # cells run and saved: outputs stay in the file for the user, git sees no change
        _api(port, name, "PUT", {"type": "notebook", "format": "json", "content": after_run})
    finally:
        stop_server(server)
    saved = json.loads((notebook_repo / "notebooks" / name).read_text())
    assert saved["cells"][1]["outputs"] and saved["metadata"]["language_info"] == {"name": "python"}
    assert _git(notebook_repo, "diff") == ""
    unfiltered = subprocess.run(
        ["git", "-c", "filter.nbstripout.clean=cat", "diff", "--stat"],
        cwd=notebook_repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert name in unfiltered  # the filter, not luck, hides the outputs
    _git(notebook_repo, "add", "notebooks")
    assert _git(notebook_repo, "status", "--porcelain") == "" and _git(notebook_repo, "diff", "--cached") == ""


def test_every_notebook_names_the_installed_project_kernel():
    kernel = json.loads((VENV / "share" / "jupyter" / "kernels" / "cmp-repro" / "kernel.json").read_text())
    for path in NOTEBOOKS:
        spec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert spec == {"display_name": kernel["display_name"], "language": kernel["language"], "name": "cmp-repro"}, (
            path
        )


def test_make_lab_takes_lab_args_and_allows_root():
    lab_args = "--no-browser --port 8899 --IdentityProvider.token=secret"
    printed = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", ".venv/.cmp-installed", "lab", f"LAB_ARGS={lab_args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = printed.strip().splitlines()[-1].strip()
    assert command.startswith("--ServerApp.terminals_enabled=False") and command.endswith(lab_args)
    assert (
        "jupyter lab --ServerApp.root_dir=notebooks --ContentsManager.pre_save_hook=cmp_utils.tools.lab.pre_save_hook"
        in printed
    )
    assert ("--allow-root" in command) == (os.getuid() == 0)


def test_make_lab_says_when_it_adds_allow_root_and_disables_terminals_unless_asked():
    def dry_run(*extra):
        return subprocess.run(
            ["make", "-n", "--no-print-directory", "-o", ".venv/.cmp-installed", "lab", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    printed = dry_run()
    assert "--ServerApp.terminals_enabled=False" in printed and "terminals are disabled" in printed
    assert ("gets --allow-root" in printed) == (os.getuid() == 0)
    enabled = dry_run("LAB_TERMINALS=yes")
    assert "terminals_enabled" not in enabled and "terminals are enabled" in enabled


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip().strip('"'), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_make_setup_install_the_lock_file_which_satisfies_pyproject():
    """requirements-lock.txt pins every package of pyproject.toml (runtime and test) to one exact version
    inside pyproject's range; environment.yml and `make setup` install exactly that file."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    locked = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"requirements-lock.txt: {line!r} is not an exact pin (name==version)"
            name, version = line.split("==", 1)
            locked[name.lower().replace("_", "-")] = version
    for requirement in requirements:
        name = requirement.name.lower().replace("_", "-")
        assert name in locked, f"{name} (pyproject.toml) is missing from requirements-lock.txt: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} outside {requirement}"
        )
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"]
    assert [d for d in environment["dependencies"] if isinstance(d, str)] == ["python=3.11", "pip"]
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-r requirements-lock.txt", "-e ."]
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements-lock.txt" in makefile and "|| $(PIP_INSTALL) torch" not in makefile  # no unpinned fallback
