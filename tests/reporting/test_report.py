"""Tests of cmp_utils.reporting (README, results/README.md, notebook texts) and cmp_utils.evaluation.paper."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest

from cmp_utils.core import config
from cmp_utils.evaluation import paper
from cmp_utils import reporting, training

README = """# Project

Intro text that must survive.

<!-- scorecard:start -->
old scorecard
<!-- scorecard:end -->

## Tables

<!-- headline:start -->
old tables
<!-- headline:end -->

<!-- profiles:start -->
<!-- profiles:end -->

<!-- performance:start -->
<!-- performance:end -->

<!-- timings:start -->
<!-- timings:end -->

Footer that must survive.
"""


def write_csv(results, experiment: str, name: str, rows: list[dict], profile: str = "quick"):
    folder = results / experiment / profile
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / name, index=False)


def row(
    metric, value, seed, paper_value=float("nan"), dataset="cuhk_pedes", method="CMPM+CMPC", direction="t2i", **extra
):
    return dict(
        dataset=dataset,
        table=dataset,
        method=method,
        backbone="mobilenet_v2",
        direction=direction,
        metric=metric,
        value=value,
        paper_value=paper_value,
        seed=seed,
        seconds=10.0 + seed,
        **extra,
    )


@pytest.fixture
def project(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")
    readme.chmod(0o644)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stem in ("05_cuhk_pedes", "09_batch_size"):
        (notebooks / f"{stem}.ipynb").write_text(
            json.dumps(
                {
                    "cells": [
                        {
                            "cell_type": "markdown",
                            "source": [f"# {stem}\n", "\n", f"Purpose of {stem}.\n", "\n", "Produces: files."],
                        }
                    ]
                }
            )
        )
    return tmp_path, readme, tmp_path / "results"


def section(text: str, name: str) -> str:
    start, end = reporting.marker(name)
    return text[text.index(start) : text.index(end)]


# ---------------------------------------------------------------------------------------
# summarise: every grouping column kept, the real n
# ---------------------------------------------------------------------------------------


def batch_size_frame() -> pd.DataFrame:
    values = {(16, 0): 5.0, (16, 1): 7.0, (64, 0): 9.0, (64, 1): 13.0}
    return pd.DataFrame(
        [row("R@1", value, seed, 44.02, method="CMPM", batch_size=batch) for (batch, seed), value in values.items()]
    )


def test_summarise_keeps_the_batch_size_rows_apart():
    summary = reporting.summarise(batch_size_frame())
    assert list(summary["batch_size"]) == [16, 64]
    assert list(summary["mean"]) == [6.0, 11.0]
    assert summary["std"].tolist() == pytest.approx([statistics.stdev([5.0, 7.0]), statistics.stdev([9.0, 13.0])])
    assert list(summary["n"]) == [2, 2] and list(summary["n_seeds"]) == [2, 2]
    assert summary["difference"].tolist() == pytest.approx([6.0 - 44.02, 11.0 - 44.02])
    assert "seconds" not in summary.columns and "seed" not in summary.columns


def test_summarise_refuses_to_average_over_a_forgotten_grouping_column():
    frame = batch_size_frame()
    with pytest.raises(ValueError, match=r"4 values for 2 seed\(s\).*grouping column"):
        reporting.summarise(frame, by=["dataset", "method", "direction", "metric"])


def test_summarise_one_seed_has_no_std_and_ceiling_is_carried():
    frame = pd.DataFrame([row("R@1", 30.0, 0, ceiling=60.0)])
    summary = reporting.summarise(frame)
    assert math.isnan(summary["std"].iloc[0]) and summary["n_seeds"].iloc[0] == 1
    assert summary["percent_of_ceiling"].iloc[0] == pytest.approx(50.0)


# ---------------------------------------------------------------------------------------
# The README and results/README.md
# ---------------------------------------------------------------------------------------


def test_readme_sections_are_generated_from_the_csvs(project):
    root, readme, results = project
    write_csv(
        results,
        "cuhk_pedes",
        "metrics.csv",
        [
            row("R@1", 10.0, 0, method="CMPM"),
            row("R@1", 12.0, 1, method="CMPM"),
            row("R@1", 14.0, 2, method="CMPM"),
            row("R@10", 30.0, 0, method="CMPM"),
            row("R@10", 31.0, 1, method="CMPM"),
            row("R@10", 35.0, 2, method="CMPM"),
        ],
    )
    write_csv(results, "batch_size", "metrics.csv", batch_size_frame().to_dict("records"))
    assert reporting.main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "Intro text that must survive." in text and "Footer that must survive." in text
    assert "old scorecard" not in text and "old tables" not in text
    headline = section(text, "headline")
    # synthetic (quick) numbers: never a paper value in the same cell; the paper's values have their own table
    std10 = statistics.stdev([30.0, 31.0, 35.0])
    assert f"| CMPM | 12.00 ± 2.00 | 32.00 ± {std10:.2f} |" in headline
    assert "(paper " not in headline and "results/README.md#reproduction-status" in headline
    # the batch sizes spread into columns, one row per method
    assert "| **batch_size** (2 seeds): method | R@1, batch_size 16 | R@1, batch_size 64 |" in headline
    # the paper's CUHK-PEDES value belongs to its own batch size: not repeated under every batch size
    assert (
        f"| CMPM | 6.00 ± {statistics.stdev([5.0, 7.0]):.2f} | 11.00 ± {statistics.stdev([9.0, 13.0]):.2f} |"
        in headline
    )
    assert "no `results/flickr30k/quick/metrics.csv` yet" in headline
    # results/README.md: the full table keeps batch_size, with the real number of seeds
    full = (results / "README.md").read_text(encoding="utf-8")
    assert (
        "| dataset | table | method | backbone | direction | metric | batch_size | paper (real data) | support |"
        in full
    )
    assert (
        "| cuhk_pedes | cuhk_pedes | CMPM | mobilenet_v2 | t2i | R@1 | 16 | 44.02 | MobileNet, 2 sources | 6.00 ± 1.41 | 2 |\n"
        in full
    )
    assert "`python -m cmp_utils.tools.run_notebooks --profile quick notebooks/09_batch_size.ipynb`" in full
    assert readme.stat().st_mode & 0o777 == 0o644  # permissions kept through the atomic replace
    before = readme.read_text(encoding="utf-8")
    reporting.update_readme(readme, results)
    assert readme.read_text(encoding="utf-8") == before  # idempotent


def test_scorecard_reads_new_and_old_claims_files(project):
    _, readme, results = project
    write_csv(
        results,
        "cuhk_pedes",
        "claims.csv",
        [
            dict(
                claim="CMPM+CMPC > CMPM (t2i R@1)",
                better="CMPM+CMPC",
                worse="CMPM",
                metric="R@1",
                direction="t2i",
                n_seeds=5,
                mean_difference=0.8,
                ci_low=0.2,
                ci_high=1.4,
                p_value=0.02,
                test="paired t-test",
                verdict="held",
            )
        ],
    )
    write_csv(
        results,
        "batch_size",
        "claims.csv",
        [dict(claim="CMPM varies less", cmpm_range=2.0, other_range=3.5, verdict="inconclusive")],
    )
    reporting.update_readme(readme, results)
    scorecard = section(readme.read_text(encoding="utf-8"), "scorecard")
    difference = paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@1") - paper.paper_value("cuhk_pedes", "CMPM", "R@1")
    assert (
        f"| CMPM+CMPC > CMPM (t2i R@1) (cuhk_pedes) | CMPM+CMPC 49.37 (MobileNet, 4 sources) vs CMPM 44.02 "
        f"(MobileNet, 2 sources) ({difference:+.2f}) | +0.80 [+0.20, +1.40] | **held** | 5 |"
    ) in scorecard
    # an old file without better/worse is not a comparison the paper makes: it goes to "Our checks"
    papers, ours = scorecard.split("### Our checks")
    assert "| CMPM varies less (batch_size) | cmpm_range 2, other_range 3.5 | **inconclusive** |  |  |" in ours
    assert "CMPM+CMPC > CMPM" in papers and "Holm-Bonferroni" in papers
    # notebook order: 05 before 09
    assert scorecard.index("cuhk_pedes") < scorecard.index("batch_size")


def test_profiles_section_reads_the_profile_settings(project):
    _, readme, results = project
    reporting.update_readme(readme, results)
    profiles = section(readme.read_text(encoding="utf-8"), "profiles")
    quick, paper_cuhk = (
        training.PROFILE_SETTINGS["quick"]["cuhk_pedes"],
        training.PROFILE_SETTINGS["paper"]["cuhk_pedes"],
    )
    assert f"| EMA decay | {paper_cuhk['ema_decay']:g} |" in profiles
    assert f"| {quick['ema_decay']:g} |" in profiles
    assert f"| epochs / batch size | {paper_cuhk['epochs']} / {paper_cuhk['batch_size']} |" in profiles
    assert "frozen, cached ImageNet features" in profiles


def test_timings_absent_then_present(project):
    _, readme, results = project
    reporting.update_readme(readme, results)
    timings = section(readme.read_text(encoding="utf-8"), "timings")
    assert "| 05_cuhk_pedes | Purpose of 05_cuhk_pedes. | no timing recorded yet |" in timings
    executed = results / "executed" / "quick"
    executed.mkdir(parents=True)
    (executed / "05_cuhk_pedes.ipynb").write_text("{}")
    pd.DataFrame(
        [
            dict(
                notebook="05_cuhk_pedes.ipynb",
                seconds=90.0,
                profile="quick",
                machine="2-core CPU",
                started_at="2026-01-01T00:00:00Z",
            ),
            dict(
                notebook="14_cmpm_family.ipynb",
                seconds=300.0,
                profile="quick",
                machine="2-core CPU",
                started_at="2026-01-01T00:02:00Z",
            ),
        ]
    ).to_csv(executed / "timings.csv", index=False)
    reporting.update_readme(readme, results)
    timings = section(readme.read_text(encoding="utf-8"), "timings")
    assert (
        "| [05_cuhk_pedes](results/executed/quick/05_cuhk_pedes.ipynb) | Purpose of 05_cuhk_pedes. | 1.5 |" in timings
    )
    assert "| 09_batch_size | Purpose of 09_batch_size. | no timing recorded yet |" in timings
    assert (
        "Total: `make reproduce` 2 min, `make reproduce-checks` (13_fidelity_audit, 14_cmpm_family) 5 min, on 2-core CPU"
        in timings
    )


def test_performance_summary_and_bench_readme(project):
    _, readme, results = project
    (results / "bench").mkdir(parents=True)
    pd.DataFrame([dict(benchmark="losses/batch_64", case="CMPM", value=13.254, unit="ms", machine="cpu box")]).to_csv(
        results / "bench" / "losses.csv", index=False
    )
    reporting.update_readme(readme, results)
    performance = section(readme.read_text(encoding="utf-8"), "performance")
    assert "| losses/batch_64 | CMPM | 13.25 ms | cpu box |" in performance
    bench_readme = (results / "bench" / "README.md").read_text(encoding="utf-8")
    assert "## losses" in bench_readme and "| losses/batch_64 | CMPM | 13.25 | ms | cpu box |" in bench_readme


def test_missing_markers_name_the_readme(project, capsys):
    _, readme, results = project
    readme.write_text("# no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"README\.md lacks the markers"):
        reporting.update_readme(readme, results)
    assert reporting.main(["--readme", str(readme), "--results", str(results)]) == 2
    assert "lacks the markers" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == "# no markers here\n"  # untouched


def test_bad_metrics_csv_names_the_file(project):
    _, readme, results = project
    write_csv(results, "cuhk_pedes", "metrics.csv", [{"dataset": "x", "value": 1.0}])
    with pytest.raises(ValueError, match=r"metrics\.csv lacks the columns"):
        reporting.update_readme(readme, results)


# ---------------------------------------------------------------------------------------
# Notebook texts
# ---------------------------------------------------------------------------------------


def test_what_we_found_is_generated_from_the_csvs(tmp_path):
    results = tmp_path / "results"
    write_csv(
        results,
        "ablation",
        "metrics.csv",
        [
            row("R@1", value, seed, method=method)
            for method, values in (("CMPC", (3.0, 4.0)), ("CMPM", (8.0, 9.0)))
            for seed, value in enumerate(values)
        ],
    )
    write_csv(
        results,
        "ablation",
        "claims.csv",
        [
            dict(
                claim="CMPC > CMPM (t2i R@1)",
                better="CMPC",
                worse="CMPM",
                metric="R@1",
                direction="t2i",
                n_seeds=2,
                mean_difference=-5.0,
                ci_low=float("nan"),
                ci_high=float("nan"),
                p_value=float("nan"),
                test="paired t-test",
                verdict="not tested (fewer than 5 seeds)",
            )
        ],
    )
    text = reporting.what_we_found("ablation", "quick", results)
    assert text.startswith("## What we found (quick, synthetic data)")
    assert "- CMPC > CMPM (t2i R@1): **not tested (fewer than 5 seeds)** (ours: -5.00; 2 seeds" in text
    assert f"Highest mean R@1: 8.50 ± {statistics.stdev([8.0, 9.0]):.2f} (method CMPM)" in text
    assert "notebook 03" in text and "synthetic data" in text
    empty = reporting.what_we_found("cuhk_pedes", "quick", results)
    assert "No results yet under `results/cuhk_pedes/quick/`" in empty


def test_about_profiles_reads_the_settings():
    text = reporting.about_profiles("quick")
    quick = training.PROFILE_SETTINGS["quick"]["cuhk_pedes"]
    assert (
        f"lr {quick['lr']:g}, until validation has not improved for {quick['patience']} epochs in a row, at most "
        f"{quick['epochs']} epochs, batch {quick['batch_size']}" in text
    )
    assert "paired seeds" in text and "95% confidence interval" in text and "Holm-adjusted" in text
    assert "**not converged**" in text and "3x as many epochs" in text
    with pytest.raises(ValueError):
        reporting.about_profiles("fast")


def test_training_settings_are_resolved_without_machine_paths():
    params = reporting.training_settings("quick", "cuhk_pedes", {"batch_size": 16})
    assert params["training"]["batch_size"] == 16
    assert params["training"]["lr"] == training.PROFILE_SETTINGS["quick"]["cuhk_pedes"]["lr"]
    assert "output_dir" not in params["training"] and "seed" not in params["training"]
    assert params["git_commit"] and params["varied_per_run"] == ["losses", "seed"]
    assert params["cpu_numerics"]["mode"] == "pinned" and params["cpu_numerics"]["pinned"]


def test_scrub_notebook_removes_machine_paths_and_svg_copies(tmp_path):
    root = tmp_path / "repo"
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"papermill": {"cwd": f"{root}/notebooks"}},
                "source": "x",
                "outputs": [
                    {
                        "output_type": "stream",
                        "name": "stdout",
                        "text": [f"results go to {root}/results/cuhk_pedes/quick\n", f"cache in /{'tmp'}/abc/def\n"],
                    },
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"image/png": "iVBOR", "image/svg+xml": "<svg/>", "text/plain": "<Figure>"},
                    },
                ],
            }
        ],
        "metadata": {"papermill": {"input_path": f"{root}/notebooks/05.ipynb"}, "widgets": {"state": {}}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "executed.ipynb"
    path.write_text(json.dumps(notebook))
    reporting.scrub_notebook(path, roots=[root])
    cleaned = json.loads(path.read_text())
    outputs = cleaned["cells"][0]["outputs"]
    assert outputs[0]["text"] == ["results go to results/cuhk_pedes/quick\n", "cache in <path>\n"]
    assert outputs[1]["data"] == {"image/png": "iVBOR", "text/plain": "<Figure>"}
    assert cleaned["cells"][0]["metadata"]["papermill"]["cwd"] == "notebooks"
    assert cleaned["metadata"]["papermill"]["input_path"] == "notebooks/05.ipynb"
    assert "widgets" not in cleaned["metadata"]
    assert str(tmp_path) not in path.read_text()


# ---------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------


#: Every value the public sources give (issue #20): (table, dataset, method, backbone, direction, metric) -> value.
PUBLISHED = {
    **{
        ("cuhk_pedes", "cuhk_pedes", "CMPM+CMPC", "MobileNet", "t2i", m): v
        for m, v in (("R@1", 49.37), ("R@10", 79.27))
    },
    **{("cuhk_pedes", "cuhk_pedes", "CMPM", "MobileNet", "t2i", m): v for m, v in (("R@1", 44.02), ("R@10", 77.00))},
    **{("cuhk_pedes", "cuhk_pedes", "CMCE", "", "t2i", m): v for m, v in (("R@1", 25.94), ("R@10", 60.48))},
}
for _table, _dataset, _method, _backbone, _i2t, _t2i in (
    ("flickr30k", "flickr30k", "CMPM+CMPC", "ResNet-152", (49.6, 76.8, 86.1), (37.3, 65.7, 75.5)),
    ("flickr30k", "flickr30k", "CMPM+CMPC", "MobileNet", (40.3, 66.9, 76.7), (30.4, 58.2, 68.5)),
    ("mscoco_1k", "mscoco", "CMPM", "ResNet-152", (56.1, 86.3, 92.9), (44.6, 78.8, 89.0)),
    ("mscoco_1k", "mscoco", "CMPM+CMPC", "MobileNet", (52.9, 83.8, 92.1), (41.3, 74.6, 85.9)),
    ("mscoco_5k", "mscoco", "CMPM", "ResNet-152", (31.1, 60.7, 73.9), (22.9, 50.2, 63.8)),
    ("mscoco_5k", "mscoco", "CMPM+CMPC", "MobileNet", (24.6, 52.3, 66.4), (19.1, 44.6, 58.4)),
):
    for _direction, _values in (("i2t", _i2t), ("t2i", _t2i)):
        for _metric, _value in zip(("R@1", "R@5", "R@10"), _values):
            PUBLISHED[(_table, _dataset, _method, _backbone, _direction, _metric)] = _value
for _dataset, _method, _top1, _ap in (
    ("cub", "CMPM+CMPC", 64.3, 67.9),
    ("cub", "CMPM", 62.1, 64.6),
    ("flowers", "CMPM+CMPC", 68.9, 69.7),
    ("flowers", "CMPM", 66.1, 67.7),
):
    PUBLISHED[("cub_flowers", _dataset, _method, "MobileNet", "i2t", "top1_accuracy")] = _top1
    PUBLISHED[("cub_flowers", _dataset, _method, "MobileNet", "t2i", "ap@50")] = _ap


def test_paper_numbers_hold_every_published_value_with_its_sources():
    frame = paper.paper_numbers()
    assert list(frame.columns) == list(paper.COLUMNS)
    with_values = frame[frame["value"].notna()]
    found = {
        (r.table, r.dataset, r.method, r.backbone, r.direction, r.metric): r.value
        for r in with_values.itertuples(index=False)
    }
    assert found == pytest.approx(PUBLISHED)
    sources = paper.sources().set_index("key")
    for row in with_values.itertuples(index=False):  # every filled cell: a source with repository, file and commit
        keys = paper.source_keys(row.sources)
        assert keys and row.support == len(keys) and row.status == "confirmed" and row.test_set, row
        for key in keys:
            assert sources.loc[key, "repository"].startswith("github.com/") and sources.loc[key, "file"], key
    assert sources.loc["P", "commit"].split(";") == [
        "f07fd09f4b95541d6e8c12f85704f0dfd4642b16",
        "b8663edf18729995c44d7c2a48e066ff45ce4c27",
    ]
    assert (frame.loc[frame["value"].isna(), "status"] == "not confirmed").all()
    assert (frame.loc[frame["value"].isna(), "support"] == 0).all()
    support = {(r.method, r.metric): r.support for r in with_values[with_values["table"] == "cuhk_pedes"].itertuples()}
    assert support[("CMPM+CMPC", "R@1")] == 4 and support[("CMPM", "R@1")] == 2 and support[("CMPM", "R@10")] == 1
    assert paper.support_label("P") == "1 source (authors' lab list)" and paper.support_label("P;L") == "2 sources"
    for table in ("cuhk_pedes", "flickr30k", "mscoco_1k", "mscoco_5k", "cub_flowers", "batch_size", "ablation"):
        assert table in set(frame["table"]), table
    assert set(frame.loc[frame["table"] == "ablation", "method"]) == {
        "softmax",
        "norm-softmax",
        "CMPC",
        "CMPM",
        "CMPM+CMPC",
    }
    # the cells no source gives stay empty and exist, so a table says so
    empty = frame[frame["value"].isna()]
    assert {("flickr30k", "CMPM"), ("cuhk_pedes", "CMPM+CMPC"), ("batch_size", "CMPM+CMPC")} <= set(
        zip(empty["table"], empty["method"])
    )


def test_third_party_reruns_stay_out_of_the_paper_column():
    reruns = paper.third_party_reruns()
    assert {43.51, 65.44, 74.26, 54.81, 53.33, 42.999, 38.35, 41.44} == set(reruns["value"])
    assert not set(reruns["value"]) & set(paper.paper_numbers()["value"].dropna())
    assert (reruns["note"].str.contains("not a number of the paper")).all()


def test_paper_numbers_loader_rejects_a_value_without_a_source(tmp_path):
    text = paper.PAPER_NUMBERS_CSV.read_text().splitlines()
    header, first = text[0], text[1]
    assert ",4,P;V;I;L," in first
    bad = tmp_path / "paper_numbers.csv"
    bad.write_text(header + "\n" + first.replace(",4,P;V;I;L,", ",0,,") + "\n")
    with pytest.raises(ValueError, match="no source"):
        paper.read_paper_numbers_csv(str(bad))
    bad.write_text(header + "\n" + first.replace(",4,P;V;I;L,", ",1,P;X,") + "\n")
    with pytest.raises(ValueError, match="unknown sources"):
        paper.read_paper_numbers_csv(str(bad))


def test_paper_value_lookup():
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@1") == 49.37
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@10", direction="t2i", table="cuhk_pedes") == 79.27
    assert paper.paper_value("cuhk_pedes", "CMPM", "R@1") == 44.02
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@5") is None  # a cell, not confirmed
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@1", backbone="resnet152_slim") is None  # not reported
    assert paper.paper_value("nowhere", "CMPM", "R@1") is None
    # one cell, two backbones: ours is matched to the paper's; another backbone takes the first-listed (ResNet-152)
    assert paper.paper_value("flickr30k", "CMPM+CMPC", "R@1", "i2t", backbone="resnet152_slim") == 49.6
    assert paper.paper_value("flickr30k", "CMPM+CMPC", "R@1", "i2t", backbone="mobilenet_v1_tf") == 40.3
    assert paper.paper_value("flickr30k", "CMPM+CMPC", "R@1", "i2t", backbone="mobilenet_v2") == 49.6
    assert paper.paper_value("mscoco", "CMPM", "R@1", "i2t", table="mscoco_5k", backbone="resnet152_slim") == 31.1
    assert paper.paper_value("mscoco", "CMPM", "R@1", "i2t", table="mscoco_5k", backbone="mobilenet_v1_tf") is None
    with pytest.raises(ValueError, match="table="):
        paper.paper_value("mscoco", "CMPM", "R@1", "i2t")
    results = pd.DataFrame(
        {
            "dataset": ["cuhk_pedes", "cuhk_pedes", "flickr30k"],
            "method": ["CMPM+CMPC"] * 3,
            "backbone": ["mobilenet_v1_tf", "mobilenet_v1_tf", "mobilenet_v1_tf"],
            "direction": ["t2i", "t2i", "t2i"],
            "metric": ["R@1", "R@5", "R@10"],
            "value": [1.0, 2.0, 3.0],
        }
    )
    attached = paper.with_paper_values(results)
    assert attached["paper_value"].iloc[0] == 49.37 and math.isnan(attached["paper_value"].iloc[1])
    assert attached["paper_value"].iloc[2] == 68.5
    assert list(attached["paper_support"]) == ["MobileNet, 4 sources", "", "MobileNet, 1 source (authors' lab list)"]


# ---------------------------------------------------------------------------------------
# Figures (cmp_utils.reporting.plots)
# ---------------------------------------------------------------------------------------


def test_ap50_ceiling_is_the_mean_share_a_class_can_fill():
    from cmp_utils.reporting import plots

    assert plots.ap50_ceiling([10, 60, 50]) == pytest.approx(100 * (10 / 50 + 1 + 1) / 3)
    with pytest.raises(ValueError):
        plots.ap50_ceiling([])


def test_methods_figure_keeps_the_paper_apart_and_marks_synthetic_data():
    import matplotlib

    matplotlib.use("Agg")
    from cmp_utils.reporting import plots

    frame = pd.DataFrame(
        [
            row("R@1", value, seed, 49.37 if method == "CMPM+CMPC" else float("nan"), method=method)
            for method, values in (("CMPM", (7.0, 7.5, 8.0)), ("CMPM+CMPC", (8.5, 8.8, 9.0)))
            for seed, value in enumerate(values)
        ]
    )
    fig = plots.methods_figure(frame, [dict(metric="R@1", direction="t2i", title="R@1")], "quick")
    ours, paper_panel = [ax for ax in fig.axes if ax.get_visible()]
    left, right = ours.get_xlim()
    assert 5.0 < left < 7.0 and 9.0 < right < 12.0  # zoomed to the values, the paper's 49.37 is not on this axis
    assert paper_panel.get_xlim() == (0, 100) and "paper" in paper_panel.get_title()
    assert [label.get_text() for label in paper_panel.get_yticklabels()] == ["CMPM+CMPC: text-to-image R@1"]
    assert any(t.get_text() == "synthetic data, quick profile" for t in fig.texts)
    assert not any(
        "synthetic" in t.get_text() for t in plots.methods_figure(frame, [dict(metric="R@1")], "paper").texts
    )


def test_batch_size_figure_is_relative_to_each_losses_best():
    import matplotlib

    matplotlib.use("Agg")
    from cmp_utils.reporting import plots

    frame = pd.DataFrame(
        [
            row("R@1", value, seed, method=method, batch_size=batch)
            for method, by_batch in (("CMPM", {16: 8.0, 64: 10.0}), ("ranking", {16: 2.0, 64: 4.0}))
            for batch, value in by_batch.items()
            for seed in (0, 1)
        ]
    )
    fig = plots.batch_size_figure(frame, "quick")
    relative = fig.axes[0]
    lines = {
        line.get_label(): list(line.get_ydata())
        for line in relative.get_lines()
        if not line.get_label().startswith("_")
    }
    assert lines == {"CMPM": [80.0, 100.0], "ranking": [50.0, 100.0]}


def test_training_curves_read_the_run_logs(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from cmp_utils.reporting import plots

    for key, recall in (("run_a", (10.0, 20.0)), ("run_b", (12.0, 22.0))):
        (tmp_path / key).mkdir()
        (tmp_path / key / "log.jsonl").write_text(
            "".join(
                json.dumps({"epoch": epoch + 1, "loss": 3.0 - epoch, "val_t2i_R@1": value}) + "\n"
                for epoch, value in enumerate(recall)
            )
        )
    frame = pd.DataFrame(
        [row("R@1", 1.0, seed, method="CMPM", run_key=key) for seed, key in enumerate(("run_a", "run_b"))]
    )
    fig = plots.training_curves(frame, "quick", runs_dir=tmp_path)
    recall_axis = fig.axes[1]
    [line] = recall_axis.get_lines()
    assert list(line.get_ydata()) == [11.0, 21.0]  # mean over the two seeds per epoch
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        plots.training_curves(frame.assign(run_key="missing"), "quick", runs_dir=tmp_path)


def test_full_table_shows_the_ceiling_beside_ours(project):
    root, readme, results = project
    write_csv(
        results,
        "cuhk_pedes",
        "metrics.csv",
        [row("R@1", value, seed, method="CMPM", ceiling=60.0) for seed, value in enumerate((10.0, 14.0))],
    )
    reporting.update_readme(readme, results)
    full = (results / "README.md").read_text(encoding="utf-8")
    assert "| seeds | ceiling of the test set | share of the ceiling |" in full
    synthetic_tables, reproduction = full.split("## Reproduction status (paper profile, real data)")
    assert "ours − paper" not in synthetic_tables  # synthetic data: a level difference from the paper means nothing
    assert "not run here" in reproduction  # only the paper profile's own runs (none here) meet the paper
    third_party = reproduction.split("### Third-party re-runs (not the paper's numbers)")[1]
    assert "| icfg_pedes | CMPM/C | t2i | R@1 | 43.51 | later work |" in third_party and "| 42.999 |" in third_party
    assert (
        f"| CMPM | mobilenet_v2 | t2i | R@1 | 44.02 | MobileNet, 2 sources | 12.00 ± {statistics.stdev([10.0, 14.0]):.2f} | 2 | 60.00 | 20% |"
        in full
    )


def test_shrink_png_bounds_width_and_size():
    import base64
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (300, 1800, 3), dtype=np.uint8)  # hard to compress
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    shrunk = Image.open(io.BytesIO(base64.b64decode(reporting.shrink_png(encoded))))
    assert shrunk.size == (reporting.MAX_INLINE_WIDTH, 150)
    small = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(small, format="PNG")
    small_encoded = base64.b64encode(small.getvalue()).decode()
    assert reporting.shrink_png(small_encoded) == small_encoded  # small enough: untouched


def test_metrics_without_optional_columns_still_render(project):
    _, readme, results = project
    write_csv(
        results,
        "fidelity_audit",
        "metrics.csv",
        [
            dict(
                dataset="cuhk_pedes",
                method="CMPM+CMPC",
                deviation=deviation,
                direction="t2i",
                metric="R@1",
                value=value,
                seed=seed,
            )
            for deviation, values in (("baseline", (8.0, 9.0)), ("no_ema", (6.0, 7.0)))
            for seed, value in enumerate(values)
        ],
    )
    reporting.update_readme(readme, results)
    full = (results / "README.md").read_text(encoding="utf-8")
    assert (
        "| cuhk_pedes | CMPM+CMPC | baseline | t2i | R@1 |  | 49.37 | MobileNet, 4 sources | 8.50 ± 0.71 | 2 |\n"
        in full
    )  # backbone empty
    assert (
        "| cuhk_pedes | CMPM+CMPC | no_ema | t2i | R@1 |  | 49.37 | MobileNet, 4 sources | 6.50 ± 0.71 | 2 |\n" in full
    )


def test_full_tables_of_real_data_give_ours_minus_paper(tmp_path):
    """The paper profile (real data) compares levels with the paper; synthetic profiles do not."""
    frame = pd.DataFrame([row("R@1", value, seed, method="CMPM") for seed, value in enumerate((40.0, 42.0))])
    for profile in ("paper", "quick"):
        (tmp_path / "cuhk_pedes" / profile).mkdir(parents=True)
        frame.to_csv(tmp_path / "cuhk_pedes" / profile / "metrics.csv", index=False)
    notebooks = config.project_root() / "notebooks"
    paper_tables = reporting.render_full_tables(tmp_path, "paper", notebooks, tmp_path)
    quick_tables = reporting.render_full_tables(tmp_path, "quick", notebooks, tmp_path)
    assert "| seeds | ours − paper |" in paper_tables and "| 41.00 ± 1.41 | 2 | -3.02 |" in paper_tables
    assert "ours − paper" not in quick_tables and "| 41.00 ± 1.41 | 2 |\n" in quick_tables + "\n"


def test_headline_cells_show_the_share_of_the_ceiling():
    """On synthetic data every headline cell says how much of the attribute oracle's ceiling ours reaches."""
    frame = pd.DataFrame(
        [
            {
                "dataset": "cuhk_pedes",
                "table": "cuhk_pedes",
                "method": "CMPM",
                "direction": "t2i",
                "metric": "R@1",
                "value": value,
                "paper_value": float("nan"),
                "seed": seed,
                "ceiling": 80.0,
            }
            for seed, value in enumerate((38.0, 42.0))
        ]
    )
    table = reporting.headline_table(frame, ["R@1"])
    assert "| CMPM | 40.00 ± 2.83 [50%] |" in table


