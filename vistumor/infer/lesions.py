"""Lesions from the probability map: connected cells above a threshold, as polygons in
level-0 px, exported for QuPath (GeoJSON) and ASAP (XML); both read back through
:func:`vistumor.wsi.annotations.read_annotations`.

A lesion's outline follows its cells' edges exactly (the union of the cell squares), so
its area is the area of its cells; holes (cells below the threshold inside a lesion) stay
holes: GeoJSON polygon interiors, ASAP ``Exclusion`` polygons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from vistumor.files import write_json, write_text

TUMOR_CLASS, TUMOR_COLOUR = "Tumor", (200, 0, 0)
HOLE_GROUP = "Exclusion"


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
    """Connected (8-neighbour) groups of cells with probability ``>= threshold``, largest first."""
    above = np.nan_to_num(values, nan=0.0) >= threshold
    count, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    lesions = []
    for k in range(1, count):
        rows, cols = np.nonzero(labels == k)
        if len(rows) < min_cells:
            continue
        boxes = shapely.box(cols * cell_px, rows * cell_px, (cols + 1) * cell_px, (rows + 1) * cell_px)
        shape = shapely.union_all(boxes).simplify(0)  # exact cell edges; collinear points merged
        for part in shape.geoms if isinstance(shape, MultiPolygon) else [shape]:
            # 8-connected cells touching at a corner make separate polygons: one lesion each
            inside = shapely.contains_xy(part, (cols + 0.5) * cell_px, (rows + 0.5) * cell_px)
            cell_values = values[rows[inside], cols[inside]]
            lesions.append(Lesion(part, float(cell_values.max()), float(cell_values.mean()),
                                  int(inside.sum()), mpp))
    return sorted(lesions, key=lambda lesion: -lesion.area_px)


def to_geojson(lesions: list[Lesion], slide_id: str) -> dict:
    """A QuPath GeoJSON FeatureCollection: one ``Polygon`` annotation per lesion."""
    features = []
    for i, lesion in enumerate(lesions, 1):
        rings = [lesion.polygon.exterior, *lesion.polygon.interiors]
        features.append({
            "type": "Feature",
            "id": f"{slide_id}-lesion-{i}",
            "geometry": {"type": "Polygon", "coordinates": [
                [[round(x, 2), round(y, 2)] for x, y in ring.coords] for ring in rings]},
            "properties": {
                "objectType": "annotation",
                "name": f"lesion {i}",
                "classification": {"name": TUMOR_CLASS, "color": list(TUMOR_COLOUR)},
                "measurements": {"tumor_probability": round(lesion.max_prob, 6),
                                 "mean_probability": round(lesion.mean_prob, 6),
                                 "area_mm2": None if lesion.area_mm2 is None else round(lesion.area_mm2, 6)},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def to_asap_xml(lesions: list[Lesion]) -> str:
    """ASAP XML: each lesion a ``Tumor`` polygon, each hole an ``Exclusion`` polygon; both
    groups are defined under ``AnnotationGroups`` (ASAP refuses a file naming an undefined one)."""
    colour = "#{:02X}{:02X}{:02X}".format(*TUMOR_COLOUR)
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, lesion in enumerate(lesions, 1):
        rings = [(TUMOR_CLASS, f"lesion {i}", lesion.polygon.exterior)]
        rings += [(HOLE_GROUP, f"lesion {i} hole {j}", ring)
                  for j, ring in enumerate(lesion.polygon.interiors, 1)]
        for group, name, ring in rings:
            parts.append(f"\t\t<Annotation Name={quoteattr(name)} Type=\"Polygon\" PartOfGroup="
                         f"\"{group}\" Color=\"{colour if group == TUMOR_CLASS else '#64FE2E'}\">")
            parts.append("\t\t\t<Coordinates>")
            parts += [f'\t\t\t\t<Coordinate Order="{k}" X="{x:.2f}" Y="{y:.2f}" />'
                      for k, (x, y) in enumerate(list(ring.coords)[:-1])]
            parts += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    parts += ["\t</Annotations>", "\t<AnnotationGroups>",
              f'\t\t<Group Name="{TUMOR_CLASS}" PartOfGroup="None" Color="{colour}">',
              "\t\t\t<Attributes />", "\t\t</Group>",
              f'\t\t<Group Name="{HOLE_GROUP}" PartOfGroup="None" Color="#64FE2E">',
              "\t\t\t<Attributes />", "\t\t</Group>",
              "\t</AnnotationGroups>", "</ASAP_Annotations>"]
    return "\n".join(parts) + "\n"


def write_lesions(folder: Path, slide_id: str, lesions: list[Lesion]) -> tuple[Path, Path]:
    """``<slide>.geojson`` and ``<slide>.xml`` in ``folder``, atomically."""
    geojson, xml = folder / f"{slide_id}.geojson", folder / f"{slide_id}.xml"
    write_json(geojson, to_geojson(lesions, slide_id))
    write_text(xml, to_asap_xml(lesions))
    return geojson, xml
