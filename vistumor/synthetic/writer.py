"""Slide files as CAMELYON16 ships them: tiled JPEG pyramidal TIFF and ASAP XML, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from vistumor.files import atomic_path
from vistumor.synthetic.lesions import Outline

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


def _fmt(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def asap_xml(outlines: Sequence[Outline]) -> str:
    """ASAP annotation XML exactly as in CAMELYON16 (tabs, groups _0, _1, _2)."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for outline in outlines:
        lines += [
            f'\t\t<Annotation Name="{outline.name}" Type="Polygon" '
            f'PartOfGroup="{outline.group}" Color="#F4FA58">',
            "\t\t\t<Coordinates>",
        ]
        lines += [
            f'\t\t\t\t<Coordinate Order="{i}" X="{_fmt(x)}" Y="{_fmt(y)}" />'
            for i, (x, y) in enumerate(outline.vertices)
        ]
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for group, colour in (("_0", "#FF0000"), ("_1", "#FF0000"), ("_2", "#00FF00")):
        lines += [
            f'\t\t<Group Name="{group}" PartOfGroup="None" Color="{colour}">',
            "\t\t\t<Attributes />",
            "\t\t</Group>",
        ]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)
