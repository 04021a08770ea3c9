"""Inputs of the evaluation: detection CSVs, the reference table, slide scores, file lookup.

Slide names match case-insensitively everywhere (``Test_001.csv`` is slide ``test_001``);
tables are keyed by the lower-case name and keep the name as the reference spells it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vistumor.errors import VisTumorError
from vistumor.labels import CLASSES, NORMAL, TUMOR

#: label spellings of a reference table: ours, 1/0, and the official reference.csv's Tumor/Normal
LABELS = {**CLASSES, "1": TUMOR, "0": NORMAL}
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json", ".tif", ".tiff")
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


def parse_label(value: object) -> int | None:
    """``TUMOR``/``NORMAL`` of ``tumor``/``normal``/``1``/``0``/``Tumor``/``Normal``; None otherwise."""
    return LABELS.get(str(value).strip().lower())


def read_detections(path: str | Path) -> np.ndarray:
    """Detections of one official-format CSV (no header, rows ``prob,x,y``, level-0 pixels)
    as an ``(n, 3)`` float64 array; blank lines are skipped, extra columns ignored."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prob, x, y = (float(cell) for cell in line.split(",")[:3])
        except ValueError:
            raise VisTumorError(f"line {number}: expected 'prob,x,y' numbers (no header), got {line!r}",
                                path) from None
        if not np.isfinite([prob, x, y]).all() or x < 0 or y < 0:
            raise VisTumorError(f"line {number}: expected a finite prob and x, y >= 0, got {line!r}", path)
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
    """ASAP XML, GeoJSON or official mask TIFFs (``test_001.tif`` or ``test_001_mask.tif``)."""
    return files_by_slide(folder, ANNOTATION_SUFFIXES, strip="_mask")


def lesion_files(folder: str | Path) -> dict[str, Path]:
    """Predicted lesion files of ``folder`` (GeoJSON or ASAP XML) by lower-case slide name; of a
    slide's ``.geojson`` and ``.xml`` the GeoJSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VisTumorError("folder not found", folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in LESION_SUFFIXES:
            continue
        key, other = path.stem.lower(), found.get(path.stem.lower())
        if other is not None and other.suffix.lower() == suffix:
            raise VisTumorError(f"{other.name} and {path.name} are both slide '{key}'", folder)
        if other is None or LESION_SUFFIXES.index(suffix) < LESION_SUFFIXES.index(other.suffix.lower()):
            found[key] = path
    return found


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise VisTumorError("file not found", path)
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if any(cell.strip() for cell in row)]


def _columns(path: Path, rows: list[list[str]], needed: tuple[str, ...]) -> tuple[dict[str, int], list]:
    """Column indices and numbered data rows: a header naming ``needed``, or (for the
    official ``reference.csv``) none, when the first row's second cell is already a value."""
    if not rows:
        raise VisTumorError("empty table", path)
    header = [cell.strip().lower() for cell in rows[0]]
    if all(name in header for name in needed):
        return {name: header.index(name) for name in header}, list(enumerate(rows, 1))[1:]
    if len(header) >= 2 and (parse_label(header[1]) is not None or _is_number(header[1])):
        return {name: i for i, name in enumerate(needed)}, list(enumerate(rows, 1))
    raise VisTumorError(f"expected columns {', '.join(needed)}; got {rows[0]}", path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_reference(path: str | Path) -> list[ReferenceSlide]:
    """The reference table: ``slide,label[,width,height]`` (header optional, extra columns
    ignored: the official ``reference.csv`` works as it is)."""
    path = Path(path)
    columns, rows = _columns(path, _rows(path), ("slide", "label"))
    slides, seen = [], set()
    for number, row in rows:
        name, raw = _cell(row, columns["slide"]), _cell(row, columns["label"])
        label = parse_label(raw)
        if not name or label is None:
            raise VisTumorError(f"row {number}: expected a slide and a label (tumor/normal/1/0), not {row}",
                                path)
        if name.lower() in seen:
            raise VisTumorError(f"row {number}: slide '{name}' is listed twice", path)
        seen.add(name.lower())
        slides.append(ReferenceSlide(name, label, _dimensions(path, number, row, columns)))
    return slides


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def _dimensions(path: Path, number: int, row: list[str], columns: dict[str, int]) -> tuple[int, int] | None:
    width, height = _cell(row, columns.get("width")), _cell(row, columns.get("height"))
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
    path = Path(path)
    columns, rows = _columns(path, _rows(path), ("slide", "score"))
    scores: dict[str, float] = {}
    for number, row in rows:
        name, raw = _cell(row, columns["slide"]), _cell(row, columns["score"])
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not name or not np.isfinite(value):
            raise VisTumorError(f"row {number}: expected a slide and a finite score, got {row}", path)
        if name.lower() in scores:
            raise VisTumorError(f"row {number}: slide '{name}' is listed twice", path)
        scores[name.lower()] = value
    return scores
