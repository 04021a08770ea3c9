"""A slide heatmap judged against the slide's annotation at cell level, as CAMs are judged
against a patch's mask (:mod:`vistumor.explain.localization`).

A cell is tumor when its centre lies inside the annotation (the rasteriser's rule). Over the
tissue cells (finite values) of an annotated tumor slide: ``pointing`` (the map's peak on
tumor), ``energy`` (share of the map's mass on tumor), ``iou``/``dice`` of ``map >=
threshold`` (``threshold`` of the map divided by its slide maximum: 0.5 = half the peak, so
attention, which sums to 1 over a slide, and probabilities are cut alike) and the cell
``auroc``. The mean over slides is reported as ``test/<prefix>_<score>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vistumor.explain import localization
from vistumor.wsi.annotations import TumorAnnotation, read_annotations

THRESHOLD = 0.5  # of the slide's peak


def cell_mask(annotation: TumorAnnotation, sidecar: Mapping) -> np.ndarray:
    """The annotation on the map's cells (``shape``, ``cell_size_px`` from the sidecar)."""
    rows, cols = sidecar["shape"]
    cell = float(sidecar["cell_size_px"])
    return annotation.rasterize(0, 0, cols * cell, rows * cell, out_shape=(rows, cols))


def slide_cell_scores(values: np.ndarray, mask: np.ndarray, threshold: float = THRESHOLD) -> dict[str, float] | None:
    """:data:`~vistumor.explain.localization.NAMES` of one map over its tissue cells; None
    when no tissue cell is tumor."""
    tissue = np.isfinite(values)
    mask = np.asarray(mask, bool) & tissue
    if not mask.any():
        return None
    work = np.where(tissue, values, 0.0).astype(np.float64)
    peak = work.max()
    scaled = work / peak if peak > 0 else work
    iou, dice = localization.overlap(scaled, mask, threshold)
    return {"pointing": localization.pointing(scaled, mask), "energy": localization.energy(scaled, mask),
            "iou": iou, "dice": dice, "auroc": localization.pixel_auroc(values[tissue], mask[tissue])}


def run_cell_scores(model_dir: Path, slides: Sequence[tuple[str, Path]], folder: str = "heatmaps",
                    groups: Mapping[str, str] | None = None, prefix: str = "attention") -> dict[str, float]:
    """Mean cell scores of a model's ``<folder>/<slide>.npy`` maps over annotated slides
    ``(slide_id, annotation)``; ``test/<prefix>_<name>`` plus ``test/<prefix>_slides``."""
    rows = []
    for slide_id, annotation in slides:
        path = Path(model_dir) / folder / f"{slide_id}.npy"
        if not path.is_file():
            continue
        sidecar = json.loads(path.with_suffix(".json").read_text())
        mask = cell_mask(read_annotations(annotation, groups), sidecar)
        rows.append(slide_cell_scores(np.load(path), mask))
    means = localization.mean_scores(rows)
    return {f"test/{prefix}_{k if k != 'n' else 'slides'}": (round(v, 6) if k != "n" else int(v))
            for k, v in means.items()}
