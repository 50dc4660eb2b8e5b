"""Everything a reader sees of the results, generated from the CSVs the notebooks wrote.

``python -m cmp_utils.reporting --readme README.md [--results results] [--profile quick]``

* rewrites the generated parts of the README, each between ``<!-- NAME:start -->`` and
  ``<!-- NAME:end -->`` (:data:`SECTIONS`): the claims scorecard (every
  ``results/*/<profile>/claims.csv``), one headline table per paper table (R@1, R@10 and the
  paper's value), the figures, the profiles and how ``quick`` differs from the paper's recipe
  (from :data:`cmp_utils.training.PROFILE_SETTINGS`), a short performance summary
  (``results/bench/*.csv``) and the time each notebook took
  (``results/executed/<profile>/timings.csv``);
* writes the full tables to ``results/README.md`` and the full benchmarks to
  ``results/bench/README.md``.

Every number comes from a CSV; nothing is typed by hand. Files are replaced atomically.

Notebooks use :func:`summarise` (the one way to average over seeds), :func:`what_we_found`
(their closing "What we found" cell), :func:`about_profiles` (the shared explanation of the
profiles and of how claims are decided) and :func:`training_settings` (resolved settings for
``params.yaml``); :func:`scrub_notebook` removes machine paths from executed notebooks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ..core import atomic, config

METRICS_COLUMNS = ("dataset", "method", "backbone", "direction", "metric", "value", "paper_value", "seed")
REQUIRED_METRICS_COLUMNS = ("metric", "value", "seed")
#: Columns that vary between the runs of one table cell (measurements, not keys): every other
#: column of a metrics frame is a grouping column (batch_size, schedule, sampler, fold, ...).
PER_RUN_COLUMNS = ("value", "paper_value", "paper_support", "ceiling", "seed", "seconds", "run_key", "run_dir", "best_epoch",
                   "samples_per_second")
#: Columns :func:`summarise` adds (never grouping columns).
SUMMARY_COLUMNS = ("mean", "std", "n", "n_seeds", "difference", "percent_of_ceiling")
#: Per-cell attributes carried beside the mean (the first non-null value of the cell); ``paper_support``
#: says how many public sources give the paper's value (:func:`cmp_utils.evaluation.paper.support_label`).
CELL_ATTRIBUTES = ("paper_value", "paper_support", "ceiling")
#: Generated README sections, in README order: marker name -> renderer name.
SECTIONS = ("scorecard", "headline", "figures", "profiles", "performance", "timings")
#: The sections the project's README carries (the profiles table lives in results/README.md).
README_SECTIONS = ("scorecard", "headline", "figures", "performance", "timings")
#: Experiments whose folder holds one of the paper's tables, in the paper's order, with headline metrics.
PAPER_TABLES = {
    "cuhk_pedes": ("R@1", "R@10"),
    "flickr30k": ("R@1", "R@10"),
    "mscoco": ("R@1", "R@10"),
    "cub_flowers": ("top1_accuracy", "ap@50"),
    "batch_size": ("R@1",),
}  # the ablation's table is in results/README.md and its claims in the scorecard (the README stays under 200 lines)
#: Rows kept out of a headline table (full tables keep them): column -> the one value shown.
HEADLINE_ONLY: dict[str, dict[str, Any]] = {}  # where a sampler column varies: the profile's sampler
#: Experiments whose claims are many and not the paper's own: one summary line in the scorecard.
SCORECARD_SUMMARISED = {"fidelity_audit": "What the deviations of public ports cost (notebook 13)",
                        "cmpm_family": "The CMPM family (SDM, InfoNCE, R-ITC, TAL) on one network, and what a per-GPU "
                                       "loss costs each (notebook 14)"}
#: Summarised experiments whose scorecard line also links their table (``summary.csv``).
SCORECARD_TABLES = ("cmpm_family",)
#: The README's figures: (experiment folder, file stem, caption).
README_FIGURES = (
    ("cuhk_pedes", "recall", "CUHK-PEDES-like data: text-to-image recall per loss"),
    ("batch_size", "batch_size", "R@1 against batch size, relative to each loss's best batch size"),
    ("ablation", "ablation", "Ablation: classification losses and CMPM"),
    ("feature_distribution", "projection", "Learned features of a few identities, per loss"),
)
METRIC_LABELS = {"R@1": "R@1", "R@10": "R@10", "top1_accuracy": "top-1 acc.", "ap@50": "AP@50"}


def marker(name: str) -> tuple[str, str]:
    """The pair of HTML comments that delimit the generated section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


# ---------------------------------------------------------------------------------------
# Reading and summarising
# ---------------------------------------------------------------------------------------


def read_metrics(path: Path) -> pd.DataFrame:
    """One experiment's ``metrics.csv``: needs ``metric``, ``value`` and ``seed``; the other tidy
    columns (:data:`METRICS_COLUMNS`) are filled in empty where an older or special file lacks them."""
    frame = pd.read_csv(path, keep_default_na=True)
    missing = [column for column in REQUIRED_METRICS_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; a metrics.csv needs {list(REQUIRED_METRICS_COLUMNS)} "
                         f"and should have {list(METRICS_COLUMNS)}")
    for column in METRICS_COLUMNS:
        if column not in frame.columns:
            frame[column] = float("nan") if column == "paper_value" else ""
    frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    frame["paper_value"] = pd.to_numeric(frame["paper_value"], errors="raise")
    return frame


def grouping_columns(frame: pd.DataFrame) -> list[str]:
    """Every column that names a table cell: all but the per-run measurements (:data:`PER_RUN_COLUMNS`)
    and the columns a summary adds (:data:`SUMMARY_COLUMNS`)."""
    return [column for column in frame.columns if column not in PER_RUN_COLUMNS + SUMMARY_COLUMNS]


