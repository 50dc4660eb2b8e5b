"""Element-wise float32 kernels whose bits do not depend on the CPU vendor: ``sqrt``, ``exp``, ``log``, ``tanh``.

PyTorch computes these four on contiguous float tensors with oneMKL's vector math library (VML,
``vmsSqrt``, ``vmsExp``, ``vmsLn``, ``vmsTanh`` in high-accuracy mode). VML is accurate to about one
unit in the last place, not correctly rounded, and it picks its code by the CPU it runs on, even under
oneMKL's ``MKL_CBWR=COMPATIBLE`` branch. Compared op by op on an Intel Xeon (Sapphire Rapids) and an
AMD EPYC (Zen 4), both pinned (docs/reproducibility.md, "Where Intel and AMD part"), every ATen op
with identical inputs gave identical bits except ``aten.sqrt``: VML's float32 square root, which
Adam calls on its second moment at every step, differs between the two vendors (8 of the 9 calls
compared; on this Intel it is the correctly rounded root for only ~83% of inputs). That one kernel
is why the committed quick numbers changed on an AMD EPYC.

:func:`install` replaces the CPU kernels of ``aten::sqrt``, ``exp``, ``log`` and ``tanh`` (and their
in-place forms) for float32 with compositions of ATen kernels that use no VML and no approximate
instruction (``rsqrtps``-like estimates differ between vendors) to decide a float32 bit, so only
IEEE-exact arithmetic, ATen's own AVX2 vector code (SLEEF) and one provably harmless float64 VML
call remain, which give the same bits on every x86-64 CPU with AVX2:

* ``sqrt(x) = round32(sqrt64(x))``: the float64 root (VML's ``vmdSqrt``, within one float64 ulp in
  its high-accuracy mode) rounded once to float32. The true root of a float32 is never within 4
  float64 ulps of a float32 rounding midpoint (``x - m^2`` is a non-zero multiple of ``2^(2e-48)``
  for a midpoint ``m`` of exponent ``e``), so the result is the **correctly rounded** float32 root
  (the IEEE ``sqrtss`` answer), whatever the vendor's float64 code, as long as it is within 4 ulps.
* ``exp(x) = round32(exp2(x * log2 e))`` in float64 (SLEEF's ``exp2``).
* ``log(x) = round32(log1p(m - 1) + k ln 2)`` in float64, with ``x = m 2^k``, ``m`` in [√½, √2)
  from ``frexp`` (``m - 1`` is exact there).
* ``tanh(x) = sign(x) * round32(-t / (t + 2))`` in float64 with ``t = expm1(-2|x|)``.

Other dtypes keep PyTorch's kernels (reached through the ``.out`` overloads, which are not
replaced). What is left on VML: the ``out=`` forms of these four and every other VML function
(``sin``, ``erf``, ``log2``, ...), which the project's runs do not call (tests/core/test_numerics.py
records the ATen ops of a training step of each loss and fails on any of them).

:func:`install` runs when :mod:`cmp_utils.core.numerics` pins the process (``import cmp_utils``), so every
run of the project computes with these kernels; ``CMP_CPU_NUMERICS=native`` leaves PyTorch's.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

#: The ATen ops replaced, each with its in-place form.
REPLACED_OPS = ("sqrt", "exp", "log", "tanh")
#: ATen ops whose float CPU kernel calls oneMKL VML in torch 2.x (``aten/src/ATen/cpu/vml.h``):
#: those of :data:`REPLACED_OPS` are replaced; a run that calls one of the others computes with a
#: vendor-dependent kernel (the tests fail on that).
VML_OPS = frozenset(
    {
        "sqrt",
        "exp",
        "log",
        "tanh",
        "log2",
        "log10",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "erf",
        "erfc",
        "erfinv",
        "trunc",
        "logsumexp",
    }
)
LOG2_E = 1.0 / math.log(2.0)
LN_2 = math.log(2.0)
SQRT_HALF = math.sqrt(0.5)

_library: torch.library.Library | None = None


def _float64(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float64)


def sqrt_float32(values: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root: the float64 root rounded once (see the module docstring)."""
    wide = _float64(values)
    return torch.ops.aten.sqrt.out(wide, out=torch.empty_like(wide)).to(torch.float32)  # .out: PyTorch's own kernel


def exp_float32(values: torch.Tensor) -> torch.Tensor:
    """float32 ``exp`` as ``exp2(x log2 e)`` in float64, rounded once."""
    return torch.exp2(_float64(values) * LOG2_E).to(torch.float32)


def log_float32(values: torch.Tensor) -> torch.Tensor:
    """float32 natural log as ``log1p(m - 1) + k ln 2`` in float64 (``x = m 2^k``, ``m`` in [√½, √2)), rounded once."""
    mantissa, exponent = torch.frexp(_float64(values))  # x = mantissa * 2**exponent, |mantissa| in [0.5, 1)
    low = mantissa < SQRT_HALF
    mantissa = torch.where(low, mantissa * 2.0, mantissa)  # exact
    exponent = torch.where(low, exponent - 1, exponent).to(torch.float64)
    return (torch.log1p(mantissa - 1.0) + exponent * LN_2).to(torch.float32)


def tanh_float32(values: torch.Tensor) -> torch.Tensor:
    """float32 ``tanh`` as ``sign(x) (-t / (t + 2))``, ``t = expm1(-2|x|)`` in float64, rounded once."""
    wide = _float64(values)
    shrink = torch.expm1(-2.0 * wide.abs())  # in (-1, 0]
    return torch.copysign((-shrink / (shrink + 2.0)).to(torch.float32), values)


FLOAT32_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sqrt": sqrt_float32,
    "exp": exp_float32,
    "log": log_float32,
    "tanh": tanh_float32,
}


def _functional(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    kernel, original = FLOAT32_KERNELS[name], getattr(torch.ops.aten, name).out

    def replaced(values: torch.Tensor) -> torch.Tensor:
        if not (values.is_floating_point() or values.is_complex()):
            values = values.to(torch.get_default_dtype())  # integer input: PyTorch's promotion
        if values.dtype == torch.float32:
            return kernel(values)
        return original(values, out=torch.empty(0, dtype=values.dtype, device=values.device))

    replaced.__name__ = f"{name}_vendor_independent"
    return replaced


def _in_place(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    kernel, original = FLOAT32_KERNELS[name], getattr(torch.ops.aten, name).out

    def replaced(values: torch.Tensor) -> torch.Tensor:
        if values.dtype == torch.float32:
            return values.copy_(kernel(values))
        return original(values, out=values)

    replaced.__name__ = f"{name}__vendor_independent"
    return replaced


def install() -> bool:
    """Replace the CPU kernels of :data:`REPLACED_OPS` (functional and in-place) for this process.
    Idempotent; returns whether they are installed."""
    global _library
    if _library is None:
        library = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")  # replacing a registered kernel is the point
            for name in REPLACED_OPS:
                library.impl(name, _functional(name), "CPU")
                library.impl(f"{name}_", _in_place(name), "CPU")
        _library = library
    return installed()


def installed() -> bool:
    """Whether this process computes :data:`REPLACED_OPS` with the kernels of this module."""
    return _library is not None
