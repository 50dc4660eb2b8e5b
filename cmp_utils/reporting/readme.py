"""The generated sections of the README and of ``results/README.md`` and ``results/bench/README.md``, rendered
from the CSVs the notebooks wrote.

``python -m cmp_utils.reporting --readme README.md [--results results] [--profile quick]``

* rewrites the generated parts of the README, each between ``<!-- NAME:start -->`` and
  ``<!-- NAME:end -->`` (:data:`SECTIONS`): the claims scorecard (every
  ``results/*/<profile>/claims.csv``), one headline table per paper table (R@1, R@10 and the
  paper's value), the figures, the profiles and how ``quick`` differs from the paper's recipe
  (from :data:`cmp_utils.training.PROFILE_SETTINGS`), a short performance summary
  (``results/bench/*.csv``) and the time each notebook took
  (``results/executed/<profile>/timings.csv``);
* writes the full tables to ``results/README.md`` and the full benchmarks to
  ``results/bench/README.md``.

Every number comes from a CSV; nothing is typed by hand. Files are replaced atomically."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import atomic, config
from .tables import (
    METRIC_LABELS,
    _cell,
    _data_label,
    _missing,
    _number,
    _our_side,
    _ours,
    _setting,
    _signed,
    _verdict_cell,
    grouping_columns,
    headline_table,
    is_papers_claim,
    markdown_table,
    paper_side,
    read_claims,
    read_metrics,
    reproduction_status,
    summarise,
    with_current_paper_values,
)

#: Generated README sections, in README order: marker name -> renderer name.
SECTIONS = ("scorecard", "headline", "figures", "profiles", "performance", "timings")
#: The sections the project's README carries (the profiles table lives in results/README.md).
README_SECTIONS = ("scorecard", "headline", "figures", "performance", "timings")
#: Experiments whose folder holds one of the paper's tables, in the paper's order, with headline metrics.
PAPER_TABLES = {
    "cuhk_pedes": ("R@1", "R@10"),
    "flickr30k": ("R@1", "R@10"),
    "mscoco": ("R@1", "R@10"),
    "cub_flowers": ("top1_accuracy", "ap@50"),
    "batch_size": ("R@1",),
}  # the ablation's table is in results/README.md and its claims in the scorecard (the README stays under 200 lines)
#: Rows kept out of a headline table (full tables keep them): column -> the one value shown.
HEADLINE_ONLY: dict[str, dict[str, Any]] = {}  # where a sampler column varies: the profile's sampler
#: Experiments whose claims are many and not the paper's own: one summary line in the scorecard.
SCORECARD_SUMMARISED = {
    "fidelity_audit": "What the deviations of public ports cost (notebook 13)",
    "cmpm_family": "The CMPM family (SDM, InfoNCE, R-ITC, TAL) on one network, and what a per-GPU "
    "loss costs each (notebook 14)",
}
#: Summarised experiments whose scorecard line also links their table (``summary.csv``).
SCORECARD_TABLES = ("cmpm_family",)
#: The README's figures: (experiment folder, file stem, caption).
README_FIGURES = (
    ("cuhk_pedes", "recall", "CUHK-PEDES-like data: text-to-image recall per loss"),
    ("batch_size", "batch_size", "R@1 against batch size, relative to each loss's best batch size"),
    ("ablation", "ablation", "Ablation: classification losses and CMPM"),
    ("feature_distribution", "projection", "Learned features of a few identities, per loss"),
)


def marker(name: str) -> tuple[str, str]:
    """The pair of HTML comments that delimit the generated section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def notebook_for(experiment: str, notebooks_dir: Path) -> Path | None:
    """The notebook ``NN_<experiment>.ipynb`` whose stem without the number is ``experiment``."""
    matches = sorted(
        path for path in notebooks_dir.glob("*.ipynb") if re.fullmatch(rf"\d+_{re.escape(experiment)}", path.stem)
    )
    return matches[0] if matches else None


