"""``python -m vistumor.viewer``: see :mod:`vistumor.viewer.cli`."""

import sys

from vistumor.viewer.cli import main

if __name__ == "__main__":
    sys.exit(main())
