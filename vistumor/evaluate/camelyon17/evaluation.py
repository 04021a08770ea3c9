"""Metastasis categories and pN categories of predicted lesions against the annotations.

Per slide, the category of its largest predicted lesion meets that of its largest annotated
lesion (:mod:`~vistumor.evaluate.camelyon17.categories`) in a 4 x 4 confusion matrix; per annotated
lesion, categorised by its own diameter, whether a predicted lesion polygon overlaps it
(sharing interior, not only a boundary): the per-category lesion sensitivity; and, when the
slides make patients, each patient's pN category from its nodes and the quadratic weighted
kappa of the pN categories (:mod:`~vistumor.evaluate.camelyon17.kappa`), CAMELYON17's score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from vistumor.errors import VisTumorError
from vistumor.evaluate.camelyon17.categories import (
    CATEGORIES,
    ITC,
    MACRO,
    MICRO,
    PN_CATEGORIES,
    category,
    diameters_mm,
    group_patients,
    pn_category,
    slide_category,
)
from vistumor.evaluate.camelyon17.kappa import confusion_matrix, kappa_of_matrix
from vistumor.evaluate.exclusions import FROC, OFFICIAL_EXCLUDE, parse_exclude
from vistumor.wsi.annotations import DEFAULT_GROUPS, ROLE_TUMOR, read_annotations

#: the categories of a lesion (a lesion is never negative)
LESION_CATEGORIES = (ITC, MICRO, MACRO)
#: groups of predicted lesion files: CAMELYON16's and ours (``Tumor``, holes in ``Exclusion``), and
#: unclassified polygons (another tool's GeoJSON, an ASAP polygon in no group) as lesions
PREDICTION_GROUPS = {**DEFAULT_GROUPS, "Unclassified": ROLE_TUMOR, "None": ROLE_TUMOR}


@dataclass(frozen=True)
class SlideLesions:
    """One slide's lesion polygons in level-0 px: annotated (empty on a normal slide) and
    predicted, with its µm per pixel."""

    slide: str
    mpp: float
    reference: Sequence[BaseGeometry]
    predicted: Sequence[BaseGeometry]


@dataclass(frozen=True)
class LesionFiles:
    """Where one slide's lesions are: its annotation (None: no lesion, a normal slide) and
    its predicted lesions (None: none predicted), ASAP XML or GeoJSON."""

    slide: str
    mpp: float | None
    annotation: Path | None
    lesions: Path | None


@dataclass(frozen=True)
class SlideCategory:
    """A slide's category by the annotations and by the predictions, with the longest
    diameters (mm) of the largest lesions (None without lesions)."""

    slide: str
    mpp: float
    reference: str
    predicted: str
    reference_mm: float | None
    predicted_mm: float | None
    n_reference: int
    n_predicted: int
    patient: str | None = None


@dataclass(frozen=True)
class LesionHit:
    """An annotated lesion (``index`` from 1, largest area first), its size, category and
    whether a predicted lesion overlaps it."""

    slide: str
    index: int
    diameter_mm: float
    category: str
    hit: bool


@dataclass(frozen=True)
class PatientPn:
    patient: str
    slides: tuple[str, ...]
    reference: str
    predicted: str


@dataclass(frozen=True)
class PnEvaluation:
    """Results of :func:`categorise_slides` (see :mod:`vistumor.evaluate.camelyon17.report` for files)."""

    slides: list[SlideCategory]
    lesions: list[LesionHit]
    patients: list[PatientPn]
    excluded: list[str]

    @property
    def confusion(self) -> np.ndarray:
        """Slides by reference category (rows) and predicted category (columns), in :data:`CATEGORIES` order."""
        return confusion_matrix([s.reference for s in self.slides], [s.predicted for s in self.slides], CATEGORIES)

    @property
    def accuracy(self) -> float:
        """Share of slides whose predicted category is the reference's."""
        counts = self.confusion
        return float(np.trace(counts) / counts.sum()) if counts.sum() else math.nan

    @property
    def sensitivity(self) -> dict[str, dict[str, float | int | None]]:
        """Per lesion category: annotated lesions, those hit, and the share hit (None without lesions)."""
        out = {}
        for cat in LESION_CATEGORIES:
            mine = [lesion.hit for lesion in self.lesions if lesion.category == cat]
            out[cat] = {"lesions": len(mine), "hit": int(sum(mine)),
                        "sensitivity": sum(mine) / len(mine) if mine else None}
        return out

    @property
    def pn_confusion(self) -> np.ndarray | None:
        """Patients by reference pN category (rows) and predicted one, in :data:`PN_CATEGORIES` order;
        None without patients."""
        if not self.patients:
            return None
        return confusion_matrix([p.reference for p in self.patients], [p.predicted for p in self.patients],
                                PN_CATEGORIES)

    @property
    def kappa(self) -> float | None:
        """CAMELYON17's quadratic weighted kappa of the pN categories; None without patients (NaN
        when undefined: every patient in one reference category and predicted in one)."""
        counts = self.pn_confusion
        return None if counts is None else kappa_of_matrix(counts)

    def metrics(self, split: str = "test") -> dict[str, float]:
        """Headline numbers under ``split/name`` keys: the category accuracy, and the kappa when patients exist."""
        out = {f"{split}/category_accuracy": self.accuracy}
        if self.patients:
            out[f"{split}/kappa"] = self.kappa
        return out


