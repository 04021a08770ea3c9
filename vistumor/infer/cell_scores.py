"""A slide heatmap judged against the slide's annotation at cell level, as CAMs are judged
against a patch's mask (:mod:`vistumor.explain.localization`).

A cell is tumor when its centre lies inside the annotation (the rasteriser's rule). Over the
tissue cells (finite values) of an annotated tumor slide: ``pointing`` (the map's peak on
tumor), ``energy`` (share of the map's mass on tumor), ``iou``/``dice`` of ``map >=
threshold`` (``threshold`` of the map divided by its slide maximum: 0.5 = half the peak, so
attention, which sums to 1 over a slide, and probabilities are cut alike) and the cell
``auroc``. The mean over a run's annotated tumor slides is reported as
``test/heatmap_cell_<score>`` for the model's heatmap (``heatmaps/``: the probability of a
classifier, the attention of a MIL model) and ``test/canvas_cell_<score>`` for its stitched
map (``cams/``: the Grad-CAM++ canvas, or a segmenter's mask), at the canvas's resolution.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vistumor.explain import localization
from vistumor.wsi.annotations import TumorAnnotation, read_annotations

THRESHOLD = 0.5  # of the slide's peak
#: the maps judged: run folder -> key prefix, and the comparison table's column titles
MAPS = {"heatmaps": "heatmap_cell", "cams": "canvas_cell"}
_TITLES = {"pointing": "pointing", "energy": "energy", "iou": "IoU", "dice": "Dice", "auroc": "AUROC"}
CELL_COLUMNS = {f"test/{prefix}_{name}": f"{title} cell {_TITLES[name]}"
           for prefix, title in (("heatmap_cell", "heatmap"), ("canvas_cell", "canvas"))
           for name in localization.SCORE_NAMES}


def cell_mask(annotation: TumorAnnotation, sidecar: Mapping) -> np.ndarray:
    """The annotation on the map's cells (``shape``, ``cell_size_px`` from the sidecar)."""
    rows, cols = sidecar["shape"]
    cell = float(sidecar["cell_size_px"])
    return annotation.rasterize(0, 0, cols * cell, rows * cell, out_shape=(rows, cols))


def slide_cell_scores(values: np.ndarray, mask: np.ndarray, threshold: float = THRESHOLD) -> dict[str, float] | None:
    """:data:`~vistumor.explain.localization.SCORE_NAMES` of one map over its tissue cells; None
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
                    groups: Mapping[str, str] | None = None) -> dict[str, float]:
    """Mean cell scores of a model's ``<folder>/<slide>.npy`` maps over annotated tumor slides
    ``(slide_id, annotation)``: ``test/<prefix>_<name>`` and ``test/<prefix>_slides`` (how
    many were scored); nothing when the model has no such map."""
    prefix = MAPS[folder]
    rows = []
    for slide_id, annotation in slides:
        path = Path(model_dir) / folder / f"{slide_id}.npy"
        if not path.is_file():
            continue
        sidecar = json.loads(path.with_suffix(".json").read_text())
        mask = cell_mask(read_annotations(annotation, groups), sidecar)
        rows.append(slide_cell_scores(np.load(path), mask))
    if not rows:
        return {}
    means = localization.mean_scores(rows)
    return {f"test/{prefix}_{k if k != 'n' else 'slides'}": (round(v, 6) if k != "n" else int(v))
            for k, v in means.items()}


def scores_of_run(model_dir: Path, run_json: Path) -> dict[str, float]:
    """Both maps' cell scores of a whole-slide run's model (its ``run.json`` names the slides,
    their labels and annotations; the model's annotation groups come from its tiling)."""
    description = json.loads(Path(run_json).read_text())
    model = next((m for m in description.get("models", []) if Path(m.get("folder", "")).name == Path(model_dir).name),
                 {})
    groups = ((model.get("tiling") or {}).get("labels") or {}).get("annotation_groups")
    slides = [(s["slide"], Path(s["annotation"])) for s in description.get("slides", [])
              if s.get("label") == "tumor" and s.get("annotation")]
    out: dict[str, float] = {}
    for folder in MAPS:
        out.update(run_cell_scores(model_dir, slides, folder, groups))
    return out
