"""The fidelity audit: the per-caption gallery, the deviation table, the claims and the docs section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cmp_utils.evaluation import claims, metrics
from cmp_utils import experiments, training
from cmp_utils.experiments import fidelity

# ---------------------------------------------------------------------------------------------
# Per-caption gallery (evaluation-only deviation)
# ---------------------------------------------------------------------------------------------

# Three images (persons 0, 1, 2); image 1 has three captions, the others one each.
IMAGES = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # (N_I, d)
IMAGE_LABELS = torch.tensor([0, 1, 2])
CAPTION_IMAGES = torch.tensor([0, 1, 1, 1, 2])  # image of each caption (N_T,)


def test_per_caption_gallery_repeats_each_image_once_per_caption():
    gallery, labels = metrics.per_caption_gallery(IMAGES, IMAGE_LABELS, CAPTION_IMAGES)
    assert gallery.shape == (5, 2)
    assert labels.tolist() == [0, 1, 1, 1, 2]
    assert torch.equal(gallery[1], IMAGES[1]) and torch.equal(gallery[3], IMAGES[1])


def test_per_caption_gallery_keeps_r1_and_lowers_recall_at_k():
    # Query of person 0 scores image 1 (wrong person) above its own image 0:
    # unique gallery: first hit at rank 2; per-caption gallery: image 1 takes ranks 1-3, hit at rank 4.
    # Query of person 2 scores its own image first: a hit at rank 1 in both galleries.
    queries = torch.tensor([[0.9, 0.5], [0.0, 1.0]])  # (Q, d)
    query_labels = torch.tensor([0, 2])
    unique = metrics.retrieval_metrics(queries, IMAGES, query_labels, IMAGE_LABELS, ks=(1, 2, 3))
    gallery, gallery_labels = metrics.per_caption_gallery(IMAGES, IMAGE_LABELS, CAPTION_IMAGES)
    repeated = metrics.retrieval_metrics(queries, gallery, query_labels, gallery_labels, ks=(1, 2, 3))
    assert unique["R@1"] == repeated["R@1"] == 50.0
    assert unique["R@2"] == 100.0 and repeated["R@2"] == 50.0
    assert unique["R@3"] == 100.0 and repeated["R@3"] == 50.0
    assert unique["meanr"] == 1.5 and repeated["meanr"] == 2.5


@pytest.mark.parametrize(
    "indices, message",
    [
        (torch.tensor([0, 3]), "outside"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([], dtype=torch.long), "non-empty"),
    ],
)
def test_per_caption_gallery_rejects_bad_indices(indices, message):
    with pytest.raises(ValueError, match=message):
        metrics.per_caption_gallery(IMAGES, IMAGE_LABELS, indices)


# ---------------------------------------------------------------------------------------------
# The deviation table
# ---------------------------------------------------------------------------------------------


def test_deviation_names_are_unique_and_at_least_ten():
    names = [deviation.name for deviation in fidelity.DEVIATIONS]
    assert len(names) == len(set(names)) and len(names) >= 10
    assert all(deviation.implementations and deviation.description for deviation in fidelity.DEVIATIONS)


@pytest.mark.parametrize("deviation", fidelity.DEVIATIONS, ids=lambda d: d.name)
@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_deviation_is_a_valid_setting_that_changes_the_run(deviation, profile):
    losses = experiments.method_losses(deviation.method)
    baseline = training.make_config(profile, "cuhk_pedes", losses=experiments.method_losses(fidelity.BASELINE_METHOD))
    for settings in filter(None, (deviation.overrides, deviation.alternative)):
        changed = training.make_config(profile, "cuhk_pedes", losses=losses, **settings)
        assert all(getattr(changed, key) == value for key, value in settings.items())
    measured, note = fidelity.effective_overrides(deviation, baseline.to_dict())
    run = training.make_config(profile, "cuhk_pedes", losses=losses, **measured)
    if deviation.trains:
        assert run.to_dict() != baseline.to_dict(), f"{deviation.name} would train the baseline again ({note})"
    else:
        assert deviation.evaluation == fidelity.PER_CAPTION_GALLERY and not deviation.overrides


def test_a_deviation_already_in_the_baseline_uses_its_alternative_or_is_not_measured():
    bn = next(d for d in fidelity.DEVIATIONS if d.name == "bn_pytorch")
    settings, note = fidelity.effective_overrides(bn, {"bn_style": "pytorch"})
    assert settings == {"bn_style": "tf"} and "sign reversed" in note
    dropout = next(d for d in fidelity.DEVIATIONS if d.name == "no_lstm_dropout")
    settings, note = fidelity.effective_overrides(dropout, {"dropout": 0.0})
    assert settings == {} and note.endswith("not measured")
    assert fidelity.effective_overrides(dropout, {"dropout": 0.3}) == ({"dropout": 0.0}, "")


def test_unknown_deviation_names_are_rejected_clearly():
    with pytest.raises(ValueError, match="no_such_thing"):
        fidelity.deviations_by_name(["no_such_thing"])
    assert fidelity.deviations_by_name([]) == fidelity.DEVIATIONS


# ---------------------------------------------------------------------------------------------
# Claims from results
# ---------------------------------------------------------------------------------------------


def _results(seeds=range(5)) -> pd.DataFrame:
    """Baseline R@1 = 20 + seed; no_ema costs 2 (± 0.1); dropout-free helps 1.5; bf16 moves ±0.5."""
    rows = []
    shifts = {"baseline": 0.0, "no_ema": -2.0, "no_lstm_dropout": 1.5, "amp_bf16": 0.0}
    for seed in seeds:
        for deviation, shift in shifts.items():
            jitter = 0.1 * (-1) ** seed if deviation != "amp_bf16" else 0.5 * (-1) ** seed
            for metric in ("R@1", "R@10"):
                rows.append(
                    {
                        "dataset": "cuhk_pedes",
                        "table": "cuhk_pedes",
                        "method": "CMPM+CMPC",
                        "direction": "t2i",
                        "metric": metric,
                        "value": 20.0 + seed + shift + (jitter if deviation != "baseline" else 0),
                        "seed": seed,
                        "deviation": deviation,
                    }
                )
    return pd.DataFrame(rows)


def test_audit_claims_give_the_effect_of_each_deviation():
    audit = fidelity.audit_claims(_results())
    assert list(audit.columns[: len(claims.CLAIM_COLUMNS)]) == claims.CLAIM_COLUMNS
    by_name = audit.set_index("deviation")
    assert by_name.loc["no_ema", "effect"] == "costs" and by_name.loc["no_ema", "verdict"] == "did not hold"
    assert by_name.loc["no_ema", "mean_difference"] == pytest.approx(-2.0 + 0.1 / 5, abs=1e-9)
    assert by_name.loc["no_ema", "ci_high"] < 0
    assert by_name.loc["no_lstm_dropout", "effect"] == "helps"
    assert by_name.loc["amp_bf16", "effect"] == "no measurable effect"
    assert by_name.loc["amp_bf16", "ci_low"] < 0 < by_name.loc["amp_bf16", "ci_high"]
    assert set(audit["claim"]) >= {"no moving average of the weights raises t2i R@1"}


def test_one_seed_is_not_tested():
    audit = fidelity.audit_claims(_results(seeds=[0]))
    assert set(audit["verdict"]) == {claims.NOT_TESTED}
    assert audit["ci_low"].isna().all()
    assert "No claim was tested" in fidelity.findings_text(audit)


# ---------------------------------------------------------------------------------------------
# Docs section
# ---------------------------------------------------------------------------------------------

DOC = "# Fidelity\n\nIntro.\n\n<!-- audit:start -->\nold text\n<!-- audit:end -->\n\nAfter.\n"


def test_docs_say_not_measured_yet_without_results(tmp_path):
    doc = tmp_path / "fidelity.md"
    doc.write_text(DOC)
    fidelity.update_fidelity_doc(doc, "quick", results_dir=tmp_path / "results")
    text = doc.read_text()
    assert "not measured yet" in text and "old text" not in text
    assert text.startswith("# Fidelity\n\nIntro.\n\n<!-- audit:start -->\n") and text.endswith(
        "<!-- audit:end -->\n\nAfter.\n"
    )


def test_docs_render_the_measured_table(tmp_path):
    audit = fidelity.audit_claims(_results())
    folder = tmp_path / "results" / fidelity.EXPERIMENT / "quick"
    folder.mkdir(parents=True)
    audit.to_csv(folder / "claims.csv", index=False)
    doc = tmp_path / "fidelity.md"
    doc.write_text(DOC)
    fidelity.update_fidelity_doc(doc, "quick", results_dir=tmp_path / "results")
    text = doc.read_text()
    row = audit.set_index("deviation").loc["no_ema"]
    assert f"{row['mean_difference']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" in text
    assert "| no moving average of the weights (an artefact of the short schedule" in text and "| costs |" in text
    assert "not measured yet" not in text
    summary = fidelity.findings_text(fidelity.read_audit("quick", tmp_path / "results"))
    assert "Costs recall** (1)" in summary and "no moving average of the weights" in summary


def test_docs_without_markers_fail_with_the_fix(tmp_path):
    doc = tmp_path / "fidelity.md"
    doc.write_text("# Fidelity\n")
    with pytest.raises(ValueError, match="audit:start"):
        fidelity.update_fidelity_doc(doc, "quick", results_dir=tmp_path)


def test_figure_draws_one_row_per_claim():
    import matplotlib.pyplot as plt

    audit = fidelity.audit_claims(_results())
    figure = fidelity.plot_audit(audit, "quick")
    effect_axis = figure.axes[1]
    low, high = effect_axis.get_xlim()
    assert low < float(audit["ci_low"].min()) and high > float(audit["ci_high"].max())
    assert high - low < 10  # zoomed to the differences, not 0-100
    assert "synthetic data, quick profile" in figure._suptitle.get_text()
    plt.close(figure)
    assert np.isfinite(audit["p_value"]).all()


def test_a_reversed_measurement_reports_the_deviation_s_own_effect():
    # The baseline already uses PyTorch BN; the release's TF setting, measured against it, gains 2 points:
    # so the deviation (PyTorch BN) costs 2 points.
    frame = _results()
    release_rows = frame[frame["deviation"] == "baseline"].assign(deviation="bn_pytorch")
    release_rows["value"] += 2.0 + 0.1 * (-1) ** release_rows["seed"]
    bn = next(d for d in fidelity.DEVIATIONS if d.name == "bn_pytorch")
    settings, note = fidelity.effective_overrides(bn, {"bn_style": "pytorch"})
    plan = pd.DataFrame(
        [{"deviation": "bn_pytorch", "method": bn.method, "overrides": settings, "evaluation": "", "note": note}]
    )
    audit = fidelity.audit_claims(pd.concat([frame, release_rows]), plan).set_index("deviation")
    row = audit.loc["bn_pytorch"]
    # one sign convention: deviation − release setting, so the row itself says -2 and "costs"
    assert row["verdict"] == "did not hold" and row["mean_difference"] == pytest.approx(-2.0, abs=0.2)
    assert row["effect"] == "costs" and bool(row["reversed_sign"]) and bool(row["schedule_artefact"])
    mean, low, high = fidelity.oriented_effect(row)
    assert (mean, low, high) == (row["mean_difference"], row["ci_low"], row["ci_high"])
    assert "release's setting, bn_style='tf'" in row["claim"]
    section = fidelity.render_audit_section(audit.reset_index())
    assert f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" in section