def summarise(frame: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, sample standard deviation (NaN for one value) and counts per table cell, beside the paper.

    ``by`` defaults to :func:`grouping_columns`: every column that is not a per-run measurement,
    so a batch size, schedule, sampler, fold or deviation column keeps its rows apart. Returns the
    grouping columns, ``mean``, ``std``, ``n`` (values averaged), ``n_seeds`` (distinct seeds),
    ``paper_value`` and ``difference`` (mean − paper), and where the frame has a ``ceiling`` column
    (the best score the synthetic data allows) ``ceiling`` and ``percent_of_ceiling``. Rows keep the order in which their cell
    first appears. Two values of one seed in one cell mean a grouping column is missing: a clear
    error says so instead of averaging them.
    """
    keys = list(by) if by is not None else grouping_columns(frame)
    missing = [key for key in keys if key not in frame.columns]
    if missing or "value" not in frame.columns:
        raise ValueError(f"summarise needs the columns {missing or ['value']}; the frame has {list(frame.columns)}")
    frame = frame.dropna(subset=["value"]).copy()
    for key in keys:  # a missing key (e.g. no backbone) stays a group of its own
        if frame[key].dtype == object:
            frame[key] = frame[key].fillna("")
    if frame.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "n_seeds", "paper_value", "difference"])
    grouped = frame.groupby(keys, sort=False, dropna=False)
    summary = grouped["value"].agg(mean="mean", std="std", n="count").reset_index()
    summary["n_seeds"] = grouped["seed"].nunique().to_numpy() if "seed" in frame else summary["n"]
    repeated = summary[summary["n"] != summary["n_seeds"]]
    if len(repeated):
        first = repeated.iloc[0]
        raise ValueError(
            f"summarise: {int(first['n'])} values for {int(first['n_seeds'])} seed(s) in the cell "
            f"{ {key: first[key] for key in keys} }; the frame has a grouping column that is not among "
            f"{keys} (pass by=..., or add it to the frame) or duplicated rows"
        )
    for attribute in CELL_ATTRIBUTES:
        if attribute in frame or attribute == "paper_value":
            summary[attribute] = grouped[attribute].first().to_numpy() if attribute in frame else float("nan")
    if "ceiling" in summary:
        summary["percent_of_ceiling"] = 100.0 * summary["mean"] / summary["ceiling"]
    summary["difference"] = summary["mean"] - summary["paper_value"]
    return summary


def with_current_paper_values(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``paper_value`` looked up again in ``paper_numbers.csv`` (by ``table`` where the
    frame has one), so a table shows the current confirmed values, not those of the day it ran."""
    from ..evaluation import paper

    if frame.empty or not {"dataset", "method", "direction", "metric"} <= set(frame.columns):
        return frame
    if "table" not in frame.columns:
        return paper.with_paper_values(frame)
    parts = [paper.with_paper_values(group, table=None if _missing(table) else table)
             for table, group in frame.groupby("table", sort=False, dropna=False)]
    return pd.concat(parts).sort_index()


def notebook_for(experiment: str, notebooks_dir: Path) -> Path | None:
    """The notebook ``NN_<experiment>.ipynb`` whose stem without the number is ``experiment``."""
    matches = sorted(path for path in notebooks_dir.glob("*.ipynb") if re.fullmatch(rf"\d+_{re.escape(experiment)}", path.stem))
    return matches[0] if matches else None


def experiment_files(results_dir: Path, profile: str, name: str, notebooks_dir: Path) -> list[Path]:
    """``<results>/<experiment>/<profile>/<name>`` files, in notebook order (then by name)."""
    def order(path: Path) -> str:
        notebook = notebook_for(path.parent.parent.name, notebooks_dir)
        return notebook.stem if notebook is not None else f"99_{path.parent.parent.name}"

    return sorted(results_dir.glob(f"*/{profile}/{name}"), key=order)


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _number(value: Any, digits: int = 2) -> str:
    return "" if _missing(value) else f"{float(value):.{digits}f}"


def _ours(mean: float, std: float, n_seeds: int) -> str:
    if n_seeds > 1 and not _missing(std):
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.2f}"


def _paper_with_support(cell: Any, short: bool = False) -> str:
    """``"49.37; MobileNet, 4 sources"``: the paper's value of a summary cell, its backbone and how many
    public sources give it (``short``: "lab list only" for a value only the authors' lab list gives)."""
    support = cell.get("paper_support") if hasattr(cell, "get") else None
    if short and isinstance(support, str):
        support = support.replace("1 source (authors' lab list)", "lab list only")
    return f"{float(cell['paper_value']):.2f}" + ("" if _missing(support) or not support else f"; {support}")


def _signed(value: float) -> str:
    return "" if _missing(value) else f"{value:+.2f}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table (pipes inside cells escaped)."""
    escape = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _data_label(profile: str) -> str:
    return f"{profile}, synthetic data" if profile in config.SYNTHETIC_PROFILES else profile


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


# ---------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------


def read_claims(path: Path) -> pd.DataFrame:
    """A ``claims.csv``, with the columns of :data:`cmp_utils.evaluation.claims.CLAIM_COLUMNS` where it has them
    (older files carry ``std_difference`` or their own measures instead of a confidence interval)."""
    frame = pd.read_csv(path)
    if "claim" not in frame or "verdict" not in frame:
        raise ValueError(f"{path} lacks the columns 'claim' and 'verdict' every claims.csv has")
    return frame


def paper_side(row: dict[str, Any], experiment: str | None = None) -> str:
    """What the paper reports for a claim: both values, their backbone and support, and their
    difference where both come from the same backbone; else what is known. A claim without a
    ``table`` or ``dataset`` of its own belongs to the paper table named like its ``experiment``."""
    from ..evaluation import paper

    better, worse, metric = row.get("better"), row.get("worse"), row.get("metric")
    if any(_missing(value) for value in (better, worse, metric)):
        return "no paper value (none confirmed)"
    numbers = paper.paper_numbers()
    chosen = numbers[(numbers["metric"] == metric) & (numbers["direction"] == (row.get("direction") or "t2i"))
                     & numbers["value"].notna()]
    given = {column: row[column] for column in ("table", "dataset") if not _missing(row.get(column)) and row.get(column)}
    if not given and experiment in set(numbers["table"]):
        given = {"table": experiment}
    for column, value in given.items():
        chosen = chosen[chosen[column] == value]
    if not _missing(row.get("backbone")) and row.get("backbone"):  # a claim of the paper profile's grid: its backbone
        chosen = chosen[chosen["backbone"] == paper.BACKBONE_LABELS.get(row["backbone"], row["backbone"])]
    cells = {}
    for method in (better, worse):
        found = chosen[chosen["method"] == method]
        found = found[found["backbone"] == found["backbone"].iloc[0]] if len(found) else found  # first-listed backbone
        if len(found) == 1:
            cells[method] = found.iloc[0]
    if not cells:
        return "no paper value (none confirmed)"

    def described(method: str) -> str:
        cell = cells[method]
        return (f"{method} {cell['value']:.2f} ({', '.join(filter(None, [cell['backbone'], paper.support_label(cell['sources'])]))})")

    if len(cells) == 1:
        [(method, _)] = cells.items()
        return f"no paper value for this comparison (only {described(method)}; none for {worse if method == better else better})"
    if cells[better]["backbone"] and cells[worse]["backbone"] and cells[better]["backbone"] != cells[worse]["backbone"]:
        return f"no paper value for this comparison ({described(better)} vs {described(worse)}: different backbones)"
    difference = cells[better]["value"] - cells[worse]["value"]
    second_hand = any(cell["status"] == "confirmed second-hand" for cell in cells.values())
    return (f"{described(better)} vs {described(worse)} ({difference:+.2f})"
            + (" (one value second-hand)" if second_hand else ""))


def _our_side(row: dict[str, Any]) -> str:
    """Our paired difference with its 95% CI where the file has one, else the figures it has."""
    mean = row.get("mean_difference")
    if not _missing(mean):
        low, high = row.get("ci_low"), row.get("ci_high")
        if not _missing(low) and not _missing(high):
            return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
        std = row.get("std_difference")
        return f"{mean:+.2f}" + ("" if _missing(std) else f" ± {std:.2f} (sd)")
    known = {"claim", "verdict", "n_seeds", "better", "worse", "metric", "direction", "table", "test", "p_value"}
    return ", ".join(f"{key} {_cell(value)}" for key, value in row.items() if key not in known)


#: The comparisons the paper itself makes, per experiment folder: (better, worse). Every other claim
#: of a ``claims.csv`` (a port's deviation, another paper's system, the CMPM family, the audit) is one
#: of "Our checks", never set under the paper's name.
PAPER_COMPARISONS: dict[str, frozenset[tuple[str, str]]] = {
    "cuhk_pedes": frozenset({("CMPM+CMPC", "CMPM"), ("CMPM", "ranking")}),
    "ablation": frozenset({("norm-softmax", "softmax"), ("CMPC", "norm-softmax"), ("CMPM+CMPC", "CMPM"),
                           ("CMPM+CMPC", "CMPC")}),
    "batch_size": frozenset({("CMPM", "ranking")}),
    "feature_distribution": frozenset({("CMPC", "softmax"), ("CMPC", "norm-softmax")}),
    "flickr30k": frozenset({("CMPM+CMPC", "CMPM")}),
    "mscoco": frozenset({("CMPM+CMPC", "CMPM")}),
    "cub_flowers": frozenset({("CMPM+CMPC", "CMPM")}),
}


