"""Which CPU kernels give other bits under another ISA or CPU vendor: ``python -m cmp_utils.tools.cpu_probe``.

``python -m cmp_utils.tools.cpu_probe probe`` runs :func:`kernel_fingerprints` in one process per setting
of :data:`PROBE_VARIANTS` (the ISA caps a CPU of another kind takes, oneMKL's non-Intel path, and
the pinned numerics of :mod:`cmp_utils.core.numerics` under each) and prints one row per kernel: ``=``
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

from ..core.numerics import MODE_VARIABLE, PINNED_ENVIRONMENT, status

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
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(shared), str(source)], check=True, capture_output=True
        )
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
    out["exp (MKL VML; replaced when pinned)"] = digest(values.exp())
    out["tanh, sigmoid"] = digest(torch.cat([values.tanh(), values.sigmoid()]))
    positive = values.abs() * 30 + 1e-30
    out["sqrt, log (MKL VML; replaced when pinned)"] = digest(torch.cat([positive.sqrt(), positive.log()]))
    out.update(optimiser_fingerprints(generator))
    out["batch norm (ATen)"] = digest(torch.nn.BatchNorm1d(256).train()(torch.randn(64, 256, generator=generator)))
    return out


def optimiser_fingerprints(generator: "Any") -> dict[str, str]:
    """Where Intel and AMD part: Adam's square root of its second moment, at the toy's and the quick
    runs' shapes. ``sqrt`` is oneMKL VML's unless pinned (then :mod:`cmp_utils.core.vendor_kernels`);
    ``oneMKL VML sqrt (raw)`` always calls VML's float32 kernel (through ``aten::sqrt.out``, which the
    pinning leaves alone), on the second moment of the toy's first step: its bits differ between an
    Intel Xeon and an AMD EPYC (results/numerics/fingerprints.csv has both)."""
    import torch

    from ..core import config
    from .. import losses
    from ..experiments import toy

    def digest(tensor: "torch.Tensor") -> str:
        return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:12]

    out: dict[str, str] = {}
    with config.torch_threads(1):  # as every quick and smoke run
        images, texts, labels = toy.toy_start(0)
        images.requires_grad_(True), texts.requires_grad_(True)
        optimiser = torch.optim.Adam([images, texts], lr=0.05)
        losses.cmpm_loss(images, texts, labels).backward()
        optimiser.step()
        moment = optimiser.state[images]["exp_avg_sq"]  # (12, 2): (1 - beta2) g^2 after the first step
        out["oneMKL VML sqrt (raw), toy Adam moment (12, 2)"] = digest(
            torch.ops.aten.sqrt.out(moment, out=torch.empty(0))
        )
        out["sqrt, toy Adam moment (12, 2)"] = digest(moment.sqrt())
        out["Adam step, toy (12, 2)"] = digest(torch.cat([images.detach(), texts.detach()]))
        weights = torch.nn.Parameter(torch.randn(256, 2048, generator=generator) * 0.02)  # the quick joint embedding
        optimiser = torch.optim.Adam([weights], lr=2e-4)
        for _ in range(3):
            optimiser.zero_grad()
            weights.grad = torch.randn(256, 2048, generator=generator) * 1e-3
            optimiser.step()
        out["Adam steps, (256, 2048)"] = digest(weights)
        embeddings = torch.randn(64, 256, generator=generator, requires_grad=True)  # (batch, dim) at the quick batch
        partners = torch.randn(64, 256, generator=generator, requires_grad=True)
        quick_labels = torch.randint(0, 16, (64,), generator=generator)
        loss = losses.cmpm_loss(embeddings, partners, quick_labels)
        loss.backward()
        out["CMPM loss forward and backward, (64, 256)"] = digest(
            torch.cat([loss.reshape(1), embeddings.grad.ravel(), partners.grad.ravel()])
        )
        return out


#: Checks whose bits depend on the CPU vendor by design, with the bits measured on another vendor's CPU
#: than this repository's recording machine: ``(check, vendor) -> (bits, cpu)``. The AMD value was
#: measured on an AMD EPYC (Zen 4, family 25 model 17), pinned numerics, from an op-level trace of the
#: same computation (the toy's first Adam step). ``(check, vendor) -> (bits, cpu, torch)``.
MEASURED_ON_OTHER_VENDORS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("oneMKL VML sqrt (raw), toy Adam moment (12, 2)", "AuthenticAMD"): ("cde0b1f3ccbf", "AMD EPYC (Zen 4)", "2.14.1"),
}
VENDOR_DEPENDENT_CHECKS = frozenset(check for check, _ in MEASURED_ON_OTHER_VENDORS)


def toy_final_loss() -> str:
    """The last CMPM loss of notebook 02's quick toy (400 Adam steps, seed 0), as the hex of its float64."""
    from .. import losses
    from ..experiments import toy

    images, texts, labels = toy.toy_start(0)
    _, _, history = toy.train_toy(lambda x, z, y: losses.cmpm_loss(x, z, y), images, texts, labels, steps=400)
    return float(history[-1]).hex()


