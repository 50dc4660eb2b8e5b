"""``python -m cmp_utils.training --profile ... --dataset ...``: train one run (also under ``torchrun``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
