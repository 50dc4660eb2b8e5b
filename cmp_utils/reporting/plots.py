"""Figures for the notebooks and the report: one look for every result figure.

* :func:`save_figure` writes PNG (modest dpi) and SVG, atomically;
* :func:`methods_figure` draws dot-and-interval panels (mean and 95% interval over seeds, each
  seed a small dot) zoomed to the differences between methods, with the paper's confirmed values
  in a separate annotated panel, never on the axis of synthetic results, and the ceiling of the
  synthetic test set (or AP@50's own ceiling) marked where known;
* :func:`batch_size_figure` shows each method's R@1 relative to its own best batch size;
* :func:`training_curves` plots validation R@1 and training loss per epoch of the runs behind a table;
* :func:`plot_projection` and :func:`plot_cosine_histograms` draw learned features.

Every figure of synthetic results carries "synthetic data, <profile> profile" (:func:`mark_synthetic`).
Headless runs need nothing special: matplotlib falls back to Agg without a display.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core.atomic import atomic_path
from ..core.config import SYNTHETIC_PROFILES

DIRECTION_LABELS = {"t2i": "text-to-image", "i2t": "image-to-text"}
METRIC_LABELS = {
    "R@1": "R@1 (%)",
    "R@5": "R@5 (%)",
    "R@10": "R@10 (%)",
    "mAP": "mAP (%)",
    "mINP": "mINP (%)",
    "top1_accuracy": "top-1 accuracy (%)",
    "ap@50": "AP@50 (%)",
    "cosine_gap": "cosine gap",
}
OURS_COLOUR, PAPER_COLOUR, CEILING_COLOUR = "#4c72b0", "#c44e52", "#777777"


def save_figure(fig: "plt.Figure", path_stem: str | os.PathLike, dpi: int = 110) -> list[Path]:
    """Save ``fig`` as ``<path_stem>.png`` (at ``dpi``) and ``<path_stem>.svg`` (atomically); return both paths."""
    stem = Path(path_stem)
    if stem.suffix in (".png", ".svg"):
        stem = stem.with_suffix("")
    written = []
    for suffix in (".png", ".svg"):
        destination = stem.with_suffix(suffix)
        with atomic_path(destination) as temporary:
            fig.savefig(temporary, format=suffix[1:], dpi=dpi, bbox_inches="tight")
        written.append(destination)
    return written


def mark_synthetic(fig: "plt.Figure", profile: str) -> "plt.Figure":
    """Stamp "synthetic data, <profile> profile" in the figure's corner when ``profile`` trains on synthetic data."""
    if profile in SYNTHETIC_PROFILES:
        fig.text(
            0.995,
            0.005,
            f"synthetic data, {profile} profile",
            ha="right",
            va="bottom",
            fontsize=8,
            color="#555555",
            style="italic",
        )
    return fig


#: What every interval of :func:`plot_methods` and :func:`batch_size_figure` shows, printed on the figure.
INTERVAL_NOTE = (
    "intervals: 95% CI of each mean over seeds (unpaired); the verdicts test the paired "
    "difference between two methods (claims.csv)"
)


def note_intervals(fig: "plt.Figure") -> "plt.Figure":
    """Print :data:`INTERVAL_NOTE` in the figure's lower left corner."""
    fig.text(0.005, 0.005, INTERVAL_NOTE, ha="left", va="bottom", fontsize=7, color="#555555")
    return fig


def axis_label(metric: str, direction: str | None = None) -> str:
    """``text-to-image R@1 (%)`` from ``R@1`` and ``t2i``."""
    label = METRIC_LABELS.get(metric, metric)
    return f"{DIRECTION_LABELS.get(direction, direction)} {label}" if direction else label


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the 95% Student-t interval of the mean of ``values`` (the mean twice for one value)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1)) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


PANEL_KEYS = ("metric", "direction", "table", "title", "ceiling")


def panel_rows(frame: pd.DataFrame, panel: dict[str, Any]) -> pd.DataFrame:
    """The rows of one panel: its ``metric``, ``direction``, ``table`` and any other key naming a
    column of ``frame`` (e.g. ``dataset="cub"``) as an equality filter."""
    chosen = _select(frame, panel["metric"], panel.get("direction"), panel.get("table"))
    for key, value in panel.items():
        if key not in PANEL_KEYS:
            if key not in chosen:
                raise ValueError(f"panel filter {key}={value!r}: the frame has no column {key!r}")
            chosen = chosen[chosen[key] == value]
    return chosen


