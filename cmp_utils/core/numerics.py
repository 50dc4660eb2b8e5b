"""CPU numerics that do not depend on the processor: the same bits on any x86-64 CPU with AVX2.

A float sum depends on the order of its terms, and PyTorch's CPU kernels choose that order by the
processor they run on. Three libraries inside the torch wheel pick their code at run time:

==========================  ==================================================  =========================
library                     what it computes here                               picks its code by
==========================  ==================================================  =========================
Intel oneMKL (BLAS, VML)    every fp32 matrix product (``nn.Linear``, the       the CPU's ISA (SSE4.2 ...
                            similarity matrices of the evaluation), the 1x1      AVX-512) **and its
                            convolutions of MobileNetV2 (``_slow_conv2d``),      vendor**: on a non-Intel
                            ``exp`` / ``tanh`` of contiguous tensors (VML)       CPU it takes another path
oneDNN                      3x3 and depthwise convolutions, the LSTM            the ISA (AVX2, AVX-512,
                            (``mkldnn_rnn_layer``), bf16 matrix products         AMX), cache sizes
ATen's own vector kernels   softmax / log-softmax, reductions, element-wise     the ISA (``DEFAULT``,
                            ops                                                 ``AVX2``, ``AVX512``)
==========================  ==================================================  =========================

Measured on an Intel Xeon (Sapphire Rapids, AVX-512 and AMX, torch 2.14.1 with oneMKL 2024.2 and
oneDNN 3.12), each kernel's output bits compared between the default and one setting changed
(``python -m cmp_utils.tools.cpu_probe probe`` prints the table; docs/reproducibility.md has it):

* ``MKL_ENABLE_INSTRUCTIONS=AVX2`` changes the 1x1 convolutions (hence every cached MobileNetV2
  feature), the fp32 GEMMs of ``nn.Linear`` forward and backward, and ``exp``;
* MKL's **vendor dispatch** (simulated by making oneMKL's Intel-CPU check answer "no", as it does
  on an AMD EPYC) changes the same kernels again, to a third result, and ``MKL_CBWR=AVX2`` does
  **not** bring them back: on a non-Intel CPU oneMKL ignores an ISA branch;
* ``ATEN_CPU_CAPABILITY=avx2`` changes log-softmax (the CMPM / CMPC losses);
* ``ONEDNN_MAX_CPU_ISA=AVX2`` switches the convolutions to AVX2 kernels (``jit:avx2``) whose fp32
  results happen to be identical here; it matters for bf16 (AMX against AVX-512-BF16 against
  conversion) and for wider layers.

The pinned setting (the default for every run of the project: notebooks, the CLI, papermill
kernels, DataLoader workers, ``torchrun`` processes) fixes all three:

* ``MKL_CBWR=COMPATIBLE``: oneMKL's conditional numerical reproducibility branch that gives the
  same results on Intel and non-Intel processors (an ISA branch such as ``AVX2`` holds on Intel
  CPUs only); set as an environment variable before torch loads oneMKL, else through oneMKL's
  service call before the first MKL computation;
* ``ATEN_CPU_CAPABILITY=avx2``: ATen's kernels at AVX2 width on every CPU that has AVX2;
* ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's kernels capped at AVX2.

Quick and smoke runs also use one torch thread (``TrainConfig.num_threads``), so no sum is split
by the thread count. Opt out for speed with ``CMP_CPU_NUMERICS=native`` (the libraries pick their
fastest code; numbers then depend on the CPU). The mode and what each library took are recorded
in every run's ``params.yaml`` (``cpu_numerics``) and in ``environment/<profile>/environment.csv``,
and they enter the memo keys of runs and feature caches, so runs under different numerics never
share a cached result. ``make bench`` measures what the pinning costs.

The pinning must happen before torch computes anything: ``import cmp_utils`` does it. When torch
has already run an MKL product or an ATen kernel in the process (``import torch`` and a
computation before ``import cmp_utils``), it can no longer be pinned: :func:`pin` then warns and
:func:`status` says so (``pinned: false``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, MutableMapping

#: The environment variable that chooses the mode: ``pinned`` (default) or ``native``.
MODE_VARIABLE = "CMP_CPU_NUMERICS"
MODES = ("pinned", "native")
#: What the pinned mode sets, before torch loads (and in every child process, which inherits it).
PINNED_ENVIRONMENT: dict[str, str] = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
#: oneMKL's code for the COMPATIBLE branch (``mkl_cbwr_get``'s answer; MKL_CBWR_COMPATIBLE = 3).
MKL_CBWR_COMPATIBLE = 3
#: oneMKL's branch codes, for reports (``mkl.h``: MKL_CBWR_*).
MKL_BRANCHES = {
    1: "OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}


def mode(environ: Mapping[str, str] | None = None) -> str:
    """``pinned`` or ``native``, from ``$CMP_CPU_NUMERICS`` (default ``pinned``); a clear error otherwise."""
    value = (os.environ if environ is None else environ).get(MODE_VARIABLE, "pinned").strip().lower() or "pinned"
    if value not in MODES:
        raise ValueError(
            f"environment variable {MODE_VARIABLE}={value!r} is not known; use 'pinned' (the same bits "
            f"on any x86-64 CPU with AVX2, the default) or 'native' (each CPU's fastest kernels)"
        )
    return value


def pinned_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a child process needs for the current mode (empty in native mode)."""
    return dict(PINNED_ENVIRONMENT) if mode(environ) == "pinned" else {}


