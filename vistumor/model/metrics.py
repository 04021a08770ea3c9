"""Binary tumor-vs-normal metrics, named once as ``stage/name`` and reused everywhere.

Rates come from one confusion matrix (a torchmetrics state, so DDP sums it across ranks);
AUROC from torchmetrics. Tumor is the positive class (:mod:`vistumor.labels`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC

from vistumor.labels import confusion_counts, predict

#: Metric names, in report order. ``recall`` is sensitivity; ``fpr = 1 - specificity``.
METRIC_NAMES = ("acc", "fpr", "fnr", "recall", "specificity", "precision", "f1", "auroc")


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


class ConfusionRates(Metric):
    """Confusion-matrix counts at a probability threshold, summed across batches and ranks."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        for name, count in confusion_counts(target, predict(probs, self.threshold)).items():
            setattr(self, name, getattr(self, name) + count)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = [float(getattr(self, n)) for n in ("tp", "fp", "tn", "fn")]
        return {k: torch.tensor(v) for k, v in rates(*counts).items()}


class StageMetrics(nn.Module):
    """All :data:`METRIC_NAMES` for one stage (``train``, ``val``, ``test``)."""

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
        return {key(self.stage, n): values[n] for n in METRIC_NAMES}

    def reset(self) -> None:
        self.confusion.reset()
        self.auroc.reset()


class SplitSteps:
    """Lightning's train/val/test steps as one ``_step(batch, split)`` (written once, shared by
    the patch classifier and the MIL classifier); list it before ``LightningModule``."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")
