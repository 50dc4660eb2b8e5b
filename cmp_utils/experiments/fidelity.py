"""The fidelity audit: what each deviation from the authors' release costs, measured one at a time.

Public PyTorch ports of CMPM/CMPC, and this project's own fast profiles, differ from the
authors' TensorFlow release (github.com/YingZhangDUT/Cross-Modal-Projection-Learning) in many
small ways. :data:`DEVIATIONS` lists them in one place: each is a set of
:class:`cmp_utils.training.TrainConfig` settings (or an evaluation-only change of the test
protocol) that is **off** in the faithful baseline. :func:`run_audit` switches each one on
**alone** against the baseline (CMPM+CMPC on CUHK-PEDES with the profile's settings; the same
runs as notebook 05, so they share its memo), over the same seeds, and :func:`audit_claims`
tests every effect with the claims rule (:mod:`cmp_utils.evaluation.claims`): the paired difference
deviation − baseline per seed, its 95% confidence interval and a paired t-test.

Claim text: "<deviation> raises t2i R@1". **One sign convention everywhere** (claims.csv, the
figure, docs/fidelity.md, the README): the difference is *the run with the deviation − the run with
the release's setting*, so positive means the deviation helps. The verdict is the claims rule's,
Holm-adjusted over the audit's claims (``held``: raises; ``did not hold``: lowers;
``inconclusive``), and the ``effect`` column says it in words: ``helps``, ``costs``, ``no measurable
effect``, or ``not tested`` (fewer than 5 seeds). These effects are measured in the quick regime
(synthetic data, frozen features, each run trained until its validation R@1 levels off); a deviation whose effect depends on the length of
training (a moving-average decay, BN statistics) is flagged ``schedule_artefact`` and says so.

A deviation whose settings the baseline already has (e.g. through the notebook's ``overrides``)
cannot be measured against it: its ``alternative`` settings are measured instead when it names
some (the release's choice against the baseline's, said so in the ``note`` column), else it is
reported as already in the baseline.

:func:`update_fidelity_doc` writes the measured table into ``docs/fidelity.md`` between
``<!-- audit:start -->`` and ``<!-- audit:end -->`` ("not measured yet" when the results are
absent): ``python -m cmp_utils.experiments.fidelity --doc docs/fidelity.md --profile quick``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from ..core import atomic, config
from ..evaluation import claims
from . import grid_runs, runner

DATASET = "cuhk_pedes"
BASELINE = "baseline"
BASELINE_METHOD = "CMPM+CMPC"
EXPERIMENT = "fidelity_audit"
#: Marks a deviation that changes only the test protocol (no training of its own).
PER_CAPTION_GALLERY = "per_caption_gallery"
DOC_MARKERS = ("<!-- audit:start -->", "<!-- audit:end -->")
EFFECT_WORDS = {
    "held": "helps",
    "did not hold": "costs",
    "inconclusive": "no measurable effect",
    claims.NOT_TESTED: "not tested (fewer than 5 seeds)",
    claims.NOT_CONVERGED: "not converged",
}
PORT_A = "port A (a public PyTorch port, read and run)"
PYTORCH_DEFAULTS = "PyTorch ports keeping the library default"


@dataclass(frozen=True)
class Deviation:
    """One way an implementation departs from the release.

    ``overrides``: the TrainConfig settings that switch it on (empty for an evaluation-only one);
    ``method``: the label of :data:`cmp_utils.experiments.METHODS` it trains;
    ``evaluation``: :data:`PER_CAPTION_GALLERY` for a change of the test protocol only;
    ``metrics``: the t2i metrics its claims test; ``alternative``: settings measured instead when
    the baseline already has ``overrides``; ``implementations``: which implementations have it.
    """

    name: str
    label: str
    description: str
    implementations: str
    overrides: dict = field(default_factory=dict)
    method: str = BASELINE_METHOD
    evaluation: str | None = None
    metrics: tuple[str, ...] = ("R@1",)
    alternative: dict | None = None

    @property
    def trains(self) -> bool:
        return self.evaluation is None


DEVIATIONS: list[Deviation] = [
    Deviation(
        "cmpm_l2_target",
        "CMPM target L2-normalised",
        "The CMPM target distribution q is y / ||y||_2 instead of y / ||y||_1: equal when no identity "
        "repeats in the batch, a target that no longer sums to 1 when one does (the identity sampler "
        "always puts two captions of a person in a batch).",
        PORT_A,
        method="CMPM (L2 target)+CMPC",
    ),
    Deviation(
        "lstm_backward_batch_reversed",
        "backward LSTM reverses the batch",
        "The 'backward' half of the Bi-LSTM reads the batch in reverse order instead of each caption "
        "from its last word to its first: it is a second forward LSTM fed other captions' lengths.",
        PORT_A,
        overrides={"lstm_backward": "batch_reversed"},
    ),
    Deviation(
        "pad_shares_most_frequent",
        "most frequent word = padding id",
        "The padding id 0 is also the id of the most frequent word, so that word reads as padding "
        "(its embedding stays zero and it is dropped from the max-pool).",
        PORT_A,
        overrides={"pad_shares_most_frequent": True},
    ),
    Deviation(
        "vocab_case_sensitive",
        "case-sensitive vocabulary",
        "Captions are not lower-cased: 'A' and 'a' are separate words, each seen less often.",
        PORT_A,
        overrides={"vocab_case_sensitive": True},
    ),
    Deviation(
        "select_on_test",
        "model selection on the test split",
        "The best epoch is chosen by its test-split score, then reported on that split: optimistic.",
        PORT_A,
        overrides={"select_split": "test"},
    ),
    Deviation(
        "test_gallery_per_caption",
        "test gallery repeats each image per caption",
        "Evaluation only: the gallery holds each test image once per caption of it. R@1 cannot move "
        "(copies tie), R@10 falls: each wrong image above the first hit takes several ranks. Measured "
        "on the baseline's own embeddings, no training.",
        PORT_A,
        evaluation=PER_CAPTION_GALLERY,
        metrics=("R@1", "R@10"),
    ),
    Deviation(
        "padded_steps_zeros",
        "padded LSTM steps in the max-pool",
        "Padded time steps enter the max-pool over the Bi-LSTM outputs as zeros (a batch's shorter "
        "captions see zeros the longer ones do not).",
        "the release (training at batch > 1; its test-time batch of 1 has no padding)",
        overrides={"padded_steps": "zeros"},
        alternative={"padded_steps": "exclude"},
    ),
    Deviation(
        "no_ema",
        "no moving average of the weights",
        "Evaluation with the live weights instead of their exponential moving average.",
        "port A (averages once per epoch, decay 0.9, not per step); PyTorch re-implementations without EMA",
        overrides={"ema_decay": 0.0},
    ),
    Deviation(
        "amp_bf16",
        "bf16 autocast instead of fp32",
        "Mixed precision (bfloat16 autocast) in training; the release trains in fp32. On the CPU the "
        "LSTM recurrence stays fp32 (oneDNN has no bf16 LSTM at the pinned AVX2 ISA).",
        "this project on GPUs (amp='auto' picks bf16 on CUDA)",
        overrides={"amp": "bf16"},
    ),
    Deviation(
        "word_embedding_normal",
        "word embedding init N(0, 1)",
        "nn.Embedding's default N(0, 1) init instead of the release's Glorot uniform (about 80x larger at 512 dims).",
        PYTORCH_DEFAULTS + " (nn.Embedding)",
        overrides={"word_embedding_init": "normal"},
    ),
    Deviation(
        "bn_pytorch",
        "PyTorch BN eps / momentum in the joint embedding",
        "Batch norm of the joint embedding with PyTorch's eps 1e-5 and momentum 0.1 instead of the "
        "backbone's TF settings (MobileNet: eps 1e-3, decay 0.9997).",
        PYTORCH_DEFAULTS + " (nn.BatchNorm1d)",
        overrides={"bn_style": "pytorch"},
        alternative={"bn_style": "tf"},
    ),
    Deviation(
        "lstm_init_pytorch",
        "PyTorch LSTM init",
        "nn.LSTM's uniform(±1/sqrt(hidden)) init and zero forget-gate bias instead of TF's Glorot-uniform "
        "kernels and forget bias 1.0.",
        PYTORCH_DEFAULTS + " (nn.LSTM)",
        overrides={"lstm_init": "pytorch"},
    ),
    Deviation(
        "joint_embedding_linear_bias",
        "joint embedding with bias, no BN",
        "The joint embedding is a linear layer with a bias and no batch norm instead of a bias-free "
        "1x1 convolution followed by batch norm.",
        "a public PyTorch port",
        overrides={"joint_embedding": "linear_bias"},
    ),
    Deviation(
        "no_lstm_dropout",
        "no dropout in the text branch",
        "No dropout on the LSTM's inputs and outputs (the release keeps 70%). A dropout handed to a "
        "one-layer nn.LSTM is never applied by PyTorch, which gives exactly this.",
        "PyTorch re-implementations passing dropout to a one-layer nn.LSTM",
        overrides={"dropout": 0.0},
    ),
    Deviation(
        "ema_scope_all",
        "EMA over every weight",
        "The moving average covers every parameter (LSTM, word embedding, CMPC weights too), not only "
        "the release's CNN and joint embeddings with their BN.",
        "PyTorch re-implementations averaging the whole model",
        overrides={"ema_scope": "all"},
    ),
]


def deviations_by_name(names: Sequence[str] | None = None) -> list[Deviation]:
    """The deviations named (all when ``names`` is empty or None), in :data:`DEVIATIONS` order."""
    if not names:
        return list(DEVIATIONS)
    known = {deviation.name: deviation for deviation in DEVIATIONS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"parameter deviations names unknown deviation(s) {unknown}; choose from {list(known)}")
    return [deviation for deviation in DEVIATIONS if deviation.name in set(names)]


def effective_overrides(deviation: Deviation, baseline_settings: dict[str, Any]) -> tuple[dict, str]:
    """The settings that switch ``deviation`` on against a baseline with ``baseline_settings``
    (``TrainConfig.to_dict()``), and a note. Returns ``({}, note)`` when it cannot be measured."""

    def already(settings: dict) -> bool:
        return all(_same(baseline_settings.get(key), value) for key, value in settings.items())

    if not deviation.trains or not deviation.overrides:
        return dict(deviation.overrides), ""
    if not already(deviation.overrides):
        return dict(deviation.overrides), ""
    if deviation.alternative and not already(deviation.alternative):
        shown = ", ".join(f"{key}={value!r}" for key, value in deviation.alternative.items())
        return dict(deviation.alternative), (
            f"the baseline already has {deviation.overrides}; measured {shown} "
            "against it instead (sign reversed: effects are shown as deviation − release setting)"
        )
    return {}, f"the baseline already has {deviation.overrides}: not measured"


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, (list, tuple)) or isinstance(right, (list, tuple)):
        return list(left or []) == list(right or [])
    return left == right


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def per_caption_rows(
    run_dir: str | Path, device: str = "cpu", ks: Sequence[int] = (1, 5, 10), **paths: Any
) -> list[dict[str, Any]]:
    """t2i metrics of a finished run scored against the per-caption gallery
    (:func:`cmp_utils.evaluation.metrics.per_caption_gallery`) with its own test embeddings; rows
    ``{table, direction, metric, value}`` as :func:`cmp_utils.experiments.protocol_metrics`.
    ``paths``: this machine's ``data_dir`` / ``cache_dir`` / ``weights_path`` (:func:`cmp_utils.experiments.load_trained`)."""
    from ..evaluation import evaluate, metrics

    model, prepared, features, cfg = runner.load_trained(run_dir, device=device, **paths)
    split = prepared.test_split
    image_embeddings, image_labels, text_embeddings, text_labels = evaluate.encode(
        model, prepared, split, config.resolve_device(device), cfg.eval_batch_size, features.get(split)
    )
    caption_image_indices = torch.tensor(prepared.frames[split]["image_index"].to_numpy())  # (N_T,)
    gallery_embeddings, gallery_labels = metrics.per_caption_gallery(
        image_embeddings, image_labels, caption_image_indices
    )
    scores = metrics.retrieval_metrics(text_embeddings, gallery_embeddings, text_labels, gallery_labels, ks=ks)
    return [
        {"table": DATASET, "direction": "t2i", "metric": name, "value": float(scores[name])}
        for name in (*(f"R@{k}" for k in ks), "mAP", "mINP")
    ]


