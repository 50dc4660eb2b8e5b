"""Grids of runs: the jobs of a notebook's table, trained once each (in worker processes where the machine
allows) and gathered into tidy rows."""

from __future__ import annotations

import json
from typing import Any, Sequence

import pandas as pd

from ..core import config
from .runner import (
    _job_config,
    _run_location,
    attach_ceiling,
    attach_paper_values,
    input_fingerprint,
    method_losses,
    run_method,
)

#: The paper profile's grid of notebooks 06-08: the rows the paper reports, each with the backbone it
#: reports it for (our name of that network, :data:`cmp_utils.models.BACKBONES`); each row is compared
#: with the paper's value of its own backbone (:func:`cmp_utils.evaluation.paper.paper_cell`). Flickr30K CMPM with
#: ResNet-152 has no public value but is trained by the authors' release scripts. Other settings are the
#: dataset's paper recipe (:data:`cmp_utils.training.PROFILE_SETTINGS`); the smoke and quick profiles train
#: every method with their own (fast) backbone instead.
PAPER_ROWS: dict[str, tuple[tuple[str, str], ...]] = {
    "flickr30k": (("CMPM+CMPC", "resnet152_slim"), ("CMPM+CMPC", "mobilenet_v1_tf"), ("CMPM", "resnet152_slim")),
    "mscoco": (("CMPM", "resnet152_slim"), ("CMPM+CMPC", "mobilenet_v1_tf")),
    "cub": (("CMPM", "mobilenet_v1_tf"), ("CMPM+CMPC", "mobilenet_v1_tf")),
    "flowers": (("CMPM", "mobilenet_v1_tf"), ("CMPM+CMPC", "mobilenet_v1_tf")),
}


def grid_rows(dataset: str, profile: str, methods: Sequence[str]) -> list[tuple[str, str | None]]:
    """The ``(method, backbone)`` runs of an experiment: in the paper profile, the rows of
    :data:`PAPER_ROWS` for ``dataset`` whose method is among ``methods`` (a method the paper
    does not report for ``dataset`` runs with the profile's backbone); otherwise every method with
    the profile's backbone (``None``)."""
    for method in methods:
        method_losses(method)
    if profile != "paper" or dataset not in PAPER_ROWS:
        return [(method, None) for method in methods]
    rows = [(method, backbone) for method, backbone in PAPER_ROWS[dataset] if method in methods]
    reported = {method for method, _ in PAPER_ROWS[dataset]}
    return rows + [(method, None) for method in methods if method not in reported]


def grid_jobs(
    dataset: str,
    profile: str,
    methods: Sequence[str | tuple[str, str | None]],
    seeds: Sequence[int],
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    method_overrides: dict[str, dict[str, Any]] | None = None,
) -> list[tuple]:
    """The :func:`run_method` arguments of every run of :func:`run_grid`, method by method, seed by seed:
    ``(dataset, profile, method, seed, device, data_dir, overrides)``; a method named in
    ``method_overrides`` gets its settings on top of ``overrides``, and a ``(method, backbone)`` pair
    gets ``backbone`` on top of those."""
    pairs = [(item, None) if isinstance(item, str) else tuple(item) for item in methods]
    for method, _ in pairs:
        method_losses(method)  # fail before training anything

    def row_overrides(method: str, backbone: str | None) -> dict[str, Any] | None:
        settings = overrides
        if method_overrides and method in method_overrides:
            settings = {**(overrides or {}), **method_overrides[method]}
        return settings if backbone is None else {**(settings or {}), "backbone": backbone}

    return [
        (dataset, profile, method, seed, device, data_dir, row_overrides(method, backbone))
        for method, backbone in pairs
        for seed in seeds
    ]


def run_job(job: tuple) -> dict[str, Any]:
    """One :func:`run_method` call in a worker process. The thread count is the run's own
    (``TrainConfig.num_threads``, applied by ``fit``), never the pool's, so a run gives the same
    numbers in a worker as in the notebook's process."""
    return run_method(*job)


