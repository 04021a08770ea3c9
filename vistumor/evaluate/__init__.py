"""Evaluation of detections and lesions against the annotations, in two parts:

* :mod:`~vistumor.evaluate.camelyon16`: CAMELYON16's slide ROC AUC and lesion-level FROC,
  exactly as the official ``Evaluation_FROC.py`` (B. Ehteshami Bejnordi, 2016), with bootstrap
  confidence intervals (``masks`` -> ``froc``, ``auc`` -> ``evaluation`` -> ``report``);
* :mod:`~vistumor.evaluate.camelyon17`: CAMELYON17's metastasis categories by the longest
  lesion diameter, pN categories of patients and their quadratic weighted kappa
  (``categories``, ``kappa`` -> ``evaluation`` -> ``report``).

Shared by both: ``io`` (reading the files), ``exclusions`` (which slides each task leaves out),
and ``pipeline``, the one orchestrator (:func:`evaluate_slides`) that ``cli``
(``python -m vistumor.evaluate``) and a whole-slide run call. Import anything else from its
submodule.
"""

from vistumor.evaluate.pipeline import Options, Outcome, SlideSet, evaluate_slides

__all__ = ["Options", "Outcome", "SlideSet", "evaluate_slides"]
