"""``python -m vistumor.evaluate``: see :mod:`vistumor.evaluate.cli`."""

import sys

from vistumor.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
