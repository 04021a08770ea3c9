"""Reviewer feedback on a slide's predicted lesions: each one confirmed, rejected or left
unreviewed, missed lesions drawn as polygons, a comment and the reviewer's name.

A review arrives as JSON (``POST /api/review/<model>/<slide>``)::

    {"reviewer": "A. Pathologist", "comment": "one missed focus",
     "lesions": {"tumor_001-lesion-1": "confirmed", "tumor_001-lesion-2": "rejected"},
     "drawn": [{"points": [[x, y], [x, y], [x, y], ...]}],
     "based_on": 0}

and is refused with one line (:class:`ReviewError`, HTTP 400) unless it fits the declared
schema (:class:`ReviewBody`: every field known, the reviewer named, the comment short,
statuses from :data:`STATUSES`, at most :data:`MAX_DRAWN` polygons of finite ``[x, y]``
vertices; the reason names the field and the value), every lesion id is one of the slide's
predicted lesions, and every drawn polygon has at least 3 vertices inside the slide's
level-0 bounds, an area, and does not cross itself.

Each save is the next ``version`` of the slide's review. ``based_on`` is the version the page
loaded (0: none was saved): a save based on another version than the saved one is refused
(:class:`ReviewConflict`, HTTP 409) instead of silently replacing a colleague's review.

A saved review is three files under ``RUN/reviews/<model>/``, written to temporaries first
and moved into place only when all three are written (a failure leaves the earlier ones):

* ``<slide>.geojson`` (QuPath) and ``<slide>.xml`` (ASAP): the corrected tumor annotation,
  confirmed and drawn lesions as ``Tumor``; rejected and unreviewed lesions are left out, so
  ``data.layout.annotation_dir=RUN/reviews/<model>`` tiles with the reviewed lesions as
  tumor and needs no new annotation group. GeoJSON properties: ``status``, ``source``
  (``predicted``/``drawn``), ``lesion_id``, the original ``tumor_probability``,
  ``reviewer``, ``reviewed_at`` (ISO 8601, UTC);
* ``<slide>.review.json``: the review itself (every lesion's status, the drawn polygons,
  comment, reviewer, time, the lesions file's checksum, version), what the viewer loads back. Not
  ``<slide>.json``: the tiling catalog would take that name for an annotation file.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import shapely
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
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
#: the files of a saved review, by kind
REVIEW_SUFFIXES = {"geojson": ".geojson", "xml": ".xml", "review": ".review.json"}


class ReviewError(ValueError):
    """A review the server refuses (HTTP 400); the message is one line."""


class ReviewConflict(Exception):
    """A save based on a version of the review that is no longer the saved one (HTTP 409)."""


@dataclass(frozen=True)
class Review:
    """A checked review: every predicted lesion's status (in the lesions' order), the drawn
    polygons' vertices in level-0 px (not closed) and the saved version it changes."""

    reviewer: str
    comment: str
    statuses: dict[str, str]
    drawn: list[list[tuple[float, float]]]
    based_on: int = 0


# -- checking -----------------------------------------------------------------------------------


def _printable(text: str) -> str:
    if not all(c.isprintable() or c in "\n\r\t" for c in text):
        raise ValueError("holds control characters")
    return text


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DrawnBody(_Schema):
    """A drawn lesion: ``{"points": [[x, y], ...]}`` in level-0 px."""

    points: list[Annotated[list[float], Field(min_length=2, max_length=2)]]


class ReviewBody(_Schema):
    """A review as sent; ``based_on``: the saved version it changes (0: none was saved)."""

    reviewer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REVIEWER),
                        AfterValidator(_printable)]
    comment: Annotated[str, Field(max_length=MAX_COMMENT), AfterValidator(_printable)] = ""
    lesions: dict[str, Literal[CONFIRMED, REJECTED, UNREVIEWED]] = {}
    drawn: Annotated[list[DrawnBody], Field(max_length=MAX_DRAWN)] = []
    based_on: Annotated[int, Field(ge=0)]


