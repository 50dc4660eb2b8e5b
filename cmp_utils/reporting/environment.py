"""What ``00_environment.ipynb`` reports: versions, device, datasets found, offline weights."""

from __future__ import annotations

import os
from pathlib import Path
import platform
import sys

import pandas as pd
import torch

from ..core import config


def versions() -> pd.DataFrame:
    """Versions of Python and the packages the project runs on."""
    import papermill
    import torchvision

    rows = [
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("papermill", papermill.__version__),
        ("cuda (torch build)", str(torch.version.cuda)),
    ]
    return pd.DataFrame(rows, columns=["component", "version"])


def device_report(device: str = "auto") -> pd.DataFrame:
    """The device ``device`` resolves to, GPU names and memory, CPU threads, and the CPU numerics
    (:func:`cmp_utils.core.numerics.status`: pinned or native, and what oneMKL, ATen and oneDNN run)."""
    from ..core import numerics

    resolved = config.resolve_device(device)
    rows = [
        ("requested", device),
        ("resolved", str(resolved)),
        ("cpu cores", str(os.cpu_count())),
        ("torch threads", str(torch.get_num_threads())),
        ("cuda available", str(torch.cuda.is_available())),
        *((f"cpu numerics: {key}", str(value)) for key, value in numerics.status().items()),
    ]
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        rows.append((f"cuda:{index}", f"{properties.name}, {properties.total_memory / 2**30:.1f} GiB"))
    return pd.DataFrame(rows, columns=["item", "value"])


def portable_path(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> str:
    """``path`` without this machine's prefix, for files that get committed: ``<data_dir>/...`` under
    the data dir, relative under the project, else ``<outside the project>/<name>``."""
    path = Path(path).resolve()
    for base, label in ((config.data_dir(data_dir), "<data_dir>/"), (config.project_root(), "")):
        try:
            return label + path.relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return f"<outside the project>/{path.name}"


def dataset_presence(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """For each paper dataset: the expected layout under the data dir and what is found or missing."""
    root = config.data_dir(data_dir)
    rows = []
    for name, layout in config.DATASET_LAYOUTS.items():
        expected = [*layout["files"], *(f + "/" for f in layout["folders"])]
        missing = [item for item in expected if not (root / name / item.rstrip("/")).exists()]
        rows.append(
            {
                "dataset": name,
                "path": portable_path(root / name, data_dir),
                "expected layout": ", ".join(expected),
                "status": "found" if not missing else "missing",
                "missing": ", ".join(missing),
            }
        )
    return pd.DataFrame(rows)


def check_mobilenet_v2_weights() -> dict[str, object]:
    """Load the offline weights into torchvision's MobileNetV2 and report what loaded."""
    import torchvision

    from ..models import mobilenet_v2_weights_path

    path = mobilenet_v2_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision.models.mobilenet_v2()
    result = model.load_state_dict(state, strict=True)
    return {
        "path": portable_path(path),
        "tensors": len(state),
        "parameters": sum(p.numel() for p in model.parameters()),
        "missing keys": len(result.missing_keys),
        "unexpected keys": len(result.unexpected_keys),
        "loads": not result.missing_keys and not result.unexpected_keys,
    }
