"""Executed notebooks made fit to commit: machine paths scrubbed, figures shrunk, no SVG copies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..core import atomic, config

# ---------------------------------------------------------------------------------------
# Executed notebooks: no machine paths, bounded size
# ---------------------------------------------------------------------------------------

_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~-])/(?:home|root|tmp|work|Users|private|var/folders|mnt|scratch)/[^\s'\"<>)\]},:]*"
)


def scrub_text(text: str, roots: Sequence[Path]) -> str:
    """``text`` with each of ``roots`` made relative (``.``) and any other absolute machine path
    under /home, /root, /tmp, /work, ... replaced by ``<path>``."""
    for root in sorted({str(Path(r)) for r in roots}, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    return _ABSOLUTE_PATH.sub("<path>", text)


#: Inline figures of executed notebooks wider than this (pixels) are scaled down (bounds the committed size).
MAX_INLINE_WIDTH = 900


def shrink_png(encoded: str, max_width: int = MAX_INLINE_WIDTH, max_bytes: int = 100_000) -> str:
    """A base64 PNG no wider than ``max_width`` pixels (scaled down, aspect kept) and, when larger
    than ``max_bytes``, reduced to a 256-colour palette (figures have few colours); the input
    unchanged when it is already small enough or not a readable PNG."""
    import base64
    import io

    from PIL import Image

    try:
        raw = base64.b64decode("".join(encoded.split()))
        image = Image.open(io.BytesIO(raw))
    except (ValueError, OSError):  # not a readable PNG: leave it as the kernel wrote it
        return encoded
    if image.width <= max_width and len(raw) <= max_bytes:
        return encoded
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))), Image.LANCZOS)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA")
    image = image.quantize(256, method=Image.Quantize.FASTOCTREE)  # keeps transparency
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def scrub_notebook(path: str | Path, roots: Sequence[str | Path] | None = None) -> Path:
    """Remove machine paths from an executed notebook's outputs and metadata, drop SVG copies of
    figures that also have a PNG and scale inline PNGs down to :data:`MAX_INLINE_WIDTH` (bounds the
    size); rewrites ``path`` atomically.

    ``roots`` (default: the project root, the results and cache folders) become relative.
    """
    path = Path(path)
    roots = (
        [Path(r) for r in roots]
        if roots is not None
        else [config.project_root(), config.results_dir(), config.cache_dir()]
    )
    notebook = json.loads(path.read_text(encoding="utf-8"))

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return scrub_text(value, roots)
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        return value

    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                data.pop("image/svg+xml", None)
                png = data["image/png"]
                data["image/png"] = shrink_png("".join(png) if isinstance(png, list) else png)
                output.get("metadata", {}).pop("image/png", None)  # its width/height no longer apply
        cell["outputs"] = clean(cell.get("outputs", [])) if "outputs" in cell else cell.get("outputs")
        if "outputs" not in cell or cell["outputs"] is None:
            cell.pop("outputs", None)
        cell["metadata"] = clean(cell.get("metadata", {}))
    notebook["metadata"] = clean(notebook.get("metadata", {}))
    notebook["metadata"].pop("widgets", None)
    return atomic.write_text(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
