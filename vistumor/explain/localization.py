"""How well an explanation map agrees with the pathologists' tumor annotation.

For a map ``cam`` in ``[0, 1]`` and a boolean tumor ``mask`` of the same size:

* ``pointing``: 1 when the map's peak lies inside the tumor (Zhang et al. 2016, the
  pointing game; ``tolerance`` pixels of Euclidean slack), else 0; undefined (NaN) for a
  flat map, which has no peak;
* ``energy``: share of the map's mass on tumor pixels (energy-based pointing game,
  Wang et al. 2020, Score-CAM);
* ``iou`` and ``dice`` of the thresholded map ``cam >= cam_threshold`` with the mask;
* ``auroc``: pixel-level AUROC of the map as a tumor score (undefined, NaN, when the
  patch is all tumor or all background).

Scores are defined for patches whose mask holds some tumor; others are skipped.
Pure numpy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vistumor.stats import rank_auc

SCORE_NAMES = ("pointing", "energy", "iou", "dice", "auroc")


def pointing(cam: np.ndarray, mask: np.ndarray, tolerance: float = 0) -> float:
    """1.0 when the peak of ``cam`` is within ``tolerance`` px of the tumor, else 0.0.

    A flat map has no peak (``argmax`` would pick its first pixel): NaN, not a lucky hit.
    The slack is a Euclidean distance, as Zhang et al.'s "within 15 pixels".
    """
    if cam.max() == cam.min():
        return float("nan")
    mask = np.asarray(mask, bool)
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    if tolerance <= 0 or not mask.any():
        return float(mask[r, c])
    return float(ndimage.distance_transform_edt(~mask)[r, c] <= tolerance)


def energy(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total mass inside the tumor (NaN for an all-zero map)."""
    total = float(cam.sum())
    return float(cam[np.asarray(mask, bool)].sum()) / total if total > 0 else float("nan")


def overlap(cam: np.ndarray, mask: np.ndarray, cam_threshold: float) -> tuple[float, float]:
    """IoU and Dice of ``cam >= cam_threshold`` with ``mask``."""
    pred = cam >= cam_threshold
    inter = float(np.logical_and(pred, mask).sum())
    union = float(np.logical_or(pred, mask).sum())
    size = float(pred.sum() + mask.sum())
    return (inter / union if union else float("nan"), 2 * inter / size if size else float("nan"))


def pixel_auroc(cam: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of the map's values for separating tumor pixels from the rest (ties averaged;
    NaN when the patch is all tumor or all background)."""
    return rank_auc(np.asarray(mask, bool), cam)


def scores(
    cam: np.ndarray, mask: np.ndarray, cam_threshold: float = 0.5, tolerance: float = 0
) -> dict[str, float]:
    """All :data:`SCORE_NAMES` for one map and mask."""
    mask = mask.astype(bool)
    iou, dice = overlap(cam, mask, cam_threshold)
    return {
        "pointing": pointing(cam, mask, tolerance),
        "energy": energy(cam, mask),
        "iou": iou,
        "dice": dice,
        "auroc": pixel_auroc(cam, mask),
    }


def batch_scores(
    cams: np.ndarray, masks: np.ndarray, usable: np.ndarray | None = None,
    cam_threshold: float = 0.5, tolerance: float = 0,
) -> list[dict[str, float] | None]:
    """Per-patch scores; None where the mask is unknown or holds no tumor."""
    out = []
    for i, (cam, mask) in enumerate(zip(cams, masks, strict=True)):
        ok = (usable is None or bool(usable[i])) and bool(mask.any())
        out.append(scores(cam, mask, cam_threshold, tolerance) if ok else None)
    return out


def mean_scores(per_patch: list[dict[str, float] | None]) -> dict[str, float]:
    """Average of each score over the scored patches (NaN-aware), plus their count ``n``."""
    rows = [r for r in per_patch if r is not None]
    means = {name: float(np.nanmean([r[name] for r in rows])) if rows and not all(
        np.isnan(r[name]) for r in rows) else float("nan") for name in SCORE_NAMES}
    means["n"] = len(rows)
    return means
