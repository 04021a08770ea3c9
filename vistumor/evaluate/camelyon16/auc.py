"""Slide-level ROC AUC of CAMELYON16 and percentile-bootstrap confidence intervals over slides.

The AUC is the Mann-Whitney statistic (ties count one half, :func:`vistumor.stats.rank_auc`),
equal to the area under the trapezoidal ROC curve; tumor is the positive class (:mod:`vistumor.labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from vistumor.errors import ConfigError, VisTumorError
from vistumor.labels import is_tumor, missing_classes
from vistumor.stats import rank_auc

T = TypeVar("T")

#: resamples and confidence level of the bootstrap intervals (percentile method)
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of slide ``scores`` against slide ``labels`` (``TUMOR``/``NORMAL``).

    Raises:
        VisTumorError: when a class is missing (the AUC is undefined).
    """
    auc = _auc_or_nan(np.asarray(labels), np.asarray(scores, np.float64))
    if np.isnan(auc):
        missing = " and no ".join(missing_classes(labels))
        raise VisTumorError(f"slide AUC needs tumor and normal slides: no {missing} slide of {len(labels)}")
    return auc


def _auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    return rank_auc(is_tumor(labels), scores)


def roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from ``(0, 0)`` to ``(1, 1)``, one point per distinct score
    (calling ``score >= threshold`` tumor), highest threshold first."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    positive = is_tumor(labels)
    order = np.argsort(-scores, kind="stable")
    thresholds, first = np.unique(-scores[order], return_index=True)
    last = np.r_[first[1:], len(scores)] - 1  # last index of each distinct score
    tp = np.cumsum(positive[order])[last]
    fp = np.cumsum(~positive[order])[last]
    tpr = np.r_[0.0, tp / max(int(positive.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~positive).sum()), 1)]
    return fpr, tpr, np.r_[np.inf, -thresholds]


def youden_threshold(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """The probability threshold maximising Youden's J = TPR - FPR on ``(labels, probs)``
    (an operating point chosen on validation); the lowest such threshold on ties. One sort
    (:func:`roc_curve`), not one pass per distinct probability."""
    truth = is_tumor(np.asarray(labels))
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if not positives or not negatives:
        raise ConfigError(f"an operating point needs both classes, got {positives} tumor and {negatives} normal")
    fpr, tpr, thresholds = roc_curve(labels, probs)
    j = (tpr - fpr)[1:]  # without the (0, 0) point of the infinite threshold
    best = np.flatnonzero(j >= j.max() - 1e-12)[-1]  # thresholds descend: the last is the lowest
    return float(thresholds[1:][best])


def bootstrap_ci(
    values_by_slide: Mapping[str, T] | Sequence[T], statistic: Callable[[list[T]], float],
    n: int = N_BOOTSTRAP, seed: int = 0, confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` over slides resampled with replacement.

    Args:
        values_by_slide: one value per slide (any object: a ``(label, score)`` pair, a
            :class:`~vistumor.evaluate.camelyon16.froc.SlideHits`, ...), as a mapping or a sequence.
        statistic: computes the metric from a list of per-slide values (a resample may hold a
            slide twice); it returns NaN (or raises :class:`VisTumorError`) where undefined,
            e.g. a resample with one class, and that resample is skipped.
        n: resamples; seed: their generator's seed (same seed, same interval).
        confidence: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).

    Returns:
        ``(low, high)``, or ``(nan, nan)`` when no resample gave a value.
    """
    if not 0 < confidence < 1 or n < 1:
        raise ConfigError(f"bootstrap needs n >= 1 and 0 < confidence < 1, got n={n}, {confidence=}")
    items = list(values_by_slide.values()) if isinstance(values_by_slide, Mapping) else list(values_by_slide)
    if not items:
        raise VisTumorError("bootstrap over no slides")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        sample = [items[i] for i in rng.integers(0, len(items), len(items))]
        value = _value_or_nan(statistic, sample)
        if np.isfinite(value):
            stats.append(value)
    if not stats:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def _value_or_nan(statistic: Callable[[list[Any]], float], sample: list[Any]) -> float:
    try:
        return float(statistic(sample))
    except VisTumorError:
        return float("nan")


def auc_ci(
    labels: Sequence[int], scores: Sequence[float], n: int = N_BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % interval of the slide AUC (slides resampled, one-class resamples skipped)."""
    pairs = list(zip(np.asarray(labels).tolist(), np.asarray(scores, np.float64).tolist(), strict=True))

    def statistic(sample: list[tuple[int, float]]) -> float:
        labels_, scores_ = zip(*sample, strict=True)
        return _auc_or_nan(np.asarray(labels_), np.asarray(scores_))

    return bootstrap_ci(pairs, statistic, n=n, seed=seed)
