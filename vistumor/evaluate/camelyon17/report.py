"""Files of the CAMELYON17 evaluation, beside ``evaluation.json``: ``staging.json`` (categories
per slide, the confusion matrix, per-category lesion sensitivity, pN category per patient and the
kappa) and ``staging.png`` (the confusion matrices), each written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vistumor.evaluate.camelyon17.categories import CATEGORIES, ITC_MAX_MM, MICRO_MAX_MM, PN_CATEGORIES
from vistumor.evaluate.camelyon17.evaluation import PnEvaluation
from vistumor.files import save_figure, write_json

PN_FILES = {"json": "staging.json", "png": "staging.png"}
#: how ``lesion_sensitivity`` decides a hit, recorded with it
SENSITIVITY_RULE = ("polygon overlap: an annotated lesion, categorised by its own longest diameter, is hit when "
                    "a predicted lesion polygon shares interior with it")


def _number(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _matrix(counts: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    return {"rows": "reference", "columns": "predicted", "labels": list(labels), "counts": counts.tolist()}


def pn_json(result: PnEvaluation) -> dict[str, Any]:
    """What ``staging.json`` holds."""
    data: dict[str, Any] = {
        "categories": list(CATEGORIES),
        "thresholds_mm": {"itc_max": ITC_MAX_MM, "micro_max": MICRO_MAX_MM},
        "size": "longest diameter: the maximum Feret diameter of the lesion polygon, in mm",
        "slides": [{"slide": s.slide, "patient": s.patient, "mpp": s.mpp, "reference": s.reference,
                    "predicted": s.predicted, "reference_mm": _number(s.reference_mm),
                    "predicted_mm": _number(s.predicted_mm), "reference_lesions": s.n_reference,
                    "predicted_lesions": s.n_predicted} for s in result.slides],
        "confusion_matrix": _matrix(result.confusion, CATEGORIES),
        "category_accuracy": _number(result.accuracy),
        "lesion_sensitivity": result.sensitivity,
        "lesion_sensitivity_rule": SENSITIVITY_RULE,
        "lesions": [{"slide": h.slide, "index": h.index, "diameter_mm": _number(h.diameter_mm),
                     "category": h.category, "hit": h.hit} for h in result.lesions],
        "excluded": result.excluded,
    }
    if result.patients:
        data["patients"] = {p.patient: {"slides": list(p.slides), "reference": p.reference, "predicted": p.predicted}
                            for p in result.patients}
        data["pn_confusion_matrix"] = _matrix(result.pn_confusion, PN_CATEGORIES)
        data["kappa"] = _number(result.kappa)
    return data


def _draw_matrix(ax, counts: np.ndarray, labels: tuple[str, ...], title: str) -> None:
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for (row, col), value in np.ndenumerate(counts):
        dark = value > counts.max() / 2
        ax.text(col, row, str(value), ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)


def pn_figure(result: PnEvaluation, path: str | Path) -> Path:
    """The slide-category confusion matrix, and the pN one beside it when patients exist."""
    panels = 2 if result.patients else 1
    fig = Figure(figsize=(3.9 * panels, 3.7), dpi=120)
    axes = np.atleast_1d(fig.subplots(1, panels))
    _draw_matrix(axes[0], result.confusion, CATEGORIES,
                 f"slide categories ({len(result.slides)} slides)\naccuracy {result.accuracy:.3f}")
    if result.patients:
        kappa = result.kappa
        _draw_matrix(axes[1], result.pn_confusion, PN_CATEGORIES,
                     f"pN category ({len(result.patients)} patients)\nquadratic kappa "
                     f"{'undefined' if math.isnan(kappa) else f'{kappa:.3f}'}")
    return save_figure(fig, path)


def write_pn_report(result: PnEvaluation, out_dir: str | Path,
                         settings: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``staging.json`` and ``staging.png`` into ``out_dir``; ``settings`` go into the JSON."""
    paths = {key: Path(out_dir) / filename for key, filename in PN_FILES.items()}
    data = pn_json(result)
    if settings:
        data["settings"] = settings
    write_json(paths["json"], data)
    pn_figure(result, paths["png"])
    return paths
