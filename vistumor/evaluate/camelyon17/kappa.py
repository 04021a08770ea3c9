"""Agreement of ordered categories: the confusion matrix and Cohen's kappa with quadratic
weights, CAMELYON17's score of pN stages (numpy only).

J. Cohen, "Weighted kappa", Psychological Bulletin 70(4), 1968:
``kappa = 1 - sum(w * O) / sum(w * E)`` over the cells of the observed matrix ``O`` and the
matrix ``E = outer(row totals, column totals) / n`` expected by chance, with quadratic
disagreement weights ``w[i, j] = (i - j)**2 / (k - 1)**2``. The CAMELYON17 evaluation script
computes the same with ``sklearn.metrics.cohen_kappa_score(..., labels=stage_list,
weights='quadratic')`` (its weights lack the ``(k - 1)**2``, which cancels in the ratio).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vistumor.errors import VisTumorError


def confusion_matrix(reference: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts ``[i, j]`` of items whose reference is ``labels[i]`` and prediction ``labels[j]``."""
    if len(reference) != len(predicted):
        raise VisTumorError(f"{len(reference)} reference labels but {len(predicted)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({v for v in (*reference, *predicted) if v not in index})
    if unknown:
        raise VisTumorError(f"unknown labels {unknown}; known: {list(labels)}")
    counts = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(counts, ([index[v] for v in reference], [index[v] for v in predicted]), 1)
    return counts


def quadratic_weights(k: int) -> np.ndarray:
    """``w[i, j] = (i - j)**2 / (k - 1)**2``: 0 on the diagonal, 1 for the two extremes."""
    i, j = np.indices((k, k))
    return (i - j) ** 2 / max(k - 1, 1) ** 2


def kappa_of_matrix(counts: np.ndarray) -> float:
    """Quadratic weighted kappa of a confusion matrix; NaN when chance predicts no
    disagreement (every item in one row or in one column), where kappa is undefined."""
    observed = np.asarray(counts, np.float64)
    total = observed.sum()
    if total == 0:
        return float("nan")
    expected = np.outer(observed.sum(1), observed.sum(0)) / total
    weights = quadratic_weights(len(observed))
    chance = float((weights * expected).sum())
    if chance == 0:
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / chance


def quadratic_kappa(reference: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Cohen's quadratic weighted kappa of two ratings over ``labels`` (in their order)."""
    return kappa_of_matrix(confusion_matrix(reference, predicted, labels))