def experiment_files(results_dir: Path, profile: str, name: str, notebooks_dir: Path) -> list[Path]:
    """``<results>/<experiment>/<profile>/<name>`` files, in notebook order (then by name)."""

    def order(path: Path) -> str:
        notebook = notebook_for(path.parent.parent.name, notebooks_dir)
        return notebook.stem if notebook is not None else f"99_{path.parent.parent.name}"

    return sorted(results_dir.glob(f"*/{profile}/{name}"), key=order)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def render_scorecard(results_dir: Path, profile: str, notebooks_dir: Path) -> str:
    """Two scorecards from every ``claims.csv``: "The paper's claims" (only comparisons the paper makes,
    with the paper's values for that exact comparison and backbone, or "no paper value") and "Our checks"
    (deviations of ports, another paper's system, the CMPM family, the audit)."""
    from ..evaluation import claims as claims_module

    papers, ours_rows, seen, summarised = [], [], set(), []
    for path in experiment_files(results_dir, profile, "claims.csv", notebooks_dir):
        experiment = path.parent.parent.name
        if experiment in SCORECARD_SUMMARISED:
            table = read_claims(path)
            verdicts = table["verdict"].value_counts()
            counts = ", ".join(f"{verdict} {count}" for verdict, count in verdicts.items())
            summarised.append(
                f"- {SCORECARD_SUMMARISED[experiment]}: {len(table)} checks ({counts}); every row in "
                f"[results/{experiment}/{profile}/claims.csv](results/{experiment}/{profile}/claims.csv)"
                + (
                    f"; the table: [results/{experiment}/{profile}/summary.csv](results/{experiment}/{profile}/summary.csv)"
                    if experiment in SCORECARD_TABLES and (path.parent / "summary.csv").is_file()
                    else ""
                )
                + "."
            )
            continue
        for row in read_claims(path).to_dict("records"):
            seeds = row.get("n_seeds")
            ours = _our_side(row)
            if (row["claim"], ours) in seen:  # the same runs, tested again by another notebook
                continue
            seen.add((row["claim"], ours))
            family = row.get("family_size")
            cells = [
                f"{row['claim']} ({experiment})",
                ours,
                _verdict_cell(row),
                "" if _missing(seeds) else int(seeds),
                "" if _missing(family) else int(family),
            ]
            if is_papers_claim(row, experiment):
                papers.append([cells[0], paper_side(row, experiment), *cells[1:]])
            else:
                ours_rows.append(cells)
    if not papers and not ours_rows and not summarised:
        return f"No claims yet: no `results/*/{profile}/claims.csv` (run `make reproduce`)."
    ours_header = f"ours ({_data_label(profile)}): difference [95% CI]"
    rule = (
        f"_From `results/*/{profile}/claims.csv`. Each claim compares two methods on paired seeds (at least "
        f"{claims_module.MIN_SEEDS}); the difference is shown with its own 95% confidence interval. The verdict is "
        "corrected for the number of claims a notebook tests together (Holm-Bonferroni, family size in the last "
        "column): **held** when the adjusted p-value is below 0.05 and the difference positive, **did not hold** "
        'when below 0.05 and negative, else **inconclusive**; "alone" gives the reading of the claim\'s own '
        "interval where it differs. A claim about a method whose runs had not converged (its notebook's "
        "`convergence.csv`: one seed trained again for 3x the epochs gained more than 1 point) is **not converged**, "
        "whatever its statistics._"
    )
    parts = [
        "### The paper's claims",
        "",
        render_convergence(results_dir, profile, notebooks_dir),
        "",
        rule + " _The paper column holds the paper's values for that exact comparison and backbone, as "
        "reported on the real data; they are not comparable in level with the synthetic differences._",
        "",
    ]
    parts.append(
        markdown_table(["claim (experiment)", "paper (real data)", ours_header, "verdict", "seeds", "family"], papers)
        if papers
        else "No claim of the paper's tables yet."
    )
    parts += [
        "",
        "### Our checks",
        "",
        "_Comparisons the paper does not make: deviations of public ports, another "
        "paper's system, losses published later, and what the deviations of ports cost (notebook 13). Same rule._",
        "",
    ]
    if ours_rows:
        parts.append(markdown_table(["check (experiment)", ours_header, "verdict", "seeds", "family"], ours_rows))
    parts += ["", *summarised] if summarised else []
    return "\n".join(parts)