def parse_review(body: bytes, lesion_ids: Sequence[str], dimensions: tuple[int, int]) -> Review:
    """The review in ``body`` for a slide of level-0 ``dimensions`` whose predicted lesions
    are ``lesion_ids``; :class:`ReviewError` naming the first thing wrong (field and value)."""
    try:
        sent = ReviewBody.model_validate(_json_object(body))
    except ValidationError as err:
        raise ReviewError(schema_reason(err)) from None
    return Review(sent.reviewer, sent.comment.strip(), _statuses(sent.lesions, lesion_ids),
                  [_polygon(item.points, k, dimensions) for k, item in enumerate(sent.drawn, 1)], sent.based_on)


def schema_reason(err: ValidationError) -> str:
    """The first error of ``err`` in one line: the field's path, what is wrong, the value."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = first["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if p.isidentifier() else f"[{p!r}]" for p in loc)
    path = path.lstrip(".") or "the review"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "missing":
        hint = " (the saved version this review changes; 0 for the first)" if loc == ("based_on",) else ""
        return f"{path} is required{hint}{more}"
    if first["type"] == "extra_forbidden":
        known = list(ReviewBody.model_fields) if len(loc) == 1 else list(DrawnBody.model_fields)
        return f"unknown field {path!r}; a {'review' if len(loc) == 1 else 'drawn lesion'} has {known}{more}"
    value = repr(first["input"])
    value = value if len(value) <= 40 else value[:37] + "..."
    message = first["msg"].replace(" after validation", "").replace("Value error, ", "")
    return f"{path}: {message} (got {value}){more}"


def _json_object(body: bytes) -> Any:
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


def _statuses(sent: dict[str, str], lesion_ids: Sequence[str]) -> dict[str, str]:
    """Every predicted lesion's status (unreviewed unless sent); an unknown id is refused."""
    known = set(lesion_ids)
    for lesion in sent:
        if lesion not in known:
            shown = sorted(known)[:5]
            raise ReviewError(f"unknown lesion id {lesion[:80]!r}; this slide's lesions are {shown}"
                              + (f" and {len(known) - 5} more" if len(known) > 5 else ""))
    return {lesion: sent.get(lesion, UNREVIEWED) for lesion in lesion_ids}


def _polygon(vertices: list[list[float]], k: int, dimensions: tuple[int, int]) -> list[tuple[float, float]]:
    """Drawn lesion ``k`` (1-based): its vertices inside the slide, the closing repeat dropped,
    a polygon with an area that does not cross itself."""
    width, height = dimensions
    points = [(x, y) for x, y in vertices]
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise ReviewError(f"drawn lesion {k}: vertex ({x:.1f}, {y:.1f}) lies outside the slide "
                              f"({width} x {height} px at level 0)")
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
class DrawnOutline:
    """One tumor polygon of a review, with its GeoJSON feature id, name and properties."""

    feature_id: str
    name: str
    polygon: Polygon
    properties: dict[str, Any]


