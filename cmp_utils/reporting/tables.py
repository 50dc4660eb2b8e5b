"""Result tables: metrics and claims files read, summarised over seeds and set beside the paper's values, as
Markdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ..core import config

METRICS_COLUMNS = ("dataset", "method", "backbone", "direction", "metric", "value", "paper_value", "seed")
REQUIRED_METRICS_COLUMNS = ("metric", "value", "seed")
#: Columns that vary between the runs of one table cell (measurements, not keys): every other
#: column of a metrics frame is a grouping column (batch_size, schedule, sampler, fold, ...).
PER_RUN_COLUMNS = (
    "value",
    "paper_value",
    "paper_support",
    "ceiling",
    "seed",
    "seconds",
    "run_key",
    "run_dir",
    "best_epoch",
    "samples_per_second",
)
#: Columns :func:`summarise` adds (never grouping columns).
SUMMARY_COLUMNS = ("mean", "std", "n", "n_seeds", "difference", "percent_of_ceiling")
#: Per-cell attributes carried beside the mean (the first non-null value of the cell); ``paper_support``
#: says how many public sources give the paper's value (:func:`cmp_utils.evaluation.paper.support_label`).
CELL_ATTRIBUTES = ("paper_value", "paper_support", "ceiling")
METRIC_LABELS = {"R@1": "R@1", "R@10": "R@10", "top1_accuracy": "top-1 acc.", "ap@50": "AP@50"}


# ---------------------------------------------------------------------------------------
# Reading and summarising
# ---------------------------------------------------------------------------------------


def read_metrics(path: Path) -> pd.DataFrame:
    """One experiment's ``metrics.csv``: needs ``metric``, ``value`` and ``seed``; the other tidy
    columns (:data:`METRICS_COLUMNS`) are filled in empty where an older or special file lacks them."""
    frame = pd.read_csv(path, keep_default_na=True)
    missing = [column for column in REQUIRED_METRICS_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the columns {missing}; a metrics.csv needs {list(REQUIRED_METRICS_COLUMNS)} "
            f"and should have {list(METRICS_COLUMNS)}"
        )
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
    parts = [
        paper.with_paper_values(group, table=None if _missing(table) else table)
        for table, group in frame.groupby("table", sort=False, dropna=False)
    ]
    return pd.concat(parts).sort_index()


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
    chosen = numbers[
        (numbers["metric"] == metric)
        & (numbers["direction"] == (row.get("direction") or "t2i"))
        & numbers["value"].notna()
    ]
    given = {
        column: row[column] for column in ("table", "dataset") if not _missing(row.get(column)) and row.get(column)
    }
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
        return f"{method} {cell['value']:.2f} ({', '.join(filter(None, [cell['backbone'], paper.support_label(cell['sources'])]))})"

    if len(cells) == 1:
        [(method, _)] = cells.items()
        return f"no paper value for this comparison (only {described(method)}; none for {worse if method == better else better})"
    if cells[better]["backbone"] and cells[worse]["backbone"] and cells[better]["backbone"] != cells[worse]["backbone"]:
        return f"no paper value for this comparison ({described(better)} vs {described(worse)}: different backbones)"
    difference = cells[better]["value"] - cells[worse]["value"]
    second_hand = any(cell["status"] == "confirmed second-hand" for cell in cells.values())
    return f"{described(better)} vs {described(worse)} ({difference:+.2f})" + (
        " (one value second-hand)" if second_hand else ""
    )


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
    "ablation": frozenset(
        {("norm-softmax", "softmax"), ("CMPC", "norm-softmax"), ("CMPM+CMPC", "CMPM"), ("CMPM+CMPC", "CMPC")}
    ),
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
    if (
        "direction" in summary
        and summary["direction"].nunique() > 1
        and (summary.groupby("metric")["direction"].nunique() == 1).all()
    ):
        summary["label"] = summary["direction"] + " " + summary["label"]  # one direction per metric (CUB/Flowers)
        summary = summary.drop(columns="direction")
    stats = {"metric", "label", "paper_value", "paper_support", "ceiling", "backbone", *SUMMARY_COLUMNS}
    keys = [key for key in grouping_columns(summary) if key not in stats]
    varying = _varying(summary, keys)
    numeric = [
        key
        for key in varying
        if key not in ("method", "dataset", "table", "direction") and pd.api.types.is_numeric_dtype(summary[key])
    ]
    column_key = numeric[0] if numeric else ("direction" if "direction" in varying else None)
    order = ["table", "dataset", "method"]
    row_keys = [key for key in order if key in varying] + [
        key for key in varying if key not in order and key != column_key
    ]
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
                paper_value = (
                    "" if _missing(first["paper_value"]) else f" (paper {_paper_with_support(first, short=True)})"
                )
                share = (
                    ""
                    if _missing(first.get("percent_of_ceiling", float("nan")))
                    else f" [{first['percent_of_ceiling']:.0f}%]"
                )
                cells.append(_ours(first["mean"], first["std"], first["n_seeds"]) + share + paper_value)
        rows.append(cells)
    return markdown_table(header, rows)


#: The paper's tables (``paper_numbers.csv``'s ``table``) each experiment folder holds.
EXPERIMENT_PAPER_TABLES = {
    "cuhk_pedes": ("cuhk_pedes",),
    "flickr30k": ("flickr30k",),
    "mscoco": ("mscoco_1k", "mscoco_5k"),
    "cub_flowers": ("cub_flowers",),
}


def paper_comparison(summary: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The columns of a notebook's "ours against the paper" table: on real data (paper profile) the
    paper's value, its support and ``difference`` (ours − paper); on synthetic data the paper's value
    and support beside the ceiling and the share of it, never a difference (a level difference from
    the paper means nothing there)."""
    keys = [
        key
        for key in ("table", "dataset", "method", "backbone", "sampler", "direction", "metric")
        if key in summary and (key in ("method", "metric") or summary[key].nunique(dropna=False) > 1)
    ]
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