def _select(frame: pd.DataFrame, metric: str, direction: str | None, table: str | None) -> pd.DataFrame:
    chosen = frame[frame["metric"] == metric]
    if direction is not None:
        chosen = chosen[chosen["direction"] == direction]
    if table is not None and "table" in chosen:
        chosen = chosen[chosen["table"] == table]
    return chosen


def ap50_ceiling(images_per_class: Sequence[int], top: int = 50) -> float:
    """The highest AP@50 any model can reach (%): a class with fewer than ``top`` test images cannot
    fill the top ``top``, so the ceiling is the mean over classes of ``min(n_c, top) / top``."""
    counts = np.asarray(images_per_class, dtype=float)
    if counts.size == 0:
        raise ValueError("ap50_ceiling needs the number of test images of at least one class")
    return float(100.0 * np.minimum(counts, top).mean() / top)


def plot_methods(
    frame: pd.DataFrame,
    metric: str,
    direction: str | None = None,
    table: str | None = None,
    ax=None,
    title: str | None = None,
    ceiling: float | None = None,
) -> "plt.Axes":
    """Dot-and-interval panel: per method (a row) the mean and 95% interval over seeds and each seed,
    the axis zoomed to the values (not from zero). ``ceiling`` (or the frame's ``ceiling`` column)
    is drawn as a dashed line: the best score the test set allows."""
    chosen = _select(frame, metric, direction, table)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * max(1, chosen["method"].nunique())))
    methods = list(dict.fromkeys(chosen["method"]))
    lows, highs = [], []
    for position, method in enumerate(methods):
        values = chosen.loc[chosen["method"] == method, "value"].dropna().to_numpy()
        if values.size == 0:
            continue
        mean, low, high = interval(values)
        ax.hlines(position, low, high, color=OURS_COLOUR, linewidth=2.5)
        ax.plot(mean, position, "o", color=OURS_COLOUR, markersize=7, zorder=3)
        ax.plot(values, np.full(values.size, position + 0.18), ".", color="#222222", markersize=4, alpha=0.7)
        ax.annotate(f"{mean:.2f}", (high, position), xytext=(4, -3), textcoords="offset points", fontsize=8)
        lows.append(min(low, values.min()))
        highs.append(max(high, values.max()))
    if ceiling is None and "ceiling" in chosen and chosen["ceiling"].notna().any():
        ceiling = float(chosen["ceiling"].dropna().iloc[0])
    if lows:
        span = max(max(highs) - min(lows), 1e-6)
        left, right = min(lows) - 0.15 * span, max(highs) + 0.35 * span
        if ceiling is not None and not math.isnan(ceiling):
            ax.axvline(ceiling, color=CEILING_COLOUR, linestyle="--", linewidth=1)
            ax.annotate(
                "ceiling of this test set",
                (ceiling, len(methods) - 0.5),
                xytext=(-3, 0),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color=CEILING_COLOUR,
            )
            right = max(right, ceiling + 0.05 * span)
        ax.set_xlim(left, right)
    ax.set_yticks(range(len(methods)), methods)
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.set_xlabel(axis_label(metric, direction))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or axis_label(metric, direction), fontsize=10)
    return ax


