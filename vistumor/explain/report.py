"""What the explain task writes: the figure (the paper's Figures 3-5), a per-patch score
table, and a per-model summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from vistumor.explain import localization
from vistumor.explain.render import Row, grid
from vistumor.labels import confusion_counts, name, outcomes, predict
from vistumor.model.metrics import rates


def figure(
    path: Path, images: torch.Tensor, masks: np.ndarray, known: np.ndarray, labels: np.ndarray,
    models: Sequence[str], maps: dict[str, dict[str, np.ndarray]], probs: dict[str, np.ndarray],
    threshold: float, title: str,
) -> Path:
    """Patch | for each model: its maps | ground truth, one row per patch.

    Rows are captioned with the label and the first model's outcome.
    """
    titles = [f"{m}\n{method}" for m in models for method in maps[m]]
    cats = outcomes(labels, predict(probs[models[0]], threshold))
    rows = []
    for i in range(len(images)):
        row_maps, captions = [], []
        for m in models:
            p = probs[m][i]
            for method in maps[m]:
                row_maps.append(fit(maps[m][method][i], images.shape[-2:]))
                captions.append(f"{name(predict(p, threshold))} p={p:.2f}")
        rows.append(Row(images[i].permute(1, 2, 0).numpy(), masks[i] if known[i] else None,
                        f"{name(labels[i])} ({cats[i]})", row_maps, captions))
    return grid(rows, titles, path, title=title)


def fit(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A map resized (bilinear) to ``size`` = (height, width): models of other input sizes
    are drawn over the same patch pixels."""
    if tuple(cam.shape) == tuple(size):
        return cam
    return np.clip(cv2.resize(cam.astype(np.float32), (int(size[1]), int(size[0]))), 0, 1)


def score_table(
    model_name: str, places: Sequence[tuple[str, int, int]], labels: np.ndarray, prob: np.ndarray,
    threshold: float, per_patch: Sequence[dict[str, float] | None],
) -> pd.DataFrame:
    """One row per patch: where it is, label, probability, call, outcome, localization scores."""
    pred = predict(prob, threshold)
    cats = outcomes(labels, pred)
    rows = []
    for j, (slide_id, x0, y0) in enumerate(places):
        row = {"model": model_name, "slide_id": slide_id, "x0": x0, "y0": y0,
               "label": int(labels[j]), "prob": round(float(prob[j]), 6), "pred": int(pred[j]),
               "outcome": cats[j]}
        for score in localization.SCORE_NAMES:
            row[f"cam_{score}"] = per_patch[j][score] if per_patch[j] else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def model_summary(checkpoint: str, image_size: int, table: pd.DataFrame, score_method: str) -> dict[str, Any]:
    """Rates, outcome counts and mean localization scores of one model's score table."""
    counts = confusion_counts(table["label"].to_numpy(), table["pred"].to_numpy())
    summary = {"checkpoint": checkpoint, "image_size": image_size,
               **{k: round(v, 6) for k, v in rates(**counts).items()},
               "outcomes": {k: int(v) for k, v in counts.items() if v}, "score_method": score_method}
    scored = table.dropna(subset=[f"cam_{score}" for score in localization.SCORE_NAMES], how="all")
    summary["scored_patches"] = int(len(scored))
    for score in localization.SCORE_NAMES:
        values = scored[f"cam_{score}"].dropna()
        summary[f"cam_{score}"] = round(float(values.mean()), 6) if len(values) else None
    return summary


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique in order: ``resnet50, resnet50#2``."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out
