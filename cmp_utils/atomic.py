"""Atomic writes: a result file is either the old one or the complete new one, never half-written.

Each writer writes to a temporary file in the destination folder, flushes it, then
``os.replace``-s it over the destination (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``, on error remove it."""
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp makes owner-only files; give the result the old file's mode, or the umask's default.
        if destination.exists():
            mode = destination.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary_path, mode)
        os.replace(temporary_path, destination)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | os.PathLike, frame: Any, **to_csv_kwargs: Any) -> Path:
    """Write a pandas DataFrame to CSV atomically (no index unless asked)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **to_csv_kwargs)
    return Path(path)


def write_yaml(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as YAML atomically (keys kept in insertion order)."""
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically, so an interrupted checkpoint never replaces a good one."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
    return Path(path)
