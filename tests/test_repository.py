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

from cmp_utils.core import config

ROOT = config.project_root()
# The patterns are assembled from pieces so that this file does not match itself.
FORBIDDEN = [
    re.escape(".." + "/shared"),
    re.escape("shared" + "/reference"),
    re.escape("original" + "-implementation"),
]
# An absolute machine path (a work, temporary, root or home folder) after a quote, a space, a bracket or a line start.
ABSOLUTE = re.compile(
    r"(?:^|[\s'\"(=:,\[])/(?:" + "|".join(["wo" + "rk", "t" + "mp", "ro" + "ot", "ho" + "me"]) + r")/", re.M
)
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".txt",
    ".csv",
    ".yaml",
    ".yml",
    ".toml",
    ".cfg",
    ".ipynb",
    ".json",
    ".cff",
    ".svg",
    ".sh",
    ".ini",
    "",
}
MAX_EXECUTED_BYTES = 2 * 1024 * 1024


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({error})")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def text_files() -> list[Path]:
    return [
        path
        for path in tracked_files()
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in ("Makefile", "LICENSE"))
    ]


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
            offenders.append(
                f"{path.relative_to(ROOT)}:{line}: absolute path {text[match.start() : match.start() + 40]!r}"
            )
    assert not offenders, "tracked files name paths outside the repository:\n" + "\n".join(offenders[:50])


