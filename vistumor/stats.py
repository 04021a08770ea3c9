"""Statistics two stages share: the rank (Mann-Whitney) AUC, below both the explanation
stage (pixel AUROC of a map) and the evaluation stage (slide AUC). Pure numpy."""

from __future__ import annotations

import numpy as np


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating ``positive`` items from the rest:
    the Mann-Whitney statistic ``(R+ - n+(n+ + 1)/2) / (n+ n-)`` over 1-based ranks, ties
    given their mean rank (so a tie counts one half), equal to the area under the trapezoidal
    ROC curve. NaN when either class is empty (the AUC is undefined).

    Args:
        positive: one boolean per item (any shape; flattened).
        scores: one score per item, the same size.
    """
    positive = np.asarray(positive, bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if positive.size != scores.size:
        raise ValueError(f"{positive.size} labels but {scores.size} scores")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based ranks, ties averaged
    rank_sum = mean_rank[inverse.ravel()][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