def plot_paper_values(frame: pd.DataFrame, panels: Sequence[dict[str, Any]], ax) -> "plt.Axes":
    """The paper's confirmed values of the panels' cells, annotated, on an axis of their own."""
    labels, values = [], []
    for panel in panels:
        chosen = panel_rows(frame, panel)
        for method, group in chosen.groupby("method", sort=False):
            paper = group["paper_value"].dropna() if "paper_value" in group else pd.Series(dtype=float)
            if len(paper):
                labels.append(f"{method}: {axis_label(panel['metric'], panel.get('direction')).replace(' (%)', '')}")
                values.append(float(paper.iloc[0]))
    positions = np.arange(len(values))
    ax.barh(positions, values, color=PAPER_COLOUR, alpha=0.8)
    for position, value in zip(positions, values):
        ax.annotate(f"{value:.2f}", (value, position), xytext=(3, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_ylim(len(values) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("published value (%), real data")
    ax.set_title("The paper (real data; not comparable in level)", fontsize=10)
    return ax


def methods_figure(
    frame: pd.DataFrame, panels: Sequence[dict[str, Any]], profile: str, columns: int = 2, suptitle: str | None = None
) -> "plt.Figure":
    """One dot-and-interval panel per ``panels`` entry (``metric``, ``direction``, ``table``,
    ``title``, ``ceiling``), plus a separate panel of the paper's confirmed values when any exists."""
    has_paper = "paper_value" in frame and any(
        panel_rows(frame, panel)["paper_value"].notna().any() for panel in panels
    )
    count = len(panels) + int(has_paper)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    height = max(1.6, 0.5 + 0.42 * max(1, frame["method"].nunique()))
    fig, axes = plt.subplots(rows, columns, figsize=(5.4 * columns, height * rows + 0.4), squeeze=False)
    flat = axes.ravel()
    for ax, panel in zip(flat, panels):
        plot_methods(
            panel_rows(frame, panel), panel["metric"], ax=ax, title=panel.get("title"), ceiling=panel.get("ceiling")
        )
        ax.set_xlabel(axis_label(panel["metric"], panel.get("direction")))
    if has_paper:
        plot_paper_values(frame, panels, flat[len(panels)])
    for ax in flat[count:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return mark_synthetic(note_intervals(fig), profile)


def batch_size_figure(frame: pd.DataFrame, profile: str, metric: str = "R@1", direction: str = "t2i") -> "plt.Figure":
    """Per schedule (a row; the frame's ``schedule`` column, if any): left, each method's mean
    ``metric`` relative to its own best batch size (100 = its best: a loss insensitive to the batch
    stays near 100, the paper's point); right, the absolute means with 95% intervals over seeds."""
    chosen = _select(frame, metric, direction, None)
    if "schedule" not in chosen:
        chosen = chosen.assign(schedule="")
    schedules = list(dict.fromkeys(chosen["schedule"]))
    fig, axes = plt.subplots(len(schedules), 2, figsize=(11, 3.7 * len(schedules)), squeeze=False)
    for (ax_relative, ax_absolute), schedule in zip(axes, schedules):
        part = chosen[chosen["schedule"] == schedule]
        means = part.groupby(["method", "batch_size"], sort=False)["value"].mean().unstack("batch_size")
        sizes = sorted(means.columns)
        for index, method in enumerate(means.index):
            row = means.loc[method, sizes]
            ax_relative.plot(sizes, 100.0 * row / row.max(), marker="o", label=method)
            stats = [
                interval(part[(part["method"] == method) & (part["batch_size"] == size)]["value"]) for size in sizes
            ]
            centre = np.array([s[0] for s in stats])
            dodged = np.asarray(sizes, dtype=float) * 2 ** (0.04 * (index - (len(means.index) - 1) / 2))  # side by side
            ax_absolute.errorbar(
                dodged,
                centre,
                yerr=[centre - [s[1] for s in stats], [s[2] for s in stats] - centre],
                marker="o",
                capsize=3,
                label=method,
            )
        for ax in (ax_relative, ax_absolute):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(size) for size in sizes])
            ax.minorticks_off()
            ax.set_xlabel("batch size")
            ax.grid(alpha=0.3)
        named = f" ({str(schedule).replace('_', ' ')})" if schedule else ""
        ax_relative.axhline(100, color=CEILING_COLOUR, linewidth=0.8)
        ax_relative.set_ylabel(f"{metric}, % of the loss's best batch size")
        ax_relative.set_title(f"Sensitivity to the batch size{named}", fontsize=10)
        ax_absolute.set_ylabel(axis_label(metric, direction))
        ax_absolute.set_title(f"Mean and 95% interval over seeds{named}", fontsize=10)
        ax_relative.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return mark_synthetic(note_intervals(fig), profile)


def run_log(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run folder's ``log.jsonl`` (one row per epoch)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a finished run folder")
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def training_curves(
    frame: pd.DataFrame,
    profile: str,
    runs_dir: str | os.PathLike | None = None,
    group_by: Sequence[str] = ("method", "batch_size", "sampler", "schedule", "deviation", "dataset"),
) -> "plt.Figure":
    """Validation R@1 and training loss per epoch of the runs behind a table (mean over seeds).

    ``frame`` holds the table's rows with their ``run_key`` (see :func:`cmp_utils.experiments.run_grid`);
    each run's ``log.jsonl`` is read from ``<runs_dir>/<run_key>/`` (default: the memoised runs).
    """
    from ..core import config

    if "run_key" not in frame:
        raise ValueError("training_curves needs the rows' run_key column (rows of experiments.run_grid)")
    runs_dir = Path(runs_dir) if runs_dir is not None else config.cache_dir() / "experiment_runs"
    keys = [key for key in group_by if key in frame and frame[key].nunique() > 1] or ["method"]
    runs = frame.drop_duplicates("run_key")
    logs = []
    for record in runs.to_dict("records"):
        log = run_log(runs_dir / record["run_key"])
        label = " · ".join(f"{record[key]}" if key == "method" else f"{key} {record[key]}" for key in keys)
        logs.append(log.assign(label=label))
    history = pd.concat(logs, ignore_index=True)
    recall = next((c for c in ("val_t2i_R@1", "val_i2t_R@1", "val_rsum") if c in history), None)
    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, group in history.groupby("label", sort=False):
        per_epoch = group.groupby("epoch").mean(numeric_only=True)
        (line,) = ax_loss.plot(per_epoch.index, per_epoch["loss"], marker="o", label=label)
        if recall is not None:
            ax_recall.plot(per_epoch.index, per_epoch[recall], marker="o", color=line.get_color(), label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", title="Training loss")
    ax_loss.set_yscale("log")
    recall_label = {
        "val_t2i_R@1": "validation text-to-image R@1 (%)",
        "val_i2t_R@1": "validation image-to-text R@1 (%)",
        "val_rsum": "validation R-sum",
    }.get(recall, "validation recall")
    ax_recall.set(xlabel="epoch", ylabel=recall_label, title="Validation (EMA weights), mean over seeds")
    epochs = sorted(history["epoch"].unique())
    for ax in (ax_loss, ax_recall):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    ax_recall.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return mark_synthetic(fig, profile)


# ---------------------------------------------------------------------------------------------
# Learned features
# ---------------------------------------------------------------------------------------------


def _pca_2d(points):
    """Project (n, d) points on their first two principal components: (n, 2)."""
    import torch

    centred = points - points.mean(dim=0, keepdim=True)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    return centred @ right[:2].T


def plot_projection(
    image_embeddings,
    image_labels,
    text_embeddings,
    text_labels,
    identities: Sequence[int],
    ax=None,
    title: str = "",
    legend: bool = True,
):
    """2-D PCA of the L2-normalised embeddings of ``identities``: images as circles, texts as crosses,
    one colour per identity; a legend says which is which."""
    import torch
    from matplotlib.lines import Line2D

    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    chosen = torch.tensor(list(identities))
    image_mask = torch.isin(image_labels, chosen)
    text_mask = torch.isin(text_labels, chosen)
    points = torch.nn.functional.normalize(
        torch.cat([image_embeddings[image_mask], text_embeddings[text_mask]]).float(), dim=1
    )
    projected = _pca_2d(points).numpy()
    labels = torch.cat([image_labels[image_mask], text_labels[text_mask]]).numpy()
    is_image = np.r_[np.ones(int(image_mask.sum()), bool), np.zeros(int(text_mask.sum()), bool)]
    colours = plt.get_cmap("tab10")
    for index, identity in enumerate(identities):
        for modality, marker in ((True, "o"), (False, "x")):
            mask = (labels == identity) & (is_image == modality)
            ax.scatter(projected[mask, 0], projected[mask, 1], marker=marker, s=28, color=colours(index % 10))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("1st principal direction")
    ax.set_ylabel("2nd principal direction")
    ax.tick_params(labelbottom=False, labelleft=False, length=0)
    if legend:
        handles = [
            Line2D([], [], marker="o", linestyle="", color="#444444", label="image"),
            Line2D([], [], marker="x", linestyle="", color="#444444", label="caption"),
        ]
        handles += [
            Line2D([], [], marker="s", linestyle="", color=colours(i % 10), label=f"identity {identity}")
            for i, identity in enumerate(identities)
        ]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return ax.figure


def plot_cosine_histograms(image_embeddings, image_labels, text_embeddings, text_labels, ax=None, title: str = ""):
    """Histograms of cross-modal cosine similarity for matching and non-matching image-caption pairs."""
    import torch

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    images = torch.nn.functional.normalize(image_embeddings.float(), dim=1)
    texts = torch.nn.functional.normalize(text_embeddings.float(), dim=1)
    cosine = images @ texts.T  # (N_I, N_T)
    same = image_labels[:, None] == text_labels[None, :]
    bins = np.linspace(-1, 1, 61)
    ax.hist(cosine[~same].numpy(), bins=bins, density=True, alpha=0.6, label="different identity")
    ax.hist(cosine[same].numpy(), bins=bins, density=True, alpha=0.6, label="same identity")
    ax.set_xlabel("cosine similarity (image, caption)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return ax.figure


# ---------------------------------------------------------------------------------------------
# Retrieval examples (notebook 12)
# ---------------------------------------------------------------------------------------------

MATCH_COLOUR, MISS_COLOUR = "#2ca02c", "#d62728"


def _framed(ax, pixels, matched: bool | None, caption: str = "") -> None:
    """An image framed green (a match), red (a miss) or grey (``None``: nothing to match, a free query)."""
    ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#999999" if matched is None else MATCH_COLOUR if matched else MISS_COLOUR)
        spine.set_linewidth(3)
    if caption:
        ax.set_title(caption, fontsize=7)


def plot_text_queries(
    queries: Sequence[str], ranked_images, matches, gallery_pixels, profile: str, title: str = ""
) -> "plt.Figure":
    """Each text query (a row) with its top-K gallery images: ``ranked_images`` (Q, K) gallery
    indices, best first; ``matches`` (Q, K) bool, framed green where the image shows the query's
    identity and red where it does not; ``gallery_pixels`` (N_I, H, W, 3) uint8."""
    import textwrap

    ranked_images = np.asarray(ranked_images)
    matches = None if matches is None else np.asarray(matches, dtype=bool)  # None: a free query, grey frames
    rows, top = ranked_images.shape
    height, width = gallery_pixels.shape[1:3]
    thumb_width = 0.62 if height > width else 0.9  # inches: person crops are tall, scenes square
    thumb_height = thumb_width * height / width
    text_width = 2.9
    fig = plt.figure(figsize=(text_width + 1.1 * thumb_width * top, 1.2 * thumb_height * rows + 0.6))
    grid = fig.add_gridspec(rows, top + 1, width_ratios=[text_width / thumb_width] + [1] * top, wspace=0.12)
    for row in range(rows):
        ax = fig.add_subplot(grid[row, 0])
        ax.axis("off")
        ax.text(0, 0.5, "\n".join(textwrap.wrap(queries[row], 34)[:7]), fontsize=7, va="center")
        for rank in range(top):
            _framed(
                fig.add_subplot(grid[row, rank + 1]),
                gallery_pixels[ranked_images[row, rank]],
                None if matches is None else bool(matches[row, rank]),
                f"{rank + 1}" if row == 0 else "",
            )
    fig.suptitle(title or "Text queries and their top images (green: the described identity, red: another)", fontsize=9)
    return mark_synthetic(fig, profile)


def plot_image_queries(
    query_pixels, ranked_captions: Sequence[Sequence[str]], matches, profile: str, title: str = ""
) -> "plt.Figure":
    """Each image query (a row) with its top-K captions, green where the caption describes the
    image's identity and red where it does not; ``query_pixels`` (Q, H, W, 3) uint8."""
    import textwrap

    matches = np.asarray(matches, dtype=bool)
    rows, top = matches.shape
    fig, axes = plt.subplots(
        rows, 2, figsize=(9.5, (0.5 + 0.2 * top) * rows + 0.5), gridspec_kw={"width_ratios": [1, 5]}, squeeze=False
    )
    for row in range(rows):
        _framed(axes[row, 0], query_pixels[row], True)
        axes[row, 0].spines[:].set_edgecolor("#444444")
        ax = axes[row, 1]
        ax.axis("off")
        for rank in range(top):
            text = textwrap.shorten(ranked_captions[row][rank], 110, placeholder="...")
            ax.text(
                0,
                1 - (rank + 0.5) / top,
                f"{rank + 1}. {text}",
                fontsize=7,
                va="center",
                color=MATCH_COLOUR if matches[row, rank] else MISS_COLOUR,
            )
    fig.suptitle(
        title or "Image queries and their top captions (green: describes this identity, red: another)", fontsize=9
    )
    fig.tight_layout()
    return mark_synthetic(fig, profile)
