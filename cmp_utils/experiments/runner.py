"""The experiment notebooks' engine: train a method, score it with its dataset's protocol, tabulate.

One *run* = one method (a set of losses) trained on one dataset with one seed by
:func:`cmp_utils.training.fit`, then scored on the test split with the protocol of the dataset:

* ``cuhk_pedes``: text-to-image R@1/5/10, mAP, mINP (gallery: every test image once);
* ``flickr30k``: both directions, R@1/5/10;
* ``mscoco``: both directions, the 1K protocol (five folds, averaged) and 5K;
* ``cub`` / ``flowers``: the zero-shot class-level protocol (top-1 accuracy, AP@50).

Runs are memoised on disk (``<cache>/experiment_runs/<key>/protocol.json``): the key hashes the
full training settings, the source of ``cmp_utils`` and the files the run reads (size and
modification time of every file of the dataset folder, and of the weights file), so notebooks
that share a run (the ablation and the CUHK-PEDES table both train CMPM) train it once, and any
change of code, settings or data trains again. Results are tidy rows
``dataset, table, method, backbone, direction, metric, value, paper_value, seed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import torch

from ..core import atomic, config, numerics
from ..evaluation import paper

#: Method label (as in the paper's tables) -> the losses of :mod:`cmp_utils.losses` it trains with.
METHODS: dict[str, tuple[str, ...]] = {
    "CMPM": ("cmpm",),
    "CMPM+CMPC": ("cmpm", "cmpc"),
    "CMPC": ("cmpc",),
    "softmax": ("softmax",),
    "norm-softmax": ("norm_softmax",),
    "ranking": ("ranking",),
    "ranking (hardest)": ("ranking_hard",),
    "CMCE": ("cmce",),
    "CMPM (L2 target)": ("cmpm_l2",),
    "CMPM (L2 target)+CMPC": ("cmpm_l2", "cmpc"),  # the fidelity audit's L2-target deviation
    # the CMPM family of text-based person search (notebook 14)
    "SDM": ("sdm",),
    "InfoNCE": ("info_nce",),
    "R-ITC": ("ritc",),
    "TAL": ("tal",),
}


RESULT_COLUMNS = ["dataset", "table", "method", "backbone", "direction", "metric", "value", "paper_value", "seed"]


def method_losses(method: str) -> tuple[str, ...]:
    """The loss names behind a method label; a clear error for an unknown label."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not known; use one of {list(METHODS)}")
    return METHODS[method]


#: The modules whose code decides a run's numbers (benchmarks, reports and notebook tooling do not), as
#: patterns under ``cmp_utils/``.
RESULT_MODULES = (
    "core/config.py",
    "core/numerics.py",
    "data/**/*.py",
    "models/*.py",
    "losses/*.py",
    "training/*.py",
    "evaluation/evaluate.py",
    "evaluation/metrics.py",
    "experiments/runner.py",
    "experiments/grid_runs.py",
    "experiments/notebook.py",
)


