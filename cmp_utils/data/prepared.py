"""The prepared dataset: a profile's data (real or synthetic) read once, with its vocabulary (train only)
and an image cache per split (:func:`prepare_dataset`)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..core import config
from .images import ImageCache
from .layouts import (
    CLASS_LEVEL,
    NUM_CLASSES_FROM,
    REAL_IMAGE_SIZE,
    SPLITS,
    TEST_SPLIT,
    VALIDATION_SPLIT,
    _check_name,
    _layout_error,
)
from .readers import add_indices, image_paths_of, read_dataset
from .text import TOKENISATION, Vocabulary


# ---------------------------------------------------------------------- locking
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (a lock file), so parallel processes prepare data once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------- prepared dataset
@dataclass
class PreparedDataset:
    """A dataset ready for training: frames per split, the vocabulary, the image caches.

    ``frames[split]`` has the :data:`COLUMNS` plus ``class_index`` (0..K-1 within the split,
    sorted label order) and ``image_index`` (row in ``image_cache(split).images``).
    """

    name: str
    root: Path
    synthetic: bool
    frames: dict[str, pd.DataFrame]
    vocabulary: Vocabulary
    image_size: tuple[int, int]
    prepared_dir: Path
    validation_split: str | None
    test_split: str
    _caches: dict[str, ImageCache] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.frames)

    num_classes_from: str = "all_splits"
    image_resize: str = "pil_antialias"  # how the image caches were resized (cmp_utils.data.images.IMAGE_RESIZES)

    @property
    def num_classes(self) -> int:
        """The CMPC classifier's width (columns of $W$), by ``num_classes_from``.

        ``"all_splits"`` (release): the dataset's own id range. The release feeds the raw ids
        (person id, Karpathy ``imgid``, numbered over all splits) as class indices, so its width
        is 1 + the largest training id: 11004 for CUHK-PEDES (train ids 1..11003), as its script
        says; for Flickr30K / MSCOCO the scripts' 31783 / 123287 are the files' image counts,
        which 1 + the largest training ``imgid`` reaches when the last image is a training one.
        Columns of ids never seen in training stay in the softmax. Training labels here are
        ``class_index`` (0..K_train-1); the extra columns are interchangeable with the unused
        ones (their initialisation is i.i.d.). ``"train"``: K_train, one column per training id.
        CUB / Flowers (no script released): K_train under either option.
        """
        train = self.frames["train"]
        train_classes = int(train["class_index"].max()) + 1
        if self.num_classes_from == "train" or self.name in CLASS_LEVEL:
            return train_classes
        return max(train_classes, int(train["label"].max()) + 1)

    def cache_path(self, split: str) -> Path:
        height, width = self.image_size
        method = "" if self.image_resize == "pil_antialias" else f"_{self.image_resize}"
        return self.prepared_dir / f"images_{split}_{height}x{width}{method}.npy"

    def image_cache(self, split: str) -> ImageCache:
        """The split's image cache (opened once, memory-mapped)."""
        if split not in self.frames:
            raise KeyError(f"{self.name} has no prepared split {split!r}; prepared: {', '.join(self.frames)}")
        if split not in self._caches:
            self._caches[split] = ImageCache.open(self.cache_path(split))
        return self._caches[split]


def default_image_size(name: str, synthetic: bool) -> tuple[int, int]:
    """(H, W) of the cache: the synthetic renderer's native size, or 224 x 224 for real data."""
    if synthetic:
        from .synthetic import IMAGE_SIZES

        return IMAGE_SIZES[name]
    return REAL_IMAGE_SIZE


