"""``python -m cmp_utils.tools.bench``: run the benchmarks (see :mod:`cmp_utils.tools.bench.run`)."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
