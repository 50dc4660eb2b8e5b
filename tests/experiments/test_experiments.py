"""The experiment engine: protocols by dataset, tables over seeds, claims, feature statistics."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from cmp_utils.evaluation import claims
from cmp_utils.core import config
from cmp_utils import experiments


def _perfect_embeddings(num_labels: int = 6, captions_per_label: int = 2, dim: int = 8):
    """Images and captions of the same label share one direction: every protocol scores 100."""
    directions = torch.nn.functional.normalize(
        torch.randn(num_labels, dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    image_labels = torch.arange(num_labels)
    text_labels = image_labels.repeat_interleave(captions_per_label)
    return directions, image_labels, directions[text_labels], text_labels


@pytest.mark.parametrize(
    "dataset, tables",
    [
        ("cuhk_pedes", {"cuhk_pedes"}),
        ("flickr30k", {"flickr30k"}),
        ("mscoco", {"mscoco_1k", "mscoco_5k"}),
        ("cub", {"cub_flowers"}),
        ("flowers", {"cub_flowers"}),
    ],
)
def test_protocol_metrics_on_perfect_embeddings(dataset, tables):
    rows = experiments.protocol_metrics(dataset, *_perfect_embeddings(num_labels=10))
    assert {row["table"] for row in rows} == tables
    for row in rows:
        if row["metric"].startswith("R@") or row["metric"] == "top1_accuracy":
            assert row["value"] == pytest.approx(100.0), row
    if dataset == "cuhk_pedes":
        assert {row["metric"] for row in rows} == {"R@1", "R@5", "R@10", "mAP", "mINP"}
        assert {row["direction"] for row in rows} == {"t2i"}


def test_protocol_metrics_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="no protocol"):
        experiments.protocol_metrics("imagenet", *_perfect_embeddings())


def test_method_labels_map_to_known_losses():
    from cmp_utils.losses import LOSS_NAMES

    for method, losses in experiments.METHODS.items():
        assert set(losses) <= set(LOSS_NAMES), method
    with pytest.raises(ValueError, match="CMPM"):
        experiments.method_losses("triplet++")


def _frame(values_better, values_worse):
    rows = []
    for seed, (b, w) in enumerate(zip(values_better, values_worse)):
        rows.append(
            {"dataset": "d", "table": "t", "method": "A", "direction": "t2i", "metric": "R@1", "value": b, "seed": seed}
        )
        rows.append(
            {"dataset": "d", "table": "t", "method": "B", "direction": "t2i", "metric": "R@1", "value": w, "seed": seed}
        )
    return pd.DataFrame(rows)


def test_summarise_mean_std_and_paper_difference():
    frame = _frame([50, 52, 54], [40, 41, 42]).assign(paper_value=float("nan"))
    frame.loc[frame["method"] == "A", "paper_value"] = 49.0
    summary = experiments.summarise(frame).set_index("method")
    assert summary.loc["A", "mean"] == pytest.approx(52.0)
    assert summary.loc["A", "std"] == pytest.approx(2.0)
    assert summary.loc["A", "n_seeds"] == 3
    assert summary.loc["A", "difference"] == pytest.approx(3.0)
    assert math.isnan(summary.loc["B", "difference"])


def test_summarise_puts_the_ceiling_beside_the_mean():
    frame = _frame([50, 52, 54], [40, 41, 42]).assign(ceiling=80.0)
    summary = experiments.summarise(frame).set_index("method")
    assert summary.loc["A", "ceiling"] == pytest.approx(80.0)
    assert summary.loc["A", "percent_of_ceiling"] == pytest.approx(65.0)


def test_attach_ceiling_matches_rows_by_dataset_direction_and_metric(monkeypatch):
    from cmp_utils.evaluation import ceiling

    table = pd.DataFrame({"dataset": ["cuhk_pedes"], "direction": ["t2i"], "metric": ["R@1"], "value": [70.0]})
    monkeypatch.setattr(
        ceiling, "dataset_ceiling", lambda name, profile: table[table["dataset"] == name]
    )  # none for flickr30k
    frame = pd.DataFrame(
        {
            "dataset": ["cuhk_pedes", "cuhk_pedes", "flickr30k"],
            "direction": ["t2i", "t2i", "t2i"],
            "metric": ["R@1", "mAP", "R@1"],
            "value": [1.0, 2.0, 3.0],
        }
    )
    out = experiments.attach_ceiling(frame, "quick")
    assert out["ceiling"].iloc[0] == 70.0 and out["ceiling"].iloc[1:].isna().all()
    assert list(out["value"]) == [1.0, 2.0, 3.0]


def test_attach_ceiling_takes_the_table_where_the_ceiling_has_one_per_table(monkeypatch):
    from cmp_utils.evaluation import ceiling

    table = pd.DataFrame(
        {
            "dataset": ["mscoco_1k", "mscoco_5k"],
            "direction": ["t2i", "t2i"],
            "metric": ["R@1", "R@1"],
            "value": [74.0, 65.0],
        }
    )
    monkeypatch.setattr(ceiling, "dataset_ceiling", lambda name, profile: table)
    frame = pd.DataFrame(
        {
            "dataset": ["mscoco"] * 3,
            "table": ["mscoco_5k", "mscoco_1k", "mscoco_1k"],
            "direction": ["t2i", "t2i", "i2t"],
            "metric": ["R@1"] * 3,
            "value": [1.0, 2.0, 3.0],
        }
    )
    out = experiments.attach_ceiling(frame, "quick")
    assert out["ceiling"].iloc[:2].tolist() == [65.0, 74.0] and math.isnan(out["ceiling"].iloc[2])
    assert list(out.columns) == [*frame.columns, "ceiling"] and list(out["table"]) == list(frame["table"])


def test_attach_paper_values_uses_confirmed_numbers_only():
    frame = pd.DataFrame(
        [
            {
                "dataset": "cuhk_pedes",
                "table": "cuhk_pedes",
                "method": "CMPM+CMPC",
                "backbone": "x",
                "direction": "t2i",
                "metric": "R@1",
                "value": 1.0,
                "seed": 0,
            },
            {
                "dataset": "cuhk_pedes",
                "table": "cuhk_pedes",
                "method": "CMPM+CMPC",
                "backbone": "x",
                "direction": "t2i",
                "metric": "R@5",
                "value": 1.0,
                "seed": 0,
            },
        ]
    )
    out = experiments.attach_paper_values(frame)
    assert out["paper_value"].iloc[0] == pytest.approx(49.37)
    assert math.isnan(out["paper_value"].iloc[1])
    assert list(out.columns[:9]) == experiments.RESULT_COLUMNS


def test_cosine_statistics_against_a_loop():
    generator = torch.Generator().manual_seed(1)
    images, texts = torch.randn(5, 4, generator=generator), torch.randn(9, 4, generator=generator)
    image_labels, text_labels = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4])
    intra, inter = [], []
    for i in range(5):
        for j in range(9):
            cosine = float(torch.dot(images[i], texts[j]) / (images[i].norm() * texts[j].norm()))
            (intra if image_labels[i] == text_labels[j] else inter).append(cosine)
    stats = experiments.cosine_statistics(images, image_labels, texts, text_labels)
    assert stats["intra_cosine"] == pytest.approx(sum(intra) / len(intra))
    assert stats["inter_cosine"] == pytest.approx(sum(inter) / len(inter))
    assert stats["cosine_gap"] == pytest.approx(stats["intra_cosine"] - stats["inter_cosine"])


def test_pick_identities_is_reproducible():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5])
    first = experiments.pick_identities(labels, 3, seed=4)
    assert first == experiments.pick_identities(labels, 3, seed=4)
    assert len(set(first)) == 3 and 3 not in first  # id 3 has a single image


def test_run_key_ignores_where_and_how_but_not_what():
    settings = {
        "dataset": "cuhk_pedes",
        "losses": ["cmpm"],
        "seed": 0,
        "output_dir": "/a",
        "progress": True,
        "device": "cpu",
    }
    same = dict(settings, output_dir="/b", progress=False, device="cuda")
    other = dict(settings, seed=1)
    assert experiments.run_key(settings) == experiments.run_key(same)
    assert experiments.run_key(settings) != experiments.run_key(other)


def test_save_experiment_writes_every_file(tmp_path):
    import matplotlib.pyplot as plt

    frame = _frame([50, 52], [40, 41]).assign(backbone="b", paper_value=float("nan"))
    fig, _ = plt.subplots()
    written = experiments.save_experiment(
        tmp_path, frame, {"profile": "smoke"}, {"fig": fig}, [claims.paired_claim(frame, "A", "B", "R@1", "t2i")]
    )
    names = sorted(path.name for path in written)
    assert names == ["claims.csv", "fig.png", "fig.svg", "metrics.csv", "params.yaml", "summary.csv"]
    assert pd.read_csv(tmp_path / "metrics.csv").shape[0] == 4
    assert list(pd.read_csv(tmp_path / "claims.csv").columns) == claims.CLAIM_COLUMNS + claims.FAMILY_COLUMNS
    plt.close(fig)


def _cold_smoke_run(cache_dir: str) -> dict:
    """One smoke-sized CMPM run from an empty cache (data, features and memo all made afresh)."""
    import os

    os.environ["CMP_CACHE_DIR"] = cache_dir
    return experiments.run_job(("cuhk_pedes", "smoke", "CMPM", 0, "cpu", None, None))


@pytest.mark.slow
def test_a_run_gives_identical_numbers_in_process_and_in_a_worker(tmp_path, monkeypatch):
    """Bit-reproducibility: the same run, trained from cold caches in this process and in a spawned
    worker process (as run_grid's pool does), gives the same metrics, float for float."""
    import concurrent.futures
    import multiprocessing

    monkeypatch.setenv("CMP_CACHE_DIR", str(tmp_path / "in_process"))
    torch.set_num_threads(2)  # the notebook's process may have any thread count: the run fixes its own
    local = _cold_smoke_run(str(tmp_path / "in_process"))
    assert local["settings"]["num_threads"] == 1
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        remote = pool.submit(_cold_smoke_run, str(tmp_path / "worker")).result()
    assert remote["settings"] == local["settings"]
    assert remote["rows"] == local["rows"]
    assert remote["best_epoch"] == local["best_epoch"]


def _metrics(values, seconds=1.0):
    return pd.DataFrame(
        {
            "dataset": "d",
            "table": "t",
            "method": ["A", "B"],
            "direction": "t2i",
            "metric": "R@1",
            "value": values,
            "paper_value": [float("nan"), 49.0],
            "seed": 0,
            "seconds": seconds,
        }
    )


def test_compare_metrics_lists_every_changed_number_and_ignores_timing():
    from cmp_utils.tools import check_results

    same = check_results.compare_metrics(_metrics([10.0, 20.0]), _metrics([10.0, 20.0], seconds=9.0))
    assert same.empty  # NaN paper values equal each other; seconds are not results
    changed = check_results.compare_metrics(_metrics([10.0, 20.0]), _metrics([10.0, 20.0 + 1e-12]), "exp")
    assert list(changed["column"]) == ["value"] and "method=B" in changed["row"].iloc[0]
    missing = check_results.compare_metrics(_metrics([10.0, 20.0]), _metrics([10.0, 20.0]).iloc[:1])
    assert list(missing["column"]) == ["(row)"] and missing["rerun"].iloc[0] == "missing"


def test_check_results_exit_status_follows_the_comparison(tmp_path, monkeypatch, capsys):
    from cmp_utils.core import atomic
    from cmp_utils.tools import check_results

    committed, rerun = tmp_path / "results", tmp_path / "rerun"
    atomic.write_csv(committed / "exp" / "quick" / "metrics.csv", _metrics([10.0, 20.0]))
    atomic.write_csv(rerun / "exp" / "quick" / "metrics.csv", _metrics([10.0, 20.0]))
    monkeypatch.setenv("CMP_RESULTS_DIR", str(committed))
    assert check_results.main(["--rerun-dir", str(rerun), "--against", "files"]) == 0
    atomic.write_csv(rerun / "exp" / "quick" / "metrics.csv", _metrics([10.0, 20.5]))
    assert check_results.main(["--rerun-dir", str(rerun), "--against", "files"]) == 1
    assert "20.5" in capsys.readouterr().out
    assert check_results.main(["--rerun-dir", str(rerun), "--against", "files", "--tolerance", "0.5"]) == 0


def test_check_results_compares_with_the_files_committed_at_head(tmp_path, monkeypatch, capsys):
    """The default reference is git HEAD, not whatever the results folder holds now: a results folder
    overwritten by a rerun cannot vouch for itself. One changed number and one flipped verdict are
    counted against every number and verdict of the committed experiment."""
    import subprocess

    from cmp_utils.core import atomic, config
    from cmp_utils.tools import check_results

    def results_status():
        return subprocess.run(
            ["git", "status", "--porcelain", "results"], cwd=config.project_root(), capture_output=True, text=True
        ).stdout

    before = results_status()
    experiment = "cuhk_pedes"
    committed = check_results.committed_table("HEAD", f"{experiment}/quick/metrics.csv")
    committed_claims = check_results.committed_table("HEAD", f"{experiment}/quick/claims.csv")
    assert committed is not None and committed_claims is not None, "HEAD holds no quick cuhk_pedes results"
    rerun = tmp_path / "rerun"
    atomic.write_csv(rerun / experiment / "quick" / "metrics.csv", committed)
    atomic.write_csv(rerun / experiment / "quick" / "claims.csv", committed_claims)
    monkeypatch.setenv("CMP_RESULTS_DIR", str(tmp_path / "empty"))  # the folder is not what is compared with
    assert check_results.main(["--rerun-dir", str(rerun), "--experiments", experiment]) == 0
    assert "equal to git HEAD" in capsys.readouterr().out
    changed, changed_claims = committed.copy(), committed_claims.copy()
    changed.loc[0, "value"] += 1e-9
    flipped = {"held": "inconclusive", "inconclusive": "held", "did not hold": "held"}
    changed_claims.loc[0, "verdict"] = flipped.get(changed_claims.loc[0, "verdict"], "held")
    atomic.write_csv(rerun / experiment / "quick" / "metrics.csv", changed)
    atomic.write_csv(rerun / experiment / "quick" / "claims.csv", changed_claims)
    assert check_results.main(["--rerun-dir", str(rerun), "--experiments", experiment]) == 1
    report = capsys.readouterr().out
    numbers = check_results.count_numbers(committed) + check_results.count_numbers(
        committed_claims.drop(columns="verdict")
    )
    assert f"1 of {numbers} numbers changed" in report
    assert f"1 of {len(committed_claims)} verdicts changed" in report
    assert committed_claims.loc[0, "claim"] in report
    with pytest.raises(SystemExit):
        check_results.main(["--rerun-dir", str(rerun), "--against", "no-such-revision"])
    assert "not a git revision" in capsys.readouterr().err
    assert results_status() == before  # nothing written into the repository


def test_compare_metrics_ignores_the_memo_key_of_a_run():
    """A run's memo key hashes its input files' modification times, which differ between clones: not a result."""
    from cmp_utils.tools import check_results

    committed = _metrics([10.0, 20.0]).assign(run_key=["a1", "b1"])
    rerun = _metrics([10.0, 20.0]).assign(run_key=["a2", "b2"])
    assert check_results.compare_metrics(committed, rerun).empty
    changed = check_results.compare_metrics(committed, _metrics([10.0, 21.0]).assign(run_key=["a2", "b2"]))
    assert list(changed["column"]) == ["value"]


# ---------------------------------------------------------------------------------------
# The paper profile's grid: the paper's rows with their own backbones
# ---------------------------------------------------------------------------------------


def test_grid_rows_are_the_papers_rows_in_the_paper_profile_only():
    from cmp_utils.evaluation import paper

    methods = ["CMPM", "CMPM+CMPC"]
    assert experiments.grid_rows("flickr30k", "quick", methods) == [("CMPM", None), ("CMPM+CMPC", None)]
    assert experiments.grid_rows("mscoco", "smoke", methods) == [("CMPM", None), ("CMPM+CMPC", None)]
    assert experiments.grid_rows("flickr30k", "paper", methods) == [
        ("CMPM+CMPC", "resnet152_slim"),
        ("CMPM+CMPC", "mobilenet_v1_tf"),
        ("CMPM", "resnet152_slim"),
    ]
    assert experiments.grid_rows("mscoco", "paper", methods) == [
        ("CMPM", "resnet152_slim"),
        ("CMPM+CMPC", "mobilenet_v1_tf"),
    ]
    for name in ("cub", "flowers"):
        assert experiments.grid_rows(name, "paper", methods) == [
            ("CMPM", "mobilenet_v1_tf"),
            ("CMPM+CMPC", "mobilenet_v1_tf"),
        ]
    # a method the paper does not report for the dataset still runs, with the profile's backbone
    assert experiments.grid_rows("mscoco", "paper", ["CMPM", "CMPC"]) == [("CMPM", "resnet152_slim"), ("CMPC", None)]
    with pytest.raises(ValueError, match="not known"):
        experiments.grid_rows("mscoco", "paper", ["nope"])
    # every row with a public value is in the grid, compared with its own backbone's value
    numbers = paper.paper_numbers()
    reported = numbers[numbers["value"].notna() & numbers["dataset"].isin(list(experiments.PAPER_ROWS))]
    grid = {
        (dataset, method, paper.BACKBONE_LABELS[backbone])
        for dataset, rows in experiments.PAPER_ROWS.items()
        for method, backbone in rows
    }
    assert set(zip(reported["dataset"], reported["method"], reported["backbone"])) <= grid


def test_grid_jobs_give_each_paper_row_its_backbone_and_the_datasets_paper_recipe():
    from cmp_utils import training

    overrides = {"pretrained": False, "backbone": "small_cnn"}
    for dataset in ("flickr30k", "mscoco"):
        jobs = experiments.grid_jobs(
            dataset,
            "paper",
            experiments.grid_rows(dataset, "paper", ["CMPM", "CMPM+CMPC"]),
            [0, 1],
            overrides=overrides,
        )
        configs = [training.make_config("paper", dataset, **job[-1]) for job in jobs]
        assert [(job[2], job[3], cfg.backbone) for job, cfg in zip(jobs, configs)] == [
            (method, seed, backbone) for method, backbone in experiments.PAPER_ROWS[dataset] for seed in (0, 1)
        ]
        recipe = training.PROFILE_SETTINGS["paper"][dataset]
        assert all(
            (cfg.batch_size, cfg.frozen_epochs, cfg.epochs, cfg.pretrained)
            == (recipe["batch_size"], recipe["frozen_epochs"], recipe["epochs"], False)
            for cfg in configs
        )
    # the fast profiles keep their own backbone (and the overrides')
    [job] = experiments.grid_jobs("flickr30k", "quick", experiments.grid_rows("flickr30k", "quick", ["CMPM"]), [0])
    assert job[-1] is None and training.make_config("quick", "flickr30k").backbone == "mobilenet_v2"


@pytest.mark.slow
def test_paper_profile_trains_the_papers_cub_row_with_its_backbone(tmp_path, monkeypatch):
    """The paper profile's CUB row of CMPM+CMPC on the miniature dataset (untrained MobileNet, one step
    of 16x16 images; ResNet-152 rows cost half a minute of CPU, so the grid test above checks their
    settings): the row carries its backbone and the paper's value for that backbone and its support."""
    from data_fixtures import write_cub

    write_cub(tmp_path / "data" / "cub")
    monkeypatch.setenv("CMP_CACHE_DIR", str(tmp_path / "cache"))
    overrides = {
        "pretrained": False,
        "epochs": 1,
        "frozen_epochs": 0,
        "max_steps_per_epoch": 1,
        "batch_size": 4,
        "image_size": [16, 16],
        "eval_batch_size": 8,
    }
    grid = experiments.grid_rows("cub", "paper", ["CMPM+CMPC"])
    frame = experiments.run_grid(
        "cub",
        "paper",
        grid,
        [0],
        device="cpu",
        data_dir=str(tmp_path / "data"),
        overrides=overrides,
        progress=False,
        workers=1,
    )
    rows = frame.set_index(["method", "backbone", "metric"])
    assert set(frame["backbone"]) == {"mobilenet_v1_tf"} and set(frame["method"]) == {"CMPM+CMPC"}
    assert rows.loc[("CMPM+CMPC", "mobilenet_v1_tf", "top1_accuracy"), "paper_value"] == 64.3
    assert rows.loc[("CMPM+CMPC", "mobilenet_v1_tf", "ap@50"), "paper_value"] == 67.9
    assert (frame["paper_support"] == "MobileNet, 1 source (authors' lab list)").all()
    assert frame["value"].between(0, 100).all() and "ceiling" not in frame  # real-data layout: no ceiling
    assert experiments.comparable_backbones(frame, "CMPM+CMPC", "CMPM") == []  # CMPM did not run
    both = pd.concat([frame, frame.assign(method="CMPM")])
    assert experiments.comparable_backbones(both, "CMPM+CMPC", "CMPM") == ["mobilenet_v1_tf"]
    assert experiments.by_row(frame) is frame  # one backbone: labels unchanged


def test_run_grids_pools_the_runs_of_several_grids_and_trains_a_shared_run_once(isolated_dirs, monkeypatch):
    """run_grids returns what each run_grid call would (same rows, same order, each grid's extra columns),
    and a run two grids share is trained once."""
    from cmp_utils import experiments
    from cmp_utils.experiments import grid_runs

    calls = []
    real = grid_runs.run_method

    def counted(*job):
        calls.append(job)
        return real(*job)

    monkeypatch.setattr(grid_runs, "run_method", counted)
    grids = [
        dict(dataset="cuhk_pedes", profile="smoke", methods=["CMPM"], seeds=[0, 1], extra_columns={"part": "a"}),
        dict(
            dataset="cuhk_pedes", profile="smoke", methods=["CMPM", "ranking"], seeds=[1], extra_columns={"part": "b"}
        ),
    ]
    pooled = experiments.run_grids(grids, workers=1, progress=False)
    assert len(calls) == 3  # CMPM seed 1 is in both grids: trained once
    for grid, frame in zip(grids, pooled):
        alone = experiments.run_grid(
            grid["dataset"],
            grid["profile"],
            grid["methods"],
            grid["seeds"],
            workers=1,
            progress=False,
            extra_columns=grid["extra_columns"],
        )  # memoised: no training
        pd.testing.assert_frame_equal(frame.drop(columns="seconds"), alone.drop(columns="seconds"))
    assert len(calls) == 3 + 4  # run_grid asked run_method again, which answered from the memo
    with pytest.raises(ValueError, match="one profile"):
        experiments.run_grids([grids[0], dict(grids[1], profile="quick")])


def test_train_jobs_builds_each_distinct_input_once_before_its_workers_start(tmp_path, monkeypatch):
    """The parent builds the data and feature caches once per distinct input (dataset, image
    settings, ...), skipping inputs whose runs are all memoised; the runs then only read them."""
    from cmp_utils import models, training

    monkeypatch.setenv("CMP_CACHE_DIR", str(tmp_path))  # cold: no other test's runs or caches
    jobs = [
        ("cuhk_pedes", "smoke", method, seed, "cpu", None, None) for method in ("CMPM", "ranking") for seed in (0, 1)
    ]
    jobs += [
        ("flickr30k", "smoke", "CMPM", 0, "cpu", None, None),
        ("cuhk_pedes", "smoke", "CMPM", 0, "cpu", None, {"batch_size": 16}),
    ]  # same caches as the first
    chosen = experiments.distinct_inputs(jobs)
    assert [(cfg.dataset, cfg.losses, cfg.seed) for cfg in chosen] == [
        ("cuhk_pedes", ("cmpm",), 0),
        ("flickr30k", ("cmpm",), 0),
    ]
    assert len({training.input_key(cfg) for cfg in chosen}) == 2
    training.prepare_inputs(chosen[0])
    features = sorted((tmp_path / "features" / "cuhk_pedes").rglob("*.pt"))
    assert len(features) == 3  # train, val, test

    def no_feature_computation(*args, **kwargs):
        raise AssertionError("the run computed features that prepare_inputs had cached")

    monkeypatch.setattr(models, "ImageEncoder", no_feature_computation)
    for job in jobs[:4]:
        experiments.run_method(*job)
    assert [cfg.dataset for cfg in experiments.distinct_inputs(jobs)] == [
        "flickr30k",
        "cuhk_pedes",
    ]  # batch 16: not run
    assert experiments.distinct_inputs(jobs[:4]) == []  # every run memoised: nothing to prepare


def _two_loss_results(backbones):
    """Tidy rows of CMPM and CMPM+CMPC over five seeds, two tables, both directions, per backbone."""
    rows = [
        dict(
            method=method,
            backbone=backbone,
            table=table,
            direction=direction,
            metric="R@1",
            seed=seed,
            value=10.0 + seed + (2.0 if method == "CMPM+CMPC" else 0.0),
        )
        for backbone in backbones
        for method in ("CMPM", "CMPM+CMPC")
        for table in ("mscoco_1k", "mscoco_5k")
        for direction in ("i2t", "t2i")
        for seed in range(5)
    ]
    return pd.DataFrame(rows)


def test_table_claims_per_table_direction_and_backbone():
    one = experiments.table_claims(_two_loss_results(["mobilenet_v2"]), ["mscoco_1k", "mscoco_5k"])
    assert [claim["claim"] for claim in one] == [
        "mscoco_1k: CMPM+CMPC > CMPM (i2t R@1)",
        "mscoco_1k: CMPM+CMPC > CMPM (t2i R@1)",
        "mscoco_5k: CMPM+CMPC > CMPM (i2t R@1)",
        "mscoco_5k: CMPM+CMPC > CMPM (t2i R@1)",
    ]
    assert all(claim["mean_difference"] == 2.0 and "backbone" not in claim for claim in one)
    two = experiments.table_claims(_two_loss_results(["resnet152_slim", "mobilenet_v1_tf"]), ["mscoco_5k"])
    assert sorted(claim["backbone"] for claim in two) == ["mobilenet_v1_tf"] * 2 + ["resnet152_slim"] * 2
    assert all(claim["claim"].endswith(f", {claim['backbone']})") for claim in two)


def test_notebook_setup_gives_seeds_folder_and_params(isolated_dirs):
    setup = experiments.notebook_setup(
        "flickr30k",
        "smoke",
        "flickr30k",
        3,
        5,
        "cpu",
        "",
        ["CMPM"],
        True,
        "",
        {},
        varied=("losses", "seed"),
        extra="kept",
    )
    assert setup.seeds == [3] and setup.out_dir == config.results_dir() / "flickr30k" / "smoke"
    assert setup.run_overrides == {"pretrained": True, "weights_path": None}
    assert list(setup.params)[:7] == ["profile", "seeds", "device", "data_dir", "overrides", "methods", "extra"]
    assert "seed" not in setup.params["training"] and setup.params["varied_per_run"] == ["losses", "seed"]
    assert experiments.notebook_setup("x", "quick", "cuhk_pedes", 3, 2, "cpu", "", [], True, "", {}).seeds == [3, 4]


def test_separation_auc_matches_a_loop_over_pairs_and_is_scale_free():
    generator = torch.Generator().manual_seed(0)
    positives = torch.randint(0, 6, (30,), generator=generator).double() / 5  # ties on purpose
    negatives = torch.randint(0, 6, (40,), generator=generator).double() / 7
    naive = sum((1.0 if a > b else 0.5 if a == b else 0.0) for a in positives for b in negatives) / (30 * 40)
    assert experiments.separation_auc(positives, negatives) == pytest.approx(naive)
    # spreading every score (a larger cosine gap) leaves the AUC unchanged
    assert experiments.separation_auc(3 * positives, 3 * negatives) == pytest.approx(naive)
    images, texts = torch.randn(20, 8, generator=generator), torch.randn(30, 8, generator=generator)
    labels_i, labels_t = torch.arange(20) % 5, torch.arange(30) % 5
    statistics = experiments.cosine_statistics(images, labels_i, texts, labels_t)
    assert {"cosine_gap", "separation_auc", "d_prime"} <= set(statistics) and 0 <= statistics["separation_auc"] <= 1
