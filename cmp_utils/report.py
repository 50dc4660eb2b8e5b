"""Regenerate the README's results section from the CSVs the notebooks wrote.

``python -m cmp_utils.report --readme README.md [--results results] [--profile quick]``

* reads ``<results>/<experiment>/<profile>/metrics.csv`` (tidy: ``dataset, method, backbone,
  direction, metric, value, paper_value, seed``, plus ``table`` where a dataset has several
  tables such as MSCOCO 1K / 5K; one row per seed);
* writes one table per experiment between ``<!-- results:start -->`` and
  ``<!-- results:end -->``: the paper's value, ours (mean ± sample std over seeds, and the number
  of seeds), the difference ours − paper where the paper's value is confirmed, and the command
  that made it (``papermill notebooks/NN_<experiment>.ipynb - -p profile <profile>``: an
  experiment folder is named as its notebook's stem without the number);
* adds a "Performance" part from ``<results>/bench/*.csv`` (between ``<!-- bench:start -->`` and
  ``<!-- bench:end -->`` when the README has those markers, else at the end of the results part).

Every number comes from a CSV; nothing is typed by hand. The README is replaced atomically.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

from cmp_utils import atomic, config

RESULTS_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
BENCH_MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")
METRICS_COLUMNS = ("dataset", "method", "backbone", "direction", "metric", "value", "paper_value", "seed")
KEY_COLUMNS = ["dataset", "method", "backbone", "direction", "metric"]


# ---------------------------------------------------------------------------------------
# Reading and summarising
# ---------------------------------------------------------------------------------------


def read_metrics(path: Path) -> pd.DataFrame:
    """One experiment's ``metrics.csv``, checked for the tidy columns."""
    frame = pd.read_csv(path, keep_default_na=True)
    missing = [column for column in METRICS_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; a metrics.csv needs {list(METRICS_COLUMNS)}")
    frame[["backbone", "direction"]] = frame[["backbone", "direction"]].fillna("")
    frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    frame["paper_value"] = pd.to_numeric(frame["paper_value"], errors="raise")
    return frame


def cell_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that name one cell: ``table`` first when the CSV has it (MSCOCO 1K vs 5K)."""
    return (["table"] if "table" in frame.columns else []) + KEY_COLUMNS


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation and count of seeds per cell; the paper's value; the gap.

    Rows keep the order in which their cell first appears in the CSV. ``std`` is NaN for one seed.
    """
    frame = frame.dropna(subset=["value"])
    if "table" in frame.columns:
        frame = frame.assign(table=frame["table"].fillna(""))
    grouped = frame.groupby(cell_columns(frame), sort=False, dropna=False)
    summary = grouped.agg(
        mean=("value", "mean"),
        std=("value", "std"),
        n_seeds=("seed", "nunique"),
        paper=("paper_value", "first"),  # first non-null
    ).reset_index()
    summary["difference"] = summary["mean"] - summary["paper"]
    return summary


def experiment_folders(results_dir: Path, profile: str) -> list[Path]:
    """``<results>/<experiment>/<profile>/metrics.csv`` files, by experiment name."""
    return sorted(results_dir.glob(f"*/{profile}/metrics.csv"), key=lambda path: path.parent.parent.name)


def notebook_for(experiment: str, notebooks_dir: Path) -> Path | None:
    """The notebook ``NN_<experiment>.ipynb`` whose stem without the number is ``experiment``."""
    matches = sorted(path for path in notebooks_dir.glob("*.ipynb") if re.fullmatch(rf"\d+_{re.escape(experiment)}", path.stem))
    return matches[0] if matches else None


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _number(value: float, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ours(mean: float, std: float, n_seeds: int) -> str:
    if n_seeds > 1 and not math.isnan(std):
        return f"{mean:.2f} ± {std:.2f} (n={n_seeds})"
    return f"{mean:.2f} (n={n_seeds})"


def _signed(value: float) -> str:
    return "" if math.isnan(value) else f"{value:+.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ours_label(profile: str) -> str:
    return f"ours ({profile}, synthetic data)" if profile in ("smoke", "quick") else f"ours ({profile})"


def render_results(results_dir: Path, profile: str, notebooks_dir: Path) -> str:
    """The markdown of the results section (without the markers)."""
    def notebook_order(path: Path) -> str:
        notebook = notebook_for(path.parent.parent.name, notebooks_dir)
        return notebook.stem if notebook is not None else f"99_{path.parent.parent.name}"

    files = sorted(experiment_folders(results_dir, profile), key=notebook_order)
    intro = (
        f"_Generated by `python -m cmp_utils.report` from `results/*/{profile}/metrics.csv`; "
        "do not edit by hand. Paper values are the confirmed ones in `cmp_utils/paper_numbers.csv`; "
        "difference = ours − paper._"
    )
    if not files:
        return f"{intro}\n\nNo results yet: no `results/*/{profile}/metrics.csv` was found. Run `make reproduce` first."
    parts = [intro]
    for path in files:
        experiment = path.parent.parent.name
        summary = summarise(read_metrics(path))
        notebook = notebook_for(experiment, notebooks_dir)
        if notebook is not None:
            made_by = f"`.venv/bin/python -m cmp_utils.run_notebooks --profile {profile} notebooks/{notebook.name}`"
        else:
            made_by = f"(no notebook `notebooks/NN_{experiment}.ipynb` found)"
        names = cell_columns(summary)
        rows = [
            [*(getattr(row, name) for name in names),
             _number(row.paper), _ours(row.mean, row.std, row.n_seeds), _signed(row.difference)]
            for row in summary.itertuples(index=False)
        ]
        header = [*names, "paper", _ours_label(profile), "difference"]
        section = f"### {experiment}\n\nMade by: {made_by}\n\n" + markdown_table(header, rows)
        claims = render_claims(path.parent / "claims.csv")
        if claims:
            section += "\n\nThe paper's claims on this data (from `claims.csv`):\n\n" + claims
        parts.append(section)
    return "\n\n".join(parts)


def render_claims(path: Path) -> str:
    """A bullet per claim of an experiment's ``claims.csv`` (claim, verdict, and the figures beside them)."""
    if not path.is_file():
        return ""
    frame = pd.read_csv(path)
    if "claim" not in frame or "verdict" not in frame:
        return ""
    lines = []
    for row in frame.to_dict("records"):
        details = ", ".join(f"{key} {_cell(value)}" for key, value in row.items() if key not in ("claim", "verdict"))
        lines.append(f"- {row['claim']}: **{row['verdict']}** ({details})")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def render_bench(results_dir: Path) -> str | None:
    """The "Performance" markdown from ``<results>/bench/*.csv``, or ``None`` when there is none."""
    files = sorted((results_dir / "bench").glob("*.csv"))
    if not files:
        return None
    parts = ["_From `results/bench/*.csv` (`make bench`)._"]
    for path in files:
        frame = pd.read_csv(path)
        rows = [[_cell(value) for value in record] for record in frame.itertuples(index=False)]
        parts.append(f"#### {path.stem}\n\n" + markdown_table([str(column) for column in frame.columns], rows))
    return "\n\n".join(parts)


def replace_between(text: str, markers: tuple[str, str], body: str, readme: Path) -> str:
    """``text`` with everything between the two markers replaced by ``body``."""
    start, end = markers
    start_at, end_at = text.find(start), text.find(end)
    if start_at < 0 or end_at < 0 or end_at < start_at:
        raise ValueError(
            f"{readme} lacks the markers {start} and {end} (in that order); add them where the generated "
            "section should go"
        )
    return text[: start_at + len(start)] + "\n" + body.strip("\n") + "\n" + text[end_at:]


def update_readme(
    readme: str | Path,
    results_dir: str | Path | None = None,
    profile: str = "quick",
    notebooks_dir: str | Path | None = None,
) -> Path:
    """Rewrite the generated parts of ``readme`` in place (atomically); returns its path."""
    readme = Path(readme)
    if not readme.is_file():
        raise FileNotFoundError(f"--readme {readme} does not exist")
    config.check_profile(profile)
    results = config.results_dir(results_dir)
    notebooks = Path(notebooks_dir) if notebooks_dir is not None else readme.resolve().parent / "notebooks"
    text = readme.read_text(encoding="utf-8")
    body = render_results(results, profile, notebooks)
    bench = render_bench(results)
    bench_body = bench if bench is not None else "No benchmark results yet (`make bench`)."
    start_at, end_at = text.find(RESULTS_MARKERS[0]), text.find(RESULTS_MARKERS[1])
    bench_at = text.find(BENCH_MARKERS[0])
    has_bench_markers = bench_at >= 0 and BENCH_MARKERS[1] in text
    bench_inside_results = has_bench_markers and start_at < bench_at < end_at
    if bench_inside_results:  # keep the bench markers, which the results rewrite would drop
        body += f"\n\n### Performance\n\n{BENCH_MARKERS[0]}\n{bench_body}\n{BENCH_MARKERS[1]}"
    elif bench is not None and not has_bench_markers:
        body += "\n\n### Performance\n\n" + bench
    text = replace_between(text, RESULTS_MARKERS, body, readme)
    if has_bench_markers and not bench_inside_results:
        text = replace_between(text, BENCH_MARKERS, bench_body, readme)
    mode = readme.stat().st_mode & 0o777
    with atomic.atomic_path(readme) as temporary:  # keep the README's permissions (mkstemp makes 0600)
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(mode)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.report", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", required=True, help="README to update (must hold the results markers)")
    parser.add_argument("--results", default=None, help="results folder (default: $CMP_RESULTS_DIR or ./results)")
    parser.add_argument("--profile", default="quick", help="which profile's metrics.csv to report (smoke | quick | paper)")
    parser.add_argument("--notebooks", default=None, help="notebooks folder (default: notebooks/ beside the README)")
    args = parser.parse_args(argv)
    try:
        path = update_readme(args.readme, args.results, args.profile, args.notebooks)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
