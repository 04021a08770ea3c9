"""CAMELYON17's rules: a slide's metastasis category from its largest lesion, a patient's pN
category (the "pN stage" of the AJCC manual) from the categories of its lymph nodes, and which
slides make a patient.

Sources, quoted beside the constants: the CAMELYON17 challenge's "Evaluation" page
(https://camelyon17.grand-challenge.org/Evaluation/, G. Litjens, P. Bandi et al., 2017)
and the AJCC Cancer PnEvaluation Manual, 8th edition, breast, pathological N (pN). A lesion's
size is its longest diameter: the maximum Feret diameter of its polygon. The rules'
alternative criterion, a count of tumour cells (200), needs cells nobody annotated and is
not used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from vistumor.errors import VisTumorError
from vistumor.files import read_slide_table

#: a slide's category (CAMELYON17's ``stage_labels.csv`` uses the same four names)
NEGATIVE, ITC, MICRO, MACRO = "negative", "itc", "micro", "macro"
CATEGORIES = (NEGATIVE, ITC, MICRO, MACRO)
#: CAMELYON17 Evaluation: ITC are "single tumour cells or a cluster of tumour cells smaller than
#: 0.2 mm"; AJCC 8th ed. pN0(i+): "malignant cells in regional lymph node(s) no greater than 0.2 mm".
#: So a lesion of exactly 0.2 mm is an ITC.
ITC_MAX_MM = 0.2
#: CAMELYON17 Evaluation: micro-metastases are "greater than 0.2 mm ... but smaller than 2.0 mm",
#: macro-metastases "greater than 2.0 mm"; AJCC 8th ed. pN1mi: "greater than 0.2 mm ... none greater
#: than 2.0 mm". So exactly 2.0 mm is a micro-metastasis.
MICRO_MAX_MM = 2.0
#: sizes on a boundary up to this relative error (float noise of px * um/px) count as on it
_TOLERANCE = 1e-9

#: CAMELYON17's pN categories ("pN stages") in the order of its quadratic weighted kappa (the official evaluation
#: script's ``stage_list = ['pN0', 'pN0(i+)', 'pN1mi', 'pN1', 'pN2']``)
PN0, PN0_ITC, PN1MI, PN1, PN2 = "pN0", "pN0(i+)", "pN1mi", "pN1", "pN2"
PN_CATEGORIES = (PN0, PN0_ITC, PN1MI, PN1, PN2)
#: CAMELYON17 Evaluation: "pN1: Metastases found in 1-3 lymph nodes, of which at least one is a
#: macro-metastasis. pN2: Metastases found in 4-9 lymph nodes, of which at least one is a
#: macro-metastasis." A positive node holds a micro- or macro-metastasis: "Lymph nodes containing
#: only ITC are therefore not counted as positive lymph nodes."
PN1_MAX_NODES, PN2_MAX_NODES = 3, 9
#: CAMELYON17's slide names: ``patient_004_node_4`` is node 4 of patient 4
PATIENT_NAME = re.compile(r"^(patient_\d+)_node_\d+$", re.IGNORECASE)

_HULL_CHUNK = 1024  # hull vertices compared at a time (memory of the pairwise distances)


def feret_diameter(geometry: BaseGeometry) -> float:
    """Maximum Feret diameter in the geometry's units: the largest distance between two
    vertices of its convex hull (holes and concavities do not change it); 0 when empty."""
    if geometry.is_empty:
        return 0.0
    points = np.unique(shapely.get_coordinates(shapely.convex_hull(geometry)), axis=0)
    best = 0.0
    for start in range(0, len(points), _HULL_CHUNK):
        diff = points[start : start + _HULL_CHUNK, None, :] - points[None, :, :]
        best = max(best, float((diff**2).sum(-1).max()))
    return float(np.sqrt(best))


def category(diameter_mm: float | None) -> str:
    """The category of a slide whose largest lesion is ``diameter_mm`` long (None: no lesion)."""
    if diameter_mm is None:
        return NEGATIVE
    if not np.isfinite(diameter_mm) or diameter_mm < 0:
        raise VisTumorError(f"a lesion diameter must be a finite size >= 0 mm, got {diameter_mm!r}")
    if diameter_mm <= ITC_MAX_MM * (1 + _TOLERANCE):
        return ITC
    if diameter_mm <= MICRO_MAX_MM * (1 + _TOLERANCE):
        return MICRO
    return MACRO


def diameters_mm(polygons: Iterable[BaseGeometry], mpp: float) -> list[float]:
    """Longest diameter in mm of each polygon (level-0 px at ``mpp`` µm per pixel)."""
    if not mpp or not np.isfinite(mpp) or mpp <= 0:
        raise VisTumorError(f"µm per pixel must be a positive number, got {mpp!r}")
    return [feret_diameter(p) * mpp / 1000 for p in polygons]


def slide_category(polygons: Sequence[BaseGeometry], mpp: float) -> tuple[str, float | None]:
    """A slide's category and its largest lesion's longest diameter in mm (None without lesions)."""
    sizes = diameters_mm(polygons, mpp)
    largest = max(sizes) if sizes else None
    return category(largest), largest


def pn_category(categories: Iterable[str], patient: str = "") -> str:
    """CAMELYON17's pN category ("pN stage") of a patient whose nodes have these categories.

    pN0: no ITC, micro- or macro-metastasis; pN0(i+): ITCs only; pN1mi: micro-metastases, no
    macro-metastasis (however many nodes); pN1: 1-3 positive nodes with at least one
    macro-metastasis; pN2: 4-9 such nodes. More than 9 positive nodes (pN3) is outside the
    challenge's five pN categories and an error.
    """
    counts = Counter(categories)
    unknown = sorted(set(counts) - set(CATEGORIES))
    if unknown:
        raise VisTumorError(f"patient '{patient}': unknown node categories {unknown}; known: {list(CATEGORIES)}")
    positive = counts[MICRO] + counts[MACRO]
    if counts[MACRO]:
        if positive <= PN1_MAX_NODES:
            return PN1
        if positive <= PN2_MAX_NODES:
            return PN2
        raise VisTumorError(f"patient '{patient}': {positive} positive nodes is pN3, outside CAMELYON17's "
                            f"pN categories {list(PN_CATEGORIES)}")
    if counts[MICRO]:
        return PN1MI
    return PN0_ITC if counts[ITC] else PN0


def patients_from_names(slides: Iterable[str]) -> dict[str, str]:
    """Slide -> patient for the slides named as CAMELYON17 names them (``patient_004_node_4``
    is patient ``patient_004``); other slides belong to no patient."""
    found = {}
    for slide in slides:
        match = PATIENT_NAME.match(slide)
        if match:
            found[slide] = match.group(1).lower()
    return found


def read_patients(path: str | Path) -> dict[str, str]:
    """A ``slide,patient`` table (header optional when patients are numbers), by lower-case slide."""
    rows = read_slide_table(path, "patient", str, "a slide and a patient")
    return {slide.lower(): patient for _, slide, patient, _ in rows}


def group_patients(slides: Iterable[str], patients: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Patient -> its slides (in the given order): from ``patients`` (slide -> patient, slide
    names matching case-insensitively) or else from CAMELYON17 names; empty when none."""
    slides = list(slides)
    if patients is None:
        by_slide = patients_from_names(slides)
    else:
        lower = {slide.lower(): patient for slide, patient in patients.items()}
        by_slide = {slide: lower[slide.lower()] for slide in slides if slide.lower() in lower}
    grouped: dict[str, list[str]] = {}
    for slide in slides:
        if slide in by_slide:
            grouped.setdefault(by_slide[slide], []).append(slide)
    return grouped
