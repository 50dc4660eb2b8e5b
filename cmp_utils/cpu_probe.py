"""Which CPU kernels give other bits under another ISA or CPU vendor: ``python -m cmp_utils.cpu_probe``.

``python -m cmp_utils.cpu_probe probe`` runs :func:`kernel_fingerprints` in one process per setting
of :data:`PROBE_VARIANTS` (the ISA caps a CPU of another kind takes, oneMKL's non-Intel path, and
the pinned numerics of :mod:`cmp_utils.numerics` under each) and prints one row per kernel: ``=``
where the bits equal this CPU's default, else their hash. ``status`` prints this process's numerics;
``fingerprints`` the kernel hashes of this process (JSON). docs/reproducibility.md shows the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .numerics import MODE_VARIABLE, PINNED_ENVIRONMENT, status
#: Settings the probe compares with the default, as a CPU of another kind would take them. Each runs
#: in its own process in native mode (so only the named variables act), except ``pinned``.
PROBE_VARIANTS: dict[str, dict[str, str]] = {
    "native (this CPU's default)": {MODE_VARIABLE: "native"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {MODE_VARIABLE: "native", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL_ENABLE_INSTRUCTIONS=AVX2": {MODE_VARIABLE: "native", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "ATEN_CPU_CAPABILITY=avx2": {MODE_VARIABLE: "native", "ATEN_CPU_CAPABILITY": "avx2"},
    "non-Intel vendor (simulated)": {MODE_VARIABLE: "native", "LD_PRELOAD": "<vendor shim>"},
    "MKL_CBWR=AVX2": {MODE_VARIABLE: "native", "MKL_CBWR": "AVX2"},
    "non-Intel vendor, MKL_CBWR=AVX2": {MODE_VARIABLE: "native", "MKL_CBWR": "AVX2", "LD_PRELOAD": "<vendor shim>"},
    "pinned": {MODE_VARIABLE: "pinned"},
    "pinned, AVX2 caps": {MODE_VARIABLE: "pinned", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "pinned, non-Intel vendor (simulated)": {MODE_VARIABLE: "pinned", "LD_PRELOAD": "<vendor shim>"},
}

#: A shared object that answers oneMKL's "is this an Intel CPU?" with no, as on an AMD EPYC: oneMKL
#: then takes the path it takes on other vendors' CPUs. (libtorch_cpu exports these service calls,
#: so the preloaded definitions replace oneMKL's own.)
VENDOR_SHIM_SOURCE = """int mkl_serv_intel_cpu_true(void) { return 0; }
int mkl_serv_intel_cpu(void) { return 0; }
"""


def vendor_shim(folder: str | os.PathLike) -> Path | None:
    """Compile :data:`VENDOR_SHIM_SOURCE` into ``folder`` (``cc`` needed); None when no compiler is found."""
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        return None
    folder = Path(folder)
    source, shared = folder / "non_intel_vendor.c", folder / "non_intel_vendor.so"
    if not shared.is_file():
        source.write_text(VENDOR_SHIM_SOURCE)
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(shared), str(source)], check=True,
                       capture_output=True)
    return shared


def kernel_fingerprints(seed: int = 0) -> dict[str, str]:
    """A hash of the output bits of each kernel family the project's runs use (one torch thread):
    MobileNetV2's convolutions (3x3, 1x1, depthwise; the cached features), the GEMMs of a joint
    embedding forward and backward and of an evaluation similarity matrix, the LSTM forward and
    backward, log-softmax, a row sum, ``exp`` / ``tanh`` / ``sigmoid``, batch norm."""
    import torch
    import torchvision

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)

    def digest(tensor: torch.Tensor) -> str:
        return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:12]

    out: dict[str, str] = {}
    network = torchvision.models.mobilenet_v2().eval()
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.1, generator=generator)
    images = torch.randn(8, 3, 128, 64, generator=generator)  # (batch, 3, H, W): the quick person renders
    with torch.no_grad():
        out["conv 3x3 (oneDNN)"] = digest(network.features[0][0](images))
        block = network.features[2].conv  # 16 -> 96 channels (1x1), then 3x3 depthwise on 96
        out["conv 1x1 (MKL GEMM)"] = digest(block[0][0](torch.randn(8, 16, 64, 32, generator=generator)))
        out["conv depthwise (oneDNN)"] = digest(block[1][0](torch.randn(8, 96, 64, 32, generator=generator)))
        out["MobileNetV2 features[:11]"] = digest(network.features[:11](images))
    layer = torch.nn.Linear(2048, 256)  # the quick joint embedding's input and output widths
    for parameter in layer.parameters():
        parameter.data.normal_(0, 0.02, generator=generator)
    inputs = torch.randn(64, 2048, generator=generator, requires_grad=True)  # (batch, features)
    outputs = layer(inputs)
    outputs.pow(2).sum().backward()
    out["linear forward (MKL GEMM)"] = digest(outputs)
    out["linear backward (MKL GEMM)"] = digest(torch.cat([layer.weight.grad.ravel(), inputs.grad.ravel()]))
    queries, gallery = torch.randn(300, 256, generator=generator), torch.randn(600, 256, generator=generator)
    out["similarity matrix (MKL GEMM)"] = digest(queries @ gallery.T)
    lstm = torch.nn.LSTM(64, 64, bidirectional=True, batch_first=True)
    for parameter in lstm.parameters():
        parameter.data.uniform_(-0.1, 0.1, generator=generator)
    words = torch.randn(64, 20, 64, generator=generator, requires_grad=True)  # (batch, steps, word_dim)
    states, _ = lstm(words)
    states.sum().backward()
    out["LSTM forward (oneDNN)"] = digest(states)
    out["LSTM backward (oneDNN)"] = digest(words.grad)
    out["log-softmax (ATen)"] = digest(torch.log_softmax(torch.randn(64, 1001, generator=generator), 1))
    out["row sum (ATen)"] = digest(torch.randn(1000, 777, generator=generator).sum(1))
    values = torch.randn(100000, generator=generator)
    out["exp (MKL VML)"] = digest(values.exp())
    out["tanh, sigmoid"] = digest(torch.cat([values.tanh(), values.sigmoid()]))
    out["batch norm (ATen)"] = digest(torch.nn.BatchNorm1d(256).train()(torch.randn(64, 256, generator=generator)))
    return out


def probe(variants: Mapping[str, Mapping[str, str]] | None = None) -> "Any":
    """Run :func:`kernel_fingerprints` in one process per variant (:data:`PROBE_VARIANTS`); a table with
    one row per kernel and one column per variant: ``=`` where the bits equal the first variant's, else
    the hash. A variant that needs the vendor shim is left out when no C compiler is found."""
    import subprocess
    import tempfile

    import pandas as pd

    variants = dict(PROBE_VARIANTS if variants is None else variants)
    columns: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="cmp-numerics-") as scratch:
        shim = None
        for name, settings in variants.items():
            environ = {k: v for k, v in os.environ.items() if k not in (*PINNED_ENVIRONMENT, "MKL_ENABLE_INSTRUCTIONS")}
            environ.update(settings)
            if settings.get("LD_PRELOAD") == "<vendor shim>":
                shim = shim or vendor_shim(scratch)
                if shim is None:
                    continue
                environ["LD_PRELOAD"] = str(shim)
            completed = subprocess.run([sys.executable, "-m", "cmp_utils.cpu_probe", "fingerprints"], env=environ,
                                       capture_output=True, text=True, check=True)
            columns[name] = json.loads(completed.stdout.strip().splitlines()[-1])
    table = pd.DataFrame(columns)
    reference = table.iloc[:, 0]
    shown = table.copy()
    for column in table.columns[1:]:
        shown[column] = [("=" if value == ref else value) for value, ref in zip(table[column], reference)]
    shown.index.name = "kernel"
    return shown


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cmp_utils.cpu_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("status", "probe", "fingerprints"), nargs="?", default="status",
                        help="status: this process's numerics; probe: which kernels change under another ISA or "
                             "vendor (one process per setting); fingerprints: this process's kernel hashes (JSON)")
    parser.add_argument("--output", help="probe: also write the table to this CSV (e.g. results/numerics/kernels.csv)")
    args = parser.parse_args(argv)
    if args.command == "fingerprints":
        print(json.dumps(kernel_fingerprints()))
    elif args.command == "probe":
        import pandas as pd

        table = probe()
        with pd.option_context("display.width", 250, "display.max_columns", None):
            print(table.to_string())
        if args.output:
            from . import atomic

            state = status()
            atomic.write_csv(Path(args.output), table.reset_index().assign(cpu=state["cpu"], vendor=state["cpu_vendor"]))
    else:
        import torch  # noqa: F401  (status reports the libraries' choices, which need torch loaded)

        for key, value in status().items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