def is_papers_claim(row: dict[str, Any], experiment: str) -> bool:
    """Whether a claim row is a comparison the paper makes (:data:`PAPER_COMPARISONS`)."""
    return (row.get("better"), row.get("worse")) in PAPER_COMPARISONS.get(experiment, frozenset())


def _verdict_cell(row: dict[str, Any]) -> str:
    verdict = f"**{row['verdict']}**"
    unadjusted = row.get("verdict_unadjusted")
    if not _missing(unadjusted) and unadjusted != row["verdict"]:
        verdict += f" (alone: {unadjusted})"
    return verdict


def render_scorecard(results_dir: Path, profile: str, notebooks_dir: Path) -> str:
    """Two scorecards from every ``claims.csv``: "The paper's claims" (only comparisons the paper makes,
    with the paper's values for that exact comparison and backbone, or "no paper value") and "Our checks"
    (deviations of ports, another paper's system, the CMPM family, the audit)."""
    from ..evaluation import claims as claims_module

    papers, ours_rows, seen, summarised = [], [], set(), []
    for path in experiment_files(results_dir, profile, "claims.csv", notebooks_dir):
        experiment = path.parent.parent.name
        if experiment in SCORECARD_SUMMARISED:
            table = read_claims(path)
            verdicts = table["verdict"].value_counts()
            counts = ", ".join(f"{verdict} {count}" for verdict, count in verdicts.items())
            summarised.append(f"- {SCORECARD_SUMMARISED[experiment]}: {len(table)} checks ({counts}); every row in "
                              f"[results/{experiment}/{profile}/claims.csv](results/{experiment}/{profile}/claims.csv)"
                              + (f"; the table: [results/{experiment}/{profile}/summary.csv](results/{experiment}/{profile}/summary.csv)"
                                 if experiment in SCORECARD_TABLES and (path.parent / "summary.csv").is_file() else "")
                              + ".")
            continue
        for row in read_claims(path).to_dict("records"):
            seeds = row.get("n_seeds")
            ours = _our_side(row)
            if (row["claim"], ours) in seen:  # the same runs, tested again by another notebook
                continue
            seen.add((row["claim"], ours))
            family = row.get("family_size")
            cells = [f"{row['claim']} ({experiment})", ours, _verdict_cell(row),
                     "" if _missing(seeds) else int(seeds), "" if _missing(family) else int(family)]
            if is_papers_claim(row, experiment):
                papers.append([cells[0], paper_side(row, experiment), *cells[1:]])
            else:
                ours_rows.append(cells)
    if not papers and not ours_rows and not summarised:
        return f"No claims yet: no `results/*/{profile}/claims.csv` (run `make reproduce`)."
    ours_header = f"ours ({_data_label(profile)}): difference [95% CI]"
    rule = (f"_From `results/*/{profile}/claims.csv`. Each claim compares two methods on paired seeds (at least "
            f"{claims_module.MIN_SEEDS}); the difference is shown with its own 95% confidence interval. The verdict is "
            "corrected for the number of claims a notebook tests together (Holm-Bonferroni, family size in the last "
            "column): **held** when the adjusted p-value is below 0.05 and the difference positive, **did not hold** "
            "when below 0.05 and negative, else **inconclusive**; \"alone\" gives the reading of the claim's own "
            "interval where it differs._")
    parts = ["### The paper's claims", "",
             rule + " _The paper column holds the paper's values for that exact comparison and backbone, as "
             "reported on the real data; they are not comparable in level with the synthetic differences._", ""]
    parts.append(markdown_table(["claim (experiment)", "paper (real data)", ours_header, "verdict", "seeds", "family"], papers)
                 if papers else "No claim of the paper's tables yet.")
    parts += ["", "### Our checks", "", "_Comparisons the paper does not make: deviations of public ports, another "
              "paper's system, losses published later, and what the deviations of ports cost (notebook 13). Same rule._", ""]
    if ours_rows:
        parts.append(markdown_table(["check (experiment)", ours_header, "verdict", "seeds", "family"], ours_rows))
    parts += ["", *summarised] if summarised else []
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