def _torch_library() -> ctypes.CDLL | None:
    """``libtorch_cpu`` (which holds oneMKL) when torch is loaded and the library exports oneMKL's service calls."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    folder = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        if (folder / name).is_file():
            try:
                library = ctypes.CDLL(str(folder / name))
            except OSError:
                return None
            return library if hasattr(library, "mkl_serv_cbwr_get") else None
    return None


def mkl_branch() -> str:
    """The oneMKL branch in force (``COMPATIBLE``, ``OFF``, ...), or ``n/a`` when torch carries no oneMKL."""
    library = _torch_library()
    if library is None:
        return "n/a"
    code = int(library.mkl_serv_cbwr_get(1))  # MKL_CBWR_BRANCH = 1
    return MKL_BRANCHES.get(code, str(code))


def pin(environ: MutableMapping[str, str] | None = None) -> bool:
    """Pin the CPU numerics for this process and its children (nothing in native mode).

    Sets :data:`PINNED_ENVIRONMENT` in ``environ`` (``os.environ``), overriding other values of those
    variables. If torch is already loaded, oneMKL read ``MKL_CBWR`` when it loaded, so the branch is
    also set through oneMKL's service call; that fails once MKL has computed something, and then
    (or when ATen already fixed a wider kernel width) a warning says how to fix it. Returns whether
    the process is pinned."""
    environ = os.environ if environ is None else environ
    if mode(environ) != "pinned":
        return False
    environ.update(PINNED_ENVIRONMENT)
    from . import vendor_kernels  # imports torch, after the variables above are set

    vendor_kernels.install()
    library = _torch_library()
    if library is not None and int(library.mkl_serv_cbwr_get(1)) != MKL_CBWR_COMPATIBLE:
        library.mkl_serv_cbwr_set(MKL_CBWR_COMPATIBLE)
    problems = pin_problems()
    if problems:
        warnings.warn(
            "CPU numerics could not be pinned: " + "; ".join(problems) + ". Numbers of this process may "
            "differ from another CPU's: restart the kernel and import cmp_utils before running torch code "
            f"(or set {MODE_VARIABLE}=native to accept that).",
            RuntimeWarning,
            stacklevel=2,
        )
    return not problems


def pin_problems() -> list[str]:
    """What keeps this process from the pinned numerics (empty when pinned, or when torch is not loaded yet)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    problems = []
    from . import vendor_kernels

    if mode() == "pinned" and not vendor_kernels.installed():
        problems.append(
            "the vendor-independent sqrt/exp/log/tanh kernels are not installed (cmp_utils.core.vendor_kernels)"
        )
    branch = mkl_branch()
    if branch not in ("COMPATIBLE", "n/a"):
        problems.append(f"oneMKL runs branch {branch}, not COMPATIBLE (MKL computed before the pinning)")
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        capability = torch.backends.cpu.get_cpu_capability()
        reason = (
            "this CPU has no AVX2" if capability in ("DEFAULT", "NO AVX") else "ATen fixed its width before the pinning"
        )
        problems.append(f"ATen kernels run at {capability}, not AVX2 ({reason})")
    return problems


