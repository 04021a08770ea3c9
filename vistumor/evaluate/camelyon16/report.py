"""Files of an evaluation: ``evaluation.json``, ``per_slide.csv``, ``froc.png``, ``roc.png``
(each written atomically)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vistumor.evaluate.camelyon16.evaluation import Evaluation
from vistumor.evaluate.camelyon16.froc import FP_RATES, FrocCurve
from vistumor.evaluate.exclusions import AUC, TASKS
from vistumor.files import save_figure, write_json, write_text
from vistumor.labels import name

#: the folder of a model's evaluation in a whole-slide run (``models/<name>/evaluation``)
FOLDER = "evaluation"
#: the CAMELYON16 files of an evaluation folder (the CAMELYON17 ones: ``camelyon17.report.PN_FILES``)
FILES = {"json": "evaluation.json", "csv": "per_slide.csv", "froc": "froc.png", "roc": "roc.png"}
PER_SLIDE_COLUMNS = (
    "slide", "label", "score", "n_detections", "n_lesions", "n_itc", "hits", "false_positives", "annotation",
)


def _number(value: float | None) -> float | None:
    """JSON has no NaN: an undefined number is null."""
    return None if value is None or math.isnan(value) else float(value)


def _rate(rate: float) -> str:
    return f"{rate:g}"


def lesions(evaluation: Evaluation) -> list[dict[str, Any]]:
    """Every labelled region of the lesion task, with its size and the detection that hit it."""
    out = []
    for hits in evaluation.hits:
        for i in range(hits.itc.size):
            hit = not math.isnan(hits.best_probs[i])
            x, y = (int(v) for v in hits.best_points[i])
            out.append({
                "slide": hits.slide, "label": i + 1,
                "area_um2": round(float(hits.area_um2[i]), 3),
                "major_axis_um": round(float(hits.major_axis_um[i]), 3),
                "itc": bool(hits.itc[i]),
                "probability": float(hits.best_probs[i]) if hit else None,
                "x": x if hit else None, "y": y if hit else None,
            })
    return out


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    """What ``evaluation.json`` holds."""
    curve = evaluation.curve
    hits = evaluation.hits
    return {
        "mode": evaluation.mode,
        "froc": evaluation.froc,
        "froc_ci95": [_number(v) for v in evaluation.froc_ci95],
        "sensitivity_at_fp": {_rate(r): s for r, s in evaluation.sensitivity_at_fp.items()},
        "auc": evaluation.auc,
        "auc_ci95": [_number(v) for v in evaluation.auc_ci95],
        "lesions": lesions(evaluation),
        "false_positives": {"count": sum(h.false_positives for h in hits),
                            "per_slide": {h.slide: h.false_positives for h in hits}},
        "slides": {task: evaluation.n_slides(task) for task in TASKS},
        "excluded": evaluation.excluded,
        "without_predictions": evaluation.without_predictions,
        "unusable_annotations": evaluation.unusable,
        "n_lesions": curve.n_lesions,
        "n_itc": sum(h.n_itc for h in hits),
        "curve": {"thresholds": curve.thresholds.tolist(), "fp_per_slide": curve.fp_per_slide.tolist(),
                  "sensitivity": curve.sensitivity.tolist()},
    }


def per_slide_csv(evaluation: Evaluation) -> str:
    """``per_slide.csv``: one row per evaluated slide; lesion columns empty outside the lesion task,
    the score empty outside the slide task; ``annotation`` is ``unusable (why)`` for a tumor slide
    left out of the lesion task because its annotation gives no lesion, else empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_SLIDE_COLUMNS)
    for row in evaluation.slides:
        h = row.hits
        lesion = [h.n_lesions, h.n_itc, h.hits, h.false_positives] if h is not None else ["", "", "", ""]
        writer.writerow([row.slide, name(row.label), "" if row.score is None else f"{row.score:.6g}",
                         row.n_detections, *lesion, "" if row.unusable is None else f"unusable ({row.unusable})"])
    return buffer.getvalue()


def froc_figure(curve: FrocCurve, path: str | Path) -> Path:
    """The FROC curve (drawn as the script's ``plotFROC`` does, joining the points, which is
    also how ``np.interp`` reads it) with the six evaluation rates marked; x on a log scale
    beyond 0.25 FPs per slide."""
    fig = Figure(figsize=(4.4, 3.4), dpi=120)
    ax = fig.subplots()
    ax.plot(curve.fp_per_slide, curve.sensitivity, "-", color="black", lw=1.5)
    ax.plot(FP_RATES, curve.sensitivity_at(FP_RATES), "o", color="tab:red", ms=4,
            label=f"FROC {curve.score:.3f} ({curve.mode})")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, max(8.0, float(curve.fp_per_slide.max(initial=0))))
    ax.set_xticks([0, *FP_RATES], ["0", *(f"{r:g}" if r != 0.5 else "" for r in FP_RATES)])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per slide")
    ax.set_ylabel("metastasis detection sensitivity")
    ax.set_title(f"FROC: {curve.n_lesions} lesions, {curve.n_slides} slides")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def slide_roc_figure(evaluation: Evaluation, path: str | Path) -> Path:
    """The slide-level ROC curve with its AUC and 95 % interval."""
    fpr, tpr = evaluation.roc
    low, high = evaluation.auc_ci95
    fig = Figure(figsize=(3.6, 3.4), dpi=120)
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"AUC {evaluation.auc:.3f} [{low:.3f}, {high:.3f}]")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"slide ROC ({evaluation.n_slides(AUC)} slides)")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def write_report(
    evaluation: Evaluation, out_dir: str | Path, settings: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the four files into ``out_dir``; ``settings`` (inputs, parameters) go into the JSON."""
    paths = {key: Path(out_dir) / filename for key, filename in FILES.items()}
    data = evaluation_json(evaluation)
    if settings:
        data["settings"] = settings
    write_json(paths["json"], data)
    write_text(paths["csv"], per_slide_csv(evaluation))
    froc_figure(evaluation.curve, paths["froc"])
    slide_roc_figure(evaluation, paths["roc"])
    return paths

