"""Figure helpers shared by the notebooks: PNG+SVG saving.

Headless runs need nothing special: matplotlib falls back to the Agg backend when no
display exists, and under papermill the kernel's inline backend renders figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

from .atomic import atomic_path


def save_figure(fig: "plt.Figure", path_stem: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``<path_stem>.png`` and ``<path_stem>.svg`` (atomically); return both paths."""
    stem = Path(path_stem)
    if stem.suffix in (".png", ".svg"):
        stem = stem.with_suffix("")
    written = []
    for suffix in (".png", ".svg"):
        destination = stem.with_suffix(suffix)
        with atomic_path(destination) as temporary:
            fig.savefig(temporary, format=suffix[1:], dpi=dpi, bbox_inches="tight")
        written.append(destination)
    return written
