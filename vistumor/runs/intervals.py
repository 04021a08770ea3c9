"""Confidence intervals over slides, and the paired comparison of two runs.

Patches of one slide are not independent (one stain, one patient, one scan), so every
interval resamples **slides** with replacement, taking all of a slide's patches along
(:func:`vistumor.evaluate.camelyon16.auc.bootstrap_ci`). Two runs tested on the same slides are compared
on the same resamples (a paired bootstrap): the interval of the difference, and a two-sided
p-value, say whether one architecture really differs from the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from vistumor.errors import VisTumorError
from vistumor.evaluate.camelyon16.auc import bootstrap_ci, roc_auc
from vistumor.labels import confusion_counts, missing_classes, predict
from vistumor.model.metrics import rates

N_RESAMPLES = 1000
#: patch metrics with a slide-bootstrap interval (keys of :func:`patch_metric`)
PATCH_METRICS = ("acc", "fpr", "fnr", "recall", "auroc")

Slides = dict[str, tuple[np.ndarray, np.ndarray]]  # slide -> (labels, probabilities)


def slides_of(predictions: pd.DataFrame) -> Slides:
    """A run's test predictions (``predictions.csv``) grouped by slide."""
    return {str(s): (g["label"].to_numpy(), g["prob"].to_numpy()) for s, g in predictions.groupby("slide_id")}


def patch_metric(name: str, threshold: float = 0.5) -> Callable[[list], float]:
    """The statistic ``name`` over a list of per-slide ``(labels, probs)``."""
    def statistic(sample: list) -> float:
        labels = np.concatenate([s[0] for s in sample])
        probs = np.concatenate([s[1] for s in sample])
        if name == "auroc":
            return roc_auc(labels, probs)
        needs = {"recall": "tumor", "fnr": "tumor", "fpr": "normal"}.get(name)
        if needs and needs in missing_classes(labels):  # undefined on this resample: skipped
            raise VisTumorError(f"{name} needs {needs} patches")
        return rates(**confusion_counts(labels, predict(probs, threshold)))[name]

    return statistic


def read_slides(predictions_csv: str | Path) -> Slides:
    """:func:`slides_of` a ``predictions.csv``."""
    return slides_of(pd.read_csv(predictions_csv, dtype={"slide_id": str}))


def patch_intervals(predictions: str | Path | Slides, threshold: float = 0.5, n: int = N_RESAMPLES,
                    seed: int = 0) -> dict[str, list[float]]:
    """``test/<metric>_ci95`` of every :data:`PATCH_METRICS` entry, resampling slides
    (``predictions``: a ``predictions.csv`` or its :func:`slides_of`)."""
    slides = predictions if isinstance(predictions, dict) else read_slides(predictions)
    return {f"test/{m}_ci95": [round(v, 6) for v in bootstrap_ci(slides, patch_metric(m, threshold), n, seed)]
            for m in PATCH_METRICS}


def slide_auc_statistic(sample: list) -> float:
    """Slide AUC over a list of per-slide ``(label, score)``."""
    return roc_auc([s[0] for s in sample], [s[1] for s in sample])


def paired_difference(
    first: Mapping[str, object], second: Mapping[str, object], statistic: Callable[[list], float],
    n: int = N_RESAMPLES, seed: int = 0,
) -> dict[str, float] | None:
    """``statistic(first) - statistic(second)`` on the slides both runs share, its 95 %
    interval from resampling those slides together, and a two-sided bootstrap p-value.

    Returns None when the runs share fewer than two slides.
    """
    shared = sorted(set(first) & set(second))
    if len(shared) < 2:
        return None
    rng = np.random.default_rng(seed)
    observed = statistic([first[s] for s in shared]) - statistic([second[s] for s in shared])
    diffs = []
    for _ in range(n):
        pick = [shared[i] for i in rng.integers(0, len(shared), len(shared))]
        try:
            diffs.append(statistic([first[s] for s in pick]) - statistic([second[s] for s in pick]))
        except VisTumorError:  # a resample with one class: undefined, skipped
            continue
    if not diffs:
        return None
    diffs = np.asarray(diffs)
    low, high = np.quantile(diffs, [0.025, 0.975])
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return {"difference": float(observed), "low": float(low), "high": float(high), "p": float(p),
            "slides": len(shared)}