def default_workers(device: str = "auto", profile: str = "quick") -> int:
    """Parallel training processes for :func:`run_grid`: on a CPU one per core (up to 8), each with
    one thread, since the small quick-profile models use one core well and several poorly; on a
    GPU one; in the smoke profile one (its runs last less than starting a worker)."""
    import os

    if profile == "smoke" or config.resolve_device(device).type != "cpu":
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def run_grid(
    dataset: str,
    profile: str,
    methods: Sequence[str | tuple[str, str | None]],
    seeds: Sequence[int],
    device: str = "auto",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    extra_columns: dict[str, Any] | None = None,
    progress: bool = True,
    workers: int | None = None,
    method_overrides: dict[str, dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Every method with every seed: tidy rows (see :data:`RESULT_COLUMNS`) plus ``seconds``.

    A method may be a ``(method, backbone)`` pair (:func:`grid_rows`): that run trains ``backbone``
    whatever ``overrides`` says (``None``: the profile's or the overrides' backbone).

    ``extra_columns`` are constant columns added to every row (e.g. ``{"batch_size": 32}``).
    ``workers`` > 1 trains that many runs at once in separate processes (default:
    :func:`default_workers`), each with the run's own thread count (``num_threads``: 1 in the
    smoke and quick profiles), so results do not depend on ``workers``. The data and feature
    caches are built once, before the workers start (:func:`train_jobs`). On
    synthetic data (smoke, quick) the rows carry the dataset's ``ceiling`` where one is known
    (:func:`attach_ceiling`). ``method_overrides`` maps a method label to settings of its runs only,
    on top of ``overrides`` (e.g. each loss's own temperature in ``loss_options``).
    """
    jobs = grid_jobs(dataset, profile, methods, seeds, device, data_dir, overrides, method_overrides)
    records = train_jobs(jobs, device, profile, workers, progress, desc=f"{dataset} runs")
    return grid_frame(dataset, profile, jobs, records, extra_columns)


def run_grids(
    grids: Sequence[dict[str, Any]], device: str = "auto", progress: bool = True, workers: int | None = None
) -> list[pd.DataFrame]:
    """Several :func:`run_grid` calls trained in **one** pool: ``grids`` holds each call's keyword
    arguments (``dataset``, ``profile``, ``methods``, ``seeds`` and any of ``data_dir``,
    ``overrides``, ``method_overrides``, ``extra_columns``); returns one frame per grid, as
    :func:`run_grid` would. With 2 workers, 5 seeds per grid leave a core idle for one run of every
    grid (and each grid's pool starts its workers again); pooled, only the last run of all waits.
    A run that two grids share is trained once. Numbers do not depend on the pooling: every run is
    the same function of its settings wherever it trains."""
    if not grids:
        return []
    profiles = {grid["profile"] for grid in grids}
    if len(profiles) != 1:
        raise ValueError(f"run_grids pools runs of one profile; got {sorted(profiles)}")
    profile = profiles.pop()
    per_grid = [
        grid_jobs(
            g["dataset"],
            g["profile"],
            g["methods"],
            g["seeds"],
            device,
            g.get("data_dir"),
            g.get("overrides"),
            g.get("method_overrides"),
        )
        for g in grids
    ]
    unique: dict[str, int] = {}
    jobs: list[tuple] = []
    for job in (job for grid in per_grid for job in grid):
        key = json.dumps(job, sort_keys=True, default=str)
        if key not in unique:
            unique[key] = len(jobs)
            jobs.append(job)
    records = train_jobs(jobs, device, profile, workers, progress, desc=f"{len(grids)} grids")
    frames = []
    for grid, grid_job_list in zip(grids, per_grid):
        mine = {
            index: records[unique[json.dumps(job, sort_keys=True, default=str)]]
            for index, job in enumerate(grid_job_list)
        }
        frames.append(grid_frame(grid["dataset"], profile, grid_job_list, mine, grid.get("extra_columns")))
    return frames


def train_jobs(
    jobs: Sequence[tuple],
    device: str = "auto",
    profile: str = "quick",
    workers: int | None = None,
    progress: bool = True,
    desc: str = "runs",
) -> dict[int, dict[str, Any]]:
    """Train (or read from the memo) every :func:`run_method` job; ``{job index: run record}``.
    ``workers`` > 1 trains that many at once in spawned processes. Before they start, this process
    builds the data and feature caches of each distinct input (:func:`cmp_utils.training.prepare_inputs`,
    one torch thread as in the runs), so that the workers only read them."""
    import concurrent.futures
    import multiprocessing

    from tqdm.auto import tqdm

    from .. import training

    workers = default_workers(device, profile) if workers is None else max(1, int(workers))
    records: dict[int, dict[str, Any]] = {}
    pending = list(range(len(jobs)))
    parallel = workers > 1 and len(pending) > 1
    if parallel:
        for settings in distinct_inputs(jobs):
            training.prepare_inputs(settings)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    if parallel:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(run_job, jobs[i]): i for i in pending}
            for future in concurrent.futures.as_completed(futures):
                records[futures[future]] = future.result()
                bar.update()
    else:
        for index in pending:
            records[index] = run_method(*jobs[index])
            bar.update()
    bar.close()
    return records


def distinct_inputs(jobs: Sequence[tuple]) -> list[Any]:
    """The settings of the first job of each distinct :func:`cmp_utils.training.input_key` whose run is
    not memoised yet, in job order."""
    from .. import training

    chosen: dict[str, Any] = {}
    fingerprints: dict[str, str] = {}  # input_fingerprint reads only input fields: once per input key
    for job in jobs:
        cfg = _job_config(*job[:7])  # a job may add run_method's refresh and continue_from
        key = training.input_key(cfg)
        if key in chosen:
            continue
        if key not in fingerprints:
            fingerprints[key] = input_fingerprint(cfg)
        if not (_run_location(cfg, fingerprints[key])[2] / "protocol.json").is_file():
            chosen[key] = cfg
    return list(chosen.values())


def grid_frame(
    dataset: str,
    profile: str,
    jobs: Sequence[tuple],
    records: dict[int, dict[str, Any]],
    extra_columns: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The tidy rows of a grid's runs (:func:`run_grid`'s return value) from their records."""
    rows = []
    for index, (_, _, method, seed, *_rest) in enumerate(jobs):
        record = records[index]
        for row in record["rows"]:
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "backbone": record["settings"]["backbone"],
                    "seed": seed,
                    "seconds": record["seconds"],
                    "run_key": record["key"],  # the run's folder name
                    **(extra_columns or {}),
                    **row,
                }
            )
    frame = attach_paper_values(pd.DataFrame(rows))
    return attach_ceiling(frame, profile) if profile in config.SYNTHETIC_PROFILES else frame
