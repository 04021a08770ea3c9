"""Figures of a training run: confusion matrix, ROC curve and learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.classification import BinaryAUROC, BinaryROC

from vistumor.files import save_figure
from vistumor.labels import CLASS_NAMES
from vistumor.model.metrics import key


def confusion_figure(tp: int, fp: int, tn: int, fn: int, path: str | Path, title: str = "") -> Path:
    """Confusion matrix (rows: truth normal/tumor; columns: prediction) as a PNG."""
    matrix = np.array([[tn, fp], [fn, tp]])
    fig = Figure(figsize=(3.6, 3.2), dpi=120)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
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


def plot_curves(history: list[dict[str, float]], path: Path, curves: Sequence[str] = ("loss", "acc"),
                title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs val, side by side."""
    fig = Figure(figsize=(4 * len(curves), 3.2), dpi=120)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    epochs = [row["epoch"] + 1 for row in history]
    for ax, name in zip(axes, curves, strict=True):
        for stage, style in (("train", "-o"), ("val", "--s")):
            values = [row.get(key(stage, name)) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], style, label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "learning curves")
    return save_figure(fig, path)
