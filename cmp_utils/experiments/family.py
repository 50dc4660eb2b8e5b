"""Notebook 14's pieces: the CMPM family on one network, each temperature tuned on validation, and
what computing the loss on each GPU's own sub-batch (``loss_scope="local:K"``) costs each loss.

The losses live in :mod:`cmp_utils.losses` (``sdm_loss``, ``info_nce_loss``, ``ritc_loss`` /
``RITCLoss``, ``tal_loss``, ``cmpm_loss``); runs go through :func:`cmp_utils.experiments.run_grid`
(memoised: CMPM and CMPM+CMPC at the profile's settings are notebook 05's and 06's runs) and claims
through :func:`cmp_utils.evaluation.claims.paired_claim`. This module only plans the runs, reads the
validation score of each run from its folder, and draws the figures.

Quick-profile budget (2 cores, ``run_grid`` trains 2 runs at once, one torch thread each).
:func:`planned_runs` counts the runs of a plan and :func:`budget_markdown` reads back what they
cost, so the notebook states its own arithmetic from its results. The default plan of notebook 14
trains 61 runs that no earlier notebook trains (CMPM and CMPM+CMPC at the global scope are notebook
05's and 06's, reused from the memo):

* sweep: 3 + 3 + 3 temperatures (SDM, InfoNCE, TAL), seed 0 = 9 runs;
* CUHK-like table: 4 new losses x 5 seeds, less the 3 sweep runs at the chosen temperatures = 17;
* loss scope: ``local:4`` for CMPM, SDM, InfoNCE, TAL and ``local:2`` for CMPM, 5 seeds = 25;
* Flickr-like: SDM and InfoNCE x 5 seeds = 10.

Two pools of workers train them (:func:`cmp_utils.experiments.run_grids`): the sweep's 9 runs,
then the 52 others of the CUHK-like table, the Flickr-like table and the scope study together (the
temperatures must be chosen first); the data and feature caches are built before each pool starts.
:func:`budget_markdown` reports the measured seconds from the results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..evaluation import claims
from ..core import config
from . import grid_runs, runner

#: The losses compared, as method labels of :data:`cmp_utils.experiments.METHODS`.
FAMILY_METHODS = ("CMPM", "CMPM+CMPC", "SDM", "InfoNCE", "R-ITC", "TAL")
#: The loss option holding each method's fixed temperature (tuned on validation).
TEMPERATURE_OPTIONS = {"SDM": "sdm_temperature", "InfoNCE": "info_nce_temperature", "TAL": "tal_temperature"}
#: Methods whose temperature is learned (the option is its initial value, the release's, not tuned).
LEARNED_TEMPERATURES = {"R-ITC": "ritc_temperature"}
#: The release's value of each temperature: IRRA's 1/50 for SDM and its ITC, RDE's 0.015, TBPS-CLIP's 0.07.
RELEASE_TEMPERATURES = {"SDM": 0.02, "InfoNCE": 0.02, "TAL": 0.015, "R-ITC": 0.07}
#: Column of the tidy rows naming where each loss saw the batch.
SCOPE_COLUMN = "loss_scope"


def temperature_label(method: str, temperatures: dict[str, float]) -> str:
    """What the ``temperature`` column says for ``method``: a number, ``learned from X``, or ``none``."""
    if method in TEMPERATURE_OPTIONS:
        return f"{temperatures.get(method, RELEASE_TEMPERATURES[method]):g}"
    if method in LEARNED_TEMPERATURES:
        return f"learned from {RELEASE_TEMPERATURES[method]:g}"
    return "none (feature norm)" if method.startswith("CMPM") else "none"


def method_overrides(methods: Sequence[str], temperatures: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per-method settings: ``loss_options`` with the method's temperature (none for CMPM, CMPM+CMPC
    and R-ITC, whose runs then have exactly the settings of notebook 05's / 06's and are reused)."""
    chosen = {}
    for method in methods:
        if method in TEMPERATURE_OPTIONS:
            value = float(temperatures.get(method, RELEASE_TEMPERATURES[method]))
            chosen[method] = {"loss_options": {TEMPERATURE_OPTIONS[method]: value}}
    return chosen