def render_convergence(results_dir: Path, profile: str, notebooks_dir: Path) -> str:
    """One line from every ``convergence.csv``: how many run groups converged, and which did not (by experiment)."""
    from ..evaluation import claims as claims_module

    converged = groups = 0
    missing = []
    for path in experiment_files(results_dir, profile, "convergence.csv", notebooks_dir):
        table = pd.read_csv(path)
        done, count = claims_module.converged_count(table)
        converged, groups = converged + done, groups + count
        missing += [f"{name} in {path.parent.parent.name}" for name in claims_module.unconverged_groups(table)]
    if not groups:
        return f"_No `results/*/{profile}/convergence.csv` yet: no convergence check has run._"
    return f"**Convergence:** {converged} of {groups} run groups converged (each experiment's `convergence.csv`)" + (
        f"; not converged: {'; '.join(missing)}." if missing else "."
    )


#: Experiments whose rows vary a setting the paper's confirmed numbers do not (the CUHK-PEDES
#: headline values belong to the paper's own batch size, not to every batch size).
WITHOUT_PAPER_VALUES = ("batch_size",)


def render_headline(results_dir: Path, profile: str, notebooks_dir: Path) -> str:
    """One short table per paper table (see :data:`PAPER_TABLES`)."""
    parts = []
    for experiment, metrics in PAPER_TABLES.items():
        path = results_dir / experiment / profile / "metrics.csv"
        if not path.is_file():
            parts.append(f"**{experiment}**: no `results/{experiment}/{profile}/metrics.csv` yet.")
            continue
        frame = with_current_paper_values(read_metrics(path))
        shown = []
        only = dict(HEADLINE_ONLY.get(experiment, {}))
        if "sampler" in frame and frame["sampler"].nunique() > 1:
            from .. import training

            only["sampler"] = training.PROFILE_SETTINGS[profile][frame["dataset"].iloc[0]]["sampler"]
        for column, value in only.items():
            if column in frame and (frame[column] == value).any() and frame[column].nunique() > 1:
                frame = frame[frame[column] == value]
                shown.append(f"{column} {value}")
        if experiment in WITHOUT_PAPER_VALUES or profile in config.SYNTHETIC_PROFILES:
            frame = frame.assign(paper_value=float("nan"))  # never a paper value beside a synthetic number
        seeds = frame["seed"].nunique()
        if "ceiling" in frame and frame["ceiling"].notna().any():
            subset, keys = frame[frame["metric"].isin(metrics)], []
            for column in ("table", "dataset", "direction"):  # name what tells one metric's ceilings apart
                if column in subset and (subset.groupby([*keys, "metric"])[column].nunique() > 1).any():
                    keys.append(column)
            ceilings = subset.groupby([*keys, "metric"], sort=False)["ceiling"].first().dropna()
            shown.append(
                "ceiling "
                + ", ".join(
                    " ".join([*map(str, key[:-1]), METRIC_LABELS.get(key[-1], key[-1]), f"{value:.1f}"])
                    for key, value in ((k if isinstance(k, tuple) else (k,), v) for k, v in ceilings.items())
                )
            )
        caption = f"**{experiment}** ({', '.join([f'{seeds} seed' + 's' * (seeds != 1), *shown])})"
        parts.append(headline_table(frame, metrics, caption=caption))
    if profile in config.SYNTHETIC_PROFILES:
        paper_note = (
            "The paper's values are not set beside these synthetic numbers, which are not comparable with "
            "them in level: they have their own table, as reported on the real data, with the paper "
            "profile's results beside them ([results/README.md](results/README.md#reproduction-status-paper-profile-real-data))."
        )
    else:
        paper_note = (
            '"(paper X)" where `cmp_utils/evaluation/paper_numbers.csv` has a value confirmed from a public source, '
            "with the backbone it was reported for and how many public sources give it. Full tables: "
            "[results/README.md](results/README.md)."
        )
    intro = (
        f"_Generated from `results/*/{profile}/metrics.csv` ({_data_label(profile)}): mean ± sd over seeds; "
        "[x%] = share of the ceiling, the best score the synthetic captions allow (an attribute oracle, "
        f"notebook 01). {paper_note}_"
    )
    return intro + "\n\n" + "\n\n".join(parts)


