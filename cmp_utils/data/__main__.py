"""``python -m cmp_utils.data check DATA_DIR [DATASET ...]``: check that a data folder holds the datasets' layouts."""

import sys

from .check import main

if __name__ == "__main__":
    sys.exit(main())
