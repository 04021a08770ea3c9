"""The one evaluation of a set of slides, as ``python -m vistumor.evaluate`` and a whole-slide
run (:mod:`vistumor.tasks.slide_evaluation`) both run it: CAMELYON16's slide AUC and lesion FROC
(:mod:`~vistumor.evaluate.camelyon16`) into ``evaluation.json`` and its figures, then, given
predicted lesion polygons, CAMELYON17's metastasis categories and pN categories
(:mod:`~vistumor.evaluate.camelyon17`) into ``staging.json`` and ``staging.png``, in one folder.

The callers only gather the inputs (:class:`SlideSet`): the command line from folders, the run
from its own files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vistumor.errors import ConfigError, VisTumorError
from vistumor.evaluate.camelyon16.auc import N_BOOTSTRAP
from vistumor.evaluate.camelyon16.evaluation import Evaluation, evaluate
from vistumor.evaluate.camelyon16.froc import MODES, OFFICIAL
from vistumor.evaluate.camelyon16.masks import MARGIN_UM, PIXEL_UM, MaskSource
from vistumor.evaluate.camelyon16.report import write_report
from vistumor.evaluate.camelyon17.evaluation import LesionFiles, PnEvaluation, evaluate_pn
from vistumor.evaluate.camelyon17.report import write_pn_report
from vistumor.evaluate.exclusions import FROC, OFFICIAL_EXCLUDE, parse_exclude
from vistumor.evaluate.io import ReferenceSlide
from vistumor.labels import is_tumor


def _unknown(slide: str) -> None:
    return None


@dataclass(frozen=True)
class SlideSet:
    """What one evaluation reads, by slide name (matched case-insensitively).

    Attributes:
        reference: the slides, their labels and level-0 ``(width, height)`` when known.
        predictions: slide -> ``(n, 3)`` detections ``prob, x, y``.
        annotations: slide -> its annotation file (ASAP XML, GeoJSON) or official mask TIFF.
        dimensions: slide -> level-0 ``(width, height)`` where the reference lacks them.
        scores: slide -> AUC score (default: the slide's highest detection probability).
        lesions: slide -> predicted lesion polygons file; None: no CAMELYON17 part.
        mpp: slide -> level-0 µm per pixel (lesion sizes in mm), None when unknown.
        patients: slide -> patient (default: CAMELYON17 names, ``patient_004_node_4``).
        groups: annotation group roles (default CAMELYON16's).
        sources: where ``annotations`` and ``lesions`` came from, for messages (a folder).
    """

    reference: Sequence[ReferenceSlide]
    predictions: Mapping[str, np.ndarray]
    annotations: Mapping[str, Path]
    dimensions: Callable[[str], tuple[int, int] | None] = _unknown
    scores: Mapping[str, float] | None = None
    lesions: Mapping[str, Path] | None = None
    mpp: Callable[[str], float | None] = _unknown
    patients: Mapping[str, str] | None = None
    groups: Mapping[str, str] | None = None
    sources: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """How to evaluate: FROC mode, excluded slides, bootstrap, evaluation-mask geometry."""

    mode: str = OFFICIAL
    exclude: Sequence[str] = OFFICIAL_EXCLUDE
    n_bootstrap: int = N_BOOTSTRAP
    seed: int = 0
    margin_um: float = MARGIN_UM
    pixel_um: float = PIXEL_UM

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"FROC mode must be one of {MODES}, got {self.mode!r}")
        if not (math.isfinite(self.pixel_um) and self.pixel_um > 0):
            raise ConfigError(f"pixel_um (--pixel-um) must be a positive number of um per level-0 pixel, "
                              f"got {self.pixel_um}")
        if not (math.isfinite(self.margin_um) and self.margin_um >= 0):
            raise ConfigError(f"margin_um (--margin-um) must be a finite number of um >= 0, got {self.margin_um}")
        if self.n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap (--bootstrap) must be at least 1 resample, got {self.n_bootstrap}")
        parse_exclude(self.exclude)


@dataclass(frozen=True)
class Outcome:
    """What :func:`evaluate_slides` found and wrote: the CAMELYON16 evaluation and its files,
    and the CAMELYON17 one and its files (None without lesions, or when it was skipped: why)."""

    evaluation: Evaluation
    files: dict[str, Path]
    pn: PnEvaluation | None = None
    pn_files: dict[str, Path] | None = None
    pn_skipped: str | None = None

    def metrics(self, split: str = "test") -> dict[str, float]:
        """Headline numbers under ``split/name`` keys: FROC, slide AUC, and the category accuracy
        and pN kappa when the CAMELYON17 part ran."""
        return {**self.evaluation.metrics(split), **(self.pn.metrics(split) if self.pn is not None else {})}


def check_out(out: Path) -> None:
    """Refuse an output folder that is a file, or lies under one, before any work is done."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise VisTumorError("the output folder is a file" if path == out else
                                    f"the output folder {out} lies under this file, not a folder", path)
            return


def evaluate_slides(slides: SlideSet, out: str | Path, options: Options = Options(),
                    settings: Mapping[str, Any] | None = None, pn_settings: Mapping[str, Any] | None = None,
                    skip_failed_pn: bool = False) -> Outcome:
    """Evaluate ``slides`` and write both reports into ``out``.

    Args:
        settings: inputs and parameters recorded in ``evaluation.json``; ``pn_settings`` in
            ``staging.json`` (default ``settings``).
        skip_failed_pn: a CAMELYON17 part that cannot run (no µm per pixel, a tumor slide
            without annotation) is recorded in :attr:`Outcome.pn_skipped` instead of raised,
            keeping the CAMELYON16 evaluation (a whole-slide run).

    Raises :class:`VisTumorError` on bad inputs, before writing anything.
    """
    out = Path(out)
    check_out(out)
    masks = MaskSource(slides.annotations, _dimensions(slides), slides.groups,
                       margin_um=options.margin_um, pixel_um=options.pixel_um)
    evaluation = evaluate(slides.predictions, masks, slides.reference, mode=options.mode, scores=slides.scores,
                          exclude=options.exclude, n_bootstrap=options.n_bootstrap, seed=options.seed)
    pn, skipped = None, None
    if slides.lesions is not None:
        try:
            pn = _evaluate_pn(slides, options, evaluation.unusable)
        except VisTumorError as err:
            if not skip_failed_pn:
                raise
            skipped = str(err)
    files = write_report(evaluation, out, dict(settings or {}))
    pn_files = None
    if pn is not None:
        recorded = dict(settings or {}) if pn_settings is None else dict(pn_settings)
        if evaluation.unusable:
            recorded["unusable_annotations"] = evaluation.unusable
        pn_files = write_pn_report(pn, out, recorded)
    return Outcome(evaluation, files, pn, pn_files, skipped)


def _dimensions(slides: SlideSet) -> Callable[[str], tuple[int, int] | None]:
    """Level-0 ``(width, height)`` by slide name: from the reference, else ``slides.dimensions``."""
    known = {slide.slide.lower(): slide.dimensions for slide in slides.reference if slide.dimensions}

    def dimensions(slide: str) -> tuple[int, int] | None:
        return known.get(slide.lower()) or slides.dimensions(slide)

    return dimensions


def _evaluate_pn(slides: SlideSet, options: Options, unusable: Mapping[str, str]) -> PnEvaluation:
    """CAMELYON17's categories of the slides of the lesion task; a tumor slide whose annotation
    gave no lesion is left out of it too."""
    exclude = [*options.exclude, *(f"{slide}:{FROC}" for slide in unusable)]
    left_out = parse_exclude(exclude)[FROC]
    annotations = {slide.lower(): path for slide, path in slides.annotations.items()}
    lesions = {slide.lower(): path for slide, path in (slides.lesions or {}).items()}
    inputs = []
    for slide in slides.reference:
        key = slide.slide.lower()
        annotation = annotations.get(key) if is_tumor(slide.label) else None
        if key not in left_out:
            _check_pn_files(slide, annotation, lesions.get(key), slides.sources)
        inputs.append(LesionFiles(slide.slide, None if key in left_out else slides.mpp(slide.slide), annotation,
                                  lesions.get(key)))
    return evaluate_pn(inputs, slides.patients, exclude=exclude, groups=slides.groups)


def _check_pn_files(slide: ReferenceSlide, annotation: Path | None, lesions: Path | None,
                    sources: Mapping[str, Path]) -> None:
    """A tumor slide needs its lesion polygons (not a mask TIFF) and a predicted lesion file."""
    if not is_tumor(slide.label):
        return
    if annotation is None:
        raise VisTumorError(f"tumor slide '{slide.slide}' has no annotation to categorise it by",
                            sources.get("annotations"))
    if annotation.suffix.lower() in (".tif", ".tiff"):
        raise VisTumorError("metastasis categories measure lesion polygons: give ASAP XML or GeoJSON "
                            "annotations, not a mask TIFF", annotation)
    if lesions is None or not lesions.is_file():
        raise VisTumorError(f"tumor slide '{slide.slide}' has no predicted lesion file "
                            f"(expected {slide.slide}.geojson or .xml)", sources.get("lesions"))