def render_reproduction(results_dir: Path) -> str:
    """results/README.md's last section: the paper's every known value against the paper profile's runs."""
    return (
        "## Reproduction status (paper profile, real data)\n\n_Every value of `cmp_utils/evaluation/paper_numbers.csv` "
        "beside the paper profile's result of the same row and backbone (`results/*/paper/metrics.csv`); "
        "synthetic results are never compared with it._\n\n"
        + reproduction_status(results_dir=results_dir)
        + "\n\n"
        + render_third_party()
    )


def render_third_party() -> str:
    """The re-runs of the losses by later papers and public ports (``third_party_reruns.csv``): not the paper's."""
    from ..evaluation import paper

    reruns = paper.third_party_reruns()
    rows = [
        [
            r.dataset,
            r.label,
            r.direction,
            METRIC_LABELS.get(r.metric, r.metric),
            _number(r.value, 3).rstrip("0").rstrip("."),
            r.who,
            r.note,
        ]
        for r in reruns.itertuples(index=False)
    ]
    return (
        "### Third-party re-runs (not the paper's numbers)\n\n_From `cmp_utils/evaluation/third_party_reruns.csv`; "
        "never shown in a paper column._\n\n"
        + markdown_table(["dataset", "label", "direction", "metric", "value", "who", "note"], rows)
    )


def render_full_tables(results_dir: Path, profile: str, notebooks_dir: Path, link_root: Path) -> str:
    """Every experiment's full table (all grouping columns kept) and its claims, for results/README.md."""
    parts = []
    for path in experiment_files(results_dir, profile, "metrics.csv", notebooks_dir):
        experiment = path.parent.parent.name
        summary = summarise(with_current_paper_values(read_metrics(path)))
        notebook = notebook_for(experiment, notebooks_dir)
        made_by = (
            f"`python -m cmp_utils.tools.run_notebooks --profile {profile} notebooks/{notebook.name}`"
            if notebook is not None
            else f"(no notebook `notebooks/NN_{experiment}.ipynb` found)"
        )
        names = grouping_columns(summary)
        has_ceiling = "ceiling" in summary and summary["ceiling"].notna().any()
        # On synthetic data a level difference from the paper means nothing: the ceiling is the yardstick there.
        synthetic = profile in config.SYNTHETIC_PROFILES
        rows = [
            [
                *(row[name] for name in names),
                _number(row["paper_value"]),
                row.get("paper_support") or "",
                _ours(row["mean"], row["std"], row["n_seeds"]),
                row["n_seeds"],
                *([] if synthetic else [_signed(row["difference"])]),
                *(
                    [_number(row["ceiling"]), "" if _missing(row["ceiling"]) else f"{row['percent_of_ceiling']:.0f}%"]
                    if has_ceiling
                    else []
                ),
            ]
            for row in summary.to_dict("records")
        ]
        header = [
            *names,
            "paper (real data)" if synthetic else "paper",
            "support",
            f"ours ({_data_label(profile)})",
            "seeds",
            *([] if synthetic else ["ours − paper"]),
            *(["ceiling of the test set", "share of the ceiling"] if has_ceiling else []),
        ]
        section = f"## {experiment}\n\nMade by: {made_by}\n\n" + markdown_table(header, rows)
        claims_path = path.parent / "claims.csv"
        if claims_path.is_file():
            claims = read_claims(claims_path)
            section += "\n\nClaims (`claims.csv`):\n\n" + markdown_table(
                list(claims.columns), [[_cell(value) for value in row] for row in claims.itertuples(index=False)]
            )
        figures = sorted(path.parent.glob("*.png"))
        if figures:
            section += "\n\nFigures: " + ", ".join(
                f"[{figure.stem}]({_relative(figure, link_root)})" for figure in figures
            )
        parts.append(section)
    if not parts:
        return f"No results yet: no `results/*/{profile}/metrics.csv` was found. Run `make reproduce` first."
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------
# Figures, profiles, performance, timings
# ---------------------------------------------------------------------------------------


