"""cmp_utils: the small, tested library behind the cmp-repro notebooks.

Reproduction of "Deep Cross-Modal Projection Learning for Image-Text Matching"
(Ying Zhang and Huchuan Lu, ECCV 2018): the CMPM and CMPC losses, the paper's
data, models, training recipe and evaluation protocols. Notebooks orchestrate,
explain and plot; every piece of logic worth testing lives here.
"""

__version__ = "0.1.0"

# Before anything imports torch: the same CPU kernels on every x86-64 CPU with AVX2 (see
# cmp_utils.numerics; CMP_CPU_NUMERICS=native opts out).
from . import numerics as _numerics  # noqa: E402

_numerics.pin()
_numerics.warn_on_lock_mismatch()
