"""Pathologists' lesion annotations as a tumor geometry, queried by level-0 boxes.

Annotations live in level-0 pixel coordinates and need no slide: ``read_annotations(path)``
reads CAMELYON16 ASAP XML (:mod:`vistumor.wsi.asap`) or QuPath GeoJSON
(:mod:`vistumor.wsi.geojson`) and returns a :class:`TumorAnnotation` whose geometry is the
union of the tumor polygons minus the union of the exclusion polygons (CAMELYON16 group
``_2`` marks non-tumor regions drawn inside a lesion). Which group means what is
configuration, because datasets name groups differently; an unmapped group is an error,
never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from vistumor.errors import AnnotationError
from vistumor.wsi.asap import HOLE_GROUP, read_asap_xml
from vistumor.wsi.geojson import read_geojson
from vistumor.wsi.shapes import polygon_parts, polygonal

#: what an annotation group means (config ``data.annotation_groups``)
ROLE_TUMOR, ROLE_EXCLUDE, ROLE_IGNORE = "tumor", "exclude", "ignore"
ROLES = (ROLE_TUMOR, ROLE_EXCLUDE, ROLE_IGNORE)

#: CAMELYON16: ``_0`` and ``_1`` (and ``Tumor`` in some files) are lesions, ``_2`` exclusions.
DEFAULT_GROUPS: dict[str, str] = {
    "_0": ROLE_TUMOR,
    "_1": ROLE_TUMOR,
    "Tumor": ROLE_TUMOR,
    "_2": ROLE_EXCLUDE,
    HOLE_GROUP: ROLE_EXCLUDE,
}


@dataclass(frozen=True)
class Region:
    """One annotated polygon (holes allowed) with the group it was drawn in."""

    name: str
    group: str
    role: str
    polygon: BaseGeometry


class TumorAnnotation:
    """Annotated tumor of one slide, queried by level-0 boxes.

    Args:
        regions: the annotated polygons with their roles.
        source: the file they came from (for messages).
    """

    def __init__(self, regions: Iterable[Region] = (), source: str | Path | None = None):
        self.regions = list(regions)
        self.source = Path(source) if source is not None else None
        tumor = [r.polygon for r in self.regions if r.role == ROLE_TUMOR]
        exclude = [r.polygon for r in self.regions if r.role == ROLE_EXCLUDE]
        geometry = shapely.union_all(tumor) if tumor else Polygon()
        if exclude:
            geometry = geometry.difference(shapely.union_all(exclude))
        self.geometry: BaseGeometry = polygonal(geometry)
        shapely.prepare(self.geometry)

    @property
    def is_empty(self) -> bool:
        return self.geometry.is_empty

    @property
    def area(self) -> float:
        """Tumor area in level-0 pixels squared (exclusions subtracted)."""
        return float(self.geometry.area)

    @property
    def polygons(self) -> list[Polygon]:
        """The tumor geometry as polygons with holes, largest first."""
        return sorted(polygon_parts(self.geometry), key=lambda p: -p.area)

    # -- area fractions ---------------------------------------------------------------------

    def tumor_fraction(self, x0: float, y0: float, width: float, height: float) -> float:
        """Share of the level-0 box ``[x0, x0+width) x [y0, y0+height)`` that is annotated tumor."""
        return float(self.tumor_fractions([x0], [y0], width, height)[0])

    def tumor_fractions(
        self, x0: Iterable[float], y0: Iterable[float], width: float, height: float
    ) -> np.ndarray:
        """Vectorised :meth:`tumor_fraction` for many boxes of one size (exact polygon areas)."""
        xs = np.asarray(x0, dtype=np.float64)
        ys = np.asarray(y0, dtype=np.float64)
        fractions = np.zeros(xs.shape, np.float64)
        if self.is_empty or xs.size == 0:
            return fractions
        boxes = shapely.box(xs, ys, xs + width, ys + height)
        hit = shapely.intersects(self.geometry, boxes)
        if hit.any():
            inter = shapely.intersection(self.geometry, boxes[hit])
            fractions[hit] = shapely.area(inter) / (float(width) * float(height))
        return np.clip(fractions, 0.0, 1.0)

    # -- rasters ----------------------------------------------------------------------------

    def rasterize(
        self, x0: float, y0: float, width: float, height: float, downsample: float = 1.0,
        out_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Boolean tumor mask of a level-0 box, one pixel per ``downsample`` level-0 pixels.

        A pixel is tumor when its centre lies inside the geometry (sub-pixel accurate).

        Args:
            out_shape: ``(rows, cols)`` stretched over the box (``downsample`` is then unused);
                default ``ceil(height / downsample), ceil(width / downsample)`` pixels of
                exactly ``downsample`` level-0 pixels, the last ones reaching past the box.
        """
        if out_shape is None:
            out_shape = (int(np.ceil(height / downsample)), int(np.ceil(width / downsample)))
            sx = sy = float(downsample)  # level-0 px per output px
        else:
            sx, sy = width / out_shape[1], height / out_shape[0]
        rows, cols = out_shape
        if self.is_empty:
            return np.zeros((rows, cols), bool)
        view = shapely.box(x0, y0, x0 + cols * sx, y0 + rows * sy)
        rings = [
            np.asarray(ring.coords)
            for polygon in self.polygons
            if polygon.intersects(view)
            for ring in (polygon.exterior, *polygon.interiors)
        ]
        # pixel (c, r) has its centre at level-0 (x0 + (c + .5) sx, y0 + (r + .5) sy)
        rings = [np.stack([(xy[:, 0] - x0) / sx - 0.5, (xy[:, 1] - y0) / sy - 0.5], 1) for xy in rings]
        return _fill_rings(rings, rows, cols)

    def mask(self, downsample: float, dimensions: tuple[int, int] | None = None) -> np.ndarray:
        """Tumor mask of the whole slide at ``downsample``.

        Args:
            dimensions: level-0 ``(width, height)`` of the slide; default: the annotation's
                bounding box from the origin.
        """
        if dimensions is None:
            if self.is_empty:
                raise AnnotationError("empty annotation: pass the slide dimensions", self.source)
            _, _, maxx, maxy = self.geometry.bounds
            dimensions = (int(np.ceil(maxx)) + 1, int(np.ceil(maxy)) + 1)
        width, height = dimensions
        return self.rasterize(0, 0, width, height, downsample)

    def outlines(self, x0: float = 0, y0: float = 0, downsample: float = 1.0) -> list[np.ndarray]:
        """Polygon rings as ``(n, 2)`` arrays in the pixel frame of a raster at ``(x0, y0, downsample)``."""
        rings = []
        for polygon in self.polygons:
            for ring in (polygon.exterior, *polygon.interiors):
                xy = np.asarray(ring.coords)
                rings.append(np.stack([(xy[:, 0] - x0) / downsample, (xy[:, 1] - y0) / downsample], 1))
        return rings

    def __repr__(self) -> str:
        return f"TumorAnnotation({self.source}, regions={len(self.regions)}, area={self.area:.0f})"