def render_figures(results_dir: Path, profile: str, link_root: Path) -> str:
    """The README's figures that exist, two a row, each with its caption."""
    cells = []
    for experiment, stem, caption in README_FIGURES:
        path = results_dir / experiment / profile / f"{stem}.png"
        if path.is_file():
            cells.append(f"{caption}<br>![{caption}]({_relative(path, link_root)})")
    if not cells:
        return f"No figures yet under `results/*/{profile}/`."
    if len(cells) % 2:
        cells.append("")
    rows = [cells[index : index + 2] for index in range(0, len(cells), 2)]
    return markdown_table([f"{_data_label(profile)}", "(each folder also holds the SVG)"], rows)


#: (label, how to read it from a dataset's settings) for the profiles table.
PROFILE_ROWS: tuple[tuple[str, Any], ...] = (
    (
        "data; image branch",
        lambda profile, s: (
            ("real data" if profile == "paper" else "synthetic")
            + "; "
            + ("trained end to end" if s["feature_mode"] == "end_to_end" else "frozen, cached ImageNet features")
        ),
    ),
    (
        "backbone",
        lambda profile, s: (
            s["backbone"] + (f", first {s['backbone_blocks']} stages" if s.get("backbone_blocks") is not None else "")
        ),
    ),
    (
        "image size / feature grid",
        lambda profile, s: f"{_setting(s.get('image_size'))} / {_setting(s.get('pool_grid'))}",
    ),
    (
        "learning rate",
        lambda profile, s: (
            _setting(s["lr"])
            + (f", {_setting(s['finetune_lr'])} after {s['frozen_epochs']} frozen epochs" if s["frozen_epochs"] else "")
        ),
    ),
    ("epochs / batch size", lambda profile, s: f"{s['epochs']} / {s['batch_size']}"),
    ("EMA decay", lambda profile, s: _setting(s["ema_decay"])),
    (
        "sampler",
        lambda profile, s: (
            s["sampler"] + (f" ({s['instances_per_label']} per id)" if s["sampler"] == "identity" else "")
        ),
    ),
    (
        "horizontal flips",
        lambda profile, s: (
            "random flip"
            if s["feature_mode"] == "end_to_end"
            else ("cached flipped copies" if s.get("cache_flips") else "none")
        ),
    ),
    (
        "joint dim / word dim / LSTM units",
        lambda profile, s: f"{s['embedding_dim']} / {s['word_dim']} / {s['hidden_size']}",
    ),
)


def _gallery(results_dir: Path, profile: str, dataset: str) -> str:
    """Test images / captions of ``dataset``: published sizes for ``paper``, else data_preparation's CSV."""
    if profile == "paper":
        from .. import data

        sizes = data.published_sizes()
        row = sizes[(sizes["dataset"] == dataset) & (sizes["split"] == "test")]
    else:
        path = results_dir / "data_preparation" / profile / "split_statistics.csv"
        if not path.is_file():
            return "see notebook 01"
        sizes = pd.read_csv(path)
        row = sizes[(sizes["dataset"] == dataset) & (sizes["split"] == "test")]
    if row.empty:
        return "n/a"
    images, captions = row.iloc[0]["images"], row.iloc[0]["captions"]
    return f"{_setting(int(images)) if not _missing(images) else '?'} / {_setting(int(captions)) if not _missing(captions) else '?'}"