def outlines(slide: str, review: Review, lesions: Sequence[Mapping[str, Any]], reviewed_at: str,
             mpp: float | None) -> list[DrawnOutline]:
    """Confirmed predicted lesions, then drawn ones: the slide's reviewed tumor."""
    found = []
    for i, lesion in enumerate(lesions, 1):
        if review.statuses.get(lesion["id"]) == CONFIRMED:
            rings = lesion["rings"]
            measured = {k: lesion.get(k) for k in ("tumor_probability", "mean_probability", "area_mm2")}
            found.append(DrawnOutline(str(lesion["id"]), f"lesion {i}", Polygon(rings[0], rings[1:]), {
                "status": CONFIRMED, "source": "predicted", "lesion_id": lesion["id"],
                "tumor_probability": lesion.get("tumor_probability"), "measurements": measured}))
    for k, points in enumerate(review.drawn, 1):
        polygon = Polygon(points)
        area = round(polygon.area * (mpp / 1000) ** 2, 6) if mpp else None
        found.append(DrawnOutline(f"{slide}-drawn-{k}", f"drawn lesion {k}", polygon, {
            "status": CONFIRMED, "source": "drawn", "lesion_id": None, "tumor_probability": None,
            "measurements": {"area_mm2": area}}))
    polygons = fill_shared_holes([o.polygon for o in found])
    return [DrawnOutline(o.feature_id, o.name, polygon, {**o.properties, "reviewer": review.reviewer,
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


def review_geojson(found: Sequence[DrawnOutline]) -> dict[str, Any]:
    """QuPath GeoJSON: every reviewed tumor polygon a ``Tumor`` annotation."""
    return {"type": "FeatureCollection", "features": [
        geojson_feature(o.feature_id, o.name, o.polygon, TUMOR_CLASS, TUMOR_COLOUR, **o.properties)
        for o in found]}


def review_xml(found: Sequence[DrawnOutline]) -> str:
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
        paths = {kind: folder / f"{self.run.slide(slide).name}{suffix}" for kind, suffix in REVIEW_SUFFIXES.items()}
        if not all(p.resolve().is_relative_to(self.run.root) for p in paths.values()):
            raise NotFound("review outside the run folder")
        return paths

    def load(self, model: str, slide: str) -> dict[str, Any]:
        """``{"saved": false}``, or the saved review (with its ``version``) and whether the
        lesions changed since (``stale``)."""
        record = self._saved(self.paths(model, slide)["review"])
        if record is None:
            return {"saved": False}
        return {"saved": True, "review": record,
                "stale": record.get("lesions_checksum") != self._lesions_checksum(model, slide)}

    def save(self, model: str, slide: str, body: bytes, dimensions: tuple[int, int],
             mpp: float | None) -> dict[str, Any]:
        """Check the review in ``body`` and write its three files as the next version;
        :class:`ReviewError` when it is malformed, :class:`ReviewConflict` when it is based on
        another version than the saved one (nothing written)."""
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
                 "xml": review_xml(found)}
        with self._lock, contextlib.ExitStack() as stack:  # checked and written by one save at a time
            record["version"] = self._next_version(paths["review"], review.based_on)
            texts["review"] = json.dumps(record, indent=2) + "\n"
            for kind, path in paths.items():  # every file written before any is moved into place
                stack.enter_context(atomic_path(path)).write_text(texts[kind], encoding="utf-8")
        return {"saved": True, "review": record, "stale": False,
                "files": [p.relative_to(self.run.root).as_posix() for p in paths.values()]}

    def _next_version(self, path: Path, based_on: int) -> int:
        """The version a save based on ``based_on`` writes; :class:`ReviewConflict` unless
        that is the saved one (0: none; a review saved before versions were kept is 1)."""
        saved = self._saved(path, unreadable_ok=True)
        version = saved.get("version") if saved is not None else 0
        current = version if isinstance(version, int) and not isinstance(version, bool) else 1
        if based_on != current:
            by = f" by {saved.get('reviewer')!s:.100} at {saved.get('reviewed_at')}" if saved else ""
            raise ReviewConflict(f"this review changed since the page loaded it (you changed version {based_on}, "
                                 f"the saved one is version {current}{by}); reload the page to see it, "
                                 "then make your changes again")
        return current + 1

    @staticmethod
    def _saved(path: Path, unreadable_ok: bool = False) -> dict[str, Any] | None:
        """The saved record, None when there is none (or, ``unreadable_ok``, it cannot be read:
        a new save replaces it)."""
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            return record
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if unreadable_ok:
                return None
            raise VisTumorError(f"unreadable review ({err})", path) from err

    def _lesions_checksum(self, model: str, slide: str) -> str | None:
        try:
            return fingerprint(self.run.file(model, "lesions", slide, ".geojson"), "full")
        except NotFound:
            return None