def _code_fingerprint() -> str:
    """Hash of the source of :data:`RESULT_MODULES`: a change of that code invalidates memoised runs."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted({path for pattern in RESULT_MODULES for path in package.glob(pattern)}):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_key(settings: dict[str, Any], content_fingerprint: str = "") -> str:
    """Key of a run: its settings (minus where it is written and how it reports), the code, and
    ``content_fingerprint``: what the run reads (see :func:`input_fingerprint`), so a replaced
    image or annotation file or weights file trains again instead of reusing a stale result; and the
    CPU numerics (:func:`cmp_utils.core.numerics.fingerprint`), so a run made unpinned is never reused pinned."""
    relevant = {k: v for k, v in settings.items() if k not in ("output_dir", "progress", "resume", "device")}
    text = (
        json.dumps(relevant, sort_keys=True, default=str)
        + _code_fingerprint()
        + content_fingerprint
        + numerics.fingerprint()
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def input_fingerprint(cfg: Any) -> str:
    """Fingerprint of the files a run of ``cfg`` (a TrainConfig) reads: every file of its dataset
    folder (:func:`cmp_utils.data.files_fingerprint`: path, size, mtime) and its weights file."""
    from .. import data

    root, _ = data.dataset_root(cfg.dataset, cfg.profile, cfg.data_dir, cfg.cache_dir, cfg.data_seed)
    parts = [data.files_fingerprint(root), config.file_stamp(cfg.weights_path)]
    return hashlib.sha256("|".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _job_config(
    dataset: str,
    profile: str,
    method: str,
    seed: int,
    device: str,
    data_dir: str | None,
    overrides: dict[str, Any] | None,
) -> Any:
    """The TrainConfig of a :func:`run_method` job (the test split is scored by run_method itself)."""
    from .. import training

    return training.make_config(
        profile,
        dataset,
        losses=method_losses(method),
        seed=seed,
        device=device,
        data_dir=data_dir or None,
        progress=False,
        evaluate_test=False,
        **(overrides or {}),
    )


def _run_location(cfg: Any, inputs: str | None = None) -> tuple[str, str, Path]:
    """``(run key, input fingerprint, memo folder)`` of a :func:`run_method` run of ``cfg``
    (``inputs``: its :func:`input_fingerprint`, when already known)."""
    inputs = input_fingerprint(cfg) if inputs is None else inputs
    key = run_key(cfg.to_dict(), inputs)
    return key, inputs, config.cache_dir() / "experiment_runs" / key


def _memoised(protocol_path: Path) -> dict[str, Any] | None:
    """The record of a finished run, or None when there is none or it cannot be read (then it retrains)."""
    import warnings

    if not protocol_path.is_file():
        return None
    try:
        return json.loads(protocol_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        warnings.warn(f"memoised run record {protocol_path} is damaged ({error}); training the run again", stacklevel=3)
        return None


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------


def protocol_metrics(
    dataset: str,
    image_embeddings: torch.Tensor,
    image_labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_labels: torch.Tensor,
) -> list[dict[str, Any]]:
    """Score test-split embeddings with the protocol of ``dataset``.

    Returns rows ``{table, direction, metric, value}``. ``image_embeddings`` (N_I, d) holds each
    test image once, ``text_embeddings`` (N_T, d) each caption; labels are identities
    (CUHK-PEDES), images (Flickr30K, MSCOCO) or classes (CUB, Flowers).
    """
    from ..evaluation import metrics

    rows: list[dict[str, Any]] = []

    def add(table: str, direction: str, values: dict[str, Any], names: Iterable[str]) -> None:
        for name in names:
            rows.append({"table": table, "direction": direction, "metric": name, "value": float(values[name])})

    recall_names = ("R@1", "R@5", "R@10")
    if dataset in config.PERSON_DATASETS:  # CUHK-PEDES, and ICFG-PEDES / RSTPReid with the same protocol
        t2i = metrics.retrieval_metrics(text_embeddings, image_embeddings, text_labels, image_labels)
        add(dataset, "t2i", t2i, (*recall_names, "mAP", "mINP"))
    elif dataset == "flickr30k":
        both = metrics.bidirectional_retrieval(image_embeddings, text_embeddings, image_labels, text_labels)
        for direction in ("i2t", "t2i"):
            add("flickr30k", direction, both[direction], recall_names)
    elif dataset == "mscoco":
        protocols = metrics.coco_1k_5k(image_embeddings, text_embeddings, image_labels, text_labels)
        for size in ("1k", "5k"):
            for direction in ("i2t", "t2i"):
                add(f"mscoco_{size}", direction, protocols[size][direction], recall_names)
    elif dataset in ("cub", "flowers"):
        zero_shot = metrics.zero_shot_class_metrics(image_embeddings, image_labels, text_embeddings, text_labels)
        add("cub_flowers", "i2t", zero_shot, ("top1_accuracy",))
        add("cub_flowers", "t2i", zero_shot, ("ap@50",))
    else:
        raise ValueError(f"dataset {dataset!r} has no protocol; use one of {config.DATASETS}")
    return rows


#: Settings of a run folder's params.yaml that name places on the machine that made the run: when a
#: run is rebuilt (:func:`load_trained`) they come from the caller, never from the folder.
MACHINE_LOCAL_SETTINGS = ("data_dir", "cache_dir", "weights_path", "output_dir")


def load_trained(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    weights_path: str | None = None,
):
    """Rebuild a finished run from its folder: ``(model with the tested weights, prepared data,
    cached image features by split, TrainConfig)``. The tested weights are those ``checkpoint_choice``
    names (:func:`cmp_utils.training.selected_checkpoint`). The model is in eval mode on ``device``.

    The folder's ``params.yaml`` gives the recipe; the places on this machine where data is read,
    caches are written and backbone weights are found (:data:`MACHINE_LOCAL_SETTINGS`) are this
    call's ``data_dir``, ``cache_dir`` and ``weights_path`` (None: this machine's defaults,
    ``$CMP_DATA_DIR``, ``$CMP_CACHE_DIR``, no weights file), never the folder's: a run folder
    received from someone else must not choose where this machine writes. A run trained from a
    weights file, rebuilt without one, gets a warning naming the file.
    """
    import warnings

    import yaml

    from .. import data, training

    run_dir = Path(run_dir)
    params_path = run_dir / "params.yaml"
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path} is missing: {run_dir} is not a finished run folder")
    settings = yaml.safe_load(params_path.read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"{params_path} does not hold a mapping of settings; {run_dir} is not a run folder")
    known = {field.name for field in dataclasses.fields(training.TrainConfig)}
    settings = {k: v for k, v in settings.items() if k in known}
    if settings.get("weights_path") and weights_path is None:
        warnings.warn(
            f"{params_path}: the run was trained with weights_path={settings['weights_path']!r} (a path on "
            f"the machine that made it, not used here); pass weights_path= this machine's copy of that "
            f"file, or the rebuilt image branch differs from the run's",
            stacklevel=2,
        )
    settings.update(data_dir=data_dir, cache_dir=cache_dir, weights_path=weights_path, output_dir=None)
    cfg = training.resolve_weights_path(training.as_config(settings))
    resolved = config.resolve_device(device)
    prepared = data.prepare_dataset(
        cfg.dataset,
        cfg.profile,
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        seed=cfg.data_seed,
        image_size=cfg.image_size,
        **data.recipe_options(cfg),
    )
    features: dict[str, torch.Tensor] = {}
    if cfg.feature_mode == "cached":
        for split in {prepared.validation_split, prepared.test_split} - {None}:
            features[split] = training.cached_image_features(prepared, split, cfg, resolved)
    feature_dim = next(iter(features.values())).shape[-1] if features else None
    model = training.build_run_model(cfg, prepared, feature_dim)
    tested = training.load_checkpoint(training.selected_checkpoint(run_dir, cfg), resolved)  # clear error if damaged
    model.load_state_dict(tested["model"])
    return model.to(resolved).eval(), prepared, features, cfg


def record_paths(record: dict[str, Any]) -> dict[str, Any]:
    """``data_dir``, ``cache_dir`` and ``weights_path`` of a run record of this machine's memo
    (:func:`run_method`): the keyword arguments that rebuild its run (:func:`load_trained`) here."""
    settings = record.get("settings", {})
    return {name: settings.get(name) for name in ("data_dir", "cache_dir", "weights_path")}


def test_embeddings(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    weights_path: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Embeddings of the test split by the tested (EMA) weights of the run in ``run_dir``.

    Returns ``(image_embeddings, image_labels, text_embeddings, text_labels)`` (see
    :func:`cmp_utils.evaluation.evaluate.encode`). The paths are this machine's (:func:`load_trained`).
    """
    from ..evaluation import evaluate

    model, prepared, features, cfg = load_trained(run_dir, device, data_dir, cache_dir, weights_path)
    split = prepared.test_split
    with config.torch_threads(cfg.num_threads):  # the run's own thread count, as in training
        return evaluate.encode(
            model, prepared, split, config.resolve_device(device), cfg.eval_batch_size, features.get(split)
        )


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def run_method(
    dataset: str,
    profile: str,
    method: str,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
    continue_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``dataset`` (or reuse the memoised run) and score the test split.

    ``continue_from``: a finished run folder whose settings differ from this run's only in what a resume
    may change (``epochs``, ``patience``, ...): its epochs are copied, not trained again, and training
    resumes from its last checkpoint. Resuming is exact (``tests/training/test_train.py``), so the
    result is the one a run from scratch would give, under the same memo key.

    Returns ``{"key", "run_dir", "settings", "rows", "best_epoch", "epochs_trained", "stopped_early", "seconds",
    "samples_per_second"}``
    where ``rows`` are the protocol's rows (see :func:`protocol_metrics`). ``overrides`` are
    training settings (e.g. ``{"batch_size": 64}``) on top of the profile's.
    """
    from .. import training

    # The test split is scored below with the dataset's own protocol, so fit() need not score it too.
    cfg = _job_config(dataset, profile, method, seed, device, data_dir, overrides)
    settings = cfg.to_dict()
    key, inputs, run_dir = _run_location(cfg)
    protocol_path = run_dir / "protocol.json"
    memoised = None if refresh else _memoised(protocol_path)
    if memoised is not None:
        return memoised
    if run_dir.exists():  # an interrupted or refreshed run of this key: train it again from scratch
        atomic.remove_run_folder(run_dir)  # refused while another process trains into it
    cfg.output_dir = str(run_dir)
    cfg.resume = False
    if continue_from is not None:
        import shutil

        shutil.copytree(continue_from, run_dir, ignore=shutil.ignore_patterns("protocol.json", "results.json"))
        cfg.resume = True
    result = training.fit(cfg)
    with config.torch_threads(cfg.num_threads):  # scored with the run's thread count wherever it runs
        rows = protocol_metrics(
            dataset, *test_embeddings(run_dir, device, cfg.data_dir, cfg.cache_dir, cfg.weights_path)
        )
    record = {
        "key": key,
        "input_fingerprint": inputs,
        "run_dir": str(run_dir),
        "settings": settings,
        "rows": rows,
        "best_epoch": result.best_epoch,
        "epochs_trained": result.epochs_trained,
        "stopped_early": result.stopped_early,
        "seconds": result.seconds,
        "samples_per_second": result.samples_per_second,
    }
    atomic.write_text(protocol_path, json.dumps(record, indent=2, default=str) + "\n")
    return record


def attach_ceiling(frame: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Add ``ceiling``: the attribute oracle's value (:mod:`cmp_utils.evaluation.ceiling`) of each row's
    dataset (or protocol table, where the ceiling has one per table: ``mscoco_1k`` / ``mscoco_5k``),
    direction and metric on the synthetic test set of ``profile``; NaN where none."""
    from ..evaluation import ceiling

    parts = [
        ceiling.dataset_ceiling(name, profile)
        for name in frame["dataset"].unique()
        if name in ceiling.DATASETS_WITH_CEILING
    ]
    if not parts:
        return frame.assign(ceiling=float("nan"))
    table = pd.concat(parts).rename(columns={"value": "ceiling", "dataset": "ceiling_of"})
    ceiling_of = frame["dataset"]
    if "table" in frame:
        ceiling_of = frame["table"].where(frame["table"].isin(set(table["ceiling_of"])), frame["dataset"])
    return (
        frame.drop(columns=["ceiling"], errors="ignore")
        .assign(ceiling_of=ceiling_of)
        .merge(table, on=["ceiling_of", "direction", "metric"], how="left")
        .drop(columns="ceiling_of")
    )


#: Method label of a converted checkpoint's rows (:func:`score_checkpoint`).
CONVERTED_METHOD = "converted checkpoint"


def score_checkpoint(
    path: str | Path,
    dataset: str,
    profile: str,
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Score a converted ``cmpm_model`` file (``python -m cmp_utils.tools.convert_tf CHECKPOINT OUT.pt
    --kind cmpm_model``, e.g. the authors' trained model) on the test split of ``dataset`` with
    its protocol, without training.

    Returns tidy rows like :func:`run_grid`'s (method :data:`CONVERTED_METHOD`, seed 0, the
    checkpoint's path in ``checkpoint``). The data is prepared with the profile's settings plus
    ``overrides`` (image size, data folder), so the test split and vocabulary are those a trained
    run of this profile would see.
    """
    from .. import data, training
    from ..evaluation import evaluate
    from ..models import tf_checkpoint

    settings = training.make_config(profile, dataset, **(overrides or {}))
    prepared = data.prepare_dataset(
        dataset,
        profile,
        data_dir=data_dir or None,
        cache_dir=settings.cache_dir,
        seed=settings.data_seed,
        image_size=settings.image_size,
    )
    resolved = config.resolve_device(device)
    model = tf_checkpoint.load_converted_model(path, prepared.vocabulary).to(resolved)
    embeddings = evaluate.encode(model, prepared, prepared.test_split, resolved, settings.eval_batch_size)
    backbone = type(model.image_encoder.backbone).__name__
    rows = [
        {
            "dataset": dataset,
            "method": CONVERTED_METHOD,
            "backbone": backbone,
            "seed": 0,
            "checkpoint": str(path),
            **row,
        }
        for row in protocol_metrics(dataset, *embeddings)
    ]
    return attach_paper_values(pd.DataFrame(rows))


def attach_paper_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``paper_value`` (NaN unless the paper's number is confirmed) to tidy rows, by table."""
    if frame.empty:
        return frame.assign(paper_value=pd.Series(dtype=float))
    parts = [paper.with_paper_values(group, table=table) for table, group in frame.groupby("table", sort=False)]
    out = pd.concat(parts).sort_index()
    ordered = [c for c in RESULT_COLUMNS if c in out.columns]
    return out[ordered + [c for c in out.columns if c not in ordered]]


# ---------------------------------------------------------------------------------------------
# Tables (claims: cmp_utils.evaluation.claims)
# ---------------------------------------------------------------------------------------------


def summarise(frame: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, sample std (NaN for one seed), counts, paper value and ceiling per table cell: the one
    implementation is :func:`cmp_utils.reporting.summarise` (every grouping column kept by default)."""
    from .. import reporting

    return reporting.summarise(frame, by)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_experiment(
    out_dir: str | Path,
    frame: pd.DataFrame,
    params: dict[str, Any],
    figures: dict[str, Any] | None = None,
    claims: Sequence[dict[str, Any]] = (),
    convergence: pd.DataFrame | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
) -> list[Path]:
    """Write ``metrics.csv`` (tidy), ``summary.csv``, ``claims.csv`` (the notebook's claims as one
    Holm-adjusted family, :func:`cmp_utils.evaluation.claims.claims_frame`), ``params.yaml`` and each figure
    as PNG and SVG as the new content of ``out_dir``, all together. Returns the paths written.

    ``convergence`` (:func:`cmp_utils.experiments.convergence.check_convergence`) is written as
    ``convergence.csv``, and every claim about a run group it found not converged gets the verdict
    ``not converged`` (:func:`cmp_utils.evaluation.claims.mark_not_converged`). ``tables`` are written as
    ``<name>.csv`` in the same set.

    The set is written into a temporary sibling folder and swapped in by renames
    (:func:`cmp_utils.core.atomic.replace_folder`): ``out_dir`` holds either the old set or the new
    one, never a mix, and files of the old set that the new one lacks disappear with it.
    """
    from ..evaluation import claims as claims_module
    from ..reporting import plots

    out_dir = Path(out_dir)
    with atomic.replace_folder(out_dir) as staging:
        written = [atomic.write_csv(staging / "metrics.csv", frame)]
        summary = summarise(frame)  # every grouping column
        if params.get("profile") in config.SYNTHETIC_PROFILES:
            from .. import reporting

            summary = reporting.synthetic_summary(summary)  # no difference to, nor beside, a paper value
        written.append(atomic.write_csv(staging / "summary.csv", summary))
        if claims:
            claim_table = claims_module.claims_frame(claims)
            if convergence is not None:
                claim_table = claims_module.mark_not_converged(claim_table, convergence)
            written.append(atomic.write_csv(staging / "claims.csv", claim_table))
        if convergence is not None:
            written.append(atomic.write_csv(staging / "convergence.csv", convergence))
        for name, table in (tables or {}).items():  # the notebook's other tables, e.g. {"sweep": ...}
            written.append(atomic.write_csv(staging / f"{name}.csv", table, index=False))
        written.append(atomic.write_yaml(staging / "params.yaml", params))
        for name, figure in (figures or {}).items():
            written.extend(plots.save_figure(figure, staging / name))
    return [out_dir / path.relative_to(staging) for path in written]