#: The committed lock file of exact versions (``make setup`` installs from it; ``make lock`` rewrites it).
LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements-lock.txt"
#: The packages whose version changes the bits of the quick and smoke numbers.
BIT_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "scipy")


def locked_versions(lock_file: Path = LOCK_FILE) -> dict[str, str]:
    """``{package: version}`` of the ``name==version`` lines of ``lock_file`` (names lower-case, ``_`` as ``-``)."""
    pinned = {}
    for line in lock_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pinned[name.strip().lower().replace("_", "-")] = version.split(";", 1)[0].strip()
    return pinned


def lock_mismatches(lock_file: Path = LOCK_FILE, packages: tuple[str, ...] = BIT_PACKAGES) -> list[str]:
    """``packages`` whose installed version is not the lock file's, as ``"torch 2.9.1 (lock: 2.14.1)"``;
    a local build suffix (``2.14.1+cu130``) counts as the same version. Empty when all match or when
    there is no lock file (an installed package, not a checkout)."""
    from importlib import metadata

    if not lock_file.is_file():
        return []
    pinned = locked_versions(lock_file)
    problems = []
    for name in packages:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if name in pinned and installed.split("+", 1)[0] != pinned[name]:
            problems.append(f"{name} {installed} (lock: {pinned[name]})")
    return problems


def lock_status() -> str:
    """For ``params.yaml`` and ``environment.csv``: whether the bit-relevant packages match the lock file."""
    if not LOCK_FILE.is_file():
        return "no lock file (not a checkout)"
    problems = lock_mismatches()
    return (
        "matches requirements-lock.txt"
        if not problems
        else "DIFFERS from requirements-lock.txt: " + "; ".join(problems)
    )


def warn_on_lock_mismatch() -> None:
    """Warn, naming each package, when the bit-relevant packages differ from the lock file."""
    problems = lock_mismatches()
    if problems:
        warnings.warn(
            "installed packages differ from requirements-lock.txt: " + "; ".join(problems) + ". The quick "
            "and smoke numbers are only reproduced bit for bit with the locked versions: run `make setup` "
            "in a fresh .venv (or pip install -r requirements-lock.txt).",
            RuntimeWarning,
            stacklevel=2,
        )


