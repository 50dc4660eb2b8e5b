"""CPU numerics: the same bits on any x86-64 CPU with AVX2 (cmp_utils.core.numerics).

The main test trains the same smoke run in separate processes, each with its own cold cache (synthetic
data, MobileNetV2 feature cache, run folder), under the ISA caps and the oneMKL vendor path that
another CPU would take, and compares every bit that the run produced: test metrics, the loss of every
epoch, and the trained weights. Pinned, they must be identical; native (``CMP_CPU_NUMERICS=native``),
the same caps must change them on a CPU that has AVX-512, which shows that the test would fail without
the pinning.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmp_utils.tools import cpu_probe
from cmp_utils import losses
from cmp_utils.core import numerics, vendor_kernels

ROOT = Path(__file__).resolve().parents[2]
AVX2_CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _clean_environment(**settings: str) -> dict[str, str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in (*numerics.PINNED_ENVIRONMENT, "MKL_ENABLE_INSTRUCTIONS", "LD_PRELOAD", numerics.MODE_VARIABLE)
    }
    environ.update(settings)
    return environ


def _smoke_run(folder: Path, environ: dict[str, str]) -> dict:
    return cpu_probe.smoke_run_in_fresh_process(folder, environ)


def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """The same smoke run under each setting (two processes at a time)."""
    root = tmp_path_factory.mktemp("numerics")
    shim = cpu_probe.vendor_shim(root)
    settings = {
        "pinned": _clean_environment(),
        "pinned, AVX2 caps": _clean_environment(**AVX2_CAPS),
        "native": _clean_environment(CMP_CPU_NUMERICS="native"),
        "native, AVX2 caps": _clean_environment(CMP_CPU_NUMERICS="native", **AVX2_CAPS),
    }
    if shim is not None:
        settings["pinned, non-Intel vendor"] = _clean_environment(LD_PRELOAD=str(shim))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_smoke_run, root / f"run{index}", environ)
            for index, (name, environ) in enumerate(settings.items())
        }
        return {name: future.result() for name, future in futures.items()}


def _bits(run: dict) -> dict:
    return {key: run[key] for key in ("test", "losses", "weights")}


def test_pinned_smoke_run_is_bit_identical_under_avx2_caps(smoke_runs):
    pinned, capped = smoke_runs["pinned"], smoke_runs["pinned, AVX2 caps"]
    assert pinned["numerics"]["pinned"] and capped["numerics"]["pinned"]
    assert pinned["numerics"]["mkl_branch"] == "COMPATIBLE" and pinned["numerics"]["aten_capability"] == "AVX2"
    assert _bits(capped) == _bits(pinned)


def test_pinned_smoke_run_is_bit_identical_on_the_non_intel_mkl_path(smoke_runs):
    if "pinned, non-Intel vendor" not in smoke_runs:
        pytest.skip("no C compiler: the oneMKL vendor shim cannot be built here")
    assert smoke_runs["pinned, non-Intel vendor"]["numerics"]["mkl_vendor_path"] == "non-Intel"  # the shim took effect
    if numerics.cpu_vendor() == "GenuineIntel":
        assert smoke_runs["pinned"]["numerics"]["mkl_vendor_path"] == "Intel"
    assert _bits(smoke_runs["pinned, non-Intel vendor"]) == _bits(smoke_runs["pinned"])


def test_without_pinning_the_avx2_caps_change_the_run(smoke_runs):
    """The control: the comparison above is sensitive. Native numerics under the AVX2 caps give other bits
    (on a CPU with AVX-512, whose default kernels differ from the AVX2 ones)."""
    native, capped = smoke_runs["native"], smoke_runs["native, AVX2 caps"]
    assert not native["numerics"]["pinned"] and native["numerics"]["mode"] == "native"
    if not _has_avx512():
        pytest.skip("this CPU has no AVX-512: its default kernels are the AVX2 ones, so the caps change nothing here")
    assert native["weights"] != capped["weights"]
    assert native["losses"] != capped["losses"]
    assert native["weights"] != smoke_runs["pinned"]["weights"]  # pinning changes what this CPU computes


def test_this_test_process_is_pinned():
    state = numerics.status()
    assert state["mode"] == "pinned" and state["pinned"], state
    assert os.environ["MKL_CBWR"] == "COMPATIBLE" and os.environ["ATEN_CPU_CAPABILITY"] == "avx2"
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert numerics.fingerprint().startswith("pinned:")


def test_unknown_mode_names_the_variable_and_the_choices():
    with pytest.raises(ValueError, match="CMP_CPU_NUMERICS='fast'.*'pinned'.*'native'"):
        numerics.mode({"CMP_CPU_NUMERICS": "fast"})
    assert numerics.mode({}) == "pinned" and numerics.mode({"CMP_CPU_NUMERICS": " Native "}) == "native"


def test_pin_sets_the_variables_for_child_processes_and_native_sets_none():
    environ = {"MKL_CBWR": "AVX512"}
    assert numerics.pin(environ) is True
    assert environ == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    native = {"CMP_CPU_NUMERICS": "native"}
    assert numerics.pin(native) is False and native == {"CMP_CPU_NUMERICS": "native"}
    assert numerics.pinned_environment(native) == {}


def test_a_process_that_computed_before_the_pinning_is_reported_unpinned():
    """torch computing before ``import cmp_utils``: oneMKL can no longer change branch; pin warns."""
    script = (
        "import torch, warnings\n(torch.randn(64, 512) @ torch.randn(512, 64)).sum()\n"
        "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
        "    import cmp_utils\nfrom cmp_utils.core import numerics\n"
        "print(numerics.status()['pinned'], numerics.fingerprint().split(':')[0], len(caught),\n"
        "      'restart the kernel and import cmp_utils before running torch code' in str(caught[0].message))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=_clean_environment(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["False", "native", "1", "True"]


# ---------------------------------------------------------------------------------------------
# Intel and AMD: the committed bits, recomputed on whichever CPU runs the tests
# ---------------------------------------------------------------------------------------------

FINGERPRINTS = ROOT / "results" / "numerics" / "fingerprints.csv"


def test_the_committed_bits_are_reproduced_on_this_cpu(smoke_runs):
    """results/numerics/fingerprints.csv (``python -m cmp_utils.tools.cpu_probe record``) holds the bits of the
    kernels at the quick runs' shapes, of notebook 02's toy and of a smoke training run, with the CPU that
    made them. Whatever CPU runs this (CI machines are Intel or AMD), its pinned bits must be the same;
    the vendor-dependent raw VML row must equal the one recorded for this vendor, where there is one."""
    committed = pd.read_csv(FINGERPRINTS, dtype=str, keep_default_na=False)
    committed["vendor_independent"] = committed["vendor_independent"] == "True"
    assert {"GenuineIntel", "AuthenticAMD"} <= set(committed["vendor"]), "both vendors' raw VML sqrt are recorded"
    checks = cpu_probe.bit_fingerprints(smoke_runs["pinned"])
    assert set(checks) == set(committed["check"]), "the committed checks are this probe's: rerun cpu_probe record"
    assert cpu_probe.fingerprint_mismatches(committed, checks, numerics.cpu_vendor()) == []


def test_the_raw_vml_square_root_differs_between_the_vendors_and_the_pinned_one_does_not():
    """Where Intel and AMD part (docs/reproducibility.md): the same input, VML's float32 sqrt, two answers."""
    committed = pd.read_csv(FINGERPRINTS, dtype=str, keep_default_na=False).set_index(["check", "vendor"])["bits"]
    raw = "oneMKL VML sqrt (raw), toy Adam moment (12, 2)"
    assert committed[(raw, "GenuineIntel")] != committed[(raw, "AuthenticAMD")]
    here = cpu_probe.optimiser_fingerprints(torch.Generator().manual_seed(0))
    if (raw, numerics.cpu_vendor()) in committed.index:
        assert here[raw] == committed[(raw, numerics.cpu_vendor())]
    assert here["sqrt, toy Adam moment (12, 2)"] == committed[("sqrt, toy Adam moment (12, 2)", "GenuineIntel")]


