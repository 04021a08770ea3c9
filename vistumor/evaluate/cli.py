"""``python -m vistumor.evaluate``: CAMELYON16 slide AUC and lesion FROC of a folder of
official-format detection CSVs (from this pipeline, NCRF or MONAI), as the official
``Evaluation_FROC.py`` computes them, with bootstrap confidence intervals.

    python -m vistumor.evaluate --predictions preds/ --annotations lesion_annotations/ \\
        --reference reference.csv --out outputs/evaluation

With ``--lesions`` (predicted lesion polygons) it also categorises the slides the CAMELYON17
way: metastasis category per slide, lesion sensitivity per category, and the pN category ("pN
stage") and its quadratic weighted kappa when slides make patients (``staging.json``,
``staging.png``). Both parts run through :func:`~vistumor.evaluate.pipeline.evaluate_slides`.

A user error is one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vistumor.errors import VisTumorError, user_error
from vistumor.evaluate.camelyon16.auc import N_BOOTSTRAP
from vistumor.evaluate.camelyon16.froc import MODES, OFFICIAL
from vistumor.evaluate.camelyon16.masks import ITC_UM, MARGIN_UM, MASK_LEVEL, PIXEL_UM
from vistumor.evaluate.camelyon17.categories import read_patients
from vistumor.evaluate.camelyon17.evaluation import PnEvaluation
from vistumor.evaluate.exclusions import OFFICIAL_EXCLUDE
from vistumor.evaluate.io import (
    annotation_files,
    files_by_slide,
    lesion_files,
    prediction_files,
    read_detections,
    read_reference,
    read_scores,
)
from vistumor.evaluate.pipeline import Options, Outcome, SlideSet, check_out, evaluate_slides
from vistumor.wsi.slide import SLIDE_SUFFIXES, Slide


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vistumor.evaluate",
        description="CAMELYON16 slide AUC and lesion FROC of official-format detection CSVs, as the "
                    "official Evaluation_FROC.py computes them, with bootstrap confidence intervals.",
    )
    parser.add_argument("--predictions", required=True, type=Path,
                        help="folder of detection CSVs, one per slide (no header; rows prob,x,y, level 0)")
    parser.add_argument("--annotations", required=True, type=Path,
                        help="folder of ASAP XML / GeoJSON annotations or official tumor-mask TIFFs")
    parser.add_argument("--reference", required=True, type=Path,
                        help="CSV slide,label[,width,height]; label tumor/normal, 1/0 or Tumor/Normal")
    parser.add_argument("--slides", type=Path,
                        help="folder of the slides, for dimensions the reference lacks")
    parser.add_argument("--scores", type=Path,
                        help="CSV slide,score for the AUC (default: highest detection probability)")
    parser.add_argument("--mode", choices=MODES, default=OFFICIAL,
                        help="official (default): Evaluation_FROC.py to the bit; strict: real detections")
    parser.add_argument("--out", type=Path, default=Path("outputs/evaluation"),
                        help="output folder (default %(default)s)")
    parser.add_argument("--exclude", nargs="*", default=list(OFFICIAL_EXCLUDE), metavar="SLIDE[:TASK]",
                        help="slides left out of both tasks, or of one (test_114:froc); none with no value "
                             "(default: %(default)s)")
    parser.add_argument("--margin-um", type=float, default=MARGIN_UM,
                        help="lesion dilation of the evaluation mask (default: the script's %(default)s um)")
    parser.add_argument("--pixel-um", type=float, default=PIXEL_UM,
                        help="level-0 pixel size in um (default %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP,
                        help="resamples of the 95%% intervals (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default %(default)s)")
    parser.add_argument("--lesions", type=Path,
                        help="folder of predicted lesion polygons (GeoJSON or ASAP XML, one per slide): adds "
                             "metastasis categories, lesion sensitivity per category and pN stages (staging.json)")
    parser.add_argument("--patients", type=Path,
                        help="CSV slide,patient for the pN stage (default: CAMELYON17 names, patient_004_node_4)")
    parser.add_argument("--mpp", type=float,
                        help="level-0 um per pixel for lesion sizes in mm, when --slides is not given or a slide "
                             "does not record it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each slide")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = evaluate_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")
    try:
        check_options(args)
        options = Options(args.mode, args.exclude, args.bootstrap, args.seed, args.margin_um, args.pixel_um)
        outcome = evaluate_slides(read_slide_set(args), args.out, options, settings(args), pn_settings(args))
    except VisTumorError as err:
        return user_error(err)
    print(summary(outcome, args.out))
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Flags that make no sense together, or numbers no evaluation can use, in one line."""
    if args.lesions is None and (args.patients is not None or args.mpp is not None):
        raise VisTumorError("--patients and --mpp are for staging: give --lesions too")
    if args.mpp is not None and not (math.isfinite(args.mpp) and args.mpp > 0):
        raise VisTumorError(f"--mpp must be a positive number of um per pixel, got {args.mpp}")
    check_out(args.out)


