"""QuPath GeoJSON annotations: features read into :class:`~vistumor.wsi.shapes.Shape` and
written as QuPath exports them (``objectType``, ``classification`` with a colour).

A Feature, a FeatureCollection or a bare list of features is read; a feature's group is
its QuPath classification (``Unclassified`` when it has none), its other properties
(measurements...) travel with it. Point and line features carry no area and are skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from vistumor.errors import AnnotationError
from vistumor.wsi.shapes import Shape, make_polygon, polygon_parts

log = logging.getLogger(__name__)

UNCLASSIFIED = "Unclassified"
#: properties a :class:`Shape` holds in its own fields
_OWN_PROPERTIES = ("name", "classification", "objectType")


# -- reading -----------------------------------------------------------------------------------


def read_geojson(path: str | Path) -> list[Shape]:
    """The area features of a GeoJSON file, one :class:`Shape` each, in file order.

    Raises:
        AnnotationError: unreadable or malformed JSON, a feature without geometry, bad
            coordinates.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"malformed JSON ({err})", path) from err
    except OSError as err:
        raise AnnotationError(f"cannot read ({err.strerror or err})", path) from err
    shapes = []
    for i, feature in enumerate(_features(data, path)):
        shape = _shape(feature, i, path)
        if shape is not None:
            shapes.append(shape)
    return shapes


def _features(data: Any, path: Path) -> list:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError("not a GeoJSON Feature, FeatureCollection or list of features", path)
    if not isinstance(features, list):
        raise AnnotationError("'features' is not a list", path)
    return features


def _shape(feature: Any, i: int, path: Path) -> Shape | None:
    if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
        raise AnnotationError(f"feature {i} has no geometry", path)
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise AnnotationError(f"feature {i} has properties that are not an object", path)
    name = str(props.get("name") or feature.get("id") or f"feature {i}")
    geometry = feature["geometry"]
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = coords
    else:
        log.warning("%s: skipping %s feature '%s' (no area)", path, kind, name)
        return None
    parts = []
    for rings in polygons or []:
        try:
            shell = np.asarray(rings[0], dtype=np.float64)[:, :2]
            holes = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings[1:]]
        except (TypeError, ValueError, IndexError, KeyError) as err:
            raise AnnotationError(f"feature '{name}' has malformed coordinates", path) from err
        parts += polygon_parts(make_polygon(shell, holes, name, path))
    polygon = parts[0] if len(parts) == 1 else MultiPolygon(parts) if parts else Polygon()
    own = {k: v for k, v in props.items() if k not in _OWN_PROPERTIES}
    feature_id = feature.get("id")
    return Shape(name, _classification(props), polygon, own, None if feature_id is None else str(feature_id))


def _classification(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    return str(cls) if cls else UNCLASSIFIED


# -- writing -----------------------------------------------------------------------------------


def geojson_feature(feature_id: str, name: str, polygon: BaseGeometry, classification: str,
                    colour: tuple[int, int, int], decimals: int = 2, **properties: Any) -> dict:
    """One QuPath annotation (``Polygon``, or ``MultiPolygon`` for several parts; holes as
    interior rings; level-0 px rounded to ``decimals``) with ``properties`` (e.g.
    ``measurements``) beside its name and classification."""
    parts = [[[[round(x, decimals), round(y, decimals)] for x, y in ring.coords]
              for ring in (part.exterior, *part.interiors)] for part in polygon_parts(polygon)]
    geometry = ({"type": "Polygon", "coordinates": parts[0]} if len(parts) == 1
                else {"type": "MultiPolygon", "coordinates": parts})
    return {
        "type": "Feature",
        "id": feature_id,
        "geometry": geometry,
        "properties": {"objectType": "annotation", "name": name,
                       "classification": {"name": classification, "color": list(colour)}, **properties},
    }


def feature_collection(features: Iterable[Mapping[str, Any]]) -> dict:
    """A GeoJSON ``FeatureCollection`` of ``features``."""
    return {"type": "FeatureCollection", "features": list(features)}