def run_audit(
    profile: str,
    seeds: Sequence[int],
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    deviations: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the baseline and each deviation alone over ``seeds``; score them on the test split.

    Returns ``(results, plan)``: ``results`` are tidy rows (:data:`cmp_utils.experiments.RESULT_COLUMNS`
    plus ``deviation`` and ``seconds``), ``plan`` one row per deviation with the settings measured
    and a ``note``. ``overrides`` apply to every run, the baseline's included.
    """
    from .. import training

    base_overrides = dict(overrides or {})
    chosen = deviations_by_name(deviations)
    baseline_settings = training.make_config(
        profile, DATASET, losses=runner.method_losses(BASELINE_METHOD), **base_overrides
    ).to_dict()
    seeds = list(seeds)
    grid = dict(dataset=DATASET, profile=profile, seeds=seeds, data_dir=data_dir or None)
    grids = [dict(grid, methods=[BASELINE_METHOD], overrides=base_overrides, extra_columns={"deviation": BASELINE})]
    plan, order = [], [0]  # order: the baseline's grid, then each deviation's grid index or its name
    for deviation in chosen:
        settings, note = effective_overrides(deviation, baseline_settings)
        plan.append(
            {
                "deviation": deviation.name,
                "method": deviation.method,
                "overrides": settings,
                "evaluation": deviation.evaluation or "",
                "note": note,
            }
        )
        if deviation.evaluation == PER_CAPTION_GALLERY:
            order.append(deviation.name)
        elif settings or deviation.method != BASELINE_METHOD:
            order.append(len(grids))
            grids.append(
                dict(
                    grid,
                    methods=[deviation.method],
                    overrides={**base_overrides, **settings},
                    extra_columns={"deviation": deviation.name},
                )
            )
    # every training run of the audit in one pool (experiments.run_grids); evaluation-only rows score the baseline
    trained = grid_runs.run_grids(grids, device=device, progress=progress)
    parts = [
        trained[slot]
        if isinstance(slot, int)
        else _per_caption_results(profile, seeds, device, data_dir, base_overrides, slot)
        for slot in order
    ]
    results = pd.concat(parts, ignore_index=True)
    return results, pd.DataFrame(plan)


def _per_caption_results(profile, seeds, device, data_dir, base_overrides, name) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        record = runner.run_method(
            DATASET, profile, BASELINE_METHOD, seed, device, data_dir or None, base_overrides
        )  # memoised by run_grid above
        for row in per_caption_rows(
            record["run_dir"], config.resolve_device(device).type, **runner.record_paths(record)
        ):
            rows.append(
                {
                    "dataset": DATASET,
                    "method": BASELINE_METHOD,
                    "backbone": record["settings"]["backbone"],
                    "seed": seed,
                    "seconds": 0.0,
                    "deviation": name,
                    **row,
                }
            )
    return runner.attach_paper_values(pd.DataFrame(rows))


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------


#: Deviations whose quick-regime effect comes from the short schedule, not from what a port would
#: cost at the paper's length: TF's BN statistics (decay 0.9997) and weight average move little in the
#: steps a quick run takes before its validation levels off, so the release's settings look worse here
#: than they would over 50 epochs.
SCHEDULE_ARTEFACTS = frozenset({"bn_pytorch", "no_ema"})


def effect_of(verdict: str) -> str:
    """The (Holm-adjusted) verdict of "deviation raises the metric" in words: helps / costs / no measurable effect."""
    if verdict not in EFFECT_WORDS:
        raise ValueError(f"verdict {verdict!r} is not one of {list(EFFECT_WORDS)}")
    return EFFECT_WORDS[verdict]


def audit_claims(
    results: pd.DataFrame, plan: pd.DataFrame | None = None, convergence: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One claim per measured deviation and metric: deviation − baseline, paired over seeds.

    Columns :data:`cmp_utils.evaluation.claims.CLAIM_COLUMNS`, then ``deviation``, ``label``,
    ``implementations``, ``overrides``, ``effect`` and ``note``. With ``convergence`` (a
    :func:`cmp_utils.experiments.convergence.check_convergence` table by ``deviation``), a deviation whose
    runs, or the baseline's, did not converge gets the verdict and effect ``not converged``.
    """
    notes = {} if plan is None else dict(zip(plan["deviation"], plan["note"]))
    measured_settings = {} if plan is None else dict(zip(plan["deviation"], plan["overrides"]))
    present = set(results["deviation"])
    rows = []
    for deviation in DEVIATIONS:
        if deviation.name not in present:
            continue
        settings = measured_settings.get(deviation.name, deviation.overrides)
        described = deviation.evaluation or settings_text(settings, deviation.method)
        reversed_sign = _same(settings, deviation.alternative) if deviation.alternative else False
        for metric in deviation.metrics:
            if reversed_sign:  # the baseline carries the deviation; the deviation's run has the release's setting
                text = (
                    f"{deviation.label} raises t2i {metric} (the baseline has it; measured against the release's "
                    f"setting, {described})"
                )
                better, worse = BASELINE, deviation.name
            else:
                text, better, worse = f"{deviation.label} raises t2i {metric}", deviation.name, BASELINE
            result = claims.paired_claim(
                results, better, worse, metric, "t2i", table=DATASET, claim=text, by="deviation"
            )
            rows.append(
                {
                    **result,
                    "deviation": deviation.name,
                    "label": deviation.label,
                    "implementations": deviation.implementations,
                    "overrides": described,
                    "reversed_sign": reversed_sign,
                    "schedule_artefact": deviation.name in SCHEDULE_ARTEFACTS,
                    "note": notes.get(deviation.name, ""),
                }
            )
    frame = claims.claims_frame(rows)  # Holm-adjusted over the audit's claims
    if convergence is not None and not frame.empty:
        unconverged = set(convergence.loc[~convergence["converged"].astype(bool), "deviation"])
        marked = frame["deviation"].isin(unconverged) | (BASELINE in unconverged)
        frame.loc[marked, "verdict"] = claims.NOT_CONVERGED
    frame["effect"] = [effect_of(verdict) for verdict in frame["verdict"]]
    return frame


def settings_text(settings: dict, method: str) -> str:
    """A deviation's ``settings`` as ``key=value`` text for the audit table, its losses first unless ``method`` is the baseline."""
    parts = [f"{key}={value!r}" for key, value in settings.items()]
    if method != BASELINE_METHOD:
        parts.insert(0, f"losses={list(runner.method_losses(method))}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def plot_audit(audit: pd.DataFrame, profile: str):
    """Deviation | which implementations have it | effect (mean and 95% CI, dot-and-interval,
    zoomed to the differences) | verdict. One row per claim; the x axis is deviation − baseline.

    The axis is zoomed to the t2i R@1 effects; a row of another metric (the per-caption gallery's
    R@10) that falls outside it is drawn at the edge with its numbers written beside it.
    """
    import matplotlib.pyplot as plt

    count = max(1, len(audit))
    height = 1.3 + 0.42 * count
    fig = plt.figure(figsize=(13.5, height))
    grid = fig.add_gridspec(1, 3, width_ratios=[5.2, 3.2, 1.6], wspace=0.03)
    fig.subplots_adjust(top=1.0 - 0.75 / height, bottom=0.75 / height)
    names_axis, effect_axis, verdict_axis = (fig.add_subplot(grid[0, i]) for i in range(3))
    low_limit, high_limit = _zoom(audit[audit["metric"] == "R@1"] if (audit["metric"] == "R@1").any() else audit)
    positions = list(range(count))[::-1]  # first claim on top
    colours = {"helps": "#2a9d4b", "costs": "#c0392b"}
    for position, (_, row) in zip(positions, audit.iterrows()):
        metric_text = "" if row["metric"] == "R@1" else f" ({row['metric']})"
        names_axis.text(
            0.0, position, f"{row['label']}{metric_text}", va="bottom", ha="left", fontsize=8.5, weight="bold"
        )
        names_axis.text(
            0.0, position, _shorten(row["implementations"], 70), va="top", ha="left", fontsize=7.5, color="#555555"
        )
        colour = colours.get(row["effect"], "#444444")
        mean, low, high = oriented_effect(row)
        if low_limit <= mean <= high_limit:
            if not (math.isnan(low) or math.isnan(high)):
                effect_axis.plot(
                    [max(low, low_limit), min(high, high_limit)], [position, position], color=colour, linewidth=2
                )
            effect_axis.plot([mean], [position], "o", color=colour, markersize=5)
        else:  # off the R@1 zoom: an arrow at the edge and the numbers
            edge = low_limit if mean < low_limit else high_limit
            effect_axis.plot([edge], [position], "<" if mean < low_limit else ">", color=colour, markersize=7)
            effect_axis.text(
                edge,
                position + 0.3,
                f"{row['metric']}: {_format_effect(row)}",
                fontsize=7.5,
                color=colour,
                ha="left" if mean < low_limit else "right",
                va="center",
            )
        verdict_axis.text(0.03, position, row["effect"], va="center", ha="left", fontsize=8.5, color=colour)
    for axis in (names_axis, verdict_axis):
        axis.set_xlim(0, 1)
        axis.axis("off")
    for axis in (names_axis, effect_axis, verdict_axis):
        axis.set_ylim(-0.7, count - 0.3)
    effect_axis.axvline(0.0, color="#888888", linewidth=0.8, linestyle="--")
    effect_axis.set_yticks([])
    effect_axis.set_xlim(low_limit, high_limit)
    effect_axis.set_xlabel("deviation − faithful baseline (percentage points)\nmean and 95% CI over paired seeds")
    effect_axis.grid(axis="x", alpha=0.3)
    names_axis.set_title("deviation / which implementations have it", loc="left", fontsize=9)
    verdict_axis.set_title("verdict", loc="left", fontsize=9)
    effect_axis.set_title("effect on t2i R@1", fontsize=9)
    data = "real data" if profile == "paper" else "synthetic data"
    fig.suptitle(
        f"Fidelity audit: each deviation alone against CMPM+CMPC on CUHK-PEDES ({data}, {profile} profile)",
        fontsize=10.5,
    )
    return fig


def oriented_effect(row: pd.Series) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` of the deviation's effect against the faithful setting (deviation −
    release setting): the claim's own numbers, which every row states in that orientation."""
    return float(row["mean_difference"]), float(row["ci_low"]), float(row["ci_high"])


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _zoom(audit: pd.DataFrame) -> tuple[float, float]:
    """x limits that hold every mean and interval and 0, with a margin."""
    effects = [value for _, row in audit.iterrows() for value in oriented_effect(row)]
    values = pd.Series(effects + [0.0], dtype=float).dropna()
    low, high = float(values.min()), float(values.max())
    margin = max(0.5, 0.08 * (high - low))
    return low - margin, high + margin


# ---------------------------------------------------------------------------------------------
# Saving and the docs section
# ---------------------------------------------------------------------------------------------


def save_audit(
    out_dir: str | Path,
    results: pd.DataFrame,
    audit: pd.DataFrame,
    params: dict[str, Any],
    figure=None,
    convergence: pd.DataFrame | None = None,
) -> list[Path]:
    """``metrics.csv`` (tidy, with ``deviation``), ``claims.csv``, ``params.yaml``, ``convergence.csv`` (when
    given) and the figure ``fidelity_audit.png/.svg`` as the new content of ``out_dir``, as one set
    (:func:`cmp_utils.core.atomic.replace_folder`). Returns the paths written."""
    from ..reporting import plots

    out_dir = Path(out_dir)
    ordered = [c for c in runner.RESULT_COLUMNS if c in results.columns]
    results = results[["deviation"] + ordered + [c for c in results.columns if c not in ordered + ["deviation"]]]
    with atomic.replace_folder(out_dir) as staging:
        written = [
            atomic.write_csv(staging / "metrics.csv", results),
            atomic.write_csv(staging / "claims.csv", audit),
            atomic.write_yaml(staging / "params.yaml", params),
        ]
        if convergence is not None:
            written.append(atomic.write_csv(staging / "convergence.csv", convergence))
        if figure is not None:
            written.extend(plots.save_figure(figure, staging / EXPERIMENT))
    return [out_dir / path.relative_to(staging) for path in written]


def _format_effect(row: pd.Series) -> str:
    mean, low, high = oriented_effect(row)
    if math.isnan(low):
        return f"{mean:+.2f} (n = {int(row['n_seeds'])}, no interval)"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def render_audit_section(audit: pd.DataFrame | None, profile: str = "quick") -> str:
    """Markdown for the docs: one row per claim from ``claims.csv`` (None: "not measured yet")."""
    command = "papermill notebooks/13_fidelity_audit.ipynb - -p profile " + profile
    if audit is None or audit.empty:
        return (
            f"Measured effects: not measured yet (run `{command}`, then "
            f"`python -m cmp_utils.experiments.fidelity --doc docs/fidelity.md --profile {profile}`)."
        )
    seeds = sorted(set(int(n) for n in audit["n_seeds"]))
    lines = [
        f"Measured in the quick regime (synthetic CUHK-PEDES-like data, {profile} profile, frozen features, each "
        f"run trained until its validation R@1 levels off), not what a deviation costs at the paper's scale: each deviation alone against the "
        f"faithful CMPM+CMPC baseline, paired over {' or '.join(map(str, seeds))} seed(s). Effect = the run "
        "with the deviation − the run with the release's setting, in percentage points, mean [95% CI] "
        "(positive: the deviation helps); verdict Holm-adjusted over the audit's claims. Generated from "
        f"`results/{EXPERIMENT}/{profile}/claims.csv` by `{command}`.",
        "",
        "| deviation | which implementations have it | metric | effect (pp) | p (Holm) | effect in words |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in audit.iterrows():
        p_column = "p_holm" if "p_holm" in row and not pd.isna(row.get("p_holm")) else "p_value"
        p_value = "" if math.isnan(row[p_column]) else f"{row[p_column]:.2g}"
        note = f" ({row['note']})" if isinstance(row.get("note"), str) and row["note"] else ""
        artefact = (
            " (an artefact of the short schedule: the release's setting needs a long run)"
            if bool(row.get("schedule_artefact", False))
            else ""
        )
        lines.append(
            f"| {row['label']}{note}{artefact} | {row['implementations']} | t2i {row['metric']} | "
            f"{_format_effect(row)} | {p_value} | {row['effect']} |"
        )
    absent = [deviation.label for deviation in DEVIATIONS if deviation.name not in set(audit["deviation"])]
    if absent:
        lines += [
            "",
            f"Not measured in this run: {'; '.join(absent)} (notebook 13 measures them with "
            "`-p deviations '[...]'`, or all with the default).",
        ]
    return "\n".join(lines)


def findings_text(audit: pd.DataFrame | None) -> str:
    """A paragraph from ``claims.csv``: which deviations cost, which help, which show no effect."""
    if audit is None or audit.empty:
        return "Nothing measured yet."

    def listed(effect: str) -> str:
        chosen = audit[audit["effect"] == effect]
        chosen = chosen.iloc[sorted(range(len(chosen)), key=lambda i: oriented_effect(chosen.iloc[i])[0])]
        return "; ".join(
            f"{row['label']} (t2i {row['metric']} {_format_effect(row)} pp)" for _, row in chosen.iterrows()
        )

    tested = audit[audit["verdict"] != claims.NOT_TESTED]
    if tested.empty:
        return (
            f"No claim was tested: {int(audit['n_seeds'].max())} seed(s) per deviation, fewer than the "
            f"{claims.MIN_SEEDS} the claims rule needs (the smoke profile only checks that everything runs)."
        )
    parts = [f"Of {len(tested)} measured effects ({int(tested['n_seeds'].min())} paired seeds each):"]
    for effect, heading in (
        ("costs", "Costs recall"),
        ("helps", "Raises recall"),
        ("no measurable effect", "No effect measurable at this number of seeds"),
    ):
        text = listed(effect)
        parts.append(f"\n* **{heading}** ({int((audit['effect'] == effect).sum())}): {text or 'none'}.")
    reversed_notes = audit[audit["note"].astype(str).str.contains("sign reversed")]
    for _, row in reversed_notes.iterrows():
        parts.append(f"\n* Note on {row['label']}: {row['note']}.")
    return "".join(parts)


def read_audit(profile: str = "quick", results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """``<results>/fidelity_audit/<profile>/claims.csv``, or None when it does not exist."""
    path = Path(results_dir or config.results_dir()) / EXPERIMENT / profile / "claims.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"note": str, "overrides": str}).fillna({"note": ""})


def update_fidelity_doc(
    doc_path: str | Path = "docs/fidelity.md", profile: str = "quick", results_dir: str | Path | None = None
) -> Path:
    """Write the measured audit of ``profile`` into ``doc_path`` between :data:`DOC_MARKERS`."""
    doc_path = Path(doc_path)
    if not doc_path.is_absolute():
        doc_path = config.project_root() / doc_path
    if not doc_path.is_file():
        raise FileNotFoundError(f"{doc_path} does not exist; pass --doc with the path of docs/fidelity.md")
    text = doc_path.read_text()
    from .. import reporting

    updated = reporting.replace_between_markers(
        text, DOC_MARKERS, render_audit_section(read_audit(profile, results_dir), profile), doc_path
    )
    if updated != text:
        atomic.write_text(doc_path, updated)
    return doc_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the measured fidelity audit into docs/fidelity.md.")
    parser.add_argument("--doc", default="docs/fidelity.md", help="the document with the audit markers")
    parser.add_argument("--profile", default="quick", help="whose results/fidelity_audit/<profile>/claims.csv")
    parser.add_argument("--results", default=None, help="results folder (default: config.results_dir())")
    args = parser.parse_args(argv)
    print(update_fidelity_doc(args.doc, args.profile, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