def test_the_committed_toy_result_is_this_cpus_toy():
    """notebook 02's committed quick toy (results/figures/quick/cmpm_toy_training.csv) is reproduced bit for bit."""
    table = pd.read_csv(ROOT / "results" / "figures" / "quick" / "cmpm_toy_training.csv")
    committed = float(table.loc[table["loss"] == "CMPM", "final_loss"].iloc[0])
    assert committed == float.fromhex(cpu_probe.toy_final_loss())


# ---------------------------------------------------------------------------------------------
# The vendor-independent kernels (cmp_utils.core.vendor_kernels)
# ---------------------------------------------------------------------------------------------


def _float32_reference(function, values: torch.Tensor) -> torch.Tensor:
    """numpy in float64, rounded once to float32: the correctly rounded answer except at rare ties."""
    with np.errstate(all="ignore"):
        return torch.from_numpy(function(values.double().numpy()).astype(np.float32))


def test_the_replacements_are_installed_and_square_roots_are_correctly_rounded():
    assert vendor_kernels.installed() and numerics.status()["vml_replaced"] == "sqrt,exp,log,tanh"
    generator = torch.Generator().manual_seed(0)
    # every binade of float32, subnormals included, and exact squares
    values = torch.cat(
        [
            torch.rand(200_000, generator=generator) * 2.0 ** torch.randint(-149, 127, (200_000,), generator=generator),
            torch.arange(1, 5000, dtype=torch.float32) ** 2,
        ]
    )
    assert torch.equal(values.sqrt(), torch.from_numpy(np.sqrt(values.numpy())))  # IEEE sqrt is correctly rounded
    special = torch.tensor([0.0, -0.0, math.inf, -1.0, math.nan, 1e-45])
    with np.errstate(invalid="ignore"):
        assert torch.allclose(special.sqrt(), torch.from_numpy(np.sqrt(special.numpy())), equal_nan=True)
    assert str(special.sqrt()[1].item()) == "-0.0"


