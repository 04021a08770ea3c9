"""Pictures of explanations: heat-map overlays, annotation outlines, and patch grids.

Grids follow the paper's Figures 3-5: one row per patch, columns ``patch | <map> ... |
ground truth``, one column block per model when several are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from vistumor.files import save_figure

OUTLINE_COLOUR = (0, 255, 0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB ``uint8`` image with a jet-coloured map in ``[0, 1]`` blended on top."""
    heat = (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def outline(image: np.ndarray, mask: np.ndarray, colour=OUTLINE_COLOUR, width: int = 2) -> np.ndarray:
    """RGB image with the boundary of a boolean mask drawn on it."""
    out = np.ascontiguousarray(image.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, width)
    return out


def ground_truth(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The patch with the annotated tumor tinted and outlined (or unchanged without a mask)."""
    if mask is None or not mask.any():
        return image
    tinted = image.astype(np.float32)
    tinted[mask.astype(bool)] = 0.7 * tinted[mask.astype(bool)] + 0.3 * np.array([0, 255, 0])
    return outline(tinted.astype(np.uint8), mask)


@dataclass
class Row:
    """One patch of a grid: its pixels, mask, caption and one map per column."""

    image: np.ndarray
    mask: np.ndarray | None
    caption: str
    maps: list[np.ndarray] = field(default_factory=list)
    map_captions: list[str] = field(default_factory=list)


def grid(
    rows: Sequence[Row], map_titles: Sequence[str], path: str | Path, title: str = "",
    cell: float = 1.9,
) -> Path:
    """Save a ``patch | maps... | ground truth`` grid as a PNG."""
    n_cols = 2 + len(map_titles)
    fig = Figure(figsize=(cell * n_cols, cell * len(rows) + 0.6), dpi=110)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        panels = [row.image]
        for cam in row.maps:
            picture = overlay(row.image, cam)
            if row.mask is not None and row.mask.any():  # the annotation, thin, over the map
                picture = outline(picture, row.mask, colour=(255, 255, 255), width=1)
            panels.append(picture)
        panels.append(ground_truth(row.image, row.mask))
        captions = [row.caption, *(row.map_captions or [""] * len(row.maps)), "annotation"]
        for c, (ax, panel) in enumerate(zip(axes[r], panels, strict=True)):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(captions[c], fontsize=6.5)
            if r == 0:
                ax.set_title((["patch", *map_titles, "ground truth"])[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