def reproduction_status(
    experiments: Sequence[str] = tuple(EXPERIMENT_PAPER_TABLES),
    results_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    profile: str = "paper",
) -> str:
    """row | paper | ours | ours − paper | status, for every value of ``paper_numbers.csv`` in the
    tables of ``experiments`` (optionally only ``metrics``), from ``results/<experiment>/paper/metrics.csv``:
    status "not run here" where that file has no run of the row (same method, the paper's backbone),
    else "within x points". Only real data (the paper profile) is compared with the paper."""
    from .. import training
    from ..evaluation import paper

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
            own = {
                dataset: training.PROFILE_SETTINGS[profile][dataset]["sampler"]
                for dataset in summary["dataset"].unique()
            }
            summary = summary[summary["sampler"] == summary["dataset"].map(own)]
        for cell in cells.to_dict("records"):
            ours = pd.DataFrame()
            if len(summary):
                labels = summary["backbone"].map(lambda name: paper.BACKBONE_LABELS.get(name, name))
                ours = summary[
                    (summary["dataset"] == cell["dataset"])
                    & (summary["table"] == cell["table"])
                    & (summary["method"] == cell["method"])
                    & (summary["direction"] == cell["direction"])
                    & (summary["metric"] == cell["metric"])
                    & ((labels == cell["backbone"]) if cell["backbone"] else True)
                ]
            several = numbers.loc[numbers["dataset"] == cell["dataset"], "table"].nunique() > 1
            where = cell["table"] if several else cell["dataset"]  # mscoco_1k / mscoco_5k; cub, flowers
            label = f"{where} {cell['method']}"
            label += (
                f", {cell['backbone']}" if cell["backbone"] else ""
            ) + f", {cell['direction']} {METRIC_LABELS.get(cell['metric'], cell['metric'])}"
            published = f"{cell['value']:.2f} ({paper.support_label(cell['sources'])})"
            if ours.empty:
                rows.append([label, published, "", "", "not run here"])
                continue
            first = ours.iloc[0]
            difference = first["mean"] - cell["value"]
            rows.append(
                [
                    label,
                    published,
                    _ours(first["mean"], first["std"], first["n_seeds"]),
                    _signed(difference),
                    f"within {abs(difference):.2f} points",
                ]
            )
    if not rows:
        return "No value of the paper's tables is known for these experiments."
    return markdown_table(["row", "paper (support)", f"ours ({profile})", "ours − paper", "status"], rows)


def _setting(value: Any) -> str:
    if value is None:
        return "data default"
    if isinstance(value, (tuple, list)):
        return "x".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