def status() -> dict[str, Any]:
    """The numerics of this process, for ``params.yaml`` and ``environment.csv``: the mode, whether it
    holds, each library's choice, and the CPU."""
    import torch

    from . import vendor_kernels

    pinned = mode() == "pinned"
    return {
        "mode": mode(),
        "pinned": pinned and not pin_problems(),
        "mkl_branch": mkl_branch(),
        "mkl_vendor_path": mkl_vendor_path(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default (the CPU's best)"),
        "vml_replaced": ",".join(vendor_kernels.REPLACED_OPS) if vendor_kernels.installed() else "none",
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "torch": str(torch.__version__),
        "environment_lock": lock_status(),
    }


def fingerprint() -> str:
    """What a result computed on the CPU depends on: ``pinned`` when pinned (the same on every CPU), else
    the mode, each library's choice and the CPU model. Part of the memo keys of runs and feature caches."""
    from . import vendor_kernels

    state = status()
    if state["pinned"]:
        return (
            "pinned:"
            + ",".join(f"{k}={v}" for k, v in sorted(PINNED_ENVIRONMENT.items()))
            + ";vendor-independent:"
            + ",".join(vendor_kernels.REPLACED_OPS)
        )
    text = json.dumps({k: v for k, v in state.items() if k not in ("cpu_vendor", "environment_lock")}, sort_keys=True)
    return "native:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def mkl_vendor_path() -> str:
    """The vendor path oneMKL dispatches on: ``Intel`` or ``non-Intel``, as its own
    ``mkl_serv_intel_cpu_true`` answers when looked up the way oneMKL's calls resolve it (so a
    preloaded vendor simulation, :func:`cmp_utils.tools.cpu_probe.vendor_shim`, shows); ``n/a`` without oneMKL."""
    try:
        function = ctypes.CDLL(None).mkl_serv_intel_cpu_true  # the process's global scope first: a preload wins
    except (OSError, AttributeError):
        library = _torch_library()
        function = getattr(library, "mkl_serv_intel_cpu_true", None) if library is not None else None
    if function is None:
        return "n/a"
    function.restype = ctypes.c_int
    return "Intel" if function() else "non-Intel"


# ---------------------------------------------------------------------------------------------
# The machine: the one place that describes it (CPU, devices), for params.yaml, bench rows and timings
# ---------------------------------------------------------------------------------------------


def cpuinfo_field(name: str) -> str | None:
    """The first value of field ``name`` (e.g. ``model name``, ``vendor_id``) in ``/proc/cpuinfo``;
    None where the file or the field is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... from ``/proc/cpuinfo`` (``unknown`` elsewhere)."""
    return cpuinfo_field("vendor_id") or "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    import platform

    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown cpu"


def device_name(device) -> str:
    """``cpu`` (the device type) or the CUDA device's name, for a ``torch.device``."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def cpu_summary() -> str:
    """``"<cpu model>, <n> cores, <t> torch threads"`` (the ``machine`` column of the bench CSVs)."""
    import torch

    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def machine_description() -> str:
    """CPU model and vendor, CPU count, operating system and architecture, torch version, the CPU
    numerics mode, oneMKL's path where simulated, and the GPU if one is visible (the timings CSV)."""
    import platform

    import torch

    parts = [
        f"{cpu_model()} ({cpu_vendor()})",
        f"{os.cpu_count()} CPUs",
        f"{platform.system()} {platform.machine()}",
        f"torch {torch.__version__}",
        f"{mode()} numerics",
    ]
    if os.environ.get("MKL_ENABLE_INSTRUCTIONS"):
        parts.append(f"MKL_ENABLE_INSTRUCTIONS={os.environ['MKL_ENABLE_INSTRUCTIONS']}")
    if mkl_vendor_path() == "non-Intel" and cpu_vendor() == "GenuineIntel":
        parts.append("oneMKL on its non-Intel path (simulated)")
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)


#: ``TrainConfig.cuda_tf32``: ``"off"`` = fp32 convolutions and matrix products really in fp32 (the
#: release's precision); ``"torch_default"`` = PyTorch's defaults (cuDNN convolutions in TF32 on
#: Ampere and later, matrix products in fp32).
CUDA_TF32_CHOICES = ("off", "torch_default")


def set_cuda_tf32(choice: str) -> None:
    """Apply ``choice`` (:data:`CUDA_TF32_CHOICES`) to PyTorch's CUDA TF32 switches (process-wide;
    no effect on the CPU)."""
    if choice not in CUDA_TF32_CHOICES:
        raise ValueError(f"parameter cuda_tf32={choice!r} must be one of {CUDA_TF32_CHOICES}")
    import torch

    torch.backends.cudnn.allow_tf32 = choice == "torch_default"
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default and the release's: fp32 products