def _fill_rings(rings: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Even-odd scanline fill: pixel ``(c, r)`` is set when the point ``(c, r)`` is inside.

    Exact centre sampling (no boundary dilation as in ``cv2.fillPoly``), so the raster's
    area is an unbiased estimate of the polygon area. Rings are ``(n, 2)`` arrays of
    ``(col, row)`` coordinates; holes and disjoint parts need no special care.
    """
    if not rings:
        return np.zeros((rows, cols), bool)
    starts = np.concatenate([r for r in rings])
    ends = np.concatenate([np.roll(r, -1, axis=0) for r in rings])
    (xa, ya), (xb, yb) = starts.T, ends.T
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    # an edge crosses row r when lo <= r < hi (half-open, so vertices are counted once)
    r_first = np.clip(np.ceil(lo), 0, rows).astype(np.int64)
    r_stop = np.clip(np.ceil(hi), 0, rows).astype(np.int64)
    counts = np.maximum(r_stop - r_first, 0)
    edge = np.repeat(np.arange(len(counts)), counts)
    row = r_first[edge] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    t = (row - ya[edge]) / (yb[edge] - ya[edge])
    x = xa[edge] + t * (xb[edge] - xa[edge])
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    first = np.clip(np.ceil(x[0::2]), 0, cols).astype(np.int64)
    stop = np.clip(np.ceil(x[1::2]), 0, cols).astype(np.int64)
    mask = np.zeros((rows, cols), bool)
    if row.size == 0:
        return mask
    # fill only the bounding block of the spans: memory scales with the lesion, not the slide
    r0, r1 = row.min(), row.max() + 1
    c0, c1 = first.min(), stop.max()
    diff = np.zeros((r1 - r0, c1 - c0 + 1), np.int8)
    np.add.at(diff, (row[0::2] - r0, first - c0), 1)
    np.add.at(diff, (row[0::2] - r0, stop - c0), -1)
    mask[r0:r1, c0:c1] = np.cumsum(diff[:, :-1], axis=1, dtype=np.int8) > 0
    return mask


# -- readers ---------------------------------------------------------------------------------


def read_annotations(
    path: str | Path, groups: Mapping[str, str] | None = None
) -> TumorAnnotation:
    """Read an ASAP XML (``.xml``) or GeoJSON (``.geojson``/``.json``) annotation file.

    Args:
        path: annotation file in level-0 pixel coordinates.
        groups: group (or QuPath classification) name -> role (``tumor``, ``exclude``,
            ``ignore``); default :data:`DEFAULT_GROUPS`.
    """
    path = Path(path)
    groups = dict(DEFAULT_GROUPS if groups is None else groups)
    bad = {g: r for g, r in groups.items() if r not in ROLES}
    if bad:
        raise AnnotationError(f"unknown roles {bad} in the group mapping; roles are {ROLES}")
    if not path.is_file():
        raise AnnotationError("annotation file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        shapes = read_asap_xml(path)
    elif suffix in (".geojson", ".json"):
        shapes = read_geojson(path)
    else:
        raise AnnotationError(f"unknown annotation format '{suffix}' (expected .xml, .geojson, .json)", path)
    regions = []
    for name, group, polygon, *_ in shapes:
        if group not in groups:
            raise AnnotationError(
                f"annotation group '{group}' (in '{name}') is not mapped; known: {sorted(groups)}. "
                "Add it to data.annotation_groups",
                path,
            )
        if groups[group] != ROLE_IGNORE:
            regions += [Region(name, group, groups[group], part) for part in polygon_parts(polygon)]
    return TumorAnnotation(regions, source=path)