#: The R-ITC target smoothing the probe of its slow start compares with TBPS-CLIP's 0.01 (a plain KL target).
RITC_PROBE_EPSILON = 1e-8


def validation_curve(run_key: str, metric: str = "t2i_R@1") -> list[float]:
    """The validation ``metric`` of every epoch of a memoised run, from its ``log.jsonl`` (NaN where an
    epoch did not validate)."""
    path = config.cache_dir() / "experiment_runs" / str(run_key) / "log.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [float(record.get(f"val_{metric}", float("nan"))) for record in records]


def ritc_start(
    cuhk: pd.DataFrame,
    profile: str,
    seed: int,
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    epsilon: float = RITC_PROBE_EPSILON,
) -> pd.DataFrame:
    """Why R-ITC starts slowly, measured: its seed-``seed`` run of ``cuhk`` (TBPS-CLIP's target smoothing,
    epsilon 0.01) beside the same run with ``epsilon``. One row per run and epoch: ``epsilon``, ``epoch``,
    ``validation_t2i_R@1``, and each run's ``epochs_trained``, ``best_epoch`` and test ``t2i_R@1`` (the
    checkpoint its validation chose). Empty when ``cuhk`` has no R-ITC run of ``seed``."""
    mine = cuhk[(cuhk["method"] == "R-ITC") & (cuhk["seed"] == seed)]
    if mine.empty:
        return pd.DataFrame(
            columns=["epsilon", "epoch", "validation_t2i_R@1", "epochs_trained", "best_epoch", "test_t2i_R@1"]
        )
    from ..losses import registry
    from .convergence import run_record

    probe = runner.run_method(
        "cuhk_pedes",
        profile,
        "R-ITC",
        seed,
        device,
        data_dir,
        {**(overrides or {}), "loss_options": {**(overrides or {}).get("loss_options", {}), "ritc_epsilon": epsilon}},
    )
    default_key = mine["run_key"].iloc[0]
    test = mine[(mine["direction"] == "t2i") & (mine["metric"] == "R@1")]["value"].iloc[0]
    probe_test = next(r["value"] for r in probe["rows"] if r["direction"] == "t2i" and r["metric"] == "R@1")
    rows = []
    for value, key, test_r1 in (
        (registry.DEFAULT_OPTIONS["ritc_epsilon"], default_key, test),
        (epsilon, probe["key"], probe_test),
    ):
        record = run_record(key)
        for epoch, score in enumerate(validation_curve(key), start=1):
            rows.append(
                {
                    "epsilon": value,
                    "epoch": epoch,
                    "validation_t2i_R@1": score,
                    "epochs_trained": record["epochs_trained"],
                    "best_epoch": record["best_epoch"],
                    "test_t2i_R@1": float(test_r1),
                }
            )
    return pd.DataFrame(rows)


def ritc_start_markdown(start: pd.DataFrame | None, first_epochs: int = 3) -> str:
    """One sentence from :func:`ritc_start`'s table: validation R@1 over the first epochs with each
    epsilon, and where each run ended (empty when there is no table)."""
    if start is None or start.empty:
        return ""
    parts, early_means = [], {}
    for epsilon, rows in start.groupby("epsilon", sort=False):
        early_means[float(epsilon)] = float(rows["validation_t2i_R@1"].iloc[:first_epochs].mean())
        early = ", ".join(f"{value:.1f}" for value in rows["validation_t2i_R@1"].iloc[:first_epochs])
        last = rows.iloc[0]
        parts.append(
            f"epsilon {epsilon:g}: {early} after epochs 1-{min(first_epochs, len(rows))}; test R@1 "
            f"{last['test_t2i_R@1']:.2f} at its best epoch {int(last['best_epoch'])} of {int(last['epochs_trained'])}"
        )
    reading = (
        "without the smoothing it starts faster, so the smoothing is what slows its first epochs"
        if len(early_means) == 2 and early_means[min(early_means)] > early_means[max(early_means)]
        else "the smoothing does not explain a slow start"
    )
    return (
        "R-ITC's start, measured (one seed, validation t2i R@1; `ritc_start.csv`): "
        + "; ".join(parts)
        + f". On this data {reading}; every run trains until its validation levels off, so the table compares "
        "R-ITC at its plateau."
    )


