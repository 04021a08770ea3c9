"""ASAP XML, the CAMELYON16 annotation format: read safely, written through ElementTree.

Reading uses defusedxml with DTDs forbidden, so entity-expansion bombs and external entities
are refused. Writing builds an ElementTree, so names and groups are escaped whatever they
hold, laid out as CAMELYON16 ships its files (tab indents, one ``Coordinate`` a line,
every group an annotation names defined under ``AnnotationGroups``: ASAP refuses a file
naming an undefined one). ASAP has no holes: a polygon's holes are written as polygons
of :data:`HOLE_GROUP`, which readers map to the exclusion role.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from xml.etree import ElementTree
from xml.etree.ElementTree import Element, ParseError, SubElement

import defusedxml
import defusedxml.ElementTree as safe_et
import numpy as np
from shapely.geometry.base import BaseGeometry

from vistumor.errors import AnnotationError
from vistumor.wsi.shapes import Shape, make_polygon, polygon_parts

log = logging.getLogger(__name__)

#: the group a polygon's holes are written in (CAMELYON16 exports call it ``Exclusion`` too)
HOLE_GROUP = "Exclusion"
#: colour of a group the caller gives none for
DEFAULT_COLOUR = "#F4FA58"

# ASAP annotation types that describe an area; points carry none and are skipped.
_AREA_TYPES = {"polygon", "spline", "rectangle"}
_POINT_TYPES = {"dot", "pointset"}


# -- reading -----------------------------------------------------------------------------------


def read_asap_xml(path: str | Path) -> list[Shape]:
    """The area annotations of an ASAP XML file, in file order (points skipped with a warning).

    Raises:
        AnnotationError: hostile or malformed XML, not an ASAP file, bad coordinates.
    """
    path = Path(path)
    try:
        root = safe_et.parse(str(path), forbid_dtd=True).getroot()
    except defusedxml.DefusedXmlException as err:
        raise AnnotationError(f"refused hostile XML ({type(err).__name__}: {err})", path) from err
    except ParseError as err:
        raise AnnotationError(f"malformed XML ({err})", path) from err
    except OSError as err:
        raise AnnotationError(f"cannot read ({err.strerror or err})", path) from err
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"not an ASAP annotation file (root element <{root.tag}>)", path)
    shapes = []
    for i, node in enumerate(root.iter("Annotation")):
        name = node.get("Name") or f"Annotation {i}"
        kind = (node.get("Type") or "Polygon").lower()
        if kind in _POINT_TYPES:
            log.warning("%s: skipping point annotation '%s' (type %s)", path, name, kind)
            continue
        if kind not in _AREA_TYPES:
            raise AnnotationError(f"annotation '{name}' has unknown Type '{node.get('Type')}'", path)
        group = node.get("PartOfGroup") or "None"
        shapes.append(Shape(name, group, make_polygon(_coordinates(node, name, path), [], name, path)))
    return shapes


def _coordinates(node: Element, name: str, path: Path) -> np.ndarray:
    points = []
    for c in node.iter("Coordinate"):
        try:
            order = int(c.get("Order", len(points)))
            points.append((order, float(c.get("X")), float(c.get("Y"))))
        except (TypeError, ValueError) as err:
            raise AnnotationError(f"annotation '{name}' has a bad coordinate {dict(c.attrib)}", path) from err
    points.sort(key=lambda p: p[0])
    return np.array([(x, y) for _, x, y in points], dtype=np.float64).reshape(-1, 2)


# -- writing -----------------------------------------------------------------------------------


def asap_xml(
    polygons: Iterable[tuple[str, str, BaseGeometry]],
    colours: Mapping[str, str] | None = None,
    *,
    annotation_colour: str | None = None,
    decimals: int = 2,
) -> str:
    """ASAP XML of ``(name, group, polygon)`` triples (a :class:`Shape` is one).

    Each polygon's outline is an annotation of its group, each hole one of
    :data:`HOLE_GROUP` named ``<name> hole <j>``; a MultiPolygon's parts are numbered
    ``<name> part <k>``. Coordinates are level-0 px rounded to ``decimals`` places.

    Args:
        colours: group -> ``#RRGGBB``; these groups are defined in this order (used or not),
            then any other group used, in :data:`DEFAULT_COLOUR`.
        annotation_colour: every annotation's own ``Color``; default its group's colour.
    """
    colours = dict(colours or {})
    root = Element("ASAP_Annotations")
    annotations = SubElement(root, "Annotations")
    for name, group, ring in _rings(polygons):
        colours.setdefault(group, DEFAULT_COLOUR)
        node = SubElement(annotations, "Annotation", Name=name, Type="Polygon", PartOfGroup=group,
                          Color=annotation_colour or colours[group])
        coordinates = SubElement(node, "Coordinates")
        for k, (x, y) in enumerate(ring):
            SubElement(coordinates, "Coordinate", Order=str(k), X=_number(x, decimals), Y=_number(y, decimals))
    groups = SubElement(root, "AnnotationGroups")
    for group, colour in colours.items():
        SubElement(SubElement(groups, "Group", Name=group, PartOfGroup="None", Color=colour), "Attributes")
    ElementTree.indent(root, space="\t")
    if not len(annotations):  # an open and a close tag, as ASAP writes an empty list
        annotations.text = "\n\t"
    return '<?xml version="1.0"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"


def _rings(polygons: Iterable[tuple[str, str, BaseGeometry]]):
    """``(name, group, vertices)`` of every outline and hole, the closing vertex dropped."""
    for name, group, polygon, *_ in polygons:
        parts = polygon_parts(polygon)
        for k, part in enumerate(parts, 1):
            label = name if len(parts) == 1 else f"{name} part {k}"
            yield label, group, list(part.exterior.coords)[:-1]
            for j, hole in enumerate(part.interiors, 1):
                yield f"{label} hole {j}", HOLE_GROUP, list(hole.coords)[:-1]


def _number(value: float, decimals: int) -> str:
    """``value`` to ``decimals`` places, trailing zeros dropped (``12``, ``12.5``, never ``-0``)."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
