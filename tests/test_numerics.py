"""CPU numerics: the same bits on any x86-64 CPU with AVX2 (cmp_utils.numerics).

The main test trains the same smoke run in separate processes, each with its own cold cache (synthetic
data, MobileNetV2 feature cache, run folder), under the ISA caps and the oneMKL vendor path that
another CPU would take, and compares every bit that the run produced: test metrics, the loss of every
epoch, and the trained weights. Pinned, they must be identical; native (``CMP_CPU_NUMERICS=native``),
the same caps must change them on a CPU that has AVX-512, which shows that the test would fail without
the pinning.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmp_utils import cpu_probe, numerics

ROOT = Path(__file__).resolve().parent.parent
AVX2_CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

# One smoke run in a fresh process: everything it computed, as bits (hex of the float64 / tensor bytes).
RUN_SCRIPT = r"""
import hashlib, json, sys
from cmp_utils import numerics, train
import torch
result = train.fit(train.make_config("smoke", "cuhk_pedes", output_dir=sys.argv[1], progress=False))
state = torch.load(f"{sys.argv[1]}/checkpoints/last.pt", map_location="cpu", weights_only=False)["model"]
weights = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for _, t in sorted(state.items())
                                  if torch.is_tensor(t) and t.is_floating_point())).hexdigest()
print(json.dumps({"test": {k: float(v).hex() for k, v in result.test.items()},
                  "losses": [float(r["loss"]).hex() for r in result.history], "weights": weights,
                  "numerics": numerics.status()}))
"""


def _clean_environment(**settings: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in (*numerics.PINNED_ENVIRONMENT, "MKL_ENABLE_INSTRUCTIONS", "LD_PRELOAD", numerics.MODE_VARIABLE)}
    environ.update(settings)
    return environ


def _smoke_run(folder: Path, environ: dict[str, str]) -> dict:
    folder.mkdir(parents=True)
    environ = dict(environ, CMP_CACHE_DIR=str(folder / "cache"), CMP_RESULTS_DIR=str(folder / "results"),
                   PYTHONPATH=str(ROOT))
    completed = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(folder / "run")], env=environ, cwd=ROOT,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


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
        futures = {name: pool.submit(_smoke_run, root / f"run{index}", environ)
                   for index, (name, environ) in enumerate(settings.items())}
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
    script = ("import torch, warnings\n(torch.randn(64, 512) @ torch.randn(512, 64)).sum()\n"
              "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
              "    import cmp_utils\nfrom cmp_utils import numerics\n"
              "print(numerics.status()['pinned'], numerics.fingerprint().split(':')[0], len(caught),\n"
              "      'restart the kernel and import cmp_utils before running torch code' in str(caught[0].message))")
    completed = subprocess.run([sys.executable, "-c", script], env=_clean_environment(PYTHONPATH=str(ROOT)),
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["False", "native", "1", "True"]