def validation_score(run_key: str, metric: str) -> float:
    """The validation ``metric`` (e.g. ``t2i_R@1``, ``rsum``) of the epoch ``best.pt`` kept, read from
    the memoised run's ``results.json``; NaN when the run has none."""
    path = config.cache_dir() / "experiment_runs" / str(run_key) / "results.json"
    if not path.is_file():
        return float("nan")
    best = json.loads(path.read_text(encoding="utf-8")).get("best_validation") or {}
    return float(best.get(metric, float("nan")))


def learned_temperature(run_key: str) -> float:
    """The temperature a run's R-ITC loss had learned by its last epoch ($1/\\exp$ of its
    ``log_logit_scale`` in ``checkpoints/last.pt``, capped as in training); NaN when there is none."""
    from .. import training

    path = config.cache_dir() / "experiment_runs" / str(run_key) / "checkpoints" / "last.pt"
    if not path.is_file():
        return float("nan")
    state = training.load_checkpoint(path).get("loss_module", {})  # tensors only: no code runs on load
    if "ritc.log_logit_scale" not in state:
        return float("nan")
    return 1.0 / min(math.exp(float(state["ritc.log_logit_scale"])), 100.0)


def temperature_sweep(
    dataset: str,
    profile: str,
    grid: dict[str, Sequence[float]],
    seed: int,
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    select_metric: str = "t2i_R@1",
    progress: bool = True,
) -> pd.DataFrame:
    """Train each method of ``grid`` at each of its temperatures with one seed; one row per run:
    ``method, temperature, validation (select_metric of the kept epoch), test_t2i_R@1, run_key``.

    Every run of the sweep trains in one pool (:func:`cmp_utils.experiments.run_grids`): one grid
    per position in the lists (every method's first value, then every second ...)."""
    longest = max((len(values) for values in grid.values()), default=0)
    positions = []
    for position in range(longest):
        methods = [method for method, values in grid.items() if position < len(values)]
        positions.append({method: grid[method][position] for method in methods})
    frames = grid_runs.run_grids(
        [
            dict(
                dataset=dataset,
                profile=profile,
                methods=list(temperatures),
                seeds=[seed],
                data_dir=data_dir,
                overrides=overrides,
                method_overrides=method_overrides(list(temperatures), temperatures),
            )
            for temperatures in positions
        ],
        device=device,
        progress=progress,
    )
    rows = []
    for temperatures, frame in zip(positions, frames):
        for method, temperature in temperatures.items():
            mine = frame[frame["method"] == method]
            key = mine["run_key"].iloc[0]
            test = mine[(mine["metric"] == "R@1") & (mine["direction"] == "t2i")]["value"]
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "temperature": float(temperature),
                    "select_metric": select_metric,
                    "validation": validation_score(key, select_metric),
                    "test_t2i_R@1": float(test.iloc[0]) if len(test) else float("nan"),
                    "seed": seed,
                    "seconds": float(mine["seconds"].iloc[0]),
                    "run_key": key,
                }
            )
    return pd.DataFrame(rows)


def chosen_temperatures(sweep: pd.DataFrame) -> dict[str, float]:
    """Each method's temperature with the highest validation score (ties: the first in the grid)."""
    chosen = {}
    for method, rows in sweep.groupby("method", sort=False):
        scores = rows["validation"].fillna(-np.inf).to_numpy()
        chosen[method] = float(rows["temperature"].iloc[int(np.argmax(scores))])
    return chosen


