"""Inputs of the evaluation: detection CSVs, the reference table, slide scores, file lookup.

Slide names match case-insensitively everywhere (``Test_001.csv`` is slide ``test_001``);
tables are keyed by the lower-case name and keep the name as the reference spells it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vistumor.errors import VisTumorError
from vistumor.files import read_slide_table, read_text
from vistumor.labels import parse_label
from vistumor.wsi.catalog import ANNOTATION_SUFFIXES, index_folder

#: reference annotations: the slide catalog's annotation files, then official mask TIFFs
REFERENCE_SUFFIXES = (*ANNOTATION_SUFFIXES, ".tif", ".tiff")
#: predicted lesion files, in order of preference when a slide has several (infer.py writes both
#: ``<slide>.geojson`` and ``<slide>.xml``)
LESION_SUFFIXES = (".geojson", ".json", ".xml")


@dataclass(frozen=True)
class ReferenceSlide:
    """One slide of the reference: its name, ``TUMOR`` or ``NORMAL``, and level-0
    ``(width, height)`` when known."""

    slide: str
    label: int
    dimensions: tuple[int, int] | None = None


def read_detections(path: str | Path) -> np.ndarray:
    """Detections of one official-format CSV (no header, rows ``prob,x,y``, level-0 pixels)
    as an ``(n, 3)`` float64 array; blank lines are skipped, extra columns ignored.

    A probability outside ``[0, 1]`` (or NaN), a negative or non-finite coordinate, or text
    that is not UTF-8 is one error naming the file and the line (a probability of -0.5 would
    otherwise sit below the script's 0 placeholders and count every missed lesion as a hit).
    """
    path = Path(path)
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            prob, x, y = (float(cell) for cell in line.split(",")[:3])
        except ValueError:
            raise VisTumorError(f"line {number}: expected 'prob,x,y' numbers (no header), got {line!r}",
                                path) from None
        if not 0 <= prob <= 1:  # NaN fails too
            raise VisTumorError(f"line {number}: probability {prob:g} outside [0, 1], got {line!r}", path)
        if not np.isfinite([x, y]).all() or x < 0 or y < 0:
            raise VisTumorError(f"line {number}: expected finite x, y >= 0, got {line!r}", path)
        rows.append((prob, x, y))
    return np.array(rows, np.float64).reshape(-1, 3)


def files_by_slide(folder: str | Path, suffixes: Iterable[str], strip: str = "") -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes``, by lower-case stem (``strip`` removed from
    its end, as ``_mask`` of ``test_001_Mask.tif``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VisTumorError("folder not found", folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        key = path.stem.lower()
        key = key[: -len(strip)] if strip and key.endswith(strip) else key
        if key in found:
            raise VisTumorError(f"{found[key].name} and {path.name} are both slide '{key}'", folder)
        found[key] = path
    return found


def prediction_files(folder: str | Path) -> dict[str, Path]:
    return files_by_slide(folder, (".csv",))


def annotation_files(folder: str | Path) -> dict[str, Path]:
    """ASAP XML, GeoJSON or official mask TIFFs (``test_001.tif`` or ``test_001_mask.tif``), by
    the slide catalog's one rule (:func:`vistumor.wsi.catalog.index_folder`): names ignore case,
    a slide's XML before its GeoJSON before its mask, two files of one name and format refused."""
    return index_folder(folder, REFERENCE_SUFFIXES, strip="_mask")


def lesion_files(folder: str | Path) -> dict[str, Path]:
    """Predicted lesion files of ``folder`` (GeoJSON or ASAP XML) by lower-case slide name; of a
    slide's ``.geojson`` and ``.xml`` the GeoJSON (the catalog's rule, :func:`index_folder`)."""
    return index_folder(folder, LESION_SUFFIXES)


def read_reference(path: str | Path) -> list[ReferenceSlide]:
    """The reference table: ``slide,label[,width,height]`` (header optional, extra columns
    ignored: the official ``reference.csv`` works as it is)."""
    path = Path(path)
    rows = read_slide_table(path, "label", parse_label, "a slide and a label (tumor/normal/1/0)",
                            extra=("width", "height"))
    return [ReferenceSlide(name, label, _dimensions(path, number, cells["width"], cells["height"]))
            for number, name, label, cells in rows]


def _dimensions(path: Path, number: int, width: str, height: str) -> tuple[int, int] | None:
    if not width and not height:
        return None
    try:
        dims = int(width), int(height)
    except ValueError:
        dims = (0, 0)
    if min(dims) <= 0:
        raise VisTumorError(
            f"row {number}: width and height must be positive integers, not {width!r}, {height!r}", path
        )
    return dims


def read_scores(path: str | Path) -> dict[str, float]:
    """Slide scores for the AUC: ``slide,score`` (header optional), by lower-case slide name."""
    rows = read_slide_table(path, "score", _finite, "a slide and a finite score")
    return {name.lower(): score for _, name, score, _ in rows}


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None
