"""``python -m cmp_utils.reporting --readme README.md``: regenerate the generated sections of the README and docs."""

import sys

from .readme import main

if __name__ == "__main__":
    sys.exit(main())