def smoke_run_bits(run_folder: str | os.PathLike) -> dict[str, Any]:
    """Train the CUHK-PEDES smoke run into ``run_folder`` in this process; every bit it produced:
    test metrics and per-epoch losses (hex of their float64), a SHA-256 of the trained weights."""
    import torch

    from .. import training

    result = training.fit(training.make_config("smoke", "cuhk_pedes", output_dir=str(run_folder), progress=False))
    state = torch.load(Path(run_folder) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    weights = hashlib.sha256(
        b"".join(
            t.detach().contiguous().numpy().tobytes()
            for _, t in sorted(state.items())
            if torch.is_tensor(t) and t.is_floating_point()
        )
    ).hexdigest()
    return {
        "test": {k: float(v).hex() for k, v in result.test.items()},
        "losses": [float(r["loss"]).hex() for r in result.history],
        "weights": weights,
        "numerics": status(),
    }


def smoke_run_in_fresh_process(folder: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """:func:`smoke_run_bits` in a new process with its own cold caches under ``folder`` (environment ``environ``)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    environ = dict(
        environ, CMP_CACHE_DIR=str(folder / "cache"), CMP_RESULTS_DIR=str(folder / "results"), PYTHONPATH=str(root)
    )
    completed = subprocess.run(
        [sys.executable, "-m", "cmp_utils.tools.cpu_probe", "smoke-run", str(folder / "run")],
        env=environ,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"smoke run in {folder} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bit_fingerprints(smoke_run: Mapping[str, Any]) -> dict[str, str]:
    """Every check of results/numerics/fingerprints.csv for this process: the kernels, the toy, and the
    bits of ``smoke_run`` (from :func:`smoke_run_bits`)."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]

    checks = dict(kernel_fingerprints())
    checks["toy: notebook 02 CMPM final loss (float64 hex)"] = toy_final_loss()
    checks["smoke run: test metrics"] = digest(smoke_run["test"])
    checks["smoke run: loss of every epoch"] = digest(smoke_run["losses"])
    checks["smoke run: trained weights"] = smoke_run["weights"][:12]
    return checks


def fingerprint_table(checks: Mapping[str, str]) -> "Any":
    """The rows of results/numerics/fingerprints.csv: one per check on this CPU, plus the bits measured
    on other vendors (:data:`MEASURED_ON_OTHER_VENDORS`)."""
    import pandas as pd
    import torch

    state = status()
    rows = [
        dict(
            check=name,
            bits=bits,
            vendor_independent=name not in VENDOR_DEPENDENT_CHECKS,
            cpu=state["cpu"],
            vendor=state["cpu_vendor"],
            torch=torch.__version__,
        )
        for name, bits in checks.items()
    ]
    for (name, vendor), (bits, cpu, torch_version) in MEASURED_ON_OTHER_VENDORS.items():
        if vendor != state["cpu_vendor"]:
            rows.append(
                dict(check=name, bits=bits, vendor_independent=False, cpu=cpu, vendor=vendor, torch=torch_version)
            )
    return pd.DataFrame(rows)


def fingerprint_mismatches(committed: "Any", checks: Mapping[str, str], vendor: str) -> list[str]:
    """The committed checks that this CPU does not reproduce: every vendor-independent one, and the
    vendor-dependent ones recorded for ``vendor``. Empty when all agree."""
    problems = []
    for row in committed.itertuples(index=False):
        applies = bool(row.vendor_independent) or row.vendor == vendor
        if applies and checks.get(row.check) != row.bits:
            problems.append(
                f"{row.check}: committed {row.bits} ({row.cpu}, {row.vendor}), here {checks.get(row.check)}"
            )
    return problems


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
            completed = subprocess.run(
                [sys.executable, "-m", "cmp_utils.tools.cpu_probe", "fingerprints"],
                env=environ,
                capture_output=True,
                text=True,
                check=True,
            )
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

    parser = argparse.ArgumentParser(prog="python -m cmp_utils.tools.cpu_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=("status", "probe", "fingerprints", "record", "smoke-run"),
        nargs="?",
        default="status",
        help="status: this process's numerics; probe: which kernels change under another ISA or "
        "vendor (one process per setting); fingerprints: this process's kernel hashes (JSON); "
        "record: every check (kernels, toy, a smoke run) into results/numerics/fingerprints.csv; "
        "smoke-run FOLDER: train the smoke run there, print its bits (JSON)",
    )
    parser.add_argument("folder", nargs="?", help="smoke-run: the run folder")
    parser.add_argument(
        "--output",
        help="probe: also write the table to this CSV (e.g. results/numerics/kernels.csv); "
        "record: the CSV to write (default results/numerics/fingerprints.csv)",
    )
    args = parser.parse_args(argv)
    if args.command == "fingerprints":
        print(json.dumps(kernel_fingerprints()))
    elif args.command == "smoke-run":
        print(json.dumps(smoke_run_bits(args.folder)))
    elif args.command == "record":
        import tempfile

        from ..core import atomic

        with tempfile.TemporaryDirectory(prefix="cmp-fingerprints-") as scratch:
            smoke_run = smoke_run_in_fresh_process(Path(scratch), os.environ)
        table = fingerprint_table(bit_fingerprints(smoke_run))
        output = Path(args.output or "results/numerics/fingerprints.csv")
        atomic.write_csv(output, table)
        print(table.to_string(index=False))
        print(f"wrote {output}")
    elif args.command == "probe":
        import pandas as pd

        table = probe()
        with pd.option_context("display.width", 250, "display.max_columns", None):
            print(table.to_string())
        if args.output:
            from ..core import atomic

            state = status()
            atomic.write_csv(
                Path(args.output), table.reset_index().assign(cpu=state["cpu"], vendor=state["cpu_vendor"])
            )
    else:
        import torch  # noqa: F401  (status reports the libraries' choices, which need torch loaded)

        for key, value in status().items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