def test_committed_csvs_hold_no_absolute_machine_paths():
    offenders = []
    for path in tracked_files():
        if path.suffix != ".csv" or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if ABSOLUTE.search(line) or re.search(r"(?:^|,)\"?/(?:[A-Za-z0-9_.-]+/){2,}", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, "CSV rows with absolute paths (write paths relative to the results folder):\n" + "\n".join(
        offenders
    )


def test_executed_notebooks_are_small_and_committed_clean():
    executed = sorted((ROOT / "results" / "executed" / "quick").glob("*.ipynb"))
    too_big = [
        f"{path.name}: {path.stat().st_size / 1e6:.1f} MB"
        for path in executed
        if path.stat().st_size >= MAX_EXECUTED_BYTES
    ]
    assert not too_big, (
        f"executed notebooks over {MAX_EXECUTED_BYTES / 1e6:.0f} MB (save figures as modest-dpi PNG): {too_big}"
    )
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
    from cmp_utils import reporting

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200, (
        "README.md must stay under 200 lines: move detail to results/README.md or docs/"
    )
    for name in reporting.README_SECTIONS:
        start, end = reporting.marker(name)
        assert start in text and end in text, f"README.md lacks the generated section {name}"
    hand_written = text
    for name in reporting.README_SECTIONS:
        start, end = reporting.marker(name)
        hand_written = hand_written[: hand_written.index(start)] + hand_written[hand_written.index(end) :]
    # Outside the generated sections no result is typed by hand: no "12.34"-style figures.
    assert not re.findall(r"(?<![\w./-])\d+\.\d\d(?![\w./-])", hand_written)


# ---------------------------------------------------------------------------------------------
# No hand-typed result in prose: results are generated from results/ or not written at all
# ---------------------------------------------------------------------------------------------

#: A number as a result is typed: a decimal (``44.8``, ``46.64``) or a ratio (``x1.43``, ``1.43x``), not part of
#: a word, a path or a longer number.
RESULT_NUMBER = re.compile(r"(?<![\w./-])(?:[x×]\s?)?\d+\.\d+(?:\s?[x×%])?(?![\w/-]|\.\d)")
#: A version after a software name (``TF 2.21``, ``torch >= 2.4``) or an arXiv identifier is not a result.
VERSION_BEFORE = re.compile(
    r"(?:TF|TensorFlow|torch|torchvision|oneMKL|oneDNN|Python|CUDA|version|arXiv:)\s?(?:>=?\s?)?$"
)
#: Numbers that are settings or constants, not results, wherever they appear (keep this short; a new entry
#: needs a reason). The paper's published values are allowed too: they come from cmp_utils/evaluation/paper_numbers.csv.
NOT_RESULTS = {
    # optimiser, weight-average and batch-norm settings of the paper and the release (betas, decays, momenta, lr)
    "0.9",
    "0.99",
    "0.999",
    "0.9999",
    "0.9997",
    "0.997",
    "0.0003",
    "0.003",
    "0.0002",
    "0.94",
    # dropout and probabilities / fractions of the recipes and of the synthetic data (flip 0.5, validation 0.2)
    "0.0",
    "0.1",
    "0.2",
    "0.3",
    "0.5",
    "0.7",
    "1.0",
    # temperatures of the CMPM family (settings chosen in notebook 14's plan)
    "0.01",
    "0.015",
    "0.02",
    "0.04",
    "0.07",
    # the ImageNet RGB mean of slim's ResNet preprocessing
    "123.68",
    "116.78",
    "103.94",
    # the two-sided 95% normal quantile; the memory of metrics' default score block (2^25 scores x 10 / 22 bytes)
    "0.975",
    "0.35",
    "0.75",
    # the first torch release whose weights_only loading is safe (CVE-2025-32434)
    "2.6",
    # the release's initialisers: MobileNet arg_scope stddev, TF variance scaling's truncation factor, the std of a
    # +-2 sd truncated normal, the Glorot bound of 512-unit LSTM states, the 12,000-row against a 5k-word Xavier bound
    "0.09",
    "1.3",
    "0.88",
    "0.077",
    "1.5",
    # TF's Adam epsilon at step 1 against PyTorch's: 1 / sqrt(1 - 0.999)
    "31.6",
    # the networks' multiply-adds (MobileNet v1 at 224 px, ResNet-152) and a GPU-hour figure of the labelled estimate
    "0.57",
    "11.5",
    "4.5",
}
CODE_SPAN = re.compile(r"```.*?```|``.*?``|`[^`\n]*`", re.S)
GENERATED_SECTION = re.compile(r"<!-- (\S+):start -->.*?<!-- \1:end -->", re.S)


def paper_values() -> set[str]:
    """The paper's published values as written in ``cmp_utils/evaluation/paper_numbers.csv``."""
    import pandas as pd

    frame = pd.read_csv(ROOT / "cmp_utils" / "evaluation" / "paper_numbers.csv", dtype=str, keep_default_na=False)
    return {value for value in frame["value"] if value}


def hand_typed_numbers(prose: str, allowed: set[str]) -> list[str]:
    """The result-like numbers of ``prose`` outside code spans and generated sections, less ``allowed``
    ones and versions."""
    text = CODE_SPAN.sub(" ", GENERATED_SECTION.sub(" ", prose))
    found = []
    for match in RESULT_NUMBER.finditer(text):
        number = re.sub(r"[x×%\s]", "", match.group())
        if number not in allowed and not VERSION_BEFORE.search(text[max(0, match.start() - 16) : match.start()]):
            found.append(match.group())
    return found


def python_prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python source."""
    import ast
    import io
    import tokenize

    prose = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                prose.append((node.body[0].lineno, docstring))
    return prose


def prose_of_the_repository() -> list[tuple[str, str]]:
    """(where, text) of what a reader takes for written-down prose: the package's comments and docstrings,
    docs/*.md, README.md and the notebooks' Markdown cells."""
    import json

    prose = [
        (f"{path.relative_to(ROOT)}:{line}", text)
        for path in sorted((ROOT / "cmp_utils").rglob("*.py"))
        for line, text in python_prose(path.read_text(encoding="utf-8"))
    ]
    prose += [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    ]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        prose += [
            (f"{path.relative_to(ROOT)} cell {index}", "".join(cell["source"]))
            for index, cell in enumerate(cells)
            if cell["cell_type"] == "markdown"
        ]
    return prose


def test_the_number_check_catches_typed_results_and_passes_settings():
    allowed = NOT_RESULTS | {"49.37"}
    assert hand_typed_numbers("took 44.8 minutes; R@1 46.64, x1.43 and 2.5x faster", allowed) == [
        "44.8",
        "46.64",
        "x1.43",
        "2.5x",
    ]
    assert (
        hand_typed_numbers(
            "decay 0.9999, TF 2.21, the paper's 49.37, `-p seed 1.5`, v1.2.3, <!-- a:start -->51.2<!-- a:end -->",
            allowed,
        )
        == []
    )


def test_no_hand_typed_result_number_in_prose():
    """Results in prose are generated from results/ (between markers, by cmp_utils.reporting / fidelity) or
    not written: a typed number goes stale when the code changes (issue 26)."""
    allowed = NOT_RESULTS | paper_values()
    typed = {
        where: numbers for where, text in prose_of_the_repository() if (numbers := hand_typed_numbers(text, allowed))
    }
    assert not typed, (
        "hand-typed result numbers (generate them from results/, delete them, or add a setting "
        f"to NOT_RESULTS with its reason): {typed}"
    )


def test_no_synthetic_cell_carries_a_paper_value_or_a_difference_to_one():
    """The committed synthetic results keep the paper's values apart: every smoke / quick summary.csv has no
    ``difference`` column and names the paper's column as reported on real data; the README's and
    results/README.md's synthetic tables put no "(paper X)" beside a number, and results/README.md's paper
    comparison sits under its own real-data heading."""
    import pandas as pd

    summaries = [
        path for profile in config.SYNTHETIC_PROFILES for path in ROOT.glob(f"results/*/{profile}/summary.csv")
    ]
    assert summaries, "no committed synthetic summary.csv to check"
    for path in summaries:
        columns = set(pd.read_csv(path, nrows=0).columns)
        assert not columns & {"difference", "paper_value", "paper_support"}, f"{path} sets a paper value beside ours"
    pattern = re.compile(r"\d\s*\(paper\b|\(paper\s+[-+]?\d")
    for readme in (ROOT / "README.md", ROOT / "results" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        synthetic = text.split("## Reproduction status (paper profile, real data)")[0]
        assert not pattern.search(synthetic), f"{readme.name}: a synthetic number beside a paper value"


def test_make_reproduce_runs_the_papers_notebooks_and_reproduce_checks_ours():
    """The Makefile's CHECK_NOTEBOOKS are cmp_utils.core.config.CHECK_NOTEBOOKS (which the README's timings
    total apart), and every one of them exists."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    listed = re.search(r"^CHECK_NOTEBOOKS := (.+)$", makefile, re.M).group(1).split()
    assert [Path(path).stem for path in listed] == list(config.CHECK_NOTEBOOKS)
    assert all((ROOT / path).is_file() for path in listed)
    assert "$(PAPER_NOTEBOOKS)" in makefile.split("\nreproduce:")[1].split("\n\n")[0]
    assert "$(CHECK_NOTEBOOKS)" in makefile.split("\nreproduce-checks:")[1].split("\n\n")[0]