def render_profiles(results_dir: Path) -> str:
    """The three profiles side by side, read from :data:`cmp_utils.training.PROFILE_SETTINGS`."""
    from .. import training

    columns = [("paper", "cuhk_pedes"), ("paper", "flickr30k"), ("quick", "cuhk_pedes"), ("smoke", "cuhk_pedes")]
    columns = [
        (profile, dataset) for profile, dataset in columns if dataset in training.PROFILE_SETTINGS.get(profile, {})
    ]
    header = ["setting"] + [f"{profile} ({dataset})" for profile, dataset in columns]
    rows = []
    for label, read in PROFILE_ROWS:
        rows.append(
            [label] + [read(profile, training.PROFILE_SETTINGS[profile][dataset]) for profile, dataset in columns]
        )
    rows.append(
        ["test gallery: images / captions"] + [_gallery(results_dir, profile, dataset) for profile, dataset in columns]
    )
    intro = (
        "_`profile`, in every notebook's `parameters` cell: `smoke` (CI), `quick` (default, a CPU), `paper` (real "
        "data, a GPU). Generated from `cmp_utils.training.PROFILE_SETTINGS` and "
        "`results/data_preparation/*/split_statistics.csv`; Flickr30K settings also stand for MSCOCO, CUB and "
        "Flowers, and each of the paper profile's rows trains the backbone the paper reports it with "
        "(`cmp_utils.experiments.PAPER_ROWS`) (MSCOCO: batch "
        f"{_setting(training.PROFILE_SETTINGS['paper'].get('mscoco', {}).get('batch_size'))})._"
    )
    return intro + "\n\n" + markdown_table(header, rows)


#: Benchmark rows the README summarises: (CSV stem, benchmark, case).
PERFORMANCE_ROWS = (
    ("training_step", "training_step/cached_features", "training throughput (full step)"),
    ("training_step", "training_step/end_to_end_mobilenet_v2", "training throughput (full step)"),
    ("losses", "losses/batch_64", "CMPM"),
    ("evaluation", "evaluation/5000x25000", "retrieval_metrics (R@K, medr, meanr, mAP, mINP)"),
    ("numerics", "numerics/quick_run", "one run (feature cache built): pinned"),
)


def _read_bench(results_dir: Path) -> dict[str, pd.DataFrame]:
    return {path.stem: pd.read_csv(path) for path in sorted((results_dir / "bench").glob("*.csv"))}


def render_performance(results_dir: Path) -> str:
    """A few benchmark figures (see :data:`PERFORMANCE_ROWS`) and the link to the full tables."""
    bench = _read_bench(results_dir)
    if not bench:
        return "No benchmark results yet (`make bench`)."
    rows = []
    for stem, benchmark, case in PERFORMANCE_ROWS:
        frame = bench.get(stem)
        if frame is None or not {"benchmark", "case", "value", "unit"} <= set(frame.columns):
            continue
        hit = frame[(frame["benchmark"] == benchmark) & (frame["case"] == case)]
        if len(hit):
            record = hit.iloc[0]
            value = f"{_cell(float(record['value']))} {record['unit']}"
            if "ratio" in record and not pd.isna(record["ratio"]) and benchmark.startswith("numerics/"):
                value += f" (x{float(record['ratio']):.2f} of {record['ratio_to'].split(' (')[0]})"
            rows.append([benchmark, case, value, record.get("machine", "")])
    gpu = bench.get("gpu")
    no_gpu = gpu is not None and len(gpu) and "case" in gpu and (gpu["case"] == "no CUDA device").all()
    table = markdown_table(["benchmark", "case", "value", "machine"], rows) if rows else "No headline rows found."
    return (
        "_From `results/bench/*.csv` (`make bench`); every row in [results/bench/README.md](results/bench/README.md)."
        + (" No GPU benchmark exists yet (`gpu.csv`: no CUDA device was present)." if no_gpu else "")
        + "_\n\n"
        + table
    )


