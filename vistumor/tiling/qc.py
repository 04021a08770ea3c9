"""Quality-control picture of a tiled slide: what was called tissue, tumor and normal."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vistumor.files import atomic_path
from vistumor.labels import AMBIGUOUS, NORMAL, TUMOR
from vistumor.wsi.annotations import TumorAnnotation

MIN_EDGE = 1000  # px: the long edge of a QC picture is at least about this ...
MAX_EDGE = 2048  # ... and at most this (a 100,000 px slide's 3,125 px mask is halved)
TISSUE_COLOUR = (40, 90, 255)
_ANNOTATION_COLOUR = (255, 200, 0)
TILE_COLOURS = {TUMOR: (230, 20, 20), NORMAL: (20, 170, 60), AMBIGUOUS: (150, 150, 150)}


def draw_qc(
    thumbnail: np.ndarray,
    downsample: float,
    tissue: np.ndarray,
    annotation: TumorAnnotation | None,
    x0: np.ndarray,
    y0: np.ndarray,
    labels: np.ndarray,
    size0: float,
) -> np.ndarray:
    """Thumbnail with the tissue outline (blue), annotation outline (yellow) and tiles.

    Tumor tiles are red, normal tiles green, ambiguous tiles grey.
    """
    # small slides get an enlarged picture, so tiles stay visible; large ones a reduced one
    shrink = int(np.ceil(max(thumbnail.shape[:2]) / MAX_EDGE))
    if shrink > 1:
        size = (thumbnail.shape[1] // shrink, thumbnail.shape[0] // shrink)
        thumbnail = cv2.resize(thumbnail, size, interpolation=cv2.INTER_AREA)
        tissue = cv2.resize(tissue.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        downsample = downsample * shrink
    zoom = max(1, MIN_EDGE // max(thumbnail.shape[:2]))
    if zoom > 1:
        thumbnail = cv2.resize(thumbnail, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
        tissue = cv2.resize(tissue.astype(np.uint8), None, fx=zoom, fy=zoom,
                            interpolation=cv2.INTER_NEAREST)
        downsample = downsample / zoom
    canvas = np.ascontiguousarray(thumbnail.copy())
    contours, _ = cv2.findContours(tissue.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, TISSUE_COLOUR, 1)
    side = max(1, int(round(size0 / downsample)))
    for label, colour in TILE_COLOURS.items():
        for x, y in zip(x0[labels == label], y0[labels == label], strict=True):
            u, v = int(round(x / downsample)), int(round(y / downsample))
            cv2.rectangle(canvas, (u + 1, v + 1), (u + side - 2, v + side - 2), colour, 1)
    if annotation is not None and not annotation.is_empty:
        rings = [np.round(r).astype(np.int32) for r in annotation.outlines(0, 0, downsample)]
        cv2.polylines(canvas, rings, isClosed=True, color=_ANNOTATION_COLOUR, thickness=2)
    return canvas


def save_png(path: str | Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())  # (libpng at level 1 through OpenCV: ~3x PIL's speed)