def family_grid(
    dataset: str,
    profile: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    temperatures: dict[str, float],
    loss_scope: str = "global",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The :func:`cmp_utils.experiments.run_grids` grid of every method with every seed at its chosen
    temperature and ``loss_scope`` (the rows get a ``loss_scope`` column)."""
    base = dict(overrides or {})
    if loss_scope != "global":
        base["loss_scope"] = loss_scope
    return dict(
        dataset=dataset,
        profile=profile,
        methods=list(methods),
        seeds=list(seeds),
        data_dir=data_dir,
        overrides=base,
        method_overrides=method_overrides(methods, temperatures),
        extra_columns={SCOPE_COLUMN: loss_scope},
    )


def run_families(
    grids: Sequence[dict[str, Any]], temperatures: dict[str, float], device: str = "auto", progress: bool = True
) -> list[pd.DataFrame]:
    """Train several :func:`family_grid` grids in one pool; per grid its tidy rows plus a
    ``temperature`` column (:func:`temperature_label`). An empty grid gives an empty frame."""
    trained = iter(grid_runs.run_grids([grid for grid in grids if grid["methods"]], device=device, progress=progress))
    frames = [next(trained) if grid["methods"] else pd.DataFrame() for grid in grids]
    return [
        frame.assign(temperature=[temperature_label(method, temperatures) for method in frame["method"]])
        if len(frame)
        else frame
        for frame in frames
    ]


def planned_runs(
    methods: Sequence[str],
    seeds: Sequence[int],
    grid: dict[str, Sequence[float]],
    scope_plan: dict[str, Sequence[str]],
    flickr_methods: Sequence[str],
    reused: Sequence[str] = ("CMPM", "CMPM+CMPC"),
) -> dict[str, int]:
    """How many runs a plan trains that no earlier notebook trained (``reused`` methods at the
    global scope are notebook 05's / 06's): per part and in all. The sweep's seed-``seeds[0]`` run
    at the chosen temperature is a run of the main table too (counted once, in the sweep)."""
    new_methods = [m for m in methods if m not in reused]
    sweep = sum(len(values) for method, values in grid.items())
    main = len(new_methods) * len(seeds) - sum(1 for m in new_methods if m in grid)
    scope = sum(len(scope_methods) * len(seeds) for scope_methods in scope_plan.values())
    flickr = len([m for m in flickr_methods if m not in reused]) * len(seeds)
    return {"sweep": sweep, "main": main, "scope": scope, "flickr": flickr, "total": sweep + main + scope + flickr}


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------


def family_claims(
    frame: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metric: str = "R@1",
    direction: str = "t2i",
    table: str | None = None,
) -> list[dict[str, Any]]:
    """The claims rule for "``better`` > ``worse``" on global-scope rows; pairs whose methods did
    not run are left out. Each row also names its ``dataset`` and ``loss_scope``."""
    if frame.empty:
        return []
    chosen = frame[frame[SCOPE_COLUMN] == "global"] if SCOPE_COLUMN in frame else frame
    present = set(chosen["method"])
    rows = []
    for better, worse in pairs:
        if better in present and worse in present:
            row = claims.paired_claim(chosen, better, worse, metric, direction, table=table)
            rows.append({**row, "dataset": table or chosen["dataset"].iloc[0], SCOPE_COLUMN: "global"})
    return rows


def scope_claims(
    frame: pd.DataFrame, scopes: Sequence[str], metric: str = "R@1", direction: str = "t2i"
) -> list[dict[str, Any]]:
    """Per method with local-scope runs: "global > local:K" (paired seeds; ``mean_difference`` is
    what the local sub-batch costs, in points of ``metric``)."""
    rows = []
    for method, mine in frame.groupby("method", sort=False):
        have = set(mine[SCOPE_COLUMN])
        for scope in scopes:
            if scope in have and "global" in have:
                row = claims.paired_claim(
                    mine,
                    "global",
                    scope,
                    metric,
                    direction,
                    by=SCOPE_COLUMN,
                    claim=f"{method}: global batch > {scope} ({direction} {metric})",
                )
                rows.append({**row, "dataset": mine["dataset"].iloc[0], "method": method, SCOPE_COLUMN: scope})
    return rows


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def geometry_figure(
    image_norm: float = 3.0, text_angles_deg: Sequence[float] = (20.0, 60.0, 115.0), sdm_temperature: float = 0.02
):
    """Left: an image embedding $x$ and three unit text directions $\\bar z_j$; CMPM's logit is the
    scalar projection $x^\\top \\bar z_j = \\lVert x\\rVert\\cos\\theta_j$ (dashed feet), SDM's
    $\\cos\\theta_j / \\tau$ (on the unit circle). Right: the softmax over the three texts for CMPM,
    for SDM at $\\tau$ = ``sdm_temperature`` and for SDM at $\\tau = 1/\\lVert x\\rVert$, which is CMPM's."""
    import matplotlib.pyplot as plt

    angles = np.radians(np.asarray(text_angles_deg, dtype=float))  # (m,)
    image = np.array([image_norm, 0.0])  # x along the first axis, |x| = image_norm
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (m, 2): unit z_bar_j
    cosine = directions @ image / image_norm  # (m,)
    cmpm_logits = directions @ image  # |x| cos(theta_j)

    def softmax(values):
        shifted = np.exp(values - values.max())
        return shifted / shifted.sum()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    circle = np.linspace(0, 2 * np.pi, 200)
    left.plot(np.cos(circle), np.sin(circle), color="0.75", lw=1)
    left.annotate("", xy=image, xytext=(0, 0), arrowprops=dict(arrowstyle="->", lw=2.2, color="tab:blue"))
    left.text(image[0], -0.25, f"image $x$, $\\|x\\|={image_norm:g}$", color="tab:blue", ha="right")
    colours = ("tab:green", "tab:orange", "tab:red")
    for j, (direction, colour) in enumerate(zip(directions, colours)):
        reach = max(1.0, cmpm_logits[j] + 0.3) if cmpm_logits[j] > 0 else 1.0
        left.annotate(
            "", xy=direction * reach, xytext=(0, 0), arrowprops=dict(arrowstyle="-", lw=1, color=colour, alpha=0.5)
        )
        left.annotate("", xy=direction, xytext=(0, 0), arrowprops=dict(arrowstyle="->", lw=1.6, color=colour))
        foot = direction * cmpm_logits[j]  # the vector projection of x on z_bar_j
        left.plot([image[0], foot[0]], [image[1], foot[1]], ls="--", color=colour, lw=1)
        left.plot(*foot, "o", color=colour, ms=4)
        left.text(
            *(direction * 1.12),
            f"$\\bar z_{j + 1}$: $x^\\top\\bar z_{j + 1}$={cmpm_logits[j]:.2f}, $\\cos\\theta$={cosine[j]:.2f}",
            color=colour,
            fontsize=8,
            ha="left" if direction[0] >= 0 else "right",
        )
    left.set_aspect("equal")
    left.set_xlim(-2.3, image_norm + 0.6)
    left.set_ylim(-1.45, 1.7)
    left.set_title("CMPM's logit: the scalar projection $\\|x\\|\\cos\\theta_j$")
    left.axis("off")
    rows = {
        "CMPM: softmax($\\|x\\|\\cos\\theta$)": softmax(cmpm_logits),
        f"SDM, $\\tau$={sdm_temperature:g}": softmax(cosine / sdm_temperature),
        f"SDM, $\\tau=1/\\|x\\|$={1 / image_norm:.3g}": softmax(cosine * image_norm),
    }
    width = 0.8 / len(rows)
    for index, (label, probabilities) in enumerate(rows.items()):
        right.bar(
            np.arange(len(angles)) + (index - 1) * width,
            probabilities,
            width,
            label=label,
            hatch="//" if index == 2 else None,
            alpha=0.85,
        )
    right.set_xticks(np.arange(len(angles)), [f"text {j + 1}" for j in range(len(angles))])
    right.set_ylabel("compatibility $p_{j}$ (image to text)")
    right.set_title("SDM is CMPM when $\\tau = 1/\\|x\\|$ and only $z$ is normalised")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(sweep: pd.DataFrame, chosen: dict[str, float], profile: str):
    """Validation score against temperature (log axis) per method, the chosen value circled."""
    import matplotlib.pyplot as plt

    from ..reporting import plots

    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for method, rows in sweep.groupby("method", sort=False):
        rows = rows.sort_values("temperature")
        line = ax.plot(rows["temperature"], rows["validation"], "o-", label=method)[0]
        best = rows[rows["temperature"] == chosen.get(method)]
        ax.plot(best["temperature"], best["validation"], "o", ms=13, mfc="none", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("temperature $\\tau$ (fixed)")
    metric = sweep["select_metric"].iloc[0] if len(sweep) else ""
    ax.set_ylabel(f"validation {metric} (seed {int(sweep['seed'].iloc[0]) if len(sweep) else ''})")
    ax.set_title("Temperature sweep, chosen on validation (circled)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.mark_synthetic(fig, profile)


def scope_figure(scope_rows: Sequence[dict[str, Any]], profile: str):
    """Per method and local scope: mean paired difference global − local:K with its 95% CI."""
    import matplotlib.pyplot as plt

    from ..reporting import plots

    table = pd.DataFrame(list(scope_rows))
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.45 * max(1, len(table))))
    if table.empty:
        ax.text(0.5, 0.5, "no local-scope runs", ha="center", va="center")
        ax.axis("off")
        return plots.mark_synthetic(fig, profile)
    labels = [f"{row.method}, {row.loss_scope}" for row in table.itertuples()]
    positions = np.arange(len(table))[::-1]
    means = table["mean_difference"].to_numpy(dtype=float)
    low = means - table["ci_low"].to_numpy(dtype=float)
    high = table["ci_high"].to_numpy(dtype=float) - means
    errors = np.vstack([np.nan_to_num(low), np.nan_to_num(high)])
    ax.errorbar(means, positions, xerr=errors, fmt="o", capsize=3)
    ax.axvline(0, color="0.5", lw=1)
    ax.set_yticks(positions, labels)
    ax.set_xlabel(f"{table['direction'].iloc[0]} {table['metric'].iloc[0]}: global − local (points), 95% CI")
    ax.set_title("What a per-GPU loss costs at the same global batch")
    fig.tight_layout()
    return plots.mark_synthetic(fig, profile)


def percent(value: float) -> str:
    """A number for generated text: two decimals, or "n/a"."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


# ---------------------------------------------------------------------------------------------
# Generated text
# ---------------------------------------------------------------------------------------------


def _read(out_dir: Path, name: str) -> pd.DataFrame | None:
    path = Path(out_dir) / name
    return pd.read_csv(path) if path.is_file() else None


def budget_markdown(out_dir: str | Path) -> str:
    """What the runs behind ``out_dir`` cost, from ``metrics.csv``, ``sweep.csv`` and ``params.yaml``:
    the number of distinct runs per part and their training seconds (each run's own ``seconds``)."""
    import yaml

    out_dir = Path(out_dir)
    metrics, sweep = _read(out_dir, "metrics.csv"), _read(out_dir, "sweep.csv")
    if metrics is None:
        return "No results yet: run the cells above."
    runs = metrics.drop_duplicates("run_key")
    parts = []
    for (dataset, scope), rows in runs.groupby(["dataset", SCOPE_COLUMN], sort=False):
        parts.append(f"{dataset} at `{scope}`: {len(rows)} runs, {rows['seconds'].sum():.0f} s")
    extra = sweep[~sweep["run_key"].isin(set(runs["run_key"]))] if sweep is not None and "run_key" in sweep else None
    if extra is not None and len(extra):
        parts.append(f"sweep runs not in the tables: {len(extra)} runs, {extra['seconds'].sum():.0f} s")
    total = runs["seconds"].sum() + (extra["seconds"].sum() if extra is not None else 0.0)
    count = len(runs) + (len(extra) if extra is not None else 0)
    params = yaml.safe_load((out_dir / "params.yaml").read_text()) if (out_dir / "params.yaml").is_file() else {}
    planned = params.get("planned_new_runs") or {}
    lines = [
        f"- Runs behind these results: {count}, {total:.0f} s of training in all (each run's own seconds, one "
        f"torch thread per run; {', '.join(parts)})."
    ]
    if planned:
        lines.append(
            f"- Of these, the runs no earlier notebook trains: {planned.get('total')} (sweep {planned.get('sweep')}, "
            f"CUHK table {planned.get('main')}, local scopes {planned.get('scope')}, Flickr {planned.get('flickr')}); "
            "CMPM and CMPM+CMPC at the global scope are notebook 05's and 06's runs, reused from the memo."
        )
    if params.get("wall_seconds") is not None:
        lines.append(
            f"- Wall time of the execution that wrote these results, up to saving them: {float(params['wall_seconds']):.0f} s "
            "(memoised runs cost nothing; parallel runs overlap)."
        )
    return "\n".join(lines)


def findings_markdown(out_dir: str | Path) -> str:
    """The family table (mean ± sd over seeds, the ceiling and the share of it beside every number),
    the chosen temperatures and the cost of the local scopes, from ``summary.csv`` and ``claims.csv``."""
    out_dir = Path(out_dir)
    summary, claim_table, sweep = (
        _read(out_dir, "summary.csv"),
        _read(out_dir, "claims.csv"),
        _read(out_dir, "sweep.csv"),
    )
    if summary is None:
        return "No results yet: run the cells above."
    lines = ["### The family on one network", ""]
    header = "| dataset | method | temperature | direction | R@1 mean ± sd (seeds) | ceiling | % of ceiling |"
    lines += [header, "|---|---|---|---|---|---|---|"]
    chosen = summary[(summary["metric"] == "R@1") & (summary[SCOPE_COLUMN] == "global")]
    for row in chosen.itertuples():
        std = "" if pd.isna(row.std) else f" ± {row.std:.2f}"
        ceiling = percent(getattr(row, "ceiling", float("nan")))
        share = getattr(row, "percent_of_ceiling", float("nan"))
        lines.append(
            f"| {row.dataset} | {row.method} | {row.temperature} | {row.direction} | {row.mean:.2f}{std} "
            f"({int(row.n_seeds)}) | {ceiling} | {percent(share)} |"
        )
    if sweep is not None and len(sweep):
        picked = sweep[sweep["chosen"]] if "chosen" in sweep else sweep.iloc[0:0]
        lines += [
            "",
            "Temperatures chosen on validation t2i R@1 (seed "
            f"{int(sweep['seed'].iloc[0])}): "
            + ", ".join(
                f"{row.method} {row.temperature:g} (validation {row.validation:.2f}; tried "
                + ", ".join(f"{t:g}" for t in sweep[sweep["method"] == row.method]["temperature"])
                + ")"
                for row in picked.itertuples()
            )
            + ".",
        ]
    params_path = out_dir / "params.yaml"
    if params_path.is_file():
        import yaml

        learned = (yaml.safe_load(params_path.read_text()) or {}).get("ritc_learned_temperatures") or []
        if learned:
            lines += [
                "",
                "R-ITC's temperature, learned from "
                f"{RELEASE_TEMPERATURES['R-ITC']:g}, at the last epoch of each seed: "
                + ", ".join(f"{float(value):.3g}" for value in learned)
                + ".",
            ]
    start = ritc_start_markdown(_read(out_dir, "ritc_start.csv"))
    if start:
        lines += ["", start]
    if claim_table is not None and SCOPE_COLUMN in claim_table:
        scoped = claim_table[claim_table[SCOPE_COLUMN] != "global"]
        if len(scoped):
            lines += [
                "",
                "What the local sub-batch costs (global − local, t2i R@1 points, mean [95% CI], paired seeds):",
            ]
            for row in scoped.itertuples():
                interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
                lines.append(
                    f"- {row.method} at `{row.loss_scope}`: {row.mean_difference:+.2f}{interval}, "
                    f"**{row.verdict}** ({int(row.n_seeds)} seeds)."
                )
    return "\n".join(lines)
