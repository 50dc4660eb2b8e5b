"""Images: the decoded-image cache and the per-backbone input transforms.

Facts followed (reference: data processing of the released code): images are resized to a
fixed size with no crop (224 x 224 for the paper's real data), randomly flipped left-right
in training; MobileNet input is scaled to [-1, 1], ResNet input is mean-subtracted
(123.68, 116.78, 103.94) on the 0..255 scale.

:class:`ImageCache` decodes and resizes every image of a split **once** into a uint8 array
of shape ``(num_images, H, W, 3)`` stored as a ``.npy`` file, then memory-maps it, so a
training step reads pixels from the page cache and never opens a JPEG. A JSON file beside
it holds the paths and a fingerprint of the content: the size asked for, and the path, byte
size and modification time (ns) of every image, so an image replaced at the same path makes
the cache stale. A stale cache is rebuilt; so is a damaged one (a truncated ``.npy``, broken
metadata), with a warning naming the file. The feature caches of
:func:`cmp_utils.training.feature_cache_path` hash this fingerprint, so they follow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

CACHE_FORMAT = "cmp-repro-image-cache-2"  # 2: the fingerprint covers each image's byte size and mtime
BACKBONE_NORMALISATION = {
    # name: (scale applied to 0..255, per-channel mean subtracted after scaling)
    "mobilenet": "x / 127.5 - 1  -> [-1, 1]",
    "resnet": "x - (123.68, 116.78, 103.94)  (0..255 scale, RGB)",
    "unit": "x / 255  -> [0, 1]",
}
RESNET_MEAN_RGB = (123.68, 116.78, 103.94)
#: How an image is resized to the cache's size: ``"tf1_bilinear"`` = the release's
#: ``tf.image.resize_images`` of TF 1.4 on the float image (bilinear, no antialiasing,
#: ``align_corners=False`` without half-pixel centres: output pixel x reads input x * in / out),
#: rounded to uint8 for the cache (at most 0.5/255 off); ``"pil_antialias"`` = PIL's bilinear,
#: which antialiases (averages over the footprint) when shrinking.
IMAGE_RESIZES = ("tf1_bilinear", "pil_antialias")


# ---------------------------------------------------------------------- transforms
def to_channels_first(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` or ``(B, 3, H, W)`` (or one image without B) -> ``(B, 3, H, W)`` tensor, same dtype."""
    if isinstance(images, np.ndarray):
        # a read-only memmap slice is copied (torch tensors must be writable); uint8 copies are cheap
        tensor = torch.from_numpy(images if images.flags.writeable else np.array(images))
    else:
        tensor = images
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4:
        raise ValueError(f"images must have shape (B, H, W, 3) or (B, 3, H, W), got {tuple(tensor.shape)}")
    if tensor.shape[-1] == 3 and tensor.shape[1] != 3:
        tensor = tensor.permute(0, 3, 1, 2)
    elif tensor.shape[1] != 3:
        raise ValueError(f"images must have 3 colour channels first or last, got shape {tuple(tensor.shape)}")
    return tensor