def test_headline_caption_names_the_ceiling_of_each_dataset_the_table_shows(tmp_path):
    """A table of two datasets (CUB and Flowers) states each one's ceiling, not the first one's for both."""
    rows = [
        row(metric, value, 0, dataset=dataset, direction=direction, ceiling=ceiling_value)
        for dataset, ceiling_value in (("cub", 32.0), ("flowers", 40.0))
        for direction, metric, value in (("i2t", "top1_accuracy", 50.0), ("t2i", "ap@50", 20.0))
    ]
    write_csv(tmp_path, "cub_flowers", "metrics.csv", rows)
    text = reporting.render_headline(tmp_path, "quick", tmp_path)
    caption = next(line for line in text.splitlines() if line.startswith("| **cub_flowers**"))
    for dataset, value in (("cub", "32.0"), ("flowers", "40.0")):
        assert f"{dataset} {reporting.METRIC_LABELS.get('ap@50', 'ap@50')} {value}" in caption


# ---------------------------------------------------------------------------------------
# Paper profile: ours − paper and the reproduction status
# ---------------------------------------------------------------------------------------


def test_reproduction_status_compares_each_row_with_its_own_backbone(tmp_path):
    results = tmp_path / "results"
    rows = [
        {**row("R@1", value, seed, dataset="flickr30k", method="CMPM+CMPC", direction="i2t"), "backbone": backbone}
        for backbone, values in (("resnet152_slim", (48.6, 50.6)), ("mobilenet_v1_tf", (41.3, 41.3)))
        for seed, value in enumerate(values)
    ]
    write_csv(results, "flickr30k", "metrics.csv", rows, profile="paper")
    status = reporting.reproduction_status(["flickr30k", "mscoco"], results_dir=results, metrics=["R@1"])
    lines = {line.split(" | ")[0].lstrip("| "): line for line in status.splitlines()[2:]}
    assert lines["flickr30k CMPM+CMPC, ResNet-152, i2t R@1"] == (
        f"| flickr30k CMPM+CMPC, ResNet-152, i2t R@1 | 49.60 (1 source (authors' lab list)) | 49.60 ± "
        f"{statistics.stdev([48.6, 50.6]):.2f} | +0.00 | within 0.00 points |"
    )
    assert lines["flickr30k CMPM+CMPC, MobileNet, i2t R@1"].endswith("| 41.30 ± 0.00 | +1.00 | within 1.00 points |")
    assert lines["flickr30k CMPM+CMPC, MobileNet, t2i R@1"].endswith("|  |  | not run here |")  # metric not run
    assert lines["mscoco_5k CMPM, ResNet-152, t2i R@1"].endswith("| not run here |")  # no results at all
    assert "CMPM, ResNet-152" not in " ".join(k for k in lines if k.startswith("flickr30k"))  # no public value
    cub = reporting.reproduction_status(["cub_flowers"], results_dir=results, metrics=["ap@50"])
    assert "| cub CMPM+CMPC, MobileNet, t2i AP@50 | 67.90 (1 source (authors' lab list)) |  |  | not run here |" in cub
    with pytest.raises(ValueError, match="synthetic"):
        reporting.reproduction_status(results_dir=results, profile="quick")


