"""Synthetic CAMELYON16-like whole-slide images: the embedded default dataset.

The command line, ``python -m vistumor.synthetic --root data/synthetic --workers 2``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from vistumor.errors import VisTumorError, user_error
from vistumor.synthetic.dataset import generate_dataset
from vistumor.synthetic.stages import MPP, SIZE

DEFAULT_SIZE, DEFAULT_MPP = 6144, 0.25


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the dataset; print its root. A refused request exits 2 with one ``error:`` line."""
    parser = argparse.ArgumentParser(prog="python -m vistumor.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--n-normal", type=int, default=6)
    parser.add_argument("--n-tumor", type=int, default=6)
    parser.add_argument("--size", type=int, help=f"level-0 side in pixels (default {DEFAULT_SIZE}; "
                                                 f"{SIZE} with --categories)")
    parser.add_argument("--mpp", type=float, help=f"level-0 microns per pixel (default {DEFAULT_MPP}; "
                                                  f"{MPP} with --categories)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--layout", choices=("training", "testing"), default="training",
                        help="CAMELYON16's training layout, or its test layout with reference.csv")
    parser.add_argument("--categories", action="store_true",
                        help="tumor slides whose largest lesion is an ITC, a micro- or a macro-metastasis in turn "
                             "(lesions sized in mm); the test layout then names CAMELYON17 patients")
    parser.add_argument(
        "--overwrite", action="store_true", help="regenerate even if slides with other parameters are present"
    )
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = SIZE if args.categories else DEFAULT_SIZE
    if args.mpp is None:
        args.mpp = MPP if args.categories else DEFAULT_MPP
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        generate_dataset(
            args.root,
            args.n_normal,
            args.n_tumor,
            args.size,
            args.mpp,
            args.seed,
            args.overwrite,
            args.workers,
            args.layout,
            args.categories,
        )
    except VisTumorError as err:  # a parameter clash or bad argument: say what to do, without a traceback
        parser.exit(user_error(err))
    print(args.root)
    return 0