def normalise(images: np.ndarray | torch.Tensor, backbone: str) -> torch.Tensor:
    """uint8 images -> float32 ``(B, 3, H, W)`` scaled the way ``backbone`` expects.

    ``backbone``: ``"mobilenet"`` ([-1, 1]), ``"resnet"`` (subtract the RGB mean
    123.68, 116.78, 103.94 on the 0..255 scale) or ``"unit"`` ([0, 1], for small CNNs).
    Layout ``(B, H, W, 3)`` or ``(B, 3, H, W)`` is accepted; a ``(H, W, 3)`` image gets B = 1.
    """
    if backbone not in BACKBONE_NORMALISATION:
        raise ValueError(
            f"parameter backbone={backbone!r} is not known; use one of {', '.join(BACKBONE_NORMALISATION)}"
        )
    tensor = to_channels_first(images)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"normalise expects uint8 images (0..255), got {tensor.dtype}")
    pixels = tensor.to(torch.float32)  # (B, 3, H, W) on 0..255
    if backbone == "mobilenet":
        return pixels / 127.5 - 1.0
    if backbone == "resnet":
        mean = torch.tensor(RESNET_MEAN_RGB, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        return pixels - mean
    return pixels / 255.0


def random_horizontal_flip(
    images: torch.Tensor, probability: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flip each image of ``(B, 3, H, W)`` left-right with ``probability`` (training augmentation)."""
    if images.dim() != 4:
        raise ValueError(f"random_horizontal_flip expects (B, C, H, W), got {tuple(images.shape)}")
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < probability  # (B,)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


# ---------------------------------------------------------------------- decoding
def _legacy_bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, weight of the upper) per output position along one axis, as TF 1.x's
    ``resize_bilinear(align_corners=False)``: source = out * in / out_size, no half-pixel offset."""
    source = np.arange(out_size, dtype=np.float64) * (in_size / out_size)  # (out_size,)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (source - lower).astype(np.float32)


def tf1_resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``pixels`` (H, W, C), any numeric dtype -> float32 (size[0], size[1], C) resized as the release's
    ``tf.image.resize_images`` (TF 1.4: bilinear, no antialiasing, legacy pixel mapping)."""
    image = pixels.astype(np.float32)
    rows_low, rows_high, row_weight = _legacy_bilinear_axis(image.shape[0], int(size[0]))
    cols_low, cols_high, col_weight = _legacy_bilinear_axis(image.shape[1], int(size[1]))
    top, bottom = image[rows_low], image[rows_high]  # (out_h, W, C)
    vertical = top + (bottom - top) * row_weight[:, None, None]
    left, right = vertical[:, cols_low], vertical[:, cols_high]  # (out_h, out_w, C)
    return left + (right - left) * col_weight[None, :, None]


def decode_image(path: str | os.PathLike, size: tuple[int, int], resize: str = "pil_antialias") -> np.ndarray:
    """Open ``path``, convert to RGB and resize (no crop) to ``size = (H, W)`` as ``resize`` says
    (:data:`IMAGE_RESIZES`): uint8 ``(H, W, 3)``."""
    from PIL import Image, UnidentifiedImageError

    if resize not in IMAGE_RESIZES:
        raise ValueError(f"parameter resize={resize!r} must be one of {IMAGE_RESIZES}")
    height, width = size
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size == (width, height):
                return np.asarray(image, dtype=np.uint8)
            if resize == "tf1_bilinear":
                resized = tf1_resize_bilinear(np.asarray(image, dtype=np.uint8), (height, width))
                return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
            image = image.resize((width, height), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"image file {path} does not exist") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"could not decode image {path}: {error}. Replace or remove the file, "
            "or drop its rows before building the cache"
        ) from error


def fingerprint(paths: Sequence[str], size: tuple[int, int], resize: str = "pil_antialias") -> str:
    """SHA-256 over the cache format, the image size, the resize method (when not PIL's, so the
    caches made before it was an option stay current) and, per image in order, its path, byte
    size and modification time in ns (a missing image counts as size -1)."""
    digest = hashlib.sha256()
    method = "" if resize == "pil_antialias" else f"|{resize}"
    digest.update(f"{CACHE_FORMAT}|{int(size[0])}x{int(size[1])}{method}|{len(paths)}\n".encode())
    for path in paths:
        try:
            status = os.stat(path)
            stamp = f"{status.st_size}|{status.st_mtime_ns}"
        except OSError:
            stamp = "-1|-1"
        digest.update(str(path).encode("utf-8", "surrogateescape") + f"|{stamp}\n".encode())
    return digest.hexdigest()


def _metadata_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".json")


def _reserve_disk_space(path: Path) -> None:
    """Allocate the blocks of the (sparse) file at ``path`` now, so a disk too small for an image
    cache fails here with ``OSError: No space left on device`` instead of killing the process with
    SIGBUS when a memory-mapped page is first written. Where ``posix_fallocate`` is missing or the
    file system does not support it, nothing is reserved."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as stream:
        try:
            os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            raise


class ImageCache:
    """Decoded, resized uint8 images, memory-mapped: ``images`` has shape ``(num_images, H, W, 3)``.

    Build with :meth:`build` (decodes once, or reopens a matching cache), reopen with :meth:`open`.
    ``paths[i]`` is the file behind ``images[i]``; :meth:`index_of` maps back.
    """

    def __init__(self, images: np.ndarray, paths: Sequence[str], size: tuple[int, int], cache_path: Path, key: str):
        self.images = images  # (num_images, H, W, 3) uint8 memmap
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
        self.cache_path = Path(cache_path)
        self.fingerprint = key
        self._index = {path: index for index, path in enumerate(self.paths)}

    def __len__(self) -> int:
        return len(self.paths)

    def index_of(self, path: str | os.PathLike) -> int:
        """Row of ``path`` in :attr:`images` (KeyError naming the path if it is not cached)."""
        try:
            return self._index[str(path)]
        except KeyError:
            raise KeyError(f"image {path} is not in the cache {self.cache_path}") from None

    def __getstate__(self) -> dict:
        """Pickle the location, not the pixels: a DataLoader worker (spawn) reopens the memmap."""
        return {"cache_path": str(self.cache_path)}

    def __setstate__(self, state: dict) -> None:
        reopened = ImageCache.open(state["cache_path"])
        self.__dict__.update(reopened.__dict__)

    def __repr__(self) -> str:
        return f"ImageCache({len(self)} images of {self.size[0]}x{self.size[1]} at {self.cache_path})"

    # ------------------------------------------------------------------ open / build
    @classmethod
    def open(cls, cache_path: str | os.PathLike) -> "ImageCache":
        """Reopen a cache written by :meth:`build` without decoding anything."""
        cache_path = Path(cache_path)
        meta_path = _metadata_path(cache_path)
        if not cache_path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"no complete image cache at {cache_path} (needs {cache_path.name} and "
                f"{meta_path.name}); build it with ImageCache.build(paths, size, cache_path)"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"image cache metadata {meta_path} is not valid JSON ({error}); delete it to rebuild"
            ) from error
        try:
            images = np.load(cache_path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as error:  # truncated or overwritten .npy
            raise ValueError(
                f"image cache {cache_path} is damaged ({error}); ImageCache.build rebuilds it, or "
                f"delete {cache_path} and {meta_path}"
            ) from error
        if not isinstance(meta, dict) or not {"size", "paths", "fingerprint"} <= set(meta):
            raise ValueError(
                f"image cache metadata {meta_path} lacks size/paths/fingerprint; delete it and {cache_path} to rebuild"
            )
        size = tuple(meta["size"])
        expected_shape = (len(meta["paths"]), size[0], size[1], 3)
        if images.shape != expected_shape or images.dtype != np.uint8:
            raise ValueError(
                f"image cache {cache_path} holds {images.shape} {images.dtype}, its metadata says "
                f"{expected_shape} uint8; delete both files to rebuild"
            )
        return cls(images, meta["paths"], size, cache_path, meta["fingerprint"])

    @classmethod
    def is_current(
        cls,
        cache_path: str | os.PathLike,
        image_paths: Sequence[str],
        size: tuple[int, int],
        resize: str = "pil_antialias",
    ) -> bool:
        """True when a cache at ``cache_path`` exists and was built from exactly these paths at this size."""
        meta_path = _metadata_path(Path(cache_path))
        if not Path(cache_path).is_file() or not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            return False
        return meta.get("fingerprint") == fingerprint([str(p) for p in image_paths], size, resize)

    @classmethod
    def build(
        cls,
        image_paths: Sequence[str | os.PathLike],
        size: tuple[int, int],
        cache_path: str | os.PathLike,
        progress: bool = True,
        workers: int | None = None,
        resize: str = "pil_antialias",
    ) -> "ImageCache":
        """Decode ``image_paths`` resized to ``size = (H, W)`` into ``cache_path`` (``.npy``) and open it.

        A cache already there with the same fingerprint (paths + size) is reopened without
        decoding; a stale one is rebuilt. The array is written to a temporary file and moved
        into place only when complete, then the metadata is written (also atomically).
        """
        from ..core.atomic import atomic_path, write_text

        paths = [str(p) for p in image_paths]
        if len(set(paths)) != len(paths):
            raise ValueError("ImageCache.build: image_paths contains duplicates; pass each image once")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"parameter size={size!r} must be (height, width) with positive integers")
        size = (int(size[0]), int(size[1]))
        cache_path = Path(cache_path)
        if cls.is_current(cache_path, paths, size, resize):
            try:
                return cls.open(cache_path)
            except ValueError as error:  # current by its metadata, but the array is damaged: rebuild
                warnings.warn(f"{error}; rebuilding it", stacklevel=2)
        key = fingerprint(paths, size, resize)
        meta_path = _metadata_path(cache_path)
        if meta_path.exists():
            meta_path.unlink()  # stale: invalidate first, so a crash mid-build never leaves a "current" cache
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        iterator_progress = None
        if progress:
            from tqdm.auto import tqdm

            iterator_progress = tqdm(total=len(paths), desc=f"decoding {cache_path.name}", unit="img", leave=False)
        with atomic_path(cache_path) as temporary:
            array = np.lib.format.open_memmap(
                temporary, mode="w+", dtype=np.uint8, shape=(len(paths), size[0], size[1], 3)
            )
            _reserve_disk_space(temporary)
            workers = workers or min(8, os.cpu_count() or 1)
            chunk = 256
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for start in range(0, len(paths), chunk):
                    batch = paths[start : start + chunk]
                    for offset, pixels in enumerate(pool.map(lambda p: decode_image(p, size, resize), batch)):
                        array[start + offset] = pixels
                    if iterator_progress is not None:
                        iterator_progress.update(len(batch))
            array.flush()
            del array
        if iterator_progress is not None:
            iterator_progress.close()
        write_text(
            meta_path,
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "fingerprint": key,
                    "size": list(size),
                    "num_images": len(paths),
                    "paths": paths,
                }
            ),
        )
        return cls.open(cache_path)
