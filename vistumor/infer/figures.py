"""The summary figure of a slide: thumbnail | probability | CAM (Grad-CAM++ or the canvas method) | ground truth |
lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vistumor.files import save_figure
from vistumor.infer.heatmap import heatmap_overlay
from vistumor.infer.lesions import Lesion
from vistumor.wsi.annotations import TumorAnnotation

TRUTH_COLOUR, LESION_COLOUR = "#00d000", "#ff2020"


def _outline(ax, rings: list[np.ndarray], colour: str, width: float = 1.2) -> None:
    for ring in rings:
        ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=width)


def summary_figure(
    path: Path, thumbnail: np.ndarray, thumb_ds: float, prob: np.ndarray, cell_px: float,
    cam: np.ndarray | None, cam_px: float, cam_scale: float, annotation: TumorAnnotation | None,
    lesions: list[Lesion], title: str, cam_title: str = "Grad-CAM++",
) -> Path:
    """Five panels over the thumbnail; ``cam`` is the canvas reduced to about thumbnail size
    (``cam_px`` level-0 px per value), divided by ``cam_scale``."""
    panels = ["slide", "tumor probability", f"{cam_title} (probability-weighted)", "ground truth",
              f"predicted lesions ({len(lesions)})"]
    aspect = thumbnail.shape[0] / max(thumbnail.shape[1], 1)
    fig = Figure(figsize=(3.2 * len(panels), 3.2 * aspect + 0.7), dpi=110)
    axes = fig.subplots(1, len(panels))
    images = [thumbnail, heatmap_overlay(thumbnail, thumb_ds, prob, cell_px),
              heatmap_overlay(thumbnail, thumb_ds, cam / cam_scale, cam_px) if cam is not None and cam_scale > 0
              else thumbnail, thumbnail, thumbnail]
    for ax, image, name in zip(axes, images, panels, strict=True):
        ax.imshow(image)
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if annotation is not None and not annotation.is_empty:
        _outline(axes[3], annotation.outlines(0, 0, thumb_ds), TRUTH_COLOUR)
    else:
        axes[3].set_title("ground truth (none)", fontsize=8)
    for lesion in lesions:
        polygon = lesion.polygon
        rings = [np.asarray(r.coords) / thumb_ds for r in (polygon.exterior, *polygon.interiors)]
        _outline(axes[4], rings, LESION_COLOUR)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
