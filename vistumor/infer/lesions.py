"""Lesions from the probability map: connected cells above a threshold, as polygons in
level-0 px, exported for QuPath (GeoJSON) and ASAP (XML) through the writers of
:mod:`vistumor.wsi.geojson` and :mod:`vistumor.wsi.asap`; both read back through
:func:`vistumor.wsi.annotations.read_annotations`.

A lesion's outline follows its cells' edges exactly (the union of the cell squares), so
its area is the area of its cells; holes (cells below the threshold inside a lesion) stay
holes: GeoJSON polygon interiors, ASAP ``Exclusion`` polygons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from vistumor.files import write_json, write_text
from vistumor.wsi.asap import HOLE_GROUP, asap_xml
from vistumor.wsi.geojson import feature_collection, geojson_feature

TUMOR_CLASS, TUMOR_COLOUR = "Tumor", (200, 0, 0)
#: ASAP group -> colour, in the order the groups are defined
GROUP_COLOURS = {TUMOR_CLASS: "#{:02X}{:02X}{:02X}".format(*TUMOR_COLOUR), HOLE_GROUP: "#64FE2E"}


@dataclass
class Lesion:
    """One predicted lesion: its outline (level-0 px), probabilities and size."""

    polygon: Polygon
    max_prob: float
    mean_prob: float
    cells: int
    mpp: float | None

    @property
    def area_px(self) -> float:
        return float(self.polygon.area)

    @property
    def area_mm2(self) -> float | None:
        return self.area_px * (self.mpp / 1000) ** 2 if self.mpp else None

    @property
    def centroid(self) -> tuple[float, float]:
        c = self.polygon.centroid
        return float(c.x), float(c.y)


def find_lesions(values: np.ndarray, cell_px: float, threshold: float, mpp: float | None,
                 min_cells: int = 1) -> list[Lesion]:
    """Connected (8-neighbour) groups of cells with probability ``>= threshold``, largest
    first; a lesion of fewer than ``min_cells`` cells is dropped."""
    above = np.nan_to_num(values, nan=0.0) >= threshold
    count, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")  # the cells of each component, row-major, in one sort
    bounds = np.searchsorted(flat[order], np.arange(count + 1))
    lesions = []
    for k in range(1, count):
        rows, cols = np.divmod(order[bounds[k] : bounds[k + 1]], labels.shape[1])
        if len(rows) < min_cells:
            continue
        shape = cells_polygon(rows, cols, cell_px)
        for part in shape.geoms if isinstance(shape, MultiPolygon) else [shape]:
            # 8-connected cells touching at a corner make separate polygons: one lesion each
            inside = shapely.contains_xy(part, (cols + 0.5) * cell_px, (rows + 0.5) * cell_px)
            if inside.sum() < min_cells:
                continue
            cell_values = values[rows[inside], cols[inside]]
            lesions.append(Lesion(part, float(cell_values.max()), float(cell_values.mean()),
                                  int(inside.sum()), mpp))
    return sorted(lesions, key=lambda lesion: -lesion.area_px)


def cells_polygon(rows: np.ndarray, cols: np.ndarray, cell_px: float):
    """The exact outline of a set of cells (row-major ``rows, cols``): the union of each
    row's runs of consecutive cells (far fewer boxes than cells), collinear points merged."""
    starts = np.flatnonzero(np.r_[True, (np.diff(cols) != 1) | (np.diff(rows) != 0)])
    stops = np.r_[starts[1:], len(cols)] - 1
    boxes = shapely.box(cols[starts] * cell_px, rows[starts] * cell_px, (cols[stops] + 1) * cell_px,
                        (rows[starts] + 1) * cell_px)
    return shapely.union_all(boxes).simplify(0)


def to_geojson(lesions: list[Lesion], slide_id: str) -> dict:
    """A QuPath GeoJSON FeatureCollection: one ``Polygon`` annotation per lesion."""
    return feature_collection(
        geojson_feature(f"{slide_id}-lesion-{i}", f"lesion {i}", lesion.polygon, TUMOR_CLASS, TUMOR_COLOUR,
                        measurements={"tumor_probability": round(lesion.max_prob, 6),
                                      "mean_probability": round(lesion.mean_prob, 6),
                                      "area_mm2": None if lesion.area_mm2 is None else round(lesion.area_mm2, 6)})
        for i, lesion in enumerate(lesions, 1))


def to_asap_xml(lesions: list[Lesion]) -> str:
    """ASAP XML: each lesion a ``Tumor`` polygon, each hole an ``Exclusion`` polygon."""
    return asap_xml([(f"lesion {i}", TUMOR_CLASS, lesion.polygon) for i, lesion in enumerate(lesions, 1)],
                    GROUP_COLOURS)


def write_lesions(folder: Path, slide_id: str, lesions: list[Lesion]) -> tuple[Path, Path]:
    """``<slide>.geojson`` and ``<slide>.xml`` in ``folder``, atomically."""
    geojson, xml = folder / f"{slide_id}.geojson", folder / f"{slide_id}.xml"
    write_json(geojson, to_geojson(lesions, slide_id))
    write_text(xml, to_asap_xml(lesions))
    return geojson, xml