def lesion_hits(lesions: SlideLesions) -> list[LesionHit]:
    """Each annotated lesion with its category and whether a predicted polygon overlaps it."""
    predicted = np.asarray(list(lesions.predicted), dtype=object)
    sizes = diameters_mm(lesions.reference, lesions.mpp)
    hits = []
    for index, (polygon, size) in enumerate(zip(lesions.reference, sizes, strict=True), 1):
        overlap = bool(predicted.size) and bool(
            (shapely.intersects(polygon, predicted) & ~shapely.touches(polygon, predicted)).any()
        )
        hits.append(LesionHit(lesions.slide, index, size, category(size), overlap))
    return hits


def categorise_slide(lesions: SlideLesions, patient: str | None = None) -> SlideCategory:
    reference, reference_mm = slide_category(lesions.reference, lesions.mpp)
    predicted, predicted_mm = slide_category(lesions.predicted, lesions.mpp)
    return SlideCategory(lesions.slide, lesions.mpp, reference, predicted, reference_mm, predicted_mm,
                      len(lesions.reference), len(lesions.predicted), patient)


def categorise_slides(slides: Sequence[SlideLesions], patients: Mapping[str, str] | None = None,
                 excluded: Iterable[str] = ()) -> PnEvaluation:
    """Categories, lesion hits and pN categories of the slides.

    Args:
        slides: each slide's lesion polygons and µm per pixel.
        patients: slide -> patient (case-insensitive names); default: from CAMELYON17 slide
            names (``patient_004_node_4``). Slides of no patient are categorised but make no pN category.
        excluded: slides left out by the caller, recorded in the result.
    """
    names = [s.slide for s in slides]
    if len({n.lower() for n in names}) != len(names):
        raise VisTumorError(f"a slide is given twice among {names} (names match case-insensitively)")
    grouped = group_patients(names, patients)
    patient_of = {slide: patient for patient, members in grouped.items() for slide in members}
    categorised = [categorise_slide(s, patient_of.get(s.slide)) for s in slides]
    by_slide = {s.slide: s for s in categorised}
    return PnEvaluation(
        slides=categorised,
        lesions=[hit for s in slides for hit in lesion_hits(s)],
        patients=[PatientPn(patient, tuple(members),
                               pn_category([by_slide[m].reference for m in members], patient),
                               pn_category([by_slide[m].predicted for m in members], patient))
                  for patient, members in sorted(grouped.items())],
        excluded=sorted(excluded),
    )


def read_polygons(path: Path | None, groups: Mapping[str, str] | None = None) -> list[BaseGeometry]:
    """The lesion polygons of an ASAP XML or GeoJSON file (exclusions cut out, largest
    first); none for no file."""
    return [] if path is None else read_annotations(path, groups).polygons


def evaluate_pn(inputs: Sequence[LesionFiles], patients: Mapping[str, str] | None = None,
                exclude: Iterable[str] = OFFICIAL_EXCLUDE, groups: Mapping[str, str] | None = None) -> PnEvaluation:
    """:func:`categorise_slides` of lesion files, leaving out the slides excluded from the lesion
    task (``exclude``, as :func:`~vistumor.evaluate.camelyon16.evaluation.evaluate` takes it)."""
    left_out = parse_exclude(exclude)[FROC]
    slides = []
    for item in inputs:
        if item.slide.lower() in left_out:
            continue
        if item.mpp is None:
            raise VisTumorError(f"slide '{item.slide}': no µm per pixel to measure its lesions in mm "
                                "(pass --mpp, or --slides with slides that record it)")
        slides.append(SlideLesions(item.slide, float(item.mpp), read_polygons(item.annotation, groups),
                                   read_polygons(item.lesions, PREDICTION_GROUPS)))
    if not slides:
        raise VisTumorError("no slide to categorise")
    return categorise_slides(slides, patients, [i.slide for i in inputs if i.slide.lower() in left_out])