def test_paper_comparison_shows_ours_minus_paper_only_on_real_data():
    frame = pd.DataFrame([row("R@1", 40.0 + seed, seed, paper_value=49.37, ceiling=80.0) for seed in range(2)])
    summary = reporting.summarise(paper.with_paper_values(frame))
    quick = reporting.paper_comparison(summary, "quick")
    assert (
        "difference" not in quick and "paper_value" not in quick
    )  # nothing reads as comparable with synthetic numbers
    assert {"ceiling", "percent_of_ceiling", "paper_value_real_data", "paper_support_real_data"} <= set(quick)
    real = reporting.paper_comparison(summary.drop(columns=["ceiling", "percent_of_ceiling"]), "paper")
    assert real["difference"].iloc[0] == pytest.approx(40.5 - 49.37, abs=0.01)
    assert real["paper_support"].iloc[0] == "MobileNet, 4 sources"


def test_scorecard_paper_side_compares_losses_on_one_backbone_only():
    claim = dict(better="CMPM+CMPC", worse="CMPM", metric="R@1", direction="i2t")
    # MSCOCO: the paper's CMPM row is ResNet-152, its CMPM+CMPC row MobileNet: no difference is drawn
    coco = reporting.paper_side({**claim, "table": "mscoco_1k"}, "mscoco")
    assert coco == (
        "no paper value for this comparison (CMPM+CMPC 52.90 (MobileNet, 1 source (authors' lab list)) vs "
        "CMPM 56.10 (ResNet-152, 1 source (authors' lab list)): different backbones)"
    )
    flickr = reporting.paper_side({**claim, "table": "flickr30k"}, "flickr30k")
    assert flickr == (
        "no paper value for this comparison (only CMPM+CMPC 49.60 (ResNet-152, 1 source (authors' lab list)); "
        "none for CMPM)"
    )
    cub = reporting.paper_side({**claim, "metric": "ap@50", "direction": "t2i", "dataset": "cub"}, "cub_flowers")
    assert cub.endswith(f"({67.9 - 64.6:+.2f})") and cub.startswith("CMPM+CMPC 67.90 (MobileNet")
    # a paper-profile claim names its backbone: MobileNet on Flickr30K has no CMPM value either
    assert reporting.paper_side({**claim, "table": "flickr30k", "backbone": "mobilenet_v1_tf"}, "flickr30k").startswith(
        "no paper value for this comparison (only CMPM+CMPC 40.30 (MobileNet"
    )
    # a baseline's own published result has no backbone of the paper's: still compared
    assert reporting.paper_side(dict(better="CMPM", worse="CMCE", metric="R@1", direction="t2i"), "cuhk_pedes") == (
        f"CMPM 44.02 (MobileNet, 2 sources) vs CMCE 25.94 (1 source) ({44.02 - 25.94:+.2f})"
    )