def test_exp_log_tanh_are_within_one_ulp_and_keep_their_special_values():
    generator = torch.Generator().manual_seed(1)
    wide = torch.randn(200_000, generator=generator) * 30
    positive = torch.rand(200_000, generator=generator) * 2.0 ** torch.randint(
        -149, 127, (200_000,), generator=generator
    )
    for values, ours, reference in (
        (wide, torch.exp, np.exp),
        (positive, torch.log, np.log),
        (wide, torch.tanh, np.tanh),
    ):
        expected = _float32_reference(reference, values)
        assert ((ours(values) == expected) | (ours(values) - expected).abs().le(expected.abs() * 2.0**-23)).all()
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, -1.0])
    for function, reference in ((torch.exp, np.exp), (torch.log, np.log), (torch.tanh, np.tanh)):
        with np.errstate(all="ignore"):
            assert torch.allclose(function(special), torch.from_numpy(reference(special.numpy())), equal_nan=True)


def test_in_place_autograd_and_other_dtypes_behave_as_pytorchs():
    values = torch.rand(7) + 0.5
    for name in vendor_kernels.REPLACED_OPS:
        copy = values.clone()
        assert getattr(copy, f"{name}_")() is copy and torch.equal(copy, getattr(values, name)())
    leaf = (torch.rand(5) + 0.5).requires_grad_(True)
    (leaf.sqrt() + leaf.log() + leaf.exp() + leaf.tanh()).sum().backward()
    expected = 0.5 / leaf.sqrt() + 1 / leaf + leaf.exp() + 1 - leaf.tanh() ** 2
    assert torch.allclose(leaf.grad, expected.detach())
    doubles = torch.rand(100, dtype=torch.float64)
    assert torch.equal(doubles.sqrt(), torch.ops.aten.sqrt.out(doubles, out=torch.empty(0, dtype=torch.float64)))
    assert torch.sqrt(torch.tensor([4, 9])).tolist() == [2.0, 3.0]


class _OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_a_training_step_of_every_loss_calls_no_vml_kernel_left_on_the_vendor_path():
    """Every loss the studies train with, forward, backward and an Adam step: the ATen ops they call whose
    float kernel is oneMKL VML must all be among the replaced ones (an ``out=`` form would not be)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 32, generator=generator, requires_grad=True)
    texts = torch.randn(16, 32, generator=generator, requires_grad=True)
    weight = torch.randn(32, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 8, (16,), generator=generator)
    recorder = _OpRecorder()
    with recorder:
        optimiser = torch.optim.Adam([images, texts, weight], lr=1e-3)
        total = (
            losses.cmpm_loss(images, texts, labels)
            + losses.cmpc_loss(images, texts, labels, weight)
            + losses.sdm_loss(images, texts, labels)
            + losses.ranking_loss(images, texts, labels)
        )
        total.backward()
        optimiser.step()
    left = {name.rstrip("_") for name in recorder.names} & (vendor_kernels.VML_OPS - set(vendor_kernels.REPLACED_OPS))
    assert left == set(), f"ops on oneMKL VML's vendor-dependent kernels: {sorted(left)}"
    assert "sqrt" in {name.rstrip("_") for name in recorder.names}  # Adam's, now replaced
