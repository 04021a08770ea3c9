"""Reviewer feedback on a slide's predicted lesions: each one confirmed, rejected or left
unreviewed, missed lesions drawn as polygons, a comment and the reviewer's name.

A review arrives as JSON (``POST /api/review/<model>/<slide>``)::

    {"reviewer": "A. Pathologist", "comment": "one missed focus",
     "lesions": {"tumor_001-lesion-1": "confirmed", "tumor_001-lesion-2": "rejected"},
     "drawn": [{"points": [[x, y], [x, y], [x, y], ...]}]}

and is refused with one line (:class:`ReviewError`, HTTP 400) unless every field is known,
the reviewer is named, the comment is short, every lesion id is one of the slide's
predicted lesions, every status is one of :data:`STATUSES`, and every drawn polygon has at
least 3 finite vertices inside the slide's level-0 bounds, an area, and does not cross itself.

A saved review is three files under ``RUN/reviews/<model>/``, written to temporaries first
and moved into place only when all three are written (a failure leaves the earlier ones):

* ``<slide>.geojson`` (QuPath) and ``<slide>.xml`` (ASAP): the corrected tumor annotation,
  confirmed and drawn lesions as ``Tumor``; rejected and unreviewed lesions are left out, so
  ``data.layout.annotation_dir=RUN/reviews/<model>`` tiles with the reviewed lesions as
  tumor and needs no new annotation group. GeoJSON properties: ``status``, ``source``
  (``predicted``/``drawn``), ``lesion_id``, the original ``tumor_probability``,
  ``reviewer``, ``reviewed_at`` (ISO 8601, UTC);
* ``<slide>.review.json``: the review itself (every lesion's status, the drawn polygons,
  comment, reviewer, time, the lesions file's checksum), what the viewer loads back. Not
  ``<slide>.json``: the tiling catalog would take that name for an annotation file.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import Polygon

from vistumor.errors import VisTumorError
from vistumor.files import atomic_path, fingerprint
from vistumor.infer.lesions import GROUP_COLOURS, TUMOR_CLASS, TUMOR_COLOUR
from vistumor.viewer.run import NotFound, RunFolder
from vistumor.wsi.asap import asap_xml
from vistumor.wsi.geojson import geojson_feature

#: the most a review may weigh (checked from ``Content-Length`` before reading), the longest
#: comment and reviewer name
MAX_BYTES = 1 << 20
MAX_COMMENT = 2000
MAX_REVIEWER = 100
#: the most drawn polygons a review may hold (a reviewer draws missed lesions by hand)
MAX_DRAWN = 1000
#: the longest integer read (a level-0 coordinate has at most 7 digits)
MAX_DIGITS = 20
CONFIRMED, REJECTED, UNREVIEWED = "confirmed", "rejected", "unreviewed"
STATUSES = (CONFIRMED, REJECTED, UNREVIEWED)
FIELDS = ("reviewer", "comment", "lesions", "drawn")
#: the files of a saved review, by kind
SUFFIXES = {"geojson": ".geojson", "xml": ".xml", "review": ".review.json"}


class ReviewError(ValueError):
    """A review the server refuses (HTTP 400); the message is one line."""


@dataclass(frozen=True)
class Review:
    """A checked review: every predicted lesion's status (in the lesions' order) and the
    drawn polygons' vertices in level-0 px (not closed)."""

    reviewer: str
    comment: str
    statuses: dict[str, str]
    drawn: list[list[tuple[float, float]]]


# -- checking -----------------------------------------------------------------------------------


def parse_review(body: bytes, lesion_ids: Sequence[str], dimensions: tuple[int, int]) -> Review:
    """The review in ``body`` for a slide of level-0 ``dimensions`` whose predicted lesions
    are ``lesion_ids``; :class:`ReviewError` naming the first thing wrong."""
    data = _json_object(body)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ReviewError(f"unknown field(s) {unknown}; a review has {list(FIELDS)}")
    drawn = data.get("drawn", [])
    if not isinstance(drawn, list):
        raise ReviewError("'drawn' must be a list of {\"points\": [[x, y], ...]}")
    if len(drawn) > MAX_DRAWN:
        raise ReviewError(f"'drawn' holds {len(drawn)} polygons; a review holds at most {MAX_DRAWN}")
    return Review(reviewer=_reviewer(data.get("reviewer")), comment=_comment(data.get("comment", "")),
                  statuses=_statuses(data.get("lesions", {}), lesion_ids),
                  drawn=[_drawn(item, k, dimensions) for k, item in enumerate(drawn, 1)])


