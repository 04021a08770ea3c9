"""Slide files as CAMELYON16 ships them: tiled JPEG pyramidal TIFF and ASAP XML, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile
from shapely.geometry import Polygon

from vistumor.files import atomic_path
from vistumor.synthetic.lesions import Outline
from vistumor.wsi.asap import asap_xml

TILE = 256


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Level 0 and successive 2x downsamples until the smaller side is <= 512 (>= 3 levels)."""
    levels = [image]
    while min(levels[-1].shape[:2]) > 512 or len(levels) < 3:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA))
    return levels


def write_tiff(path: Path, image: np.ndarray, mpp: float, quality: int) -> list[list[int]]:
    """Tiled JPEG pyramid, levels as successive main IFDs (OpenSlide generic TIFF)."""
    levels = _pyramid(image)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
        for i, level in enumerate(levels):
            per_cm = 1e4 / (mpp * image.shape[1] / level.shape[1])
            tif.write(
                level,
                photometric="rgb",
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                metadata=None,
                software=False,
                maxworkers=1,
            )
    return [[lv.shape[1], lv.shape[0]] for lv in levels]


#: CAMELYON16's groups and colours: ``_0`` and ``_1`` lesions, ``_2`` exclusions
_GROUP_COLOURS = {"_0": "#FF0000", "_1": "#FF0000", "_2": "#00FF00"}
#: every annotation's own colour in CAMELYON16's files
_ANNOTATION_COLOUR = "#F4FA58"


def annotation_xml(outlines: Sequence[Outline]) -> str:
    """ASAP annotation XML exactly as in CAMELYON16 (tabs, groups _0, _1, _2); vertices are
    multiples of 1/8 px, so three decimals write them exactly."""
    return asap_xml([(o.name, o.group, Polygon(o.vertices)) for o in outlines], _GROUP_COLOURS,
                    annotation_colour=_ANNOTATION_COLOUR, decimals=3)
