"""One annotation as a file holds it (name, group, polygon, properties) and the checks that
turn raw coordinates into a valid area geometry; shared by the ASAP XML and GeoJSON modules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from vistumor.errors import AnnotationError


class Shape(NamedTuple):
    """One area annotation in level-0 px.

    ``group`` is the ASAP ``PartOfGroup`` or the QuPath classification name; ``properties``
    are the GeoJSON feature's other properties (measurements...), empty for ASAP XML; ``id``
    the GeoJSON feature id. The first three fields are the ``(name, group, polygon)``
    triple the writers take.
    """

    name: str
    group: str
    polygon: BaseGeometry
    properties: Mapping[str, Any] = MappingProxyType({})
    id: str | None = None

    @property
    def rings(self) -> list[list[tuple[float, float]]]:
        """Every outline and hole as closed ``[(x, y), ...]`` rings, polygon by polygon."""
        return [[(float(x), float(y)) for x, y in ring.coords]
                for part in polygon_parts(self.polygon) for ring in (part.exterior, *part.interiors)]


def polygon_parts(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of a Polygon or MultiPolygon."""
    parts = list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]
    return [p for p in parts if isinstance(p, Polygon) and not p.is_empty]


def make_polygon(shell: np.ndarray, holes: list[np.ndarray], name: str, path: Path) -> BaseGeometry:
    """A valid polygon from ``(n, 2)`` rings; an unusable ring is an :class:`AnnotationError`."""
    for ring in (shell, *holes):
        if ring.ndim != 2 or len(ring) < 3:
            raise AnnotationError(f"annotation '{name}' has fewer than 3 vertices", path)
        if not np.isfinite(ring).all():
            raise AnnotationError(f"annotation '{name}' has non-finite coordinates", path)
    polygon = Polygon(shell, holes)
    if not polygon.is_valid:  # real CAMELYON16 outlines self-intersect now and then
        polygon = polygonal(shapely.make_valid(polygon))
    return polygon


def polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Keep only the areal parts of a geometry (drops the lines make_valid can leave)."""
    if isinstance(geometry, (Polygon, MultiPolygon)):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else Polygon()
