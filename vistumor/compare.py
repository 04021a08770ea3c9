"""``python -m vistumor.compare <folder>``: rebuild the comparison table of finished runs
(:mod:`vistumor.runs.compare`)."""

import sys

from vistumor.runs.compare import main

if __name__ == "__main__":
    sys.exit(main())
