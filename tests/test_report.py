"""Tests of cmp_utils.report (README generation) and cmp_utils.paper (published numbers)."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from cmp_utils import paper, report

README = """# Project

Intro text that must survive.

## Results

<!-- results:start -->
old generated text
<!-- results:end -->

## After

Footer that must survive.
"""


def write_metrics(results, experiment: str, rows: list[dict], profile: str = "quick"):
    folder = results / experiment / profile
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)


def row(metric, value, seed, paper_value=float("nan"), dataset="cuhk_pedes", method="CMPM+CMPC", direction="t2i"):
    return dict(dataset=dataset, method=method, backbone="small-cnn", direction=direction, metric=metric,
                value=value, paper_value=paper_value, seed=seed)


@pytest.fixture
def project(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")
    readme.chmod(0o644)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "05_cuhk_pedes.ipynb").write_text("{}")
    return tmp_path, readme, tmp_path / "results"


def generated(readme) -> str:
    text = readme.read_text(encoding="utf-8")
    return text[text.index(report.RESULTS_MARKERS[0]) : text.index(report.RESULTS_MARKERS[1])]


def test_tables_with_seeds_paper_and_difference(project):
    root, readme, results = project
    write_metrics(results, "cuhk_pedes", [
        row("R@1", 10.0, 0, 49.37), row("R@1", 12.0, 1, 49.37), row("R@1", 14.0, 2, 49.37),
        row("R@5", 30.0, 0), row("R@5", 31.0, 1), row("R@5", 35.0, 2),
    ])
    write_metrics(results, "flickr30k", [row("R@1", 20.5, 0, dataset="flickr30k", direction="i2t")])
    assert report.main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "Intro text that must survive." in text and "Footer that must survive." in text
    assert "old generated text" not in text
    section = generated(readme)
    # R@1 over three seeds: mean 12.00, sample std 2.00, difference 12.00 - 49.37 = -37.37
    assert statistics.stdev([10.0, 12.0, 14.0]) == 2.0
    assert "| cuhk_pedes | CMPM+CMPC | small-cnn | t2i | R@1 | 49.37 | 12.00 ± 2.00 (n=3) | -37.37 |" in section
    # R@5: no paper value -> empty paper and difference; mean 32.00, std of (30, 31, 35)
    std = statistics.stdev([30.0, 31.0, 35.0])
    assert f"| cuhk_pedes | CMPM+CMPC | small-cnn | t2i | R@5 |  | 32.00 ± {std:.2f} (n=3) |  |" in section
    # one seed: no ± part
    assert "| flickr30k | CMPM+CMPC | small-cnn | i2t | R@1 |  | 20.50 (n=1) |  |" in section
    assert "### cuhk_pedes" in section and "### flickr30k" in section
    assert "`.venv/bin/python -m cmp_utils.run_notebooks --profile quick notebooks/05_cuhk_pedes.ipynb`" in section
    assert "no notebook `notebooks/NN_flickr30k.ipynb` found" in section
    assert "ours (quick, synthetic data)" in section
    assert readme.stat().st_mode & 0o777 == 0o644  # permissions kept through the atomic replace
    # Regenerating is idempotent.
    before = readme.read_text(encoding="utf-8")
    report.update_readme(readme, results)
    assert readme.read_text(encoding="utf-8") == before


def test_table_column_keeps_mscoco_1k_and_5k_apart(project):
    _, readme, results = project
    rows = [dict(row("R@1", value, 0, dataset="mscoco", direction="i2t"), table=table)
            for table, value in (("mscoco_1k", 60.0), ("mscoco_5k", 40.0))]
    write_metrics(results, "mscoco", rows)
    report.update_readme(readme, results)
    section = generated(readme)
    assert "| table | dataset | method |" in section
    assert "| mscoco_1k | mscoco | CMPM+CMPC | small-cnn | i2t | R@1 |  | 60.00 (n=1) |  |" in section
    assert "| mscoco_5k | mscoco | CMPM+CMPC | small-cnn | i2t | R@1 |  | 40.00 (n=1) |  |" in section


def test_no_results_yet(project):
    _, readme, results = project
    report.update_readme(readme, results)
    assert "No results yet" in generated(readme)


def test_missing_markers_name_the_readme(project, capsys):
    _, readme, results = project
    readme.write_text("# no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"README\.md lacks the markers <!-- results:start --> and <!-- results:end -->"):
        report.update_readme(readme, results)
    assert report.main(["--readme", str(readme), "--results", str(results)]) == 2
    assert "lacks the markers" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == "# no markers here\n"  # untouched


def test_bad_metrics_csv_names_the_file(project):
    _, readme, results = project
    folder = results / "cuhk_pedes" / "quick"
    folder.mkdir(parents=True)
    pd.DataFrame({"dataset": ["x"], "value": [1.0]}).to_csv(folder / "metrics.csv", index=False)
    with pytest.raises(ValueError, match=r"metrics\.csv lacks the columns"):
        report.update_readme(readme, results)


def test_bench_section_appended_or_between_markers(project):
    _, readme, results = project
    (results / "bench").mkdir(parents=True)
    pd.DataFrame({"operation": ["cmpm_loss"], "batch": [64], "ms_per_call": [1.23456]}).to_csv(
        results / "bench" / "losses.csv", index=False
    )
    report.update_readme(readme, results)
    section = generated(readme)
    assert "### Performance" in section and "#### losses" in section
    assert "| cmpm_loss | 64 | 1.235 |" in section

    # With its own markers outside the results section, the bench table goes there instead.
    readme.write_text(README + "\n## Speed\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n", encoding="utf-8")
    report.update_readme(readme, results)
    text = readme.read_text(encoding="utf-8")
    assert "### Performance" not in generated(readme)
    bench_part = text[text.index(report.BENCH_MARKERS[0]) : text.index(report.BENCH_MARKERS[1])]
    assert "| cmpm_loss | 64 | 1.235 |" in bench_part and "old" not in bench_part


def test_paper_numbers_only_confirmed_values():
    frame = paper.paper_numbers()
    assert list(frame.columns) == list(paper.COLUMNS)
    with_values = frame[frame["value"].notna()]
    # Exactly the three numbers confirmed in the reference notes, nothing else.
    assert sorted(with_values[["method", "metric", "value"]].itertuples(index=False, name=None)) == [
        ("CMPM", "R@1", 44.02), ("CMPM+CMPC", "R@1", 49.37), ("CMPM+CMPC", "R@10", 79.27),
    ]
    assert set(with_values["dataset"]) == {"cuhk_pedes"} and set(with_values["direction"]) == {"t2i"}
    assert (with_values["source"].str.len() > 0).all()
    assert (frame.loc[frame["value"].isna(), "status"] == "not confirmed").all()
    for table in ("cuhk_pedes", "flickr30k", "mscoco_1k", "mscoco_5k", "cub_flowers", "batch_size", "ablation"):
        assert table in set(frame["table"]), table
    assert set(frame.loc[frame["table"] == "ablation", "method"]) == {"softmax", "norm-softmax", "CMPC", "CMPM", "CMPM+CMPC"}


def test_paper_value_lookup():
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@1") == 49.37
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@10", direction="t2i", table="cuhk_pedes") == 79.27
    assert paper.paper_value("cuhk_pedes", "CMPM", "R@1") == 44.02
    assert paper.paper_value("cuhk_pedes", "CMPM+CMPC", "R@5") is None  # a cell, not confirmed
    assert paper.paper_value("mscoco", "CMPM+CMPC", "R@1", "i2t", table="mscoco_5k") is None
    assert paper.paper_value("nowhere", "CMPM", "R@1") is None
    results = pd.DataFrame({"dataset": ["cuhk_pedes", "cuhk_pedes"], "method": ["CMPM+CMPC"] * 2,
                            "direction": ["t2i"] * 2, "metric": ["R@1", "R@5"], "value": [1.0, 2.0]})
    attached = paper.with_paper_values(results)
    assert attached["paper_value"].iloc[0] == 49.37 and math.isnan(attached["paper_value"].iloc[1])
