"""CAMELYON16 evaluation: slide-level ROC AUC and lesion-level FROC, exactly as the official
``Evaluation_FROC.py`` (B. Ehteshami Bejnordi, 2016), with bootstrap confidence intervals.

``masks`` (evaluation masks, ITCs) -> ``froc`` (hits, curve, official and strict modes),
``auc`` (ROC AUC, bootstrap over slides) -> ``evaluation`` (:func:`evaluate`) -> ``report``
(JSON, CSV, figures); ``io`` reads the files, ``cli`` is ``python -m vistumor.evaluate``.

CAMELYON17's staging: ``staging`` (metastasis categories by the longest lesion diameter, pN
stages, patients), ``kappa`` (confusion matrix, quadratic weighted kappa) ->
``stage_evaluation`` (:func:`stage_slides`, :func:`evaluate_staging`) -> ``staging_report``.
"""

from vistumor.evaluate.auc import auc_ci, bootstrap_ci, roc_auc, roc_curve
from vistumor.evaluate.evaluation import OFFICIAL_EXCLUDE, Evaluation, SlideRow, evaluate, parse_exclude
from vistumor.evaluate.froc import (
    FP_RATES,
    MODES,
    OFFICIAL,
    STRICT,
    FrocCurve,
    PooledHits,
    SlideHits,
    froc,
    froc_ci,
    froc_curve,
    slide_hits,
)
from vistumor.evaluate.io import ReferenceSlide, read_detections, read_reference, read_scores
from vistumor.evaluate.kappa import confusion_matrix, quadratic_kappa
from vistumor.evaluate.masks import (
    EvaluationMask,
    MaskSource,
    evaluation_mask,
    mask_from_annotation,
    mask_from_file,
    read_mask_tiff,
)
from vistumor.evaluate.report import write_report
from vistumor.evaluate.stage_evaluation import (
    SlideLesions,
    Staging,
    StagingInput,
    evaluate_staging,
    stage_slides,
)
from vistumor.evaluate.staging import (
    CATEGORIES,
    PN_STAGES,
    category,
    feret_diameter,
    patients_from_names,
    pn_stage,
    read_patients,
    slide_category,
)
from vistumor.evaluate.staging_report import write_staging_report

__all__ = [
    "CATEGORIES", "PN_STAGES", "SlideLesions", "Staging", "StagingInput", "category", "confusion_matrix",
    "evaluate_staging", "feret_diameter", "patients_from_names", "pn_stage", "quadratic_kappa", "read_patients",
    "slide_category", "stage_slides", "write_staging_report",
    "FP_RATES", "MODES", "OFFICIAL", "OFFICIAL_EXCLUDE", "STRICT", "Evaluation", "EvaluationMask",
    "FrocCurve", "MaskSource", "PooledHits", "ReferenceSlide", "SlideHits", "SlideRow", "auc_ci",
    "bootstrap_ci", "evaluate", "evaluation_mask", "froc", "froc_ci", "froc_curve", "mask_from_annotation",
    "mask_from_file", "parse_exclude", "read_detections", "read_mask_tiff", "read_reference", "read_scores",
    "roc_auc", "roc_curve", "slide_hits", "write_report",
]
