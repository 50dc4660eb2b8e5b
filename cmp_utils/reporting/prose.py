"""The notebooks' generated prose: what a profile is, the reproduction status of an experiment, what was found,
and the training settings a results folder records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..core import config
from .tables import (
    _data_label,
    _missing,
    _our_side,
    _ours,
    _paper_with_support,
    _setting,
    _verdict_cell,
    grouping_columns,
    is_papers_claim,
    paper_side,
    read_claims,
    read_metrics,
    reproduction_status,
    summarise,
    with_current_paper_values,
)

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
    from .. import training
    from ..evaluation import claims

    config.check_profile(profile)
    quick = training.PROFILE_SETTINGS["quick"]["cuhk_pedes"]
    paper_settings = training.PROFILE_SETTINGS["paper"]["cuhk_pedes"]
    return "\n".join(
        [
            "**How the profiles run this.** `smoke` only checks that every cell runs (tiny data, one seed). "
            f"`quick` trains on the embedded *synthetic* data, with the image branch on frozen, cached ImageNet "
            f"{quick['backbone']} features and a small text branch (lr {_setting(quick['lr'])}, until validation has not "
            f"improved for {quick['patience']} epochs in a row, at most {quick['epochs']} epochs, "
            f"batch {quick['batch_size']}, EMA decay {_setting(quick['ema_decay'])}, {quick['sampler']} sampler, "
            f"{quick['embedding_dim']}-d joint space), so that every method and seed trains on one CPU core in about "
            "a minute. Each notebook checks that every method had converged: one seed trained again for 3x as many "
            "epochs, without early stopping, must gain at most 1 point (`cmp_utils.experiments.convergence`). "
            f"`paper` uses the real data and the released recipe (CUHK-PEDES: {paper_settings['backbone']}, lr "
            f"{_setting(paper_settings['lr'])}, {paper_settings['epochs']} epochs, batch {paper_settings['batch_size']}, "
            f"EMA {_setting(paper_settings['ema_decay'])}); it has not been run in this repository. Runs are memoised "
            "(keyed by their settings and the library's source), so notebooks that share a run train it once.",
            "",
            "**How claims are decided.** Each claim compares two methods on paired seeds "
            "(`cmp_utils.evaluation.claims.paired_claim`: the 95% confidence interval of the mean difference and a "
            "paired t-test), and a notebook's claims are tested together: **held** when the Holm-adjusted p-value "
            "is below 0.05 and the difference is positive, **did not hold** when it is below 0.05 and negative, "
            f"**inconclusive** otherwise; fewer than {claims.MIN_SEEDS} seeds are reported as not tested, and a claim "
            "about a method that had not converged as **not converged**. Synthetic numbers are not comparable in level with the paper's: only the "
            f"comparison between losses carries over. This run: profile `{profile}`"
            + (" (synthetic data)." if profile in config.SYNTHETIC_PROFILES else "."),
        ]
    )


#: What a reader should not conclude from an experiment, whatever its numbers (no numbers here).
CAVEATS: dict[str, tuple[str, ...]] = {
    "training": (
        "One run of one seed: its curve shows where validation R@1 levels off and early stopping ends the run, "
        "not how losses compare.",
    ),
    "cuhk_pedes": (
        "The level of R@1 says nothing about the paper's: the data are synthetic, the image branch is "
        "frozen and the network is small.",
    ),
    "flickr30k": (
        "The synthetic scenes have a few hundred test images, so one query more or less moves R@1 by a visible step.",
    ),
    "mscoco": (
        "The 1K numbers average five folds of the same small synthetic test set; they are not independent "
        "of the 5K numbers.",
    ),
    "cub_flowers": (
        "AP@50 cannot exceed the share of a class's images among the top 50: with the few test images "
        "per synthetic class its ceiling is far below 100 (see the figure).",
    ),
    "batch_size": (
        "Only the batch size varies: every batch size trains under the same early-stopping rule on the same "
        "data, so small batches take more steps per epoch. The comparison is of each loss's sensitivity (its drop relative "
        "to its own best batch size), not of levels.",
    ),
    "ablation": (
        "CMPC alone can lower its loss by growing the feature norms while image and text stay apart "
        "(notebook 03's toy measures this: compact classes per modality, poor alignment across them); "
        "the paper trains CMPC with CMPM.",
    ),
    "cmpm_family": (
        "The later losses were published with CLIP backbones and long schedules; here every loss shares "
        "one small network, each trained until its validation score levels off. Each fixed "
        "temperature was chosen on one seed's validation split from a short grid; a finer grid could move "
        "the ranking of close losses. A local scope changes only where the loss sees the batch: real GPUs "
        "without a gather would also keep batch-norm statistics per GPU.",
    ),
    "feature_distribution": (
        "Cosine gaps of one trained model per loss describe these features, not a ranking of "
        "losses; the 2-D projection keeps only the first two principal directions.",
    ),
}
GENERAL_CAVEAT = (
    "`{profile}` results are on synthetic data with frozen cached image features: they test whether "
    "the losses compare as the paper says, not whether the paper's numbers are reproduced."
)


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
            paper_text = (
                f"paper (real data): {paper_side(row, experiment)}"
                if is_papers_claim(row, experiment)
                else "not a comparison the paper makes"
            )
            lines.append(
                f"- {row['claim']}: {_verdict_cell(row)} (ours: {_our_side(row)}"
                + ("" if _missing(seeds) else f"; {int(seeds)} seeds")
                + ("" if _missing(row.get("family_size")) else f"; Holm-adjusted over {int(row['family_size'])} claims")
                + f"; {paper_text})."
            )
    if metrics_path.is_file():
        frame = with_current_paper_values(read_metrics(metrics_path))
        metric = next((m for m in ("R@1", "top1_accuracy", "cosine_gap") if m in set(frame["metric"])), None)
        if metric is not None:
            summary = summarise(frame[frame["metric"] == metric])
            best = summary.loc[summary["mean"].idxmax()]
            where = ", ".join(
                f"{key} {best[key]}"
                for key in grouping_columns(summary)
                if key not in ("metric", "backbone", "dataset") and summary[key].nunique() > 1
            )
            paper_clause = (
                ""
                if profile in config.SYNTHETIC_PROFILES  # never a paper value beside a synthetic one
                else f"; the paper reports {_paper_with_support(best)} for that cell."
                if not _missing(best["paper_value"])
                else "; no confirmed paper value for that cell."
            )
            lines.append(
                f"- Highest mean {metric}: {_ours(best['mean'], best['std'], best['n_seeds'])} ({where})"
                + (paper_clause or ".")
            )
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
        lines.append(
            f"- Validation {recall[4:]} went from {history[recall].iloc[0]:.2f} (epoch {int(history['epoch'].iloc[0])}) "
            f"to {history[recall].iloc[-1]:.2f} (epoch {int(history['epoch'].iloc[-1])}); the training loss from "
            f"{history['loss'].iloc[0]:.3f} to {history['loss'].iloc[-1]:.3f}."
        )
    if results_path.is_file():
        result = json.loads(results_path.read_text())
        test = result.get("test") or {}
        shown = ", ".join(
            f"{key} {value:.2f}"
            for key, value in test.items()
            if key in ("t2i_R@1", "t2i_R@10", "i2t_R@1", "rsum") and isinstance(value, (int, float))
        )
        if shown:
            lines.append(
                f"- Test split with the best epoch's weights (epoch {result.get('best_epoch', '?')}): {shown}."
            )
    return lines


def training_settings(
    profile: str, dataset: str, overrides: dict[str, Any] | None = None, varied: Sequence[str] = ("losses", "seed")
) -> dict[str, Any]:
    """The resolved training settings of an experiment's runs, the git commit and the CPU numerics, for
    ``params.yaml``: ``{"git_commit", "cpu_numerics": cmp_utils.core.numerics.status(), "training": settings of
    :func:`cmp_utils.training.make_config`, "varied_per_run"}`` (machine paths such as ``output_dir`` left out)."""
    from .. import training
    from ..core import numerics

    settings = training.make_config(profile, dataset, **(overrides or {})).to_dict()
    for key in ("output_dir", "cache_dir", "data_dir", "progress", "resume", *varied):
        settings.pop(key, None)
    return {
        "git_commit": training.git_commit(),
        "cpu_numerics": numerics.status(),
        "training": settings,
        "varied_per_run": list(varied),
    }