def _varying(summary: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [column for column in columns if column in summary and summary[column].nunique(dropna=False) > 1]


def headline_table(frame: pd.DataFrame, metrics: Sequence[str], caption: str = "") -> str:
    """One paper table in brief: per method (and table, dataset, ...) our mean ± sd of ``metrics``,
    with the paper's value beside ours where it is confirmed. A numeric grouping column such as
    ``batch_size``, or else the retrieval direction, spreads into columns."""
    summary = summarise(frame[frame["metric"].isin(metrics)])
    if summary.empty:
        return ""
    summary["label"] = summary["metric"].map(lambda metric: METRIC_LABELS.get(metric, metric))
    if "direction" in summary and summary["direction"].nunique() > 1 and (summary.groupby("metric")["direction"].nunique() == 1).all():
        summary["label"] = summary["direction"] + " " + summary["label"]  # one direction per metric (CUB/Flowers)
        summary = summary.drop(columns="direction")
    stats = {"metric", "label", "paper_value", "paper_support", "ceiling", "backbone", *SUMMARY_COLUMNS}
    keys = [key for key in grouping_columns(summary) if key not in stats]
    varying = _varying(summary, keys)
    numeric = [key for key in varying if key not in ("method", "dataset", "table", "direction")
               and pd.api.types.is_numeric_dtype(summary[key])]
    column_key = numeric[0] if numeric else ("direction" if "direction" in varying else None)
    order = ["table", "dataset", "method"]
    row_keys = [key for key in order if key in varying] + [key for key in varying if key not in order and key != column_key]
    row_keys = row_keys or ["method"]
    labels = list(dict.fromkeys(summary["label"]))
    spread = list(dict.fromkeys(summary[column_key])) if column_key else [None]

    def heading(label: str, value: Any) -> str:
        if value is None:
            return label
        return f"{value} {label}" if column_key == "direction" else f"{label}, {column_key} {value}"

    header = list(row_keys) + [heading(label, value) for value in spread for label in labels]
    if caption:
        header[0] = f"{caption}: {header[0]}"
    rows = []
    for key_values, group in summary.groupby(row_keys, sort=False):
        cells = list(key_values if isinstance(key_values, tuple) else (key_values,))
        for value in spread:
            for label in labels:
                hit = group[(group["label"] == label) & ((group[column_key] == value) if column_key else True)]
                if not len(hit):
                    cells.append("")
                    continue
                first = hit.iloc[0]
                paper_value = "" if _missing(first["paper_value"]) else f" (paper {_paper_with_support(first, short=True)})"
                share = ("" if _missing(first.get("percent_of_ceiling", float("nan")))
                         else f" [{first['percent_of_ceiling']:.0f}%]")
                cells.append(_ours(first["mean"], first["std"], first["n_seeds"]) + share + paper_value)
        rows.append(cells)
    return markdown_table(header, rows)


#: Experiments whose rows vary a setting the paper's confirmed numbers do not (the CUHK-PEDES
#: headline values belong to the paper's own batch size, not to every batch size).
WITHOUT_PAPER_VALUES = ("batch_size",)


def render_headline(results_dir: Path, profile: str, notebooks_dir: Path) -> str:
    """One short table per paper table (see :data:`PAPER_TABLES`)."""
    parts = []
    for experiment, metrics in PAPER_TABLES.items():
        path = results_dir / experiment / profile / "metrics.csv"
        if not path.is_file():
            parts.append(f"**{experiment}**: no `results/{experiment}/{profile}/metrics.csv` yet.")
            continue
        frame = with_current_paper_values(read_metrics(path))
        shown = []
        only = dict(HEADLINE_ONLY.get(experiment, {}))
        if "sampler" in frame and frame["sampler"].nunique() > 1:
            from .. import training

            only["sampler"] = training.PROFILE_SETTINGS[profile][frame["dataset"].iloc[0]]["sampler"]
        for column, value in only.items():
            if column in frame and (frame[column] == value).any() and frame[column].nunique() > 1:
                frame = frame[frame[column] == value]
                shown.append(f"{column} {value}")
        if experiment in WITHOUT_PAPER_VALUES or profile in config.SYNTHETIC_PROFILES:
            frame = frame.assign(paper_value=float("nan"))  # never a paper value beside a synthetic number
        seeds = frame["seed"].nunique()
        if "ceiling" in frame and frame["ceiling"].notna().any():
            subset, keys = frame[frame["metric"].isin(metrics)], []
            for column in ("table", "dataset", "direction"):  # name what tells one metric's ceilings apart
                if column in subset and (subset.groupby([*keys, "metric"])[column].nunique() > 1).any():
                    keys.append(column)
            ceilings = subset.groupby([*keys, "metric"], sort=False)["ceiling"].first().dropna()
            shown.append("ceiling " + ", ".join(
                " ".join([*map(str, key[:-1]), METRIC_LABELS.get(key[-1], key[-1]), f"{value:.1f}"])
                for key, value in ((k if isinstance(k, tuple) else (k,), v) for k, v in ceilings.items())))
        caption = f"**{experiment}** ({', '.join([f'{seeds} seed' + 's' * (seeds != 1), *shown])})"
        parts.append(headline_table(frame, metrics, caption=caption))
    if profile in config.SYNTHETIC_PROFILES:
        paper_note = ("The paper's values are not set beside these synthetic numbers, which are not comparable with "
                      "them in level: they have their own table, as reported on the real data, with the paper "
                      "profile's results beside them ([results/README.md](results/README.md#reproduction-status-paper-profile-real-data)).")
    else:
        paper_note = ("\"(paper X)\" where `cmp_utils/evaluation/paper_numbers.csv` has a value confirmed from a public source, "
                      "with the backbone it was reported for and how many public sources give it. Full tables: "
                      "[results/README.md](results/README.md).")
    intro = (f"_Generated from `results/*/{profile}/metrics.csv` ({_data_label(profile)}): mean ± sd over seeds; "
             "[x%] = share of the ceiling, the best score the synthetic captions allow (an attribute oracle, "
             f"notebook 01). {paper_note}_")
    return intro + "\n\n" + "\n\n".join(parts)


def render_reproduction(results_dir: Path) -> str:
    """results/README.md's last section: the paper's every known value against the paper profile's runs."""
    return ("## Reproduction status (paper profile, real data)\n\n_Every value of `cmp_utils/evaluation/paper_numbers.csv` "
            "beside the paper profile's result of the same row and backbone (`results/*/paper/metrics.csv`); "
            "synthetic results are never compared with it._\n\n" + reproduction_status(results_dir=results_dir)
            + "\n\n" + render_third_party())


def render_third_party() -> str:
    """The re-runs of the losses by later papers and public ports (``third_party_reruns.csv``): not the paper's."""
    from ..evaluation import paper

    reruns = paper.third_party_reruns()
    rows = [[r.dataset, r.label, r.direction, METRIC_LABELS.get(r.metric, r.metric), _number(r.value, 3).rstrip("0").rstrip("."),
             r.who, r.note] for r in reruns.itertuples(index=False)]
    return ("### Third-party re-runs (not the paper's numbers)\n\n_From `cmp_utils/evaluation/third_party_reruns.csv`; "
            "never shown in a paper column._\n\n"
            + markdown_table(["dataset", "label", "direction", "metric", "value", "who", "note"], rows))


def render_full_tables(results_dir: Path, profile: str, notebooks_dir: Path, link_root: Path) -> str:
    """Every experiment's full table (all grouping columns kept) and its claims, for results/README.md."""
    parts = []
    for path in experiment_files(results_dir, profile, "metrics.csv", notebooks_dir):
        experiment = path.parent.parent.name
        summary = summarise(with_current_paper_values(read_metrics(path)))
        notebook = notebook_for(experiment, notebooks_dir)
        made_by = (f"`python -m cmp_utils.tools.run_notebooks --profile {profile} notebooks/{notebook.name}`"
                   if notebook is not None else f"(no notebook `notebooks/NN_{experiment}.ipynb` found)")
        names = grouping_columns(summary)
        has_ceiling = "ceiling" in summary and summary["ceiling"].notna().any()
        # On synthetic data a level difference from the paper means nothing: the ceiling is the yardstick there.
        synthetic = profile in config.SYNTHETIC_PROFILES
        rows = [[*(row[name] for name in names), _number(row["paper_value"]), row.get("paper_support") or "",
                 _ours(row["mean"], row["std"], row["n_seeds"]), row["n_seeds"],
                 *([] if synthetic else [_signed(row["difference"])]),
                 *([_number(row["ceiling"]), "" if _missing(row["ceiling"]) else f"{row['percent_of_ceiling']:.0f}%"]
                   if has_ceiling else [])]
                for row in summary.to_dict("records")]
        header = [*names, "paper (real data)" if synthetic else "paper", "support", f"ours ({_data_label(profile)})", "seeds",
                  *([] if synthetic else ["ours − paper"]),
                  *(["ceiling of the test set", "share of the ceiling"] if has_ceiling else [])]
        section = f"## {experiment}\n\nMade by: {made_by}\n\n" + markdown_table(header, rows)
        claims_path = path.parent / "claims.csv"
        if claims_path.is_file():
            claims = read_claims(claims_path)
            section += "\n\nClaims (`claims.csv`):\n\n" + markdown_table(
                list(claims.columns), [[_cell(value) for value in row] for row in claims.itertuples(index=False)])
        figures = sorted(path.parent.glob("*.png"))
        if figures:
            section += "\n\nFigures: " + ", ".join(f"[{figure.stem}]({_relative(figure, link_root)})" for figure in figures)
        parts.append(section)
    if not parts:
        return f"No results yet: no `results/*/{profile}/metrics.csv` was found. Run `make reproduce` first."
    return "\n\n".join(parts)


#: The paper's tables (``paper_numbers.csv``'s ``table``) each experiment folder holds.
EXPERIMENT_PAPER_TABLES = {"cuhk_pedes": ("cuhk_pedes",), "flickr30k": ("flickr30k",),
                           "mscoco": ("mscoco_1k", "mscoco_5k"), "cub_flowers": ("cub_flowers",)}


def paper_comparison(summary: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The columns of a notebook's "ours against the paper" table: on real data (paper profile) the
    paper's value, its support and ``difference`` (ours − paper); on synthetic data the paper's value
    and support beside the ceiling and the share of it, never a difference (a level difference from
    the paper means nothing there)."""
    keys = [key for key in ("table", "dataset", "method", "backbone", "sampler", "direction", "metric")
            if key in summary and (key in ("method", "metric") or summary[key].nunique(dropna=False) > 1)]
    measured = ["mean", "std", "n_seeds", "paper_value", "paper_support"]
    measured += ["difference"] if profile not in config.SYNTHETIC_PROFILES else ["ceiling", "percent_of_ceiling"]
    table = summary[[column for column in keys + measured if column in summary]].round(2)
    return synthetic_summary(table) if profile in config.SYNTHETIC_PROFILES else table


def synthetic_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A summary of synthetic results as it may be shown: no ``difference`` to a paper value, and the
    paper's value and support renamed ``paper_value_real_data`` / ``paper_support_real_data``, so no
    column reads as comparable with the synthetic mean."""
    renamed = {"paper_value": "paper_value_real_data", "paper_support": "paper_support_real_data"}
    return summary.drop(columns=["difference"], errors="ignore").rename(columns=renamed)


def reproduction_status(experiments: Sequence[str] = tuple(EXPERIMENT_PAPER_TABLES), results_dir: str | Path | None = None,
                        metrics: Sequence[str] | None = None, profile: str = "paper") -> str:
    """row | paper | ours | ours − paper | status, for every value of ``paper_numbers.csv`` in the
    tables of ``experiments`` (optionally only ``metrics``), from ``results/<experiment>/paper/metrics.csv``:
    status "not run here" where that file has no run of the row (same method, the paper's backbone),
    else "within x points". Only real data (the paper profile) is compared with the paper."""
    from ..evaluation import paper
    from .. import training

    if profile in config.SYNTHETIC_PROFILES:
        raise ValueError(f"profile {profile!r} runs on synthetic data: its numbers are not compared with the paper's")
    numbers = paper.paper_numbers()
    numbers = numbers[numbers["value"].notna()]
    results = config.results_dir(results_dir)
    rows = []
    for experiment in experiments:
        cells = numbers[numbers["table"].isin(EXPERIMENT_PAPER_TABLES.get(experiment, (experiment,)))]
        if metrics is not None:
            cells = cells[cells["metric"].isin(metrics)]
        path = results / experiment / profile / "metrics.csv"
        summary = summarise(with_current_paper_values(read_metrics(path))) if path.is_file() else pd.DataFrame()
        if len(summary) and "sampler" in summary and summary["sampler"].nunique() > 1:
            own = {dataset: training.PROFILE_SETTINGS[profile][dataset]["sampler"] for dataset in summary["dataset"].unique()}
            summary = summary[summary["sampler"] == summary["dataset"].map(own)]
        for cell in cells.to_dict("records"):
            ours = pd.DataFrame()
            if len(summary):
                labels = summary["backbone"].map(lambda name: paper.BACKBONE_LABELS.get(name, name))
                ours = summary[(summary["dataset"] == cell["dataset"]) & (summary["table"] == cell["table"])
                               & (summary["method"] == cell["method"]) & (summary["direction"] == cell["direction"])
                               & (summary["metric"] == cell["metric"])
                               & ((labels == cell["backbone"]) if cell["backbone"] else True)]
            several = numbers.loc[numbers["dataset"] == cell["dataset"], "table"].nunique() > 1
            where = cell["table"] if several else cell["dataset"]  # mscoco_1k / mscoco_5k; cub, flowers
            label = f"{where} {cell['method']}"
            label += (f", {cell['backbone']}" if cell["backbone"] else "") + f", {cell['direction']} {METRIC_LABELS.get(cell['metric'], cell['metric'])}"
            published = f"{cell['value']:.2f} ({paper.support_label(cell['sources'])})"
            if ours.empty:
                rows.append([label, published, "", "", "not run here"])
                continue
            first = ours.iloc[0]
            difference = first["mean"] - cell["value"]
            rows.append([label, published, _ours(first["mean"], first["std"], first["n_seeds"]), _signed(difference),
                         f"within {abs(difference):.2f} points"])
    if not rows:
        return "No value of the paper's tables is known for these experiments."
    return markdown_table(["row", "paper (support)", f"ours ({profile})", "ours − paper", "status"], rows)


# ---------------------------------------------------------------------------------------
# Figures, profiles, performance, timings
# ---------------------------------------------------------------------------------------


def render_figures(results_dir: Path, profile: str, link_root: Path) -> str:
    """The README's figures that exist, two a row, each with its caption."""
    cells = []
    for experiment, stem, caption in README_FIGURES:
        path = results_dir / experiment / profile / f"{stem}.png"
        if path.is_file():
            cells.append(f"{caption}<br>![{caption}]({_relative(path, link_root)})")
    if not cells:
        return f"No figures yet under `results/*/{profile}/`."
    if len(cells) % 2:
        cells.append("")
    rows = [cells[index:index + 2] for index in range(0, len(cells), 2)]
    return markdown_table([f"{_data_label(profile)}", "(each folder also holds the SVG)"], rows)


def _setting(value: Any) -> str:
    if value is None:
        return "data default"
    if isinstance(value, (tuple, list)):
        return "x".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


#: (label, how to read it from a dataset's settings) for the profiles table.
PROFILE_ROWS: tuple[tuple[str, Any], ...] = (
    ("data; image branch", lambda profile, s: ("real data" if profile == "paper" else "synthetic") + "; " + (
        "trained end to end" if s["feature_mode"] == "end_to_end" else "frozen, cached ImageNet features")),
    ("backbone", lambda profile, s: s["backbone"] + (f", first {s['backbone_blocks']} stages"
                                                     if s.get("backbone_blocks") is not None else "")),
    ("image size / feature grid", lambda profile, s: f"{_setting(s.get('image_size'))} / {_setting(s.get('pool_grid'))}"),
    ("learning rate", lambda profile, s: _setting(s["lr"]) + (f", {_setting(s['finetune_lr'])} after {s['frozen_epochs']} frozen epochs"
                                                               if s["frozen_epochs"] else "")),
    ("epochs / batch size", lambda profile, s: f"{s['epochs']} / {s['batch_size']}"),
    ("EMA decay", lambda profile, s: _setting(s["ema_decay"])),
    ("sampler", lambda profile, s: s["sampler"] + (f" ({s['instances_per_label']} per id)" if s["sampler"] == "identity" else "")),
    ("horizontal flips", lambda profile, s: ("random flip" if s["feature_mode"] == "end_to_end" else
                                             ("cached flipped copies" if s.get("cache_flips") else "none"))),
    ("joint dim / word dim / LSTM units", lambda profile, s: f"{s['embedding_dim']} / {s['word_dim']} / {s['hidden_size']}"),
)


def _gallery(results_dir: Path, profile: str, dataset: str) -> str:
    """Test images / captions of ``dataset``: published sizes for ``paper``, else data_preparation's CSV."""
    if profile == "paper":
        from .. import data

        sizes = data.published_sizes()
        row = sizes[(sizes["dataset"] == dataset) & (sizes["split"] == "test")]
    else:
        path = results_dir / "data_preparation" / profile / "split_statistics.csv"
        if not path.is_file():
            return "see notebook 01"
        sizes = pd.read_csv(path)
        row = sizes[(sizes["dataset"] == dataset) & (sizes["split"] == "test")]
    if row.empty:
        return "n/a"
    images, captions = row.iloc[0]["images"], row.iloc[0]["captions"]
    return f"{_setting(int(images)) if not _missing(images) else '?'} / {_setting(int(captions)) if not _missing(captions) else '?'}"


def render_profiles(results_dir: Path) -> str:
    """The three profiles side by side, read from :data:`cmp_utils.training.PROFILE_SETTINGS`."""
    from .. import training

    columns = [("paper", "cuhk_pedes"), ("paper", "flickr30k"), ("quick", "cuhk_pedes"), ("smoke", "cuhk_pedes")]
    columns = [(profile, dataset) for profile, dataset in columns if dataset in training.PROFILE_SETTINGS.get(profile, {})]
    header = ["setting"] + [f"{profile} ({dataset})" for profile, dataset in columns]
    rows = []
    for label, read in PROFILE_ROWS:
        rows.append([label] + [read(profile, training.PROFILE_SETTINGS[profile][dataset]) for profile, dataset in columns])
    rows.append(["test gallery: images / captions"] + [_gallery(results_dir, profile, dataset) for profile, dataset in columns])
    intro = ("_`profile`, in every notebook's `parameters` cell: `smoke` (CI), `quick` (default, a CPU), `paper` (real "
             "data, a GPU). Generated from `cmp_utils.training.PROFILE_SETTINGS` and "
             "`results/data_preparation/*/split_statistics.csv`; Flickr30K settings also stand for MSCOCO, CUB and "
             "Flowers, and each of the paper profile's rows trains the backbone the paper reports it with "
             "(`cmp_utils.experiments.PAPER_ROWS`) (MSCOCO: batch "
             f"{_setting(training.PROFILE_SETTINGS['paper'].get('mscoco', {}).get('batch_size'))})._")
    return intro + "\n\n" + markdown_table(header, rows)


#: Benchmark rows the README summarises: (CSV stem, benchmark, case).
PERFORMANCE_ROWS = (
    ("training_step", "training_step/cached_features", "training throughput (full step)"),
    ("training_step", "training_step/end_to_end_mobilenet_v2", "training throughput (full step)"),
    ("losses", "losses/batch_64", "CMPM"),
    ("evaluation", "evaluation/5000x25000", "retrieval_metrics (R@K, medr, meanr, mAP, mINP)"),
    ("numerics", "numerics/quick_run", "one run (feature cache built): pinned"),
)


def _read_bench(results_dir: Path) -> dict[str, pd.DataFrame]:
    return {path.stem: pd.read_csv(path) for path in sorted((results_dir / "bench").glob("*.csv"))}


def render_performance(results_dir: Path) -> str:
    """A few benchmark figures (see :data:`PERFORMANCE_ROWS`) and the link to the full tables."""
    bench = _read_bench(results_dir)
    if not bench:
        return "No benchmark results yet (`make bench`)."
    rows = []
    for stem, benchmark, case in PERFORMANCE_ROWS:
        frame = bench.get(stem)
        if frame is None or not {"benchmark", "case", "value", "unit"} <= set(frame.columns):
            continue
        hit = frame[(frame["benchmark"] == benchmark) & (frame["case"] == case)]
        if len(hit):
            record = hit.iloc[0]
            value = f"{_cell(float(record['value']))} {record['unit']}"
            if "ratio" in record and not pd.isna(record["ratio"]) and benchmark.startswith("numerics/"):
                value += f" (x{float(record['ratio']):.2f} of {record['ratio_to'].split(' (')[0]})"
            rows.append([benchmark, case, value, record.get("machine", "")])
    gpu = bench.get("gpu")
    no_gpu = gpu is not None and len(gpu) and "case" in gpu and (gpu["case"] == "no CUDA device").all()
    table = markdown_table(["benchmark", "case", "value", "machine"], rows) if rows else "No headline rows found."
    return ("_From `results/bench/*.csv` (`make bench`); every row in [results/bench/README.md](results/bench/README.md)."
            + (" No GPU benchmark exists yet (`gpu.csv`: no CUDA device was present)." if no_gpu else "") + "_\n\n" + table)


def render_bench_readme(results_dir: Path) -> str:
    """All benchmark tables, for ``results/bench/README.md``."""
    parts = ["# Benchmarks", "_Generated by `python -m cmp_utils.reporting` from `results/bench/*.csv` (`make bench`); "
             "do not edit by hand._"]
    bench = _read_bench(results_dir)
    if not bench:
        parts.append("No benchmark results yet.")
    for stem, frame in bench.items():
        rows = [[_cell(value) for value in record] for record in frame.itertuples(index=False)]
        parts.append(f"## {stem}\n\n" + markdown_table([str(column) for column in frame.columns], rows))
    return "\n\n".join(parts) + "\n"


def notebook_purpose(path: Path) -> str:
    """The one-line purpose of a notebook: the first non-empty line after its title."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    lines = [line.strip() for line in "".join(cells[0]["source"]).splitlines() if line.strip()] if cells else []
    purpose = lines[1] if len(lines) > 1 else ""
    return purpose if len(purpose) <= 80 else purpose[:77].rsplit(" ", 1)[0] + "..."


def render_timings(results_dir: Path, profile: str, notebooks_dir: Path, link_root: Path) -> str:
    """notebook | what it does | minutes, from ``results/executed/<profile>/timings.csv``."""
    path = results_dir / "executed" / profile / "timings.csv"
    timings = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["notebook", "seconds"])
    if "notebook" not in timings or "seconds" not in timings:
        raise ValueError(f"{path} lacks the columns notebook and seconds")
    timings["stem"] = timings["notebook"].astype(str).map(lambda name: Path(name).stem)
    latest = timings.drop_duplicates("stem", keep="last").set_index("stem")
    rows = []
    for notebook in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        executed = results_dir / "executed" / profile / notebook.name
        name = f"[{notebook.stem}]({_relative(executed, link_root)})" if executed.is_file() else notebook.stem
        seconds = latest["seconds"].get(notebook.stem) if notebook.stem in latest.index else None
        rows.append([name, notebook_purpose(notebook), "no timing recorded yet" if _missing(seconds) else f"{seconds / 60:.1f}"])
    where = ""
    if len(latest):
        machines = sorted({str(value) for value in latest.get("machine", pd.Series(dtype=str)).dropna()})
        span = ""
        if "started_at" in latest and latest["started_at"].notna().any():
            starts = pd.to_datetime(latest["started_at"], utc=True)
            ends = starts + pd.to_timedelta(latest["seconds"], unit="s")
            span = f", from {starts.min().isoformat(timespec='seconds')} to {ends.max().isoformat(timespec='seconds')}"
        total = latest["seconds"].sum() / 60
        where = (f"\n\nTotal: {total:.0f} min" + (f" on {', '.join(machines)}" if machines else "") + span + ".")
    return markdown_table(["notebook (executed copy)", "what it does", f"minutes ({profile}, `timings.csv`)"], rows) + where


# ---------------------------------------------------------------------------------------
# Writing the README and results/README.md
# ---------------------------------------------------------------------------------------


def replace_between_markers(text: str, markers: tuple[str, str], body: str, source: str | Path = "the document") -> str:
    """``text`` with everything between the two ``markers`` replaced by ``body`` (markers kept, one
    newline after the start and before the end). A ``ValueError`` naming ``source`` unless ``text``
    holds exactly one start marker followed by exactly one end marker. The one place where a
    generated section (README, results/README.md, docs/fidelity.md) is written into its document."""
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{source} needs exactly one {start} followed by one {end}; add them where the "
                         "generated section should go")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip(chr(10))}\n{end}{tail}"


def render_section(name: str, results_dir: Path, profile: str, notebooks_dir: Path, link_root: Path) -> str:
    """The Markdown of one generated README section (see :data:`SECTIONS`)."""
    if name == "scorecard":
        return render_scorecard(results_dir, profile, notebooks_dir)
    if name == "headline":
        return render_headline(results_dir, profile, notebooks_dir)
    if name == "figures":
        return render_figures(results_dir, profile, link_root)
    if name == "profiles":
        return render_profiles(results_dir)
    if name == "performance":
        return render_performance(results_dir)
    if name == "timings":
        return render_timings(results_dir, profile, notebooks_dir, link_root)
    raise ValueError(f"unknown README section {name!r}; use one of {SECTIONS}")


def _write(path: Path, text: str) -> Path:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with atomic.atomic_path(path) as temporary:  # keep the permissions (mkstemp makes 0600)
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(mode)
    return path


def update_readme(
    readme: str | Path,
    results_dir: str | Path | None = None,
    profile: str = "quick",
    notebooks_dir: str | Path | None = None,
) -> list[Path]:
    """Rewrite every generated section the README has markers for, ``results/README.md`` and
    ``results/bench/README.md``; returns the paths written."""
    readme = Path(readme)
    if not readme.is_file():
        raise FileNotFoundError(f"--readme {readme} does not exist")
    config.check_profile(profile)
    results = config.results_dir(results_dir)
    notebooks = Path(notebooks_dir) if notebooks_dir is not None else readme.resolve().parent / "notebooks"
    text = readme.read_text(encoding="utf-8")
    present = [name for name in SECTIONS if marker(name)[0] in text]
    if not present:
        raise ValueError(f"{readme} lacks the markers of every generated section ({', '.join(marker(n)[0] for n in SECTIONS)}); "
                         "add them where the generated sections should go")
    link_root = readme.resolve().parent
    for name in present:
        text = replace_between_markers(text, marker(name), render_section(name, results, profile, notebooks, link_root), readme)
    results.mkdir(parents=True, exist_ok=True)
    full = ("# Results\n\n_Generated by `python -m cmp_utils.reporting` from `results/*/"
            f"{profile}/`; do not edit by hand. Paper values: `cmp_utils/evaluation/paper_numbers.csv` (sources: "
            "`cmp_utils/evaluation/paper_sources.csv`, docs/fidelity.md); ours: mean ± sample sd over seeds._\n\n"
            + render_full_tables(results, profile, notebooks, results) + "\n\n## Profiles, and how quick differs from the paper\n\n"
            + render_profiles(results) + "\n\n" + render_reproduction(results) + "\n")
    written = [_write(readme, text), _write(results / "README.md", full)]
    written.append(_write(results / "bench" / "README.md", render_bench_readme(results)))
    return written


# ---------------------------------------------------------------------------------------
# For the notebooks
# ---------------------------------------------------------------------------------------


def reproduction_status_of(experiment: str, profile: str) -> str:
    """Markdown of an experiment notebook's reproduction status: in the paper profile every value the
    paper reports for the experiment's tables beside our run of the same row and backbone
    (:func:`reproduction_status`); synthetic profiles are never compared with the paper's numbers."""
    if profile == "paper":
        return reproduction_status([experiment])
    return f"profile {profile}: synthetic data; the reproduction status compares the paper profile's runs only"


def about_profiles(profile: str) -> str:
    """Markdown shared by notebooks 05-11: the profiles, what ``quick`` means, how claims are decided."""
    from ..evaluation import claims
    from .. import training

    config.check_profile(profile)
    quick = training.PROFILE_SETTINGS["quick"]["cuhk_pedes"]
    paper_settings = training.PROFILE_SETTINGS["paper"]["cuhk_pedes"]
    return "\n".join([
        "**How the profiles run this.** `smoke` only checks that every cell runs (tiny data, one seed). "
        f"`quick` trains on the embedded *synthetic* data, with the image branch on frozen, cached ImageNet "
        f"{quick['backbone']} features and a small text branch (lr {_setting(quick['lr'])}, {quick['epochs']} epochs, "
        f"batch {quick['batch_size']}, EMA decay {_setting(quick['ema_decay'])}, {quick['sampler']} sampler, "
        f"{quick['embedding_dim']}-d joint space), so that every method and seed trains in about a minute on a CPU. "
        f"`paper` uses the real data and the released recipe (CUHK-PEDES: {paper_settings['backbone']}, lr "
        f"{_setting(paper_settings['lr'])}, {paper_settings['epochs']} epochs, batch {paper_settings['batch_size']}, "
        f"EMA {_setting(paper_settings['ema_decay'])}); it has not been run in this repository. Runs are memoised "
        "(keyed by their settings and the library's source), so notebooks that share a run train it once.",
        "",
        "**How claims are decided.** Each claim of the paper compares two methods on paired seeds "
        "(`cmp_utils.evaluation.claims.paired_claim`): **held** when the 95% confidence interval of the mean difference "
        f"lies above zero, **did not hold** when it lies below, **inconclusive** otherwise; fewer than "
        f"{claims.MIN_SEEDS} seeds are reported as not tested. Synthetic numbers are not comparable in level with the paper's: only the "
        f"comparison between losses carries over. This run: profile `{profile}`"
        + (" (synthetic data)." if profile in config.SYNTHETIC_PROFILES else "."),
    ])


#: What a reader should not conclude from an experiment, whatever its numbers (no numbers here).
CAVEATS: dict[str, tuple[str, ...]] = {
    "training": ("One run of one seed: its curve shows that training converges, not how losses compare.",),
    "cuhk_pedes": ("The level of R@1 says nothing about the paper's: the data are synthetic, the image branch is "
                   "frozen and the schedule is a few epochs.",),
    "flickr30k": ("The synthetic scenes have a few hundred test images, so one query more or less moves R@1 by "
                  "a visible step.",),
    "mscoco": ("The 1K numbers average five folds of the same small synthetic test set; they are not independent "
               "of the 5K numbers.",),
    "cub_flowers": ("AP@50 cannot exceed the share of a class's images among the top 50: with the few test images "
                    "per synthetic class its ceiling is far below 100 (see the figure).",),
    "batch_size": ("Only the batch size varies: every batch size sees the same data for the same epochs, so "
                   "small batches take more steps. The comparison is of each loss's sensitivity (its drop relative "
                   "to its own best batch size), not of levels.",),
    "ablation": ("CMPC alone can lower its loss by growing the feature norms while image and text stay apart "
                 "(notebook 03's toy measures this: compact classes per modality, poor alignment across them); "
                 "the paper trains CMPC with CMPM.",),
    "cmpm_family": ("The later losses were published with CLIP backbones and long schedules; here every loss shares "
                    "one small network and a few epochs, which favours losses that converge fast. Each fixed "
                    "temperature was chosen on one seed's validation split from a short grid; a finer grid could move "
                    "the ranking of close losses. A local scope changes only where the loss sees the batch: real GPUs "
                    "without a gather would also keep batch-norm statistics per GPU.",),
    "feature_distribution": ("Cosine gaps of one trained model per loss describe these features, not a ranking of "
                             "losses; the 2-D projection keeps only the first two principal directions.",),
}
GENERAL_CAVEAT = ("`{profile}` results are on synthetic data with frozen cached image features: they test whether "
                  "the losses compare as the paper says, not whether the paper's numbers are reproduced.")


def what_we_found(experiment: str, profile: str, results_dir: str | Path | None = None) -> str:
    """The closing "What we found" Markdown of a notebook, generated from its ``claims.csv`` and
    ``metrics.csv`` (no hand-typed numbers), with what the reader should not conclude."""
    folder = config.results_dir(results_dir) / experiment / profile
    lines = [f"## What we found ({_data_label(profile)})", ""]
    if experiment == "training":
        lines += _training_findings(config.results_dir(results_dir) / "runs" / "training" / profile)
    claims_path, metrics_path = folder / "claims.csv", folder / "metrics.csv"
    if claims_path.is_file():
        for row in read_claims(claims_path).to_dict("records"):
            seeds = row.get("n_seeds")
            paper_text = (f"paper (real data): {paper_side(row, experiment)}" if is_papers_claim(row, experiment)
                          else "not a comparison the paper makes")
            lines.append(f"- {row['claim']}: {_verdict_cell(row)} (ours: {_our_side(row)}"
                         + ("" if _missing(seeds) else f"; {int(seeds)} seeds")
                         + ("" if _missing(row.get("family_size")) else f"; Holm-adjusted over {int(row['family_size'])} claims")
                         + f"; {paper_text}).")
    if metrics_path.is_file():
        frame = with_current_paper_values(read_metrics(metrics_path))
        metric = next((m for m in ("R@1", "top1_accuracy", "cosine_gap") if m in set(frame["metric"])), None)
        if metric is not None:
            summary = summarise(frame[frame["metric"] == metric])
            best = summary.loc[summary["mean"].idxmax()]
            where = ", ".join(f"{key} {best[key]}" for key in grouping_columns(summary)
                              if key not in ("metric", "backbone", "dataset") and summary[key].nunique() > 1)
            paper_clause = ("" if profile in config.SYNTHETIC_PROFILES  # never a paper value beside a synthetic one
                            else f"; the paper reports {_paper_with_support(best)} for that cell."
                            if not _missing(best["paper_value"]) else "; no confirmed paper value for that cell.")
            lines.append(f"- Highest mean {metric}: {_ours(best['mean'], best['std'], best['n_seeds'])} ({where})"
                         + (paper_clause or "."))
    if len(lines) == 2:
        lines.append(f"- No results yet under `results/{experiment}/{profile}/`: run the cells above.")
    lines += ["", "**What not to conclude.**", ""]
    lines += [f"- {caveat}" for caveat in CAVEATS.get(experiment, ())]
    if profile in config.SYNTHETIC_PROFILES:
        lines.append("- " + GENERAL_CAVEAT.format(profile=profile))
    return "\n".join(lines)


def _training_findings(run_dir: Path) -> list[str]:
    """Bullets from notebook 04's run folder: validation recall by epoch, best epoch, test recall."""
    log_path, results_path = run_dir / "log.jsonl", run_dir / "results.json"
    if not log_path.is_file():
        return []
    history = pd.DataFrame([json.loads(line) for line in log_path.read_text().splitlines() if line.strip()])
    lines = []
    recall = next((c for c in ("val_t2i_R@1", "val_i2t_R@1", "val_rsum") if c in history), None)
    if recall is not None and len(history):
        lines.append(f"- Validation {recall[4:]} went from {history[recall].iloc[0]:.2f} (epoch {int(history['epoch'].iloc[0])}) "
                     f"to {history[recall].iloc[-1]:.2f} (epoch {int(history['epoch'].iloc[-1])}); the training loss from "
                     f"{history['loss'].iloc[0]:.3f} to {history['loss'].iloc[-1]:.3f}.")
    if results_path.is_file():
        result = json.loads(results_path.read_text())
        test = result.get("test") or {}
        shown = ", ".join(f"{key} {value:.2f}" for key, value in test.items()
                          if key in ("t2i_R@1", "t2i_R@10", "i2t_R@1", "rsum") and isinstance(value, (int, float)))
        if shown:
            lines.append(f"- Test split with the best epoch's weights (epoch {result.get('best_epoch', '?')}): {shown}.")
    return lines


def training_settings(profile: str, dataset: str, overrides: dict[str, Any] | None = None,
                      varied: Sequence[str] = ("losses", "seed")) -> dict[str, Any]:
    """The resolved training settings of an experiment's runs, the git commit and the CPU numerics, for
    ``params.yaml``: ``{"git_commit", "cpu_numerics": cmp_utils.core.numerics.status(), "training": settings of
    :func:`cmp_utils.training.make_config`, "varied_per_run"}`` (machine paths such as ``output_dir`` left out)."""
    from ..core import numerics
    from .. import training

    settings = training.make_config(profile, dataset, **(overrides or {})).to_dict()
    for key in ("output_dir", "cache_dir", "data_dir", "progress", "resume", *varied):
        settings.pop(key, None)
    return {"git_commit": training.git_commit(), "cpu_numerics": numerics.status(), "training": settings,
            "varied_per_run": list(varied)}


# ---------------------------------------------------------------------------------------
# Executed notebooks: no machine paths, bounded size
# ---------------------------------------------------------------------------------------

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:home|root|tmp|work|Users|private|var/folders|mnt|scratch)/[^\s'\"<>)\]},:]*")


def scrub_text(text: str, roots: Sequence[Path]) -> str:
    """``text`` with each of ``roots`` made relative (``.``) and any other absolute machine path
    under /home, /root, /tmp, /work, ... replaced by ``<path>``."""
    for root in sorted({str(Path(r)) for r in roots}, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    return _ABSOLUTE_PATH.sub("<path>", text)


#: Inline figures of executed notebooks wider than this (pixels) are scaled down (bounds the committed size).
MAX_INLINE_WIDTH = 900


def shrink_png(encoded: str, max_width: int = MAX_INLINE_WIDTH, max_bytes: int = 100_000) -> str:
    """A base64 PNG no wider than ``max_width`` pixels (scaled down, aspect kept) and, when larger
    than ``max_bytes``, reduced to a 256-colour palette (figures have few colours); the input
    unchanged when it is already small enough or not a readable PNG."""
    import base64
    import io

    from PIL import Image

    try:
        raw = base64.b64decode("".join(encoded.split()))
        image = Image.open(io.BytesIO(raw))
    except (ValueError, OSError):  # not a readable PNG: leave it as the kernel wrote it
        return encoded
    if image.width <= max_width and len(raw) <= max_bytes:
        return encoded
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))), Image.LANCZOS)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA")
    image = image.quantize(256, method=Image.Quantize.FASTOCTREE)  # keeps transparency
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def scrub_notebook(path: str | Path, roots: Sequence[str | Path] | None = None) -> Path:
    """Remove machine paths from an executed notebook's outputs and metadata, drop SVG copies of
    figures that also have a PNG and scale inline PNGs down to :data:`MAX_INLINE_WIDTH` (bounds the
    size); rewrites ``path`` atomically.

    ``roots`` (default: the project root, the results and cache folders) become relative.
    """
    path = Path(path)
    roots = [Path(r) for r in roots] if roots is not None else [config.project_root(), config.results_dir(), config.cache_dir()]
    notebook = json.loads(path.read_text(encoding="utf-8"))

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return scrub_text(value, roots)
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        return value

    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                data.pop("image/svg+xml", None)
                png = data["image/png"]
                data["image/png"] = shrink_png("".join(png) if isinstance(png, list) else png)
                output.get("metadata", {}).pop("image/png", None)  # its width/height no longer apply
        cell["outputs"] = clean(cell.get("outputs", [])) if "outputs" in cell else cell.get("outputs")
        if "outputs" not in cell or cell["outputs"] is None:
            cell.pop("outputs", None)
        cell["metadata"] = clean(cell.get("metadata", {}))
    notebook["metadata"] = clean(notebook.get("metadata", {}))
    notebook["metadata"].pop("widgets", None)
    return atomic.write_text(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.reporting", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", required=True, help="README to update (must hold the section markers)")
    parser.add_argument("--results", default=None, help="results folder (default: $CMP_RESULTS_DIR or ./results)")
    parser.add_argument("--profile", default="quick", help="which profile's results to report (smoke | quick | paper)")
    parser.add_argument("--notebooks", default=None, help="notebooks folder (default: notebooks/ beside the README)")
    args = parser.parse_args(argv)
    try:
        paths = update_readme(args.readme, args.results, args.profile, args.notebooks)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("updated " + ", ".join(str(path) for path in paths))
    return 0

