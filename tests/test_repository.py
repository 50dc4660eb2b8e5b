"""The repository as a reader gets it: sources they can follow, no machine paths, bounded files.

* no tracked text file names a path outside the repository (developer-only notes, absolute
  machine paths such as a home or temporary folder);
* committed CSVs hold no absolute machine path;
* executed notebooks committed under ``results/executed/quick/`` stay small.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cmp_utils import config

ROOT = config.project_root()
# The patterns are assembled from pieces so that this file does not match itself.
FORBIDDEN = [
    re.escape(".." + "/shared"),
    re.escape("shared" + "/reference"),
    re.escape("original" + "-implementation"),
]
# An absolute machine path (a work, temporary, root or home folder) after a quote, a space, a bracket or a line start.
ABSOLUTE = re.compile(r"(?:^|[\s'\"(=:,\[])/(?:" + "|".join(["wo" + "rk", "t" + "mp", "ro" + "ot", "ho" + "me"]) + r")/",
                      re.M)
TEXT_SUFFIXES = {".py", ".md", ".txt", ".csv", ".yaml", ".yml", ".toml", ".cfg", ".ipynb", ".json", ".cff", ".svg",
                 ".sh", ".ini", ""}
MAX_EXECUTED_BYTES = 2 * 1024 * 1024


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({error})")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def text_files() -> list[Path]:
    return [path for path in tracked_files()
            if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in ("Makefile", "LICENSE"))]


def test_no_tracked_file_names_a_path_outside_the_repository():
    offenders = []
    for path in text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in FORBIDDEN:
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}")
        for match in ABSOLUTE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(ROOT)}:{line}: absolute path {text[match.start():match.start() + 40]!r}")
    assert not offenders, "tracked files name paths outside the repository:\n" + "\n".join(offenders[:50])


def test_committed_csvs_hold_no_absolute_machine_paths():
    offenders = []
    for path in tracked_files():
        if path.suffix != ".csv" or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if ABSOLUTE.search(line) or re.search(r"(?:^|,)\"?/(?:[A-Za-z0-9_.-]+/){2,}", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, "CSV rows with absolute paths (write paths relative to the results folder):\n" + "\n".join(offenders)


def test_executed_notebooks_are_small_and_committed_clean():
    executed = sorted((ROOT / "results" / "executed" / "quick").glob("*.ipynb"))
    too_big = [f"{path.name}: {path.stat().st_size / 1e6:.1f} MB" for path in executed
               if path.stat().st_size >= MAX_EXECUTED_BYTES]
    assert not too_big, f"executed notebooks over {MAX_EXECUTED_BYTES / 1e6:.0f} MB (save figures as modest-dpi PNG): {too_big}"
    for path in executed:
        assert "image/svg+xml" not in path.read_text(encoding="utf-8"), f"{path.name} keeps SVG copies of its figures"


def test_gitignore_tracks_quick_executed_notebooks_and_ignores_smoke():
    def ignored(relative: str) -> bool:
        result = subprocess.run(["git", "check-ignore", "-q", "--no-index", relative], cwd=ROOT)
        return result.returncode == 0

    assert not ignored("results/executed/quick/05_cuhk_pedes.ipynb")
    assert not ignored("results/executed/quick/timings.csv")
    assert ignored("results/executed/smoke/05_cuhk_pedes.ipynb")
    assert ignored("results/cuhk_pedes/smoke/metrics.csv")


def test_license_and_citation_exist():
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert "cff-version" in citation and "Deep Cross-Modal Projection Learning for Image-Text Matching" in citation


def test_readme_is_short_and_generated_where_it_holds_numbers():
    from cmp_utils import report

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200, "README.md must stay under 200 lines: move detail to results/README.md or docs/"
    for name in report.SECTIONS:
        start, end = report.marker(name)
        assert start in text and end in text, f"README.md lacks the generated section {name}"
    hand_written = text
    for name in report.SECTIONS:
        start, end = report.marker(name)
        hand_written = hand_written[: hand_written.index(start)] + hand_written[hand_written.index(end):]
    # Outside the generated sections no result is typed by hand: no "12.34"-style figures.
    assert not re.findall(r"(?<![\w./-])\d+\.\d\d(?![\w./-])", hand_written)