def synthetic_root(name: str, profile: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the synthetic dataset lives: ``<cache>/synthetic/<profile>/<name>`` (seed 0) or
    ``<cache>/synthetic/<profile>/seed<k>/<name>``."""
    base = config.cache_dir(cache_dir) / "synthetic" / profile
    return (base / name) if seed == 0 else (base / f"seed{seed}" / name)


def ensure_synthetic(name: str, profile: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Generate the synthetic ``name`` for ``profile`` unless a complete copy is already there."""
    from . import synthetic

    root = synthetic_root(name, profile, seed, cache_dir)
    with _file_lock(root.parent / f".{root.name}.lock"):
        if not synthetic.is_complete(root, name, profile, seed):
            synthetic.generate(name, root, profile, seed=seed)
    return root


def dataset_root(
    name: str,
    profile: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    source: str = "auto",
) -> tuple[Path, bool]:
    """``(root, synthetic)``: the folder dataset ``name`` is read from, as :func:`prepare_dataset` chooses it.

    ``source="auto"``: real data under ``config.data_dir(data_dir)/<name>`` for the paper profile,
    synthetic data (generated here if missing) otherwise; ``"real"`` / ``"synthetic"`` force one.
    """
    _check_name(name)
    config.check_profile(profile)
    if source not in ("auto", "real", "synthetic"):
        raise ValueError(f"parameter source={source!r} must be 'auto', 'real' or 'synthetic'")
    use_synthetic = (profile != "paper") if source == "auto" else (source == "synthetic")
    if use_synthetic:
        return ensure_synthetic(name, profile, seed, cache_dir), True
    root = config.data_dir(data_dir) / name
    if not root.is_dir():
        raise _layout_error(name, root, root)
    return root, False


def files_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 over the relative path, byte size and modification time (ns) of every file under ``root``.

    Covers the annotation files and every image, so replacing any of them (even at the same
    path) changes it; hidden files (locks, temporaries) are skipped. Used in the key of
    memoised experiment runs (:func:`cmp_utils.experiments.run_key`). Costs one ``stat`` a file.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for file_name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / file_name
            status = path.stat()
            relative = path.relative_to(root).as_posix()
            digest.update(f"{relative}|{status.st_size}|{status.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _frames_fingerprint(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for path, caption in zip(frame["image_path"], frame["caption"]):
        digest.update(f"{path}\t{caption}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def prepare_dataset(
    name: str,
    profile: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    source: str = "auto",
    *,
    missing_images: str = "error",
    val_class_fraction: float | None = None,
    min_count: int = 3,
    progress: bool = False,
    vocab_case_sensitive: bool = False,
    pad_shares_most_frequent: bool = False,
    num_classes_from: str = "all_splits",
    image_resize: str = "pil_antialias",
) -> PreparedDataset:
    """Find or generate dataset ``name``, read its splits, build or reload the vocabulary and the image caches.

    ``source``: ``"auto"`` = the real data under ``config.data_dir(data_dir)/<name>`` for
    profile ``paper`` (a clear error if it is missing), synthetic data for smoke / quick;
    ``"real"`` or ``"synthetic"`` force one. Synthetic data is written (once, deterministic
    from ``seed``) under ``config.cache_dir(cache_dir)/synthetic/<profile>/<name>``.
    Vocabulary and caches go to ``<cache>/prepared/<real|synthetic/<profile>/seed<k>>/<name>/``;
    the vocabulary is built from the train split only and reloaded afterwards (rebuilt only
    when the training captions, the tokenisation rule or the vocabulary options change; each
    option setting has its own file, :func:`vocabulary_file_name`). ``val_class_fraction``
    (cub / flowers): None = 0 for profile ``paper`` (the final model trains on all trainval
    classes, no validation split: the last epoch is kept) and 0.2 otherwise (a validation split
    of whole trainval classes); pass 0.2 to the paper profile to hold classes out.

    Recipe options (release default first): ``vocab_case_sensitive`` (tokens keep case and the
    vocabulary tells "A" from "a", a port), ``pad_shares_most_frequent`` (see
    :class:`cmp_utils.data.text.Vocabulary`), ``num_classes_from`` (``"all_splits"`` | ``"train"``,
    see :attr:`PreparedDataset.num_classes`), ``image_resize`` (:data:`cmp_utils.data.images.IMAGE_RESIZES`:
    how images are resized into the caches; the paper profile uses the release's ``"tf1_bilinear"``).
    """
    root, use_synthetic = dataset_root(name, profile, data_dir, cache_dir, seed, source)
    if use_synthetic:
        prepared_dir = config.cache_dir(cache_dir) / "prepared" / "synthetic" / profile / f"seed{seed}" / name
    else:
        prepared_dir = config.cache_dir(cache_dir) / "prepared" / "real" / name
    if num_classes_from not in NUM_CLASSES_FROM:
        raise ValueError(f"parameter num_classes_from={num_classes_from!r} must be one of {NUM_CLASSES_FROM}")
    if name in CLASS_LEVEL:
        fraction = (0.0 if profile == "paper" else 0.2) if val_class_fraction is None else float(val_class_fraction)
        split_names = ["train", "val", "test"] if fraction > 0 else ["train", "test"]
        validation_split = "val" if fraction > 0 else None
    else:
        fraction = 0.0
        split_names = [split for split in SPLITS[name] if split != "trainval"]  # icfg_pedes: trainval = train + val
        validation_split = VALIDATION_SPLIT[name]
    frames = {
        split: add_indices(
            read_dataset(
                name,
                root,
                split,
                missing_images=missing_images,
                val_class_fraction=fraction,
                lowercase=not vocab_case_sensitive,
            )
        )
        for split in split_names
    }
    for split, frame in frames.items():
        if frame.empty:
            raise ValueError(f"{name}/{split} under {root} has no captions; check the annotation files")
    size = tuple(image_size) if image_size is not None else default_image_size(name, use_synthetic)
    with _file_lock(prepared_dir / ".prepare.lock"):
        options = {
            "case_sensitive": bool(vocab_case_sensitive),
            "pad_shares_most_frequent": bool(pad_shares_most_frequent),
        }
        vocabulary_path = prepared_dir / vocabulary_file_name(**options)
        train_key = _frames_fingerprint(frames["train"])
        vocabulary = None
        if vocabulary_path.is_file():
            loaded = Vocabulary.load(vocabulary_path)
            if (
                loaded.meta.get("train_fingerprint") == train_key
                and loaded.min_count == min_count
                and loaded.meta.get("tokenisation") == TOKENISATION
                and loaded.options == options
            ):
                vocabulary = loaded
        if vocabulary is None:
            vocabulary = Vocabulary.build(
                frames["train"]["tokens"],
                min_count=min_count,
                meta={
                    "dataset": name,
                    "built_from": "train",
                    "root": str(root),
                    "train_fingerprint": train_key,
                    "tokenisation": TOKENISATION,
                },
                **options,
            )
            vocabulary.save(vocabulary_path)
            vocabulary = Vocabulary.load(vocabulary_path)
        prepared = PreparedDataset(
            name=name,
            root=root,
            synthetic=use_synthetic,
            frames=frames,
            vocabulary=vocabulary,
            image_size=size,
            prepared_dir=prepared_dir,
            validation_split=validation_split,
            test_split=TEST_SPLIT[name],
            num_classes_from=num_classes_from,
            image_resize=image_resize,
        )
        for split, frame in frames.items():
            paths = image_paths_of(frame)
            if not use_synthetic and not ImageCache.is_current(prepared.cache_path(split), paths, size, image_resize):
                print(
                    f"image cache of {name}/{split}: {len(paths)} images x {size[0]} x {size[1]} x 3 bytes = "
                    f"{len(paths) * size[0] * size[1] * 3 / 1e9:.2f} GB, written once to {prepared.cache_path(split)} "
                    "(set CMP_CACHE_DIR to put it elsewhere)",
                    file=sys.stderr,
                    flush=True,
                )
            prepared._caches[split] = ImageCache.build(
                paths, size, prepared.cache_path(split), progress=progress, resize=image_resize
            )
    return prepared


def vocabulary_file_name(case_sensitive: bool = False, pad_shares_most_frequent: bool = False) -> str:
    """``vocabulary.json`` for the release's options, ``vocabulary_cased_padshared.json`` etc. otherwise."""
    suffix = ("_cased" if case_sensitive else "") + ("_padshared" if pad_shares_most_frequent else "")
    return f"vocabulary{suffix}.json"


RECIPE_OPTIONS = ("vocab_case_sensitive", "pad_shares_most_frequent", "num_classes_from", "image_resize")


def recipe_options(settings: Any) -> dict[str, Any]:
    """The data-side recipe options of a run's settings (a ``TrainConfig``), as keywords of
    :func:`prepare_dataset` and :func:`check_prepared_options`."""
    return {name: getattr(settings, name) for name in RECIPE_OPTIONS}


def check_prepared_options(
    prepared: PreparedDataset,
    *,
    vocab_case_sensitive: bool,
    pad_shares_most_frequent: bool,
    num_classes_from: str,
    image_resize: str = "pil_antialias",
) -> None:
    """Raise ``ValueError`` when ``prepared`` was made with other recipe options than a run's settings."""
    wanted = {
        "vocab_case_sensitive": bool(vocab_case_sensitive),
        "pad_shares_most_frequent": bool(pad_shares_most_frequent),
        "num_classes_from": num_classes_from,
        "image_resize": image_resize,
    }
    found = {
        "vocab_case_sensitive": prepared.vocabulary.case_sensitive,
        "pad_shares_most_frequent": prepared.vocabulary.pad_shares_most_frequent,
        "num_classes_from": prepared.num_classes_from,
        "image_resize": prepared.image_resize,
    }
    differ = {key: (found[key], wanted[key]) for key in wanted if found[key] != wanted[key]}
    if differ:
        details = ", ".join(f"{key}: prepared {have!r}, settings {want!r}" for key, (have, want) in differ.items())
        raise ValueError(
            f"the prepared {prepared.name} data does not match the run's settings ({details}); "
            f"prepare it with data.prepare_dataset(..., {', '.join(f'{k}={v!r}' for k, v in wanted.items())})"
        )
