"""Reliability (docs/reliability.md): no silent wrong result, no mixed result folder, no deep
traceback on bad input. Each test is one row of the table in docs/reliability.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from cmp_utils.core import atomic, config
from cmp_utils import data, experiments, training
from cmp_utils.data import images
from cmp_utils.reporting import notebook_tools
from cmp_utils.tools import run_notebooks

from data_fixtures import write_cub, write_cuhk, write_flickr, write_image


def _replace_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    """Overwrite ``path`` with other pixels and move its mtime on (as a copy over it would)."""
    write_image(path, colour, size=size)
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 5_000_000_000))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------------- 1. content-keyed caches and runs
def test_image_replaced_at_same_path_rebuilds_the_image_cache(tmp_path):
    paths = [str(write_image(tmp_path / f"{k}.png", (40 * k, 10, 90), size=(4, 6))) for k in range(3)]
    cache = images.ImageCache.build(paths, (6, 4), tmp_path / "cache.npy", progress=False)
    assert tuple(cache.images[1, 3, 2]) == (40, 10, 90)
    _replace_image(Path(paths[1]), (200, 200, 0), size=(4, 6))
    assert not images.ImageCache.is_current(tmp_path / "cache.npy", paths, (6, 4))
    rebuilt = images.ImageCache.build(paths, (6, 4), tmp_path / "cache.npy", progress=False)
    assert rebuilt.fingerprint != cache.fingerprint
    assert tuple(rebuilt.images[1, 3, 2]) == (200, 200, 0)


def test_feature_cache_key_follows_a_replaced_image(tmp_path):
    root = write_cuhk(tmp_path / "data" / "cuhk_pedes")
    cache_dir = tmp_path / "cache"
    cfg = training.make_config("paper", "cuhk_pedes", data_dir=str(tmp_path / "data"), cache_dir=str(cache_dir))
    prepared = data.prepare_dataset(
        "cuhk_pedes", "paper", data_dir=tmp_path / "data", cache_dir=cache_dir, image_size=(8, 4)
    )
    before = training.feature_cache_path(prepared, "test", cfg, flips=False)
    _replace_image(root / "imgs" / "test_query" / "p5_s1.jpg", (1, 2, 3), size=(20, 12))
    again = data.prepare_dataset(
        "cuhk_pedes", "paper", data_dir=tmp_path / "data", cache_dir=cache_dir, image_size=(8, 4)
    )
    assert training.feature_cache_path(again, "test", cfg, flips=False) != before
    assert training.feature_cache_path(again, "train", cfg, flips=False) == training.feature_cache_path(
        prepared, "train", cfg, flips=False
    )  # the train images did not change
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    with_weights = training.make_config("paper", "cuhk_pedes", cache_dir=str(cache_dir), weights_path=str(weights))
    old_weights_key = training.feature_cache_path(again, "train", with_weights, flips=False)
    torch.save({"w": torch.ones(3)}, weights)  # other weights at the same path
    assert training.feature_cache_path(again, "train", with_weights, flips=False) != old_weights_key


def test_memoised_run_key_follows_images_annotations_and_weights(tmp_path):
    root = write_flickr(tmp_path / "data" / "flickr30k")
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    cfg = training.make_config(
        "paper", "flickr30k", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), weights_path=str(weights)
    )
    settings = cfg.to_dict()
    first = experiments.run_key(settings, experiments.input_fingerprint(cfg))
    assert experiments.run_key(settings, experiments.input_fingerprint(cfg)) == first  # nothing changed
    _replace_image(root / "flickr30k-images" / "1004.jpg", (9, 9, 9), size=(16, 16))
    after_image = experiments.run_key(settings, experiments.input_fingerprint(cfg))
    annotation = root / "dataset_flickr30k.json"
    annotation.write_text(annotation.read_text().replace("grass number 0", "sand number 0"), encoding="utf-8")
    after_annotation = experiments.run_key(settings, experiments.input_fingerprint(cfg))
    torch.save({"w": torch.ones(2)}, weights)
    after_weights = experiments.run_key(settings, experiments.input_fingerprint(cfg))
    assert len({first, after_image, after_annotation, after_weights}) == 4


# ---------------------------------------------------------------------- 1 and 3. annotation errors
def test_cuhk_captions_as_a_string_is_an_error_naming_file_and_record(tmp_path):
    root = write_cuhk(tmp_path / "cuhk_pedes")
    records = json.loads((root / "reid_raw.json").read_text())
    records[1]["captions"] = "A man wearing a red shirt."
    (root / "reid_raw.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"reid_raw.json: record 1 \(CUHK01/0001002.png\) has \"captions\" as a str"):
        data.read_dataset("cuhk_pedes", root, "train")


def test_karpathy_record_without_imgid_or_with_a_shared_one_is_an_error(tmp_path):
    root = write_flickr(tmp_path / "flickr30k")
    payload = json.loads((root / "dataset_flickr30k.json").read_text())
    del payload["images"][2]["imgid"]
    (root / "dataset_flickr30k.json").write_text(json.dumps(payload))
    with pytest.raises(
        ValueError, match=r"dataset_flickr30k.json: image record 2 \(1002.jpg\) has no integer \"imgid\""
    ):
        data.read_dataset("flickr30k", root, "train")
    payload["images"][2]["imgid"] = 0
    (root / "dataset_flickr30k.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="image records 0 and 2 .* share imgid 0"):
        data.read_dataset("flickr30k", root, "test")


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = write_cub(tmp_path / "cub")
    folder = root / "cvpr2016_cub" / "text_c10" / "002.Laysan_Albatross"
    for text_file in folder.glob("*.txt"):
        text_file.unlink()
    with pytest.raises(ValueError, match="002.Laysan_Albatross holds no caption files"):
        data.read_dataset("cub", root, "train")


def test_caption_file_that_is_not_utf8_names_file_and_line(tmp_path):
    root = write_cub(tmp_path / "cub")
    text_file = sorted((root / "cvpr2016_cub" / "text_c10" / "001.Black_footed_Albatross").glob("*.txt"))[0]
    text_file.write_bytes("this bird is white\nthis bird has a caf\u00e9 colour\n".encode("latin-1"))
    with pytest.raises(data.AnnotationEncodingError, match=rf"{text_file.name} is not UTF-8: line 2, .*iconv"):
        data.read_dataset("cub", root, "train")


def test_annotation_json_that_is_not_utf8_names_the_file(tmp_path):
    root = write_cuhk(tmp_path / "cuhk_pedes")
    records = json.loads((root / "reid_raw.json").read_text())
    records[0]["captions"][0] = "A man in a caf\u00e9."
    (root / "reid_raw.json").write_bytes(json.dumps(records, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(data.AnnotationEncodingError, match=r"reid_raw.json is not UTF-8: line 1"):
        data.read_dataset("cuhk_pedes", root, "train")


# ---------------------------------------------------------------------- 3. damaged caches
def test_truncated_image_cache_is_rebuilt_with_a_warning(tmp_path):
    paths = [str(write_image(tmp_path / f"{k}.png", (30 * k, 0, 0), size=(4, 4))) for k in range(3)]
    cache_path = tmp_path / "cache.npy"
    images.ImageCache.build(paths, (4, 4), cache_path, progress=False)
    with open(cache_path, "r+b") as handle:
        handle.truncate(cache_path.stat().st_size // 2)
    with pytest.raises(ValueError, match=r"cache.npy is damaged .*delete"):
        images.ImageCache.open(cache_path)
    with pytest.warns(UserWarning, match="rebuilding it"):
        rebuilt = images.ImageCache.build(paths, (4, 4), cache_path, progress=False)
    assert tuple(rebuilt.images[2, 0, 1]) == (60, 0, 0)


def test_truncated_feature_cache_is_deleted_and_recomputed(tmp_path):
    path = tmp_path / "features.pt"
    atomic.torch_save(path, torch.arange(1000.0))
    assert torch.equal(atomic.load_torch_cache(path), torch.arange(1000.0))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.warns(UserWarning, match="features.pt is damaged"):
        assert atomic.load_torch_cache(path) is None
    assert not path.exists()
    assert atomic.load_torch_cache(tmp_path / "absent.pt") is None


# ---------------------------------------------------------------------- 2. whole result sets
def test_save_experiment_replaces_the_whole_set(tmp_path):
    import matplotlib.pyplot as plt

    out_dir = tmp_path / "ablation" / "quick"
    frame = pd.DataFrame(
        {
            "dataset": "d",
            "table": "t",
            "method": ["A", "B"],
            "direction": "t2i",
            "metric": "R@1",
            "value": [1.0, 2.0],
            "seed": 0,
        }
    )
    figure, _ = plt.subplots()
    experiments.save_experiment(out_dir, frame, {"profile": "quick", "run": 1}, {"old_figure": figure})
    experiments.save_experiment(
        out_dir, frame.assign(value=[3.0, 4.0]), {"profile": "quick", "run": 2}, {"new_figure": figure}
    )
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "metrics.csv",
        "new_figure.png",
        "new_figure.svg",
        "params.yaml",
        "summary.csv",
    ]
    assert pd.read_csv(out_dir / "metrics.csv")["value"].tolist() == [3.0, 4.0]

    class BrokenFigure:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        experiments.save_experiment(out_dir, frame.assign(value=[5.0, 6.0]), {"run": 3}, {"broken": BrokenFigure()})
    assert pd.read_csv(out_dir / "metrics.csv")["value"].tolist() == [3.0, 4.0]  # the old set, whole
    assert "run: 2" in (out_dir / "params.yaml").read_text()
    assert [p.name for p in out_dir.parent.iterdir()] == ["quick"]  # no temporary folder left
    with pytest.raises(IsADirectoryError, match="holds sub-folders"):  # never wipes a tree by mistake
        experiments.save_experiment(tmp_path, frame, {"run": 4})
    assert (out_dir / "metrics.csv").is_file()
    plt.close(figure)


def test_orphan_temporaries_are_removed_by_the_next_write(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    orphan = tmp_path / f"{atomic.temporary_prefix('metrics.csv', dead)}x1y2{atomic.TEMPORARY_SUFFIX}"
    orphan_folder = tmp_path / f"{atomic.temporary_prefix('quick', dead)}z9{atomic.TEMPORARY_SUFFIX}"
    live = tmp_path / f"{atomic.temporary_prefix('summary.csv', alive)}a1{atomic.TEMPORARY_SUFFIX}"
    other_machine = tmp_path / f".claims.csv.elsewhere-{dead}.q7{atomic.TEMPORARY_SUFFIX}"
    orphan.write_text("half")
    orphan_folder.mkdir()
    (orphan_folder / "metrics.csv").write_text("half")
    live.write_text("being written")
    other_machine.write_text("maybe being written on another machine")
    unrelated = tmp_path / ".keep.tmp"
    unrelated.write_text("not ours")
    atomic.write_text(tmp_path / "params.yaml", "a: 1\n")
    assert not orphan.exists() and not orphan_folder.exists()
    assert live.exists() and unrelated.exists() and other_machine.exists()
    assert (tmp_path / "params.yaml").read_text() == "a: 1\n"


def test_a_result_folder_moved_aside_by_a_killed_swap_is_restored(tmp_path):
    dead = _dead_pid()
    retired = tmp_path / f"{atomic.temporary_prefix('quick', dead)}r5{atomic.TEMPORARY_SUFFIX}" / "quick"
    retired.mkdir(parents=True)
    (retired / "metrics.csv").write_text("old complete set")
    with pytest.raises(RuntimeError, match="stop"):
        with atomic.replace_folder(tmp_path / "quick"):
            raise RuntimeError("stop")
    assert (tmp_path / "quick" / "metrics.csv").read_text() == "old complete set"
    assert [p.name for p in tmp_path.iterdir()] == ["quick"]


# ---------------------------------------------------------------------- 3. notebook parameter types
@pytest.mark.parametrize(
    "value, declared, fits",
    [
        (3, int, True),
        (True, int, False),
        (1.5, int, False),
        ("abc", int, False),
        (2, float, True),
        (0.5, float, True),
        (False, float, False),
        ("x", str, True),
        (2024, str, False),
        (True, bool, True),
        (1, bool, False),
        ([1], list, True),
        ("[1]", list, False),
        ({"a": 1}, dict, True),
        ({"a": 1}, "dict", True),
        ("x", "str | None", True),
    ],
)
def test_parameter_type_rules(value, declared, fits):
    assert (notebook_tools.parameter_type_problem("p", value, declared) is None) is fits


def test_check_parameters_names_parameter_value_type_and_fix():
    namespace = {"__annotations__": {"seed": int, "lr": float, "name": str}, "seed": "abc", "lr": 1, "name": "x"}
    with pytest.raises(ValueError) as error:
        notebook_tools.check_parameters(namespace)
    message = str(error.value)
    assert "parameter seed='abc' is a str" in message and "declares seed: int" in message
    assert "-p seed 3" in message and "-p seed=3" in message and "lr" not in message
    notebook_tools.check_parameters({**namespace, "seed": 4})  # fits: no error


@pytest.mark.slow
@pytest.mark.parametrize("value", ["abc", 1.5])
def test_papermill_run_with_a_wrong_seed_type_stops_at_the_check(value, tmp_path, isolated_dirs):
    import papermill

    notebook = config.project_root() / "notebooks" / "00_environment.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(notebook),
            str(tmp_path / "out.ipynb"),
            parameters={"seed": value},
            kernel_name=notebook_tools.KERNEL_NAME,
            cwd=str(notebook.parent),
            progress_bar=False,
        )
    assert f"parameter seed={value!r} is a {type(value).__name__}" in str(error.value)
    assert "declares seed: int" in str(error.value)


# ---------------------------------------------------------------------- 1, 2 and 4. run_notebooks
@pytest.fixture
def no_execution(monkeypatch):
    """Fail the test if papermill would run a notebook (the refusals must come first)."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a notebook ran although the settings should have been refused")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