def render_bench_readme(results_dir: Path) -> str:
    """All benchmark tables, for ``results/bench/README.md``."""
    parts = [
        "# Benchmarks",
        "_Generated by `python -m cmp_utils.reporting` from `results/bench/*.csv` (`make bench`); "
        "do not edit by hand._",
    ]
    bench = _read_bench(results_dir)
    if not bench:
        parts.append("No benchmark results yet.")
    for stem, frame in bench.items():
        rows = [[_cell(value) for value in record] for record in frame.itertuples(index=False)]
        parts.append(f"## {stem}\n\n" + markdown_table([str(column) for column in frame.columns], rows))
    return "\n\n".join(parts) + "\n"


def notebook_purpose(path: Path) -> str:
    """The one-line purpose of a notebook: the first non-empty line after its title."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    lines = [line.strip() for line in "".join(cells[0]["source"]).splitlines() if line.strip()] if cells else []
    purpose = lines[1] if len(lines) > 1 else ""
    return purpose if len(purpose) <= 80 else purpose[:77].rsplit(" ", 1)[0] + "..."


def render_timings(results_dir: Path, profile: str, notebooks_dir: Path, link_root: Path) -> str:
    """notebook | what it does | minutes, from ``results/executed/<profile>/timings.csv``."""
    path = results_dir / "executed" / profile / "timings.csv"
    timings = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["notebook", "seconds"])
    if "notebook" not in timings or "seconds" not in timings:
        raise ValueError(f"{path} lacks the columns notebook and seconds")
    timings["stem"] = timings["notebook"].astype(str).map(lambda name: Path(name).stem)
    latest = timings.drop_duplicates("stem", keep="last").set_index("stem")
    rows = []
    for notebook in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        executed = results_dir / "executed" / profile / notebook.name
        name = f"[{notebook.stem}]({_relative(executed, link_root)})" if executed.is_file() else notebook.stem
        seconds = latest["seconds"].get(notebook.stem) if notebook.stem in latest.index else None
        rows.append(
            [name, notebook_purpose(notebook), "no timing recorded yet" if _missing(seconds) else f"{seconds / 60:.1f}"]
        )
    where = ""
    if len(latest):
        machines = sorted({str(value) for value in latest.get("machine", pd.Series(dtype=str)).dropna()})
        span = ""
        if "started_at" in latest and latest["started_at"].notna().any():
            starts = pd.to_datetime(latest["started_at"], utc=True)
            ends = starts + pd.to_timedelta(latest["seconds"], unit="s")
            span = f", from {starts.min().isoformat(timespec='seconds')} to {ends.max().isoformat(timespec='seconds')}"
        checks = latest.index.isin(config.CHECK_NOTEBOOKS)
        paper_total, checks_total = latest["seconds"][~checks].sum() / 60, latest["seconds"][checks].sum() / 60
        where = (
            f"\n\nTotal: `make reproduce` {paper_total:.0f} min, `make reproduce-checks` ({', '.join(config.CHECK_NOTEBOOKS)}) "
            f"{checks_total:.0f} min" + (f", on {', '.join(machines)}" if machines else "") + span + "."
        )
    return (
        markdown_table(["notebook (executed copy)", "what it does", f"minutes ({profile}, `timings.csv`)"], rows)
        + where
    )


# ---------------------------------------------------------------------------------------
# Writing the README and results/README.md
# ---------------------------------------------------------------------------------------


def replace_between_markers(text: str, markers: tuple[str, str], body: str, source: str | Path = "the document") -> str:
    """``text`` with everything between the two ``markers`` replaced by ``body`` (markers kept, one
    newline after the start and before the end). A ``ValueError`` naming ``source`` unless ``text``
    holds exactly one start marker followed by exactly one end marker. The one place where a
    generated section (README, results/README.md, docs/fidelity.md) is written into its document."""
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(
            f"{source} needs exactly one {start} followed by one {end}; add them where the generated section should go"
        )
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip(chr(10))}\n{end}{tail}"


def render_section(name: str, results_dir: Path, profile: str, notebooks_dir: Path, link_root: Path) -> str:
    """The Markdown of one generated README section (see :data:`SECTIONS`)."""
    if name == "scorecard":
        return render_scorecard(results_dir, profile, notebooks_dir)
    if name == "headline":
        return render_headline(results_dir, profile, notebooks_dir)
    if name == "figures":
        return render_figures(results_dir, profile, link_root)
    if name == "profiles":
        return render_profiles(results_dir)
    if name == "performance":
        return render_performance(results_dir)
    if name == "timings":
        return render_timings(results_dir, profile, notebooks_dir, link_root)
    raise ValueError(f"unknown README section {name!r}; use one of {SECTIONS}")


def _write(path: Path, text: str) -> Path:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with atomic.atomic_path(path) as temporary:  # keep the permissions (mkstemp makes 0600)
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(mode)
    return path


def update_readme(
    readme: str | Path,
    results_dir: str | Path | None = None,
    profile: str = "quick",
    notebooks_dir: str | Path | None = None,
) -> list[Path]:
    """Rewrite every generated section the README has markers for, ``results/README.md`` and
    ``results/bench/README.md``; returns the paths written."""
    readme = Path(readme)
    if not readme.is_file():
        raise FileNotFoundError(f"--readme {readme} does not exist")
    config.check_profile(profile)
    results = config.results_dir(results_dir)
    notebooks = Path(notebooks_dir) if notebooks_dir is not None else readme.resolve().parent / "notebooks"
    text = readme.read_text(encoding="utf-8")
    present = [name for name in SECTIONS if marker(name)[0] in text]
    if not present:
        raise ValueError(
            f"{readme} lacks the markers of every generated section ({', '.join(marker(n)[0] for n in SECTIONS)}); "
            "add them where the generated sections should go"
        )
    link_root = readme.resolve().parent
    for name in present:
        text = replace_between_markers(
            text, marker(name), render_section(name, results, profile, notebooks, link_root), readme
        )
    results.mkdir(parents=True, exist_ok=True)
    full = (
        "# Results\n\n_Generated by `python -m cmp_utils.reporting` from `results/*/"
        f"{profile}/`; do not edit by hand. Paper values: `cmp_utils/evaluation/paper_numbers.csv` (sources: "
        "`cmp_utils/evaluation/paper_sources.csv`, docs/fidelity.md); ours: mean ± sample sd over seeds._\n\n"
        + render_full_tables(results, profile, notebooks, results)
        + "\n\n## Profiles, and how quick differs from the paper\n\n"
        + render_profiles(results)
        + "\n\n"
        + render_reproduction(results)
        + "\n"
    )
    written = [_write(readme, text), _write(results / "README.md", full)]
    written.append(_write(results / "bench" / "README.md", render_bench_readme(results)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.reporting", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", required=True, help="README to update (must hold the section markers)")
    parser.add_argument("--results", default=None, help="results folder (default: $CMP_RESULTS_DIR or ./results)")
    parser.add_argument("--profile", default="quick", help="which profile's results to report (smoke | quick | paper)")
    parser.add_argument("--notebooks", default=None, help="notebooks folder (default: notebooks/ beside the README)")
    args = parser.parse_args(argv)
    try:
        paths = update_readme(args.readme, args.results, args.profile, args.notebooks)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("updated " + ", ".join(str(path) for path in paths))
    return 0