def _json_object(body: bytes) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise ReviewError(f"{name} is not a number (JSON has no NaN or Infinity)")

    def integer(text: str) -> int:  # Python refuses to convert > 4300 digits with a ValueError
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise ReviewError(f"the integer {text[:20]}... has {len(text.lstrip('-'))} digits; "
                              f"a coordinate has at most {MAX_DIGITS}")
        return int(text)

    try:
        data = json.loads(body.decode("utf-8"), parse_constant=refuse, parse_int=integer)
    except UnicodeDecodeError as err:
        raise ReviewError(f"the body is not UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ReviewError(f"the body is not JSON ({err})") from err
    except RecursionError as err:
        raise ReviewError("the body is nested too deeply") from err
    if not isinstance(data, dict):
        raise ReviewError(f"a review is a JSON object, not {type(data).__name__}")
    return data


def _reviewer(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ReviewError("the reviewer's name is required")
    name = value.strip()
    if len(name) > MAX_REVIEWER or not name.isprintable():
        raise ReviewError(f"the reviewer's name must be printable and at most {MAX_REVIEWER} characters")
    return name


def _comment(value: Any) -> str:
    if not isinstance(value, str):
        raise ReviewError("the comment must be text")
    if len(value) > MAX_COMMENT:
        raise ReviewError(f"the comment has {len(value)} characters; at most {MAX_COMMENT}")
    if not all(c.isprintable() or c in "\n\r\t" for c in value):
        raise ReviewError("the comment holds control characters")
    return value.strip()


def _statuses(value: Any, lesion_ids: Sequence[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ReviewError("'lesions' must map lesion ids to a status")
    known = set(lesion_ids)
    for lesion, status in value.items():
        if lesion not in known:
            shown = sorted(known)[:5]
            raise ReviewError(f"unknown lesion id {lesion[:80]!r}; this slide's lesions are {shown}"
                              + (f" and {len(known) - 5} more" if len(known) > 5 else ""))
        if status not in STATUSES:
            raise ReviewError(f"lesion {lesion!r}: status {str(status)[:40]!r} is not one of {list(STATUSES)}")
    return {lesion: value.get(lesion, UNREVIEWED) for lesion in lesion_ids}


def _drawn(item: Any, k: int, dimensions: tuple[int, int]) -> list[tuple[float, float]]:
    """Drawn polygon ``k`` (1-based): its vertices, the closing repeat dropped."""
    if not isinstance(item, dict) or set(item) != {"points"} or not isinstance(item["points"], list):
        raise ReviewError(f"drawn lesion {k} must be {{\"points\": [[x, y], ...]}}")
    width, height = dimensions
    points = []
    for vertex in item["points"]:
        if (not isinstance(vertex, list) or len(vertex) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vertex)):
            raise ReviewError(f"drawn lesion {k}: a vertex must be [x, y] in level-0 px, got {str(vertex)[:40]}")
        x, y = float(vertex[0]), float(vertex[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ReviewError(f"drawn lesion {k}: vertex ({x}, {y}) is not finite")
        if not (0 <= x <= width and 0 <= y <= height):
            raise ReviewError(f"drawn lesion {k}: vertex ({x:.1f}, {y:.1f}) lies outside the slide "
                              f"({width} x {height} px at level 0)")
        points.append((x, y))
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    if len(points) < 3:
        raise ReviewError(f"drawn lesion {k} has {len(points)} vertices; a polygon needs at least 3")
    polygon = Polygon(points)
    if not polygon.convex_hull.area > 0:
        raise ReviewError(f"drawn lesion {k} has no area (its vertices lie on a line)")
    if not polygon.is_valid:
        raise ReviewError(f"drawn lesion {k} crosses itself ({shapely.is_valid_reason(polygon)})")
    return points


# -- the corrected annotation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outline:
    """One tumor polygon of a review, with its GeoJSON feature id, name and properties."""

    feature_id: str
    name: str
    polygon: Polygon
    properties: dict[str, Any]


def outlines(slide: str, review: Review, lesions: Sequence[Mapping[str, Any]], reviewed_at: str,
             mpp: float | None) -> list[Outline]:
    """Confirmed predicted lesions, then drawn ones: the slide's reviewed tumor."""
    found = []
    for i, lesion in enumerate(lesions, 1):
        if review.statuses.get(lesion["id"]) == CONFIRMED:
            rings = lesion["rings"]
            measured = {k: lesion.get(k) for k in ("tumor_probability", "mean_probability", "area_mm2")}
            found.append(Outline(str(lesion["id"]), f"lesion {i}", Polygon(rings[0], rings[1:]), {
                "status": CONFIRMED, "source": "predicted", "lesion_id": lesion["id"],
                "tumor_probability": lesion.get("tumor_probability"), "measurements": measured}))
    for k, points in enumerate(review.drawn, 1):
        polygon = Polygon(points)
        area = round(polygon.area * (mpp / 1000) ** 2, 6) if mpp else None
        found.append(Outline(f"{slide}-drawn-{k}", f"drawn lesion {k}", polygon, {
            "status": CONFIRMED, "source": "drawn", "lesion_id": None, "tumor_probability": None,
            "measurements": {"area_mm2": area}}))
    polygons = fill_shared_holes([o.polygon for o in found])
    return [Outline(o.feature_id, o.name, polygon, {**o.properties, "reviewer": review.reviewer,
                                                    "reviewed_at": reviewed_at})
            for o, polygon in zip(found, polygons, strict=True)]


def fill_shared_holes(polygons: Sequence[Polygon]) -> list[Polygon]:
    """Each polygon without the holes that another polygon's outline overlaps (a lesion
    drawn inside a confirmed lesion's hole). ASAP subtracts an ``Exclusion`` from every
    ``Tumor`` polygon, GeoJSON a hole from its own polygon only: with no hole under another
    outline the two files mean the same tumor.

    A hole is tested only against the outlines whose bounding box meets it (an STR tree):
    near-linear in the number of polygons (the union of all others per polygon was quadratic)."""
    outer = [Polygon(p.exterior) for p in polygons]
    tree = shapely.STRtree(outer)

    def covered(ring: Any, i: int) -> bool:
        hole = Polygon(ring)
        return any(j != i and hole.intersection(outer[j]).area > 0 for j in tree.query(hole))

    out = []
    for i, polygon in enumerate(polygons):
        holes = [ring for ring in polygon.interiors if not covered(ring, i)]
        out.append(polygon if len(holes) == len(polygon.interiors) else Polygon(polygon.exterior, holes))
    return out


def review_geojson(found: Sequence[Outline]) -> dict[str, Any]:
    """QuPath GeoJSON: every reviewed tumor polygon a ``Tumor`` annotation."""
    return {"type": "FeatureCollection", "features": [
        geojson_feature(o.feature_id, o.name, o.polygon, TUMOR_CLASS, TUMOR_COLOUR, **o.properties)
        for o in found]}


def review_xml(found: Sequence[Outline]) -> str:
    """ASAP XML: every reviewed tumor polygon in group ``Tumor``, holes in ``Exclusion``."""
    return asap_xml([(o.name, TUMOR_CLASS, o.polygon) for o in found], GROUP_COLOURS)


# -- the run's reviews ----------------------------------------------------------------------------


class ReviewStore:
    """The saved reviews of a run: ``RUN/reviews/<model>/<slide>{.geojson,.xml,.review.json}``."""

    def __init__(self, run: RunFolder):
        self.run = run
        self._lock = threading.Lock()

    def paths(self, model: str, slide: str) -> dict[str, Path]:
        """The files of a known model's review of a known slide (names from ``run.json`` only)."""
        folder = self.run.root / "reviews" / self.run.model(model).name
        paths = {kind: folder / f"{self.run.slide(slide).name}{suffix}" for kind, suffix in SUFFIXES.items()}
        if not all(p.resolve().is_relative_to(self.run.root) for p in paths.values()):
            raise NotFound("review outside the run folder")
        return paths

    def load(self, model: str, slide: str) -> dict[str, Any]:
        """``{"saved": false}``, or the saved review and whether the lesions changed since (``stale``)."""
        path = self.paths(model, slide)["review"]
        if not path.is_file():
            return {"saved": False}
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise VisTumorError(f"unreadable review ({err})", path) from err
        return {"saved": True, "review": record,
                "stale": record.get("lesions_checksum") != self._lesions_checksum(model, slide)}

    def save(self, model: str, slide: str, body: bytes, dimensions: tuple[int, int],
             mpp: float | None) -> dict[str, Any]:
        """Check the review in ``body`` and write its three files; :class:`ReviewError` when
        it is malformed (nothing written)."""
        paths = self.paths(model, slide)
        lesions = self.run.lesions(model, slide)
        review = parse_review(body, [str(lesion["id"]) for lesion in lesions], dimensions)
        reviewed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        found = outlines(slide, review, lesions, reviewed_at, mpp)
        record = {
            "slide": slide, "model": model, "reviewer": review.reviewer, "reviewed_at": reviewed_at,
            "comment": review.comment, "lesions": review.statuses,
            "drawn": [{"points": [[round(x, 2), round(y, 2)] for x, y in points]} for points in review.drawn],
            "counts": {**{s: sum(v == s for v in review.statuses.values()) for s in STATUSES},
                       "drawn": len(review.drawn)},
            "lesions_checksum": self._lesions_checksum(model, slide),
        }
        texts = {"geojson": json.dumps(review_geojson(found), indent=2, sort_keys=True) + "\n",
                 "xml": review_xml(found), "review": json.dumps(record, indent=2) + "\n"}
        with self._lock, contextlib.ExitStack() as stack:
            for kind, path in paths.items():  # every file written before any is moved into place
                stack.enter_context(atomic_path(path)).write_text(texts[kind], encoding="utf-8")
        return {"saved": True, "review": record, "stale": False,
                "files": [p.relative_to(self.run.root).as_posix() for p in paths.values()]}

    def _lesions_checksum(self, model: str, slide: str) -> str | None:
        try:
            return fingerprint(self.run.file(model, "lesions", slide, ".geojson"), "full")
        except NotFound:
            return None