NOTEBOOK_00 = config.project_root() / "notebooks" / "00_environment.ipynb"
NOTEBOOK_05 = config.project_root() / "notebooks" / "05_cuhk_pedes.ipynb"


@pytest.mark.parametrize(
    "parameters, profile, expected",
    [
        ({"profile": "smoke"}, "quick", "-p profile=smoke contradicts --profile quick"),
        ({"num_seeds": 5}, "smoke", "the smoke profile runs one seed"),
        ({"source": "real"}, "quick", "labels results of synthetic data"),
        ({"seeds": 3}, "quick", "seeds are declared by none of the notebooks"),
        ({"seed": 1.5}, "quick", "parameter seed=1.5 is a float"),
    ],
)
def test_run_notebooks_refuses_contradicting_parameters(parameters, profile, expected, no_execution, tmp_path):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace("+", r"\+")):
        run_notebooks.run_notebooks(
            [NOTEBOOK_00, NOTEBOOK_05], profile, parameters=parameters, output_dir=tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def test_run_notebooks_refuses_unsafe_output_dirs(no_execution, tmp_path):
    with pytest.raises(ValueError, match="would overwrite the source notebook"):
        run_notebooks.run_notebooks([NOTEBOOK_00], "smoke", output_dir=NOTEBOOK_00.parent)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_notebooks.run_notebooks([NOTEBOOK_00], "smoke", output_dir=a_file)
    with pytest.raises(ValueError, match="cannot be created or written"):
        run_notebooks.run_notebooks([NOTEBOOK_00], "smoke", output_dir=a_file / "below")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot be created or written"):
            run_notebooks.run_notebooks([NOTEBOOK_00], "smoke", output_dir=locked)
    assert run_notebooks.main([str(NOTEBOOK_00), "--profile", "smoke", "--output-dir", str(NOTEBOOK_00.parent)]) == 1


def test_cli_parameters_declared_str_stay_strings():
    assert run_notebooks.parse_parameter("data_dir=2024", "str") == ("data_dir", "2024")
    assert run_notebooks.parse_parameter("weights_path=~", "str") == ("weights_path", "~")
    assert run_notebooks.parse_parameter("seed=2") == ("seed", 2)
    assert run_notebooks.parse_parameter("methods=[CMPM, CMPC]") == ("methods", ["CMPM", "CMPC"])


@pytest.mark.slow
def test_run_notebooks_records_timings_and_keeps_str_parameters(tmp_path, isolated_dirs):
    notebook = notebook_tools.build_notebook(
        [
            ("md", "# Probe\n\nChecks what run_notebooks injects.\n\nProduces: nothing."),
            ("code", "from cmp_utils.reporting import notebook_tools"),
            (
                "parameters",
                'profile: str = "quick"  # p\nseed: int = 0  # s\ndevice: str = "auto"  # d\ndata_dir: str = ""  # r',
            ),
            ("code", "notebook_tools.check_parameters(globals())\nassert data_dir == '2024' and profile == 'smoke'"),
        ],
        [],
        tmp_path / "notebooks" / "99_probe.ipynb",
    )
    out = tmp_path / "executed"
    for _ in range(2):
        assert (
            run_notebooks.main([str(notebook), "--profile", "smoke", "-p", "data_dir=2024", "--output-dir", str(out)])
            == 0
        )
    timings = pd.read_csv(out / "timings.csv")
    assert list(timings.columns) == run_notebooks.TIMING_COLUMNS
    assert timings["notebook"].tolist() == ["99_probe"]  # the rerun replaced its row
    row = timings.iloc[0]
    assert row["profile"] == "smoke" and 0 < row["seconds"] < 300
    assert f"{os.cpu_count()} CPUs" in row["machine"] and f"torch {torch.__version__}" in row["machine"]
    assert pd.Timestamp(row["started_at"]).tzinfo is not None
    executed = nbformat.read(out / "99_probe.ipynb", as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


# ---------------------------------------------------------------------- the sound core stays sound
def test_checkpoints_and_settings_load_without_code_execution():
    """Every ``torch.load`` in the package passes ``weights_only=True``; YAML is only safe-loaded."""
    import re

    package = config.project_root() / "cmp_utils"
    unsafe, calls = [], 0
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(package).as_posix()
        for match in re.finditer(r"torch\.load\(([^()]*(\([^()]*\))?)*\)", source):
            calls += 1
            if "weights_only=True" not in match.group(0):
                unsafe.append(f"{name}: {match.group(0)}")
        unsafe += [f"{name}: yaml.{call}" for call in re.findall(r"yaml\.(load|unsafe_load|full_load)\(", source)]
    assert calls >= 3 and not unsafe, unsafe  # checkpoints, feature caches and weights are all loaded


def test_reliability_table_names_only_existing_tests():
    """Every test named in docs/reliability.md exists (in the file it names, when it names one)."""
    import re

    root = config.project_root()
    table = (root / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = re.findall(r"`(?:tests/(?:\w+/)?(test_\w+)\.py)?(?:::)?(test_\w+)`", table)
    assert len(named) >= 30
    defined = {
        path.stem: set(re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.M))
        for path in (root / "tests").rglob("test_*.py")
    }
    missing = [
        f"{file_name}::{test_name}"
        for file_name, test_name in named
        if test_name not in (defined.get(file_name, set()) if file_name else set().union(*defined.values()))
    ]
    assert not missing, missing


# ---------------------------------------------------------------------- issue 30: ranking cost linear in positives
def _old_positives_at_least(pair_scores, rows, chunk, thresholds):
    """The tie correction as it was on 6573e44: every positive against every threshold, (m, P) at once."""
    at_least = torch.zeros(chunk, thresholds.shape[1], dtype=torch.int64)
    at_least.index_add_(0, rows, (pair_scores[:, None] >= thresholds[rows]).to(torch.int64))
    return at_least


@pytest.mark.parametrize("seed", range(6))
def test_tie_correction_counts_equal_the_old_quadratic_ones(seed):
    from cmp_utils.evaluation import metrics

    generator = torch.Generator().manual_seed(seed)
    chunk, width = 7, 40
    scores = torch.randint(-3, 4, (chunk, width), generator=generator).to(torch.float32) / 2  # many exact ties
    is_positive = torch.rand(chunk, width, generator=generator) < 0.4
    is_positive[:, 0] = True
    if seed % 2:
        is_positive[3] = False  # a row without positives in this block
    rows, columns = is_positive.nonzero(as_tuple=True)
    per_row = torch.bincount(rows, minlength=chunk)
    thresholds = torch.full((chunk, int(per_row.max()) + 3), -float("inf"))  # -inf padding as the caller pads
    thresholds[:, : int(per_row.max())] = torch.randint(-3, 4, (chunk, int(per_row.max())), generator=generator) / 2
    thresholds = torch.sort(thresholds, dim=1, descending=True).values
    new = metrics.positives_at_least(scores[rows, columns], rows, chunk, thresholds)
    assert torch.equal(new, _old_positives_at_least(scores[rows, columns], rows, chunk, thresholds))


@pytest.mark.parametrize("seed", range(6))
def test_retrieval_metrics_with_ties_and_many_positives_are_unchanged(seed, monkeypatch):
    """Whole metrics with ties, few and many positives: the several-blocks path, which places each block's
    positives with the tie correction, equals the same path with the old quadratic correction bit for bit
    (the old helpers are checked to be called), and on exact scores the one-block path, which ranks a row's
    positives in one pass, equals the several-blocks path bit for bit."""
    from cmp_utils.evaluation import metrics

    generator = torch.Generator().manual_seed(seed)
    if seed % 2:  # exactly representable scores: many ties
        queries = torch.randint(-1, 2, (30, 4), generator=generator).float()
        gallery = torch.randint(-1, 2, (300, 4), generator=generator).float()
    else:  # continuous scores, with some gallery items repeated (exact ties between positives and negatives)
        queries = torch.randn(30, 8, generator=generator)
        gallery = torch.randn(300, 8, generator=generator)
        gallery[150:] = gallery[:150]
    query_labels = torch.arange(30) % 3
    gallery_labels = torch.randint(0, 3, (300,), generator=generator)

    def scored(gallery_chunk_size):
        return metrics.retrieval_metrics(
            queries, gallery, query_labels, gallery_labels, chunk_size=8, gallery_chunk_size=gallery_chunk_size
        )

    blocks = scored(70)
    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(metrics, "positives_at_least", lambda *args: calls.append(1) or _old_positives_at_least(*args))
        patch.setattr(metrics, "_sorted_rows", lambda values: torch.sort(values, dim=1).values)
        patch.setattr(
            metrics,
            "_count_below",
            lambda ascending, thresholds: torch.searchsorted(ascending, thresholds.contiguous(), side="left"),
        )
        old_blocks = scored(70)
    assert calls, "the several-blocks path no longer uses the tie correction this test compares"
    assert blocks == old_blocks
    if seed % 2:  # exact scores; with continuous ones, a product in gallery blocks may round a repeated
        # item's score unlike the whole product (tests/evaluation/test_metrics.py compares the two paths on given scores)
        assert scored(None) == blocks


# ---------------------------------------------------------------------- issue 30: notebook parameters are plain JSON
NOTEBOOK_10 = config.project_root() / "notebooks" / "10_ablation.ipynb"
_INJECTION = "x\", __import__('os').system('touch PWNED'), \""


@pytest.mark.parametrize(
    "text, refused",
    [
        ("methods=[!!binary " + __import__("base64").b64encode(_INJECTION.encode()).decode() + "]", "bytes"),
        ("methods=[!!set {a: null}]", "set"),
        ("methods=[2024-01-02]", "date"),
        ("overrides={lr: [2024-01-02]}", "date"),
        ("overrides={1: 2}", "key 1"),
    ],
)
def test_run_notebooks_refuses_parameters_that_are_not_plain_json(text, refused, no_execution, tmp_path, capsys):
    code = run_notebooks.main(
        [str(NOTEBOOK_10), "--profile", "smoke", "-p", text, "--output-dir", str(tmp_path / "out")]
    )
    error = capsys.readouterr().err
    assert code == 1 and refused in error and ("plain JSON" in error or "only str keys" in error)
    assert not (tmp_path / "out").exists()


def test_notebook_check_refuses_non_plain_values_inside_a_list():
    problem = notebook_tools.parameter_type_problem("methods", ["cmpm", b"x"], "list")
    assert problem and "methods[1]" in problem and "bytes" in problem


ACCEPTED_VALUES = [
    0,
    -7,
    2**40,
    1.5,
    -0.0,
    1e-300,
    True,
    False,
    None,
    "",
    "plain",
    'quote " and \\ backslash',
    "new\nline",
    "tab\tand ünïcode ☃",
    "{braces} and 'single'",
    [],
    [1, "a", None, [True, 2.5]],
    {},
    {"lr": 0.001, "nested": {"a": ["b", {"c": None}]}, 'k"ey': "v'al"},
]


def test_injected_cell_round_trips_every_accepted_value():
    """What papermill writes into the injected cell, executed, gives back each accepted value exactly."""
    from papermill.translators import PythonTranslator

    parameters = {f"p{index}": value for index, value in enumerate(ACCEPTED_VALUES)}
    for name, value in parameters.items():
        assert notebook_tools.plain_value_problem(name, value) is None
    namespace: dict = {}
    exec(PythonTranslator.codify(parameters), namespace)  # noqa: S102 -- the values are the test's own
    for name, value in parameters.items():
        assert namespace[name] == value and type(namespace[name]) is type(value), name


# ---------------------------------------------------------------------- issue 30: one run owns a run folder
def _hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    """A live process holding ``folder``'s writer lock until its stdin closes."""
    code = (
        "import sys; from cmp_utils.core import atomic\n"
        f"with atomic.hold_folder({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(config.project_root())},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_training_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _hold_lock_in_another_process(out)
    try:
        code = training.main(
            ["--profile", "smoke", "--epochs", "1", "--seed", "1", "--output-dir", str(out), "--no-progress"]
        )
        error = capsys.readouterr().err
        assert code == 1 and str(out) in error and f"process {holder.pid}" in error and atomic.HOST in error
        with pytest.raises(atomic.FolderLockedError, match="another --output-dir"):
            training.fit(training.make_config("smoke", "cuhk_pedes", output_dir=str(out), progress=False))
        assert sorted(path.name for path in out.iterdir()) == [atomic.LOCK_NAME]  # nothing written by the refused runs
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (out / atomic.LOCK_NAME).exists()  # the holder removed its lock


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = _dead_pid()
    (folder / atomic.LOCK_NAME).write_text(json.dumps({"pid": dead, "host": atomic.HOST, "started": "x"}))
    with atomic.hold_folder(folder) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {folder / atomic.LOCK_NAME}: its process {dead}" in capsys.readouterr().err
    assert not (folder / atomic.LOCK_NAME).exists()
    killed_run = tmp_path / "killed_run"
    holder = _hold_lock_in_another_process(killed_run)
    holder.kill()  # kill -9: the lock file stays, the kernel releases its flock
    holder.wait()
    assert (killed_run / atomic.LOCK_NAME).exists()
    with atomic.hold_folder(killed_run):
        pass
    assert f"its process {holder.pid} on {atomic.HOST}" in capsys.readouterr().err
    (folder / atomic.LOCK_NAME).write_text(json.dumps({"pid": dead, "host": "another-machine"}))
    with pytest.raises(atomic.FolderLockedError, match="another-machine"):  # cannot tell: refused, named
        with atomic.hold_folder(folder):
            pass


# ---------------------------------------------------------------------- issue 30: check_results certifies only what it compared
def _committed_quick_copy(tmp_path: Path) -> Path:
    """A --rerun-dir copy of every committed results/<experiment>/quick/{metrics,claims}.csv."""
    from cmp_utils.tools import check_results

    rerun = tmp_path / "rerun"
    for experiment in check_results.committed_experiments("HEAD", "quick"):
        for name in ("metrics.csv", "claims.csv"):
            completed = subprocess.run(
                ["git", "show", f"HEAD:results/{experiment}/quick/{name}"],
                cwd=config.project_root(),
                capture_output=True,
            )
            if completed.returncode == 0:
                (rerun / experiment / "quick").mkdir(parents=True, exist_ok=True)
                (rerun / experiment / "quick" / name).write_bytes(completed.stdout)
    return rerun


def test_check_results_fails_on_missing_garbled_or_no_results(tmp_path, capsys):
    from cmp_utils.tools import check_results

    rerun = _committed_quick_copy(tmp_path)
    experiments = check_results.committed_experiments("HEAD", "quick")
    assert check_results.main(["--rerun-dir", str(rerun)]) == 0
    out = capsys.readouterr().out
    assert f"({len(experiments)} experiments" in out and " numbers and " in out
    (rerun / "ablation" / "quick" / "metrics.csv").unlink()
    (rerun / "batch_size" / "quick" / "claims.csv").unlink()
    (rerun / "cuhk_pedes" / "quick" / "metrics.csv").write_bytes(b"dataset,value\n\xff\xfe\x00garbled\n")
    assert check_results.main(["--rerun-dir", str(rerun)]) == 1
    out = capsys.readouterr().out
    assert str(rerun / "ablation" / "quick" / "metrics.csv") in out
    assert str(rerun / "batch_size" / "quick" / "claims.csv") in out
    assert "UnicodeDecodeError" in out and "cuhk_pedes" in out
    assert f"{len(experiments)} experiments compared" in out
    metrics_csv = rerun / "batch_size" / "quick" / "metrics.csv"
    metrics_csv.write_text(metrics_csv.read_text() + metrics_csv.read_text().splitlines()[1] + "\n")  # a repeated row
    assert check_results.main(["--rerun-dir", str(rerun), "--experiments", "batch_size"]) == 1
    assert "not comparable: batch_size: the rerun metrics.csv has several rows" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_results.main(["--rerun-dir", str(empty)]) == 1  # every experiment missing
    assert check_results.main(["--rerun-dir", str(empty), "--profile", "paper"]) == 1  # nothing to compare at all
    assert "nothing was compared" in capsys.readouterr().err


# ---------------------------------------------------------------------- issue 30: a full disk names the file and keeps the old one
@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and mount; skipped elsewhere)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_checkpoint_on_a_full_disk_names_the_file_and_keeps_the_old_one(tiny_disk):
    checkpoint = tiny_disk / "checkpoints" / "last.pt"
    atomic.torch_save(checkpoint, {"w": torch.ones(10)})
    with pytest.raises(
        OSError,
        match=r"cannot write .*last\.pt: No space left on device \(its previous version is "
        r"kept unchanged\)",
    ) as raised:
        atomic.torch_save(checkpoint, {"w": torch.zeros(200_000)})  # 800 KB on a 256 KiB disk
    assert raised.value.errno == 28 and "enforce fail" not in str(raised.value)
    assert torch.equal(training.load_checkpoint(checkpoint)["w"], torch.ones(10))
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == ["last.pt"]  # no temporary left
    with pytest.raises(OSError, match=r"cannot write .*big\.csv: No space left on device \(nothing was written"):
        atomic.write_csv(tiny_disk / "big.csv", pd.DataFrame({"x": np.arange(100_000)}))
    experiment = tiny_disk / "exp"
    atomic.write_text(experiment / "a.txt", "old")
    with pytest.raises(OSError, match=r"cannot write .*exp: No space left on device \(its previous version is kept"):
        with atomic.replace_folder(experiment) as staging:
            atomic.write_text(staging / "a.txt", "new")
            atomic.write_text(staging / "b.txt", "x" * 400_000)
    assert (experiment / "a.txt").read_text() == "old" and not (experiment / "b.txt").exists()


def test_a_read_only_folder_names_the_file_and_the_cause(tiny_disk):
    atomic.write_text(tiny_disk / "kept.txt", "old")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(OSError, match=r"cannot write .*kept\.txt: Read-only file system \(its previous version"):
        atomic.write_text(tiny_disk / "kept.txt", "new")
    assert (tiny_disk / "kept.txt").read_text() == "old"


# ---------------------------------------------------------------------- issue 30: security (torch version, run folders, checkpoints)
def test_importing_cmp_utils_with_torch_older_than_2_6_is_refused(tmp_path):
    import cmp_utils

    assert cmp_utils.torch_version_problem("2.6.0+cpu") is None and cmp_utils.torch_version_problem("2.14.1") is None
    fake = tmp_path / "site"
    (fake / "torch-2.5.1.dist-info").mkdir(parents=True)
    (fake / "torch-2.5.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1\n")
    completed = subprocess.run(
        [sys.executable, "-c", "import cmp_utils"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{config.project_root()}"},
    )
    assert completed.returncode != 0
    assert "ImportError: cmp_utils needs torch >= 2.6, found torch 2.5.1" in completed.stderr
    assert "CVE-2025-32434" in completed.stderr


class _NotAWeight:
    """An object a weights-only load refuses (a pickled class instance)."""


def test_a_checkpoint_with_disallowed_objects_is_not_called_truncated(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": _NotAWeight()}, path)
    with pytest.raises(ValueError, match=r"best\.pt holds disallowed objects") as raised:
        training.load_checkpoint(path)
    assert "empty or truncated" not in str(raised.value) and "weights_only=False" in str(raised.value)


def test_load_trained_ignores_the_machine_local_paths_of_a_run_folder(isolated_dirs, tmp_path):
    import yaml

    from cmp_utils import experiments

    run = tmp_path / "received_run"
    training.fit(training.make_config("smoke", "cuhk_pedes", epochs=1, output_dir=str(run), progress=False))
    params = yaml.safe_load((run / "params.yaml").read_text())
    elsewhere = tmp_path / "chosen_by_the_sender"
    params.update(cache_dir=str(elsewhere / "cache"), data_dir=str(elsewhere / "data"))
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    model, prepared, features, cfg = experiments.load_trained(run)
    assert not elsewhere.exists()  # nothing read or written where the folder said
    assert cfg.cache_dir is None and cfg.data_dir is None and cfg.weights_path is None
    params["weights_path"] = str(elsewhere / "weights.pth")
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.warns(UserWarning, match="trained with weights_path=.*pass weights_path= this machine's copy"):
        experiments.load_trained(run)


# ---------------------------------------------------------------------- issue 30: strict readers
def _rewrite(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def test_karpathy_sentences_as_a_string_is_an_error_naming_file_and_record(tmp_path):
    root = write_flickr(tmp_path / "flickr30k")
    _rewrite(root / "dataset_flickr30k.json", lambda p: p["images"][1].update(sentences="A dog runs."))
    with pytest.raises(
        ValueError, match=r"dataset_flickr30k.json: image record 1 \(1001.jpg\) has \"sentences\" as a str"
    ):
        data.read_dataset("flickr30k", root, "train")
    root = write_flickr(tmp_path / "flickr_tokens")
    _rewrite(root / "dataset_flickr30k.json", lambda p: p["images"][0]["sentences"][0].update(tokens="a dog"))
    with pytest.raises(ValueError, match=r"image record 0 \(1000.jpg\) has a sentence .*tokens a list"):
        data.read_dataset("flickr30k", root, "train")


def test_an_unknown_split_label_is_an_error_not_a_skipped_record(tmp_path):
    from data_fixtures import write_rstp

    root = write_rstp(tmp_path / "rstpreid")
    _rewrite(root / "data_captions.json", lambda records: records[0].update(split="Train"))
    with pytest.raises(
        ValueError,
        match=r"data_captions.json: record 0 \(.*\) has split 'Train', which is not a split "
        r"label of rstpreid \(train, val, test\); did you mean 'train'\?",
    ):
        data.read_dataset("rstpreid", root, "test")  # even when reading another split
    cuhk = write_cuhk(tmp_path / "cuhk_pedes")
    _rewrite(cuhk / "reid_raw.json", lambda records: records[2].update(split="validation"))
    with pytest.raises(ValueError, match=r"reid_raw.json: record 2 .* has split 'validation'"):
        data.read_dataset("cuhk_pedes", cuhk, "train")


def test_one_image_under_two_ids_is_an_error_naming_both_records(tmp_path):
    root = write_cuhk(tmp_path / "cuhk_pedes")
    records = json.loads((root / "reid_raw.json").read_text())
    duplicate = dict(records[0], id=records[0]["id"] + 100, split="test")  # the same file, another person
    (root / "reid_raw.json").write_text(json.dumps(records + [duplicate]))
    with pytest.raises(
        ValueError,
        match=rf"image {records[0]['file_path']} is listed under id {records[0]['id']} "
        rf"\(record 0 .*\) and id {records[0]['id'] + 100} \(record {len(records)} ",
    ):
        data.read_dataset("cuhk_pedes", root, "train")
    flickr = write_flickr(tmp_path / "flickr30k")
    _rewrite(flickr / "dataset_flickr30k.json", lambda p: p["images"][4].update(filename="1000.jpg"))
    with pytest.raises(ValueError, match=r"image flickr30k-images/1000.jpg is listed under id 0 .* and id 4"):
        data.read_dataset("flickr30k", flickr, "test")


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/hostname", "CUHK01/../../outside.png"])
def test_an_image_path_outside_the_dataset_folder_is_an_error(bad_path, tmp_path):
    root = write_cuhk(tmp_path / "cuhk_pedes")
    write_image(tmp_path / "outside.png", (1, 2, 3))
    _rewrite(root / "reid_raw.json", lambda records: records[1].update(file_path=bad_path))
    with pytest.raises(
        ValueError,
        match=rf"reid_raw.json: record 1 \({re.escape(bad_path)}\) has file_path .* points "
        r"outside the dataset folder",
    ):
        data.read_dataset("cuhk_pedes", root, "train")
    coco = tmp_path / "mscoco"
    from data_fixtures import write_coco

    write_coco(coco)
    _rewrite(coco / "dataset_coco.json", lambda p: p["images"][0].update(filepath="../elsewhere"))
    with pytest.raises(ValueError, match=r"image record 0 .* has filepath '../elsewhere', which points outside"):
        data.read_dataset("mscoco", coco, "train")


# ---------------------------------------------------------------------- issue 30: a notebook's outputs as one set
def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_output_set_replaces_one_owners_files_together_and_keeps_others(tmp_path, capsys):
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "other_notebook.png").write_bytes(b"not mine")
    first = atomic.OutputSet(folder, "02_demo")
    for name in ("a.png", "b.svg", "gone.csv"):
        first.path(name).write_text(f"run 1 {name}")
    assert not (folder / "a.png").exists()  # nothing in place before commit
    first.commit()
    assert _folder_bytes(folder)["a.png"] == b"run 1 a.png"
    second = atomic.OutputSet(folder, "02_demo")
    for name in ("a.png", "b.svg"):
        second.path(name).write_text(f"run 2 {name}")
    second.commit()
    files = _folder_bytes(folder)
    assert files["a.png"] == b"run 2 a.png" and "gone.csv" not in files  # the owner's old file it no longer makes
    assert files["other_notebook.png"] == b"not mine"  # another owner's file is never touched
    assert [p.name for p in folder.iterdir() if p.name.endswith(atomic.TEMPORARY_SUFFIX)] == []
    assert "2 output files replaced" in capsys.readouterr().out
    with pytest.raises(ValueError, match="plain file name"):
        atomic.OutputSet(folder, "02_demo", announce=False).path("../escape.png")


def test_a_notebook_run_that_fails_midway_leaves_the_previous_set_untouched(tmp_path):
    folder = tmp_path / "figures"
    complete = atomic.OutputSet(folder, "02_demo", announce=False)
    for name in ("a.png", "b.png", "c.png"):
        complete.path(name).write_text(f"seed 0 {name}")
    complete.commit()
    before = _folder_bytes(folder)
    code = (
        "from cmp_utils.core import atomic\n"
        f"outputs = atomic.OutputSet({str(folder)!r}, '02_demo')\n"
        "outputs.path('a.png').write_text('seed 1 a'); outputs.path('b.png').write_text('seed 1 b')\n"
        "raise RuntimeError('the third figure failed')\n"
    )
    failed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(config.project_root())},
    )
    assert failed.returncode != 0 and "the previous complete set stays as it was" in failed.stdout
    assert _folder_bytes(folder) == before  # no seed-1 file beside seed-0 ones
    atomic.OutputSet(folder, "03_other", announce=False)  # the next write into the folder
    assert [
        p.name for p in folder.iterdir() if "02_demo" in p.name and p.is_dir()
    ] == []  # the dead run's staging removed


@pytest.mark.parametrize("notebook", ["02_cmpm_derivation", "03_cmpc_derivation", "04_training"])
def test_notebooks_write_their_figures_and_tables_as_one_set(notebook):
    cells = [
        cell.source
        for cell in nbformat.read(config.project_root() / "notebooks" / f"{notebook}.ipynb", as_version=4).cells
        if cell.cell_type == "code"
    ]
    source = "\n".join(cells)
    assert f'atomic.OutputSet(figure_dir, "{notebook}")' in source
    assert "save_figure(fig, figure_dir" not in source and "write_csv(figure_dir" not in source
    assert source.count("outputs.path(") >= 1 and source.count("outputs.commit()") == 1
    after_commit = source.split("outputs.commit()")[1]
    assert "outputs.path(" not in after_commit  # nothing written after the set is committed


def test_a_resumed_run_that_fails_leaves_no_results_json_of_its_earlier_part(isolated_dirs, tmp_path, monkeypatch):
    """results.json, best.pt and last.pt come from the same run state: a resume drops the earlier
    results.json before training on, and a new one is written only when the run ends."""
    out = tmp_path / "run"
    training.fit(training.make_config("smoke", "cuhk_pedes", epochs=1, output_dir=str(out), progress=False))
    assert (out / "results.json").is_file()

    def fail(*args, **kwargs):
        raise RuntimeError("killed before the end")

    from cmp_utils.training import loop

    monkeypatch.setattr(loop, "_final_result", fail)
    with pytest.raises(RuntimeError, match="killed before the end"):
        training.fit(
            training.make_config("smoke", "cuhk_pedes", epochs=2, output_dir=str(out), progress=False, resume=True)
        )
    assert not (out / "results.json").exists()
    assert training.load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2
    assert not (out / atomic.LOCK_NAME).exists()  # the lock goes with the run, however it ends


def test_a_run_folder_another_process_writes_is_not_deleted(tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock_in_another_process(out)
    (out / "last.pt").write_text("being written")
    try:
        with pytest.raises(atomic.FolderLockedError, match=f"process {holder.pid}"):
            atomic.remove_run_folder(out)
        assert (out / "last.pt").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    atomic.remove_run_folder(out)
    assert not out.exists()


def test_an_image_cache_on_a_full_disk_names_the_file_instead_of_dying(tiny_disk, tmp_path):
    """The memory-mapped cache was a sparse file: a full disk killed the process with SIGBUS on a write."""
    paths = [str(write_image(tmp_path / f"{k}.png", (10 * k, 0, 0), size=(8, 8))) for k in range(10)]
    code = (
        "import sys; from cmp_utils.data import images\n"
        f"try:\n    images.ImageCache.build({paths!r}, (128, 128), {str(tiny_disk / 'images.npy')!r}, progress=False)\n"
        "except OSError as error:\n    print(error); sys.exit(3)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(config.project_root())},
    )
    assert completed.returncode == 3, completed.stderr[-500:]  # not -7 (SIGBUS)
    assert f"cannot write {tiny_disk / 'images.npy'}: No space left on device" in completed.stdout
    assert not any(tiny_disk.iterdir())  # no partial cache left


def test_generating_synthetic_data_on_a_full_disk_names_the_folder(tiny_disk):
    from cmp_utils.data import synthetic

    with pytest.raises(OSError, match=r"cannot write .*tiny/cuhk_pedes: No space left on device \(nothing was written"):
        synthetic.generate("cuhk_pedes", tiny_disk / "cuhk_pedes", "quick")
    assert not any(tiny_disk.iterdir())  # the temporary folder is gone too


def test_every_notebook_parameter_default_is_plain_json():
    """The in-notebook check (check_parameters) refuses non-plain values, so the defaults must be plain too."""
    for path in sorted((config.project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        namespace: dict = {}
        exec(cell.source, namespace)  # noqa: S102 -- the project's own parameters cells
        problems = [
            notebook_tools.plain_value_problem(name, namespace[name])
            for name in notebook_tools.parameter_types(notebook)
        ]
        assert not any(problems), (path.name, problems)
