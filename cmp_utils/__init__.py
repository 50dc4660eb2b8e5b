"""cmp_utils: the small, tested library behind the cmp-repro notebooks.

Reproduction of "Deep Cross-Modal Projection Learning for Image-Text Matching"
(Ying Zhang and Huchuan Lu, ECCV 2018): the CMPM and CMPC losses, the paper's
data, models, training recipe and evaluation protocols. Notebooks orchestrate,
explain and plot; every piece of logic worth testing lives here.
"""

__version__ = "0.1.0"

#: Oldest torch this package accepts: ``torch.load(weights_only=True)``, which every checkpoint and
#: cache load here relies on, can be made to run code in torch < 2.6 (CVE-2025-32434).
MINIMUM_TORCH = (2, 6)


def torch_version_problem(version: str, minimum: tuple[int, int] = MINIMUM_TORCH) -> str | None:
    """Why torch ``version`` (e.g. ``"2.5.1+cpu"``) is too old (None when it is new enough)."""
    import re

    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or (int(match.group(1)), int(match.group(2))) >= minimum:
        return None
    wanted = ".".join(map(str, minimum))
    return (
        f"cmp_utils needs torch >= {wanted}, found torch {version}: in older torch, torch.load(weights_only=True) "
        f"can be made to execute code from a checkpoint file (CVE-2025-32434). Upgrade it, e.g. "
        f"`pip install 'torch>={wanted}'` (or `make setup`)"
    )


def _check_torch_version() -> None:
    """Refuse an installed torch older than :data:`MINIMUM_TORCH`, read without importing torch."""
    from importlib import metadata

    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:  # not installed: importing it fails with its own message
        return
    problem = torch_version_problem(installed)
    if problem:
        raise ImportError(problem)


_check_torch_version()

# Before anything imports torch: the same CPU kernels on every x86-64 CPU with AVX2 (see
# cmp_utils.core.numerics; CMP_CPU_NUMERICS=native opts out).
from .core import numerics as _numerics  # noqa: E402

_numerics.pin()
_numerics.warn_on_lock_mismatch()
