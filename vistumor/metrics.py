"""Binary tumor-vs-normal metrics, named once as ``stage/name`` and reused everywhere.

Rates come from one confusion matrix (a torchmetrics state, so DDP sums it across ranks);
AUROC from torchmetrics. Tumor is the positive class (label 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC, BinaryROC

from vistumor.files import atomic_path

#: Metric names, in report order. ``recall`` is sensitivity; ``fpr = 1 - specificity``.
NAMES = ("acc", "fpr", "fnr", "recall", "specificity", "precision", "f1", "auroc")


def key(stage: str, name: str) -> str:
    """The one spelling of a metric key: ``val/acc``."""
    return f"{stage}/{name}"


def rates(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Accuracy, FPR, FNR, recall, specificity, precision and F1 of a confusion matrix.

    A rate with an empty denominator is 0 (torchmetrics' ``zero_division=0``).
    """

    def div(a, b):
        return a / b if b else 0.0

    recall = div(tp, tp + fn)
    precision = div(tp, tp + fp)
    return {
        "acc": div(tp + tn, tp + fp + tn + fn),
        "fpr": div(fp, fp + tn),
        "fnr": div(fn, fn + tp),
        "recall": recall,
        "specificity": div(tn, tn + fp),
        "precision": precision,
        "f1": div(2 * precision * recall, precision + recall),
    }


def confusion_counts(pred, target) -> dict[str, int]:
    """``tp, fp, tn, fn`` of 0/1 predictions against 0/1 labels (tumor is positive)."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    return {"tp": int((pred & target).sum()), "fp": int((pred & ~target).sum()),
            "tn": int((~pred & ~target).sum()), "fn": int((~pred & target).sum())}


class ConfusionRates(Metric):
    """Confusion-matrix counts at a probability threshold, summed across batches and ranks."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        pred = probs >= self.threshold
        target = target.bool()
        self.tp += (pred & target).sum()
        self.fp += (pred & ~target).sum()
        self.tn += (~pred & ~target).sum()
        self.fn += (~pred & target).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        counts = [float(getattr(self, n)) for n in ("tp", "fp", "tn", "fn")]
        return {k: torch.tensor(v) for k, v in rates(*counts).items()}


class StageMetrics(nn.Module):
    """All :data:`NAMES` for one stage (``train``, ``val``, ``test``)."""

    def __init__(self, stage: str, threshold: float = 0.5):
        super().__init__()
        self.stage = stage
        self.confusion = ConfusionRates(threshold)
        self.auroc = BinaryAUROC()

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion.update(probs, target)
        self.auroc.update(probs, target.long())

    def compute(self) -> dict[str, torch.Tensor]:
        values = self.confusion.compute()
        values["auroc"] = self.auroc.compute()
        return {key(self.stage, n): values[n] for n in NAMES}

    def reset(self) -> None:
        self.confusion.reset()
        self.auroc.reset()


# -- figures ---------------------------------------------------------------------------------


def confusion_figure(tp: int, fp: int, tn: int, fn: int, path: str | Path, title: str = "") -> Path:
    """Confusion matrix (rows: truth normal/tumor; columns: prediction) as a PNG."""
    matrix = np.array([[tn, fp], [fn, tp]])
    fig = Figure(figsize=(3.6, 3.2), dpi=120)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], ["normal", "tumor"])
    ax.set_yticks([0, 1], ["normal", "tumor"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    ax.set_title(title or "confusion matrix")
    return save_figure(fig, path)


def roc_figure(probs: torch.Tensor, target: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """ROC curve with its AUROC as a PNG."""
    fpr, tpr, _ = BinaryROC()(probs, target.long())
    auroc = BinaryAUROC()(probs, target.long())
    fig = Figure(figsize=(3.6, 3.4), dpi=120)
    ax = fig.subplots()
    ax.plot(fpr.numpy(), tpr.numpy(), lw=2, label=f"AUROC {float(auroc):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path