def read_slide_set(args: argparse.Namespace) -> SlideSet:
    """The inputs named by the flags, each file read once."""
    reference = read_reference(args.reference)
    known = {slide.slide.lower() for slide in reference}
    lesions = lesion_files(args.lesions) if args.lesions else None
    predictions = {}
    for key, path in prediction_files(args.predictions).items():
        _check_known(key, path, known, args.reference)
        predictions[path.stem] = read_detections(path)
    for key, path in (lesions or {}).items():
        _check_known(key, path, known, args.reference)
    return SlideSet(
        reference, predictions, annotation_files(args.annotations), dimensions=dimensions_of(args.slides),
        scores=read_scores(args.scores) if args.scores else None, lesions=lesions,
        mpp=mpp_of(args.slides, args.mpp), patients=read_patients(args.patients) if args.patients else None,
        sources={"annotations": args.annotations, "lesions": args.lesions},
    )


def _check_known(key: str, path: Path, known: set[str], reference: Path) -> None:
    if key not in known:
        raise VisTumorError(f"no slide of the reference {reference} matches this file", path)


def mpp_of(slides: Path | None, default: float | None) -> Callable[[str], float | None]:
    """Level-0 µm per pixel by slide name: recorded in the slide file in ``slides``, else ``default``."""
    files = files_by_slide(slides, SLIDE_SUFFIXES) if slides is not None else {}

    def mpp(slide: str) -> float | None:
        path = files.get(slide.lower())
        if path is None:
            return default
        with Slide(path, default) as opened:
            return opened.mpp

    return mpp


def dimensions_of(slides: Path | None) -> Callable[[str], tuple[int, int] | None]:
    """Level-0 ``(width, height)`` by slide name from the slide file in ``slides``, else None
    (the reference's own ``width,height`` come first: :func:`~vistumor.evaluate.pipeline.evaluate_slides`)."""
    files = files_by_slide(slides, SLIDE_SUFFIXES) if slides is not None else {}

    def dimensions(slide: str) -> tuple[int, int] | None:
        path = files.get(slide.lower())
        if path is None:
            return None
        with Slide(path) as opened:
            return opened.dimensions

    return dimensions


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Inputs and parameters, recorded in ``evaluation.json``."""
    return {
        "predictions": str(args.predictions), "annotations": str(args.annotations),
        "reference": str(args.reference), "scores": str(args.scores) if args.scores else None,
        "exclude": list(args.exclude), "mask_level": MASK_LEVEL, "margin_um": args.margin_um,
        "pixel_um": args.pixel_um, "itc_um": ITC_UM, "bootstrap": args.bootstrap, "seed": args.seed,
    }


def pn_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Inputs and parameters, recorded in ``staging.json``."""
    return {
        "lesions": str(args.lesions), "annotations": str(args.annotations), "reference": str(args.reference),
        "patients": str(args.patients) if args.patients else None, "mpp": args.mpp, "exclude": list(args.exclude),
    }


def summary(outcome: Outcome, out: Path) -> str:
    """Three lines for the terminal (four with the CAMELYON17 part)."""
    evaluation = outcome.evaluation
    froc_low, froc_high = evaluation.froc_ci95
    auc_low, auc_high = evaluation.auc_ci95
    curve = evaluation.curve
    rates = ", ".join(f"{r:g}: {s:.3f}" for r, s in evaluation.sensitivity_at_fp.items())
    return (
        f"FROC {evaluation.froc:.4f} [95% CI {froc_low:.4f}, {froc_high:.4f}] ({evaluation.mode}; "
        f"{curve.n_lesions} lesions, {curve.n_slides} slides); slide AUC {evaluation.auc:.4f} "
        f"[95% CI {auc_low:.4f}, {auc_high:.4f}] ({evaluation.n_slides('auc')} slides)\n"
        f"sensitivity at FPs per slide {rates}\n"
        + (pn_line(outcome.pn) + "\n" if outcome.pn is not None else "")
        + f"wrote {out}"
    )


def pn_line(result: PnEvaluation) -> str:
    """Category accuracy, per-category lesion sensitivity, and the kappa when patients exist."""
    sens = ", ".join(f"{cat} {v['hit']}/{v['lesions']}" for cat, v in result.sensitivity.items())
    line = (f"metastasis categories: accuracy {result.accuracy:.3f} ({len(result.slides)} slides); "
            f"lesions hit {sens}")
    if result.patients:
        line += f"; pN kappa {result.kappa:.4f} ({len(result.patients)} patients)"
    return line