def test_replace_between_markers_keeps_the_markers_and_refuses_ambiguity():
    markers = reporting.marker("demo")
    text = f"head\n{markers[0]}\nold\n{markers[1]}\ntail\n"
    assert (
        reporting.replace_between_markers(text, markers, "\nnew\n") == f"head\n{markers[0]}\nnew\n{markers[1]}\ntail\n"
    )
    for broken in ("no markers", f"{markers[1]}\n{markers[0]}", text + markers[0]):
        with pytest.raises(ValueError, match="demo:start"):
            reporting.replace_between_markers(broken, markers, "new", "doc.md")


def test_convergence_line_counts_run_groups_and_names_the_unconverged(tmp_path):
    from cmp_utils.core import config
    from cmp_utils.reporting import readme

    notebooks = config.project_root() / "notebooks"
    assert "No `results/*/quick/convergence.csv` yet" in readme.render_convergence(tmp_path, "quick", notebooks)
    for experiment, rows in {
        "cuhk_pedes": [("CMPM", "identity", "t2i R@1", True), ("ranking", "identity", "t2i R@1", False)],
        "flickr30k": [("CMPM", "identity", "i2t R@1", True), ("CMPM", "identity", "t2i R@1", False)],
    }.items():
        folder = tmp_path / experiment / "quick"
        folder.mkdir(parents=True)
        pd.DataFrame(rows, columns=["method", "sampler", "checked_on", "converged"]).to_csv(
            folder / "convergence.csv", index=False
        )
    line = readme.render_convergence(tmp_path, "quick", notebooks)
    assert line.startswith("**Convergence:** 1 of 3 run groups converged")  # a group converges on every metric
    assert "ranking (sampler=identity) in cuhk_pedes; CMPM (sampler=identity) in flickr30k." in line
