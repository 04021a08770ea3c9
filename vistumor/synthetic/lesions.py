"""Lesion and exclusion outlines (CAMELYON16 groups) and their exact level-0 rasterisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from shapely.geometry import Point, Polygon

from vistumor.synthetic.tissue import LOW

EXCLUSION_GROUP = "_2"  # CAMELYON16: tumor outlines are in _0 / _1, non-tumor holes in _2
SHIFT = 3  # vertices are multiples of 1/8 px and rasterised exactly with cv2 shift=3


@dataclass(frozen=True)
class Outline:
    """One annotation polygon; vertices are level-0 (x, y), multiples of 1/8 px."""

    name: str
    group: str
    role: str  # "large", "medium", "micro" or "exclusion"
    vertices: np.ndarray

    def to_dict(self) -> dict:
        x0, y0 = self.vertices.min(0)
        x1, y1 = self.vertices.max(0)
        return {
            "name": self.name,
            "group": self.group,
            "role": self.role,
            "bbox": [float(x0), float(y0), float(x1), float(y1)],
            "area_px": float(Polygon(self.vertices).area),
            "coordinates": self.vertices.tolist(),
        }


_LESION_SIZES = {  # mean radius: fraction of the slide side, at least min(px, cap * side); vertices
    "large": ((0.085, 0.13), (260, 0.12), (150, 320)),
    "medium": ((0.03, 0.05), (110, 0.06), (60, 160)),
    "micro": ((0.015, 0.021), (95, 0.07), (24, 64)),
}
_MIN_RADIUS = 65  # px at 0.25 um/px: room for a few tumor cells
_MICRO_MAX_SPAN = 480  # a micro-metastasis fits inside one 512 px patch


def star_polygon(rng: np.random.Generator, radius: float, n_vertices: int, roughness: float) -> np.ndarray:
    """Irregular star-shaped (hence simple) polygon around the origin, as (x, y) rows."""
    theta = np.sort(
        np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        + rng.uniform(-0.3, 0.3, n_vertices) * 2 * np.pi / n_vertices
    )
    m = np.arange(2, 25)
    amp = roughness * rng.normal(0, 1, m.size) / m**1.7
    r = 1 + (amp[:, None] * np.cos(m[:, None] * theta + rng.uniform(0, 2 * np.pi, m.size)[:, None])).sum(0)
    r = radius * np.clip(r + rng.normal(0, 0.008, n_vertices), 0.55, 1.6)
    aspect, angle = rng.uniform(1.0, 1.5), rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * np.sqrt(aspect), r * np.sin(theta) / np.sqrt(aspect)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.stack([x, y], 1) @ rot.T


def _quantise(vertices: np.ndarray) -> np.ndarray:
    return np.rint(vertices * (1 << SHIFT)) / (1 << SHIFT)


def place_lesions(
    rng: np.random.Generator, signed_dist: np.ndarray, size: int, zoom: float, with_exclusion: bool
) -> list[Outline]:
    """2-4 lesions (one large, one micro) well inside tissue and apart, plus an optional exclusion.

    On crowded small slides the whole layout is retried with a smaller large lesion.
    """
    roles = ["large", "micro"] + ["medium"] * int(rng.integers(0, 3))
    use_group_1 = rng.random() < 0.4
    for large_scale in (1.0, 0.8, 0.6, 0.45):
        placed = _try_layout(rng, signed_dist, size, zoom, roles, large_scale)
        if placed is not None:
            break
    else:
        raise RuntimeError(f"no room for the lesions in the tissue of a {size} px slide")
    outlines = [
        Outline(f"Annotation {i}", "_1" if use_group_1 and rng.random() < 0.5 else "_0", role, vertices)
        for i, (role, vertices, _) in enumerate(placed)
    ]
    if with_exclusion:
        outlines.append(_exclusion(rng, outlines[0], placed[0][2], len(outlines)))
    return outlines


def _try_layout(rng, signed_dist, size, zoom, roles, large_scale):
    """[(role, vertices, centre)] with every promised lesion placed, or None."""
    margin = 48.0
    cells = np.argwhere(signed_dist > margin) * LOW + (LOW - 1) / 2  # candidate centres (y, x)
    room = signed_dist[signed_dist > margin]
    placed, reaches = [], []
    for role in roles:
        (lo, hi), (min_px, cap), (v_lo, v_hi) = _LESION_SIZES[role]
        radius = max(rng.uniform(lo, hi) * size, min(min_px, cap * size) * rng.uniform(1.0, 1.3))
        radius *= large_scale if role == "large" else 1.0
        while True:
            shape = star_polygon(rng, radius, int(rng.integers(v_lo, v_hi)), rng.uniform(0.3, 0.65))
            reach = np.linalg.norm(shape, axis=1).max()
            ok = room > reach + margin
            for (_, _, (x, y)), other in zip(placed, reaches, strict=True):
                ok &= np.hypot(cells[:, 0] - y, cells[:, 1] - x) > reach + other + margin
            fits = ok.any() and (role != "micro" or np.ptp(shape, 0).max() <= _MICRO_MAX_SPAN)
            if fits or radius * 0.85 < _MIN_RADIUS * zoom:
                break
            radius *= 0.85
        if not fits:
            if role == "medium":  # optional; the large and micro lesions are promised
                continue
            return None
        cy, cx = cells[rng.choice(np.flatnonzero(ok))]
        placed.append((role, _quantise(shape + [cx, cy]), (float(cx), float(cy))))
        reaches.append(reach)
    return placed


def _exclusion(rng: np.random.Generator, lesion: Outline, centre: tuple[float, float], index: int) -> Outline:
    """A non-tumor hole strictly inside a lesion (CAMELYON16 group _2)."""
    host = Polygon(lesion.vertices)
    radius = rng.uniform(0.3, 0.42) * host.exterior.distance(Point(centre))
    for _ in range(20):
        vertices = _quantise(star_polygon(rng, radius, int(rng.integers(30, 80)), 0.3) + centre)
        if host.buffer(-16).contains(Polygon(vertices)):
            return Outline(f"Annotation {index}", "_2", "exclusion", vertices)
        radius *= 0.85
    raise RuntimeError(f"could not fit an exclusion inside {lesion.name}")


def rasterise(outlines: Sequence[Outline], size: int) -> np.ndarray:
    """Level-0 label image: 0 normal, i + 1 inside tumor outline i, exclusions cut out.

    Vertices are multiples of 1/8 px, so cv2's fixed-point fill (shift=3) uses them exactly.
    """
    labels = np.zeros((size, size), np.uint8)
    holes = [o for o in outlines if o.group == EXCLUSION_GROUP]
    for i, outline in enumerate(outlines):
        if outline.group != EXCLUSION_GROUP:
            cv2.fillPoly(labels, _fixed_point(outline), i + 1, cv2.LINE_8, SHIFT)
    for outline in holes:
        cv2.fillPoly(labels, _fixed_point(outline), 0, cv2.LINE_8, SHIFT)
    return labels


def _fixed_point(outline: Outline) -> list[np.ndarray]:
    return [np.rint(outline.vertices * (1 << SHIFT)).astype(np.int32)]
