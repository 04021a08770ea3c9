"""Lesions sized in millimetres for a metastasis category (``generate_dataset(categories=True)``).

The default generator sizes lesions as fractions of the slide side, so on its 1.5 mm slides
the largest lesion is always a micro-metastasis. Here a tumor slide is drawn for one
category, ``itc``, ``micro`` or ``macro``: its largest lesion's longest diameter (maximum
Feret diameter) is drawn in that category's millimetre range, and smaller lesions of the
lower categories keep it company. The categories are CAMELYON17's (isolated tumour cells up
to 0.2 mm, micro-metastases up to 2.0 mm, macro-metastases beyond; see
``vistumor.evaluate.camelyon17.categories``); the ranges below stay clear of both boundaries, so the
1/8 px rounding of the vertices never moves a lesion across one.

A > 2 mm lesion needs a slide of several millimetres: :data:`MIN_SIDE_MM`, e.g.
:data:`SIZE` px at :data:`MPP` µm/px (8.2 mm); the default 6144 px at 0.25 µm/px is 1.5 mm.
"""

from __future__ import annotations

import numpy as np

from vistumor.synthetic.lesions import Outline, _exclusion, _quantise, star_polygon
from vistumor.synthetic.tissue import LOW

ITC, MICRO, MACRO = "itc", "micro", "macro"
#: tumor slide ``i`` (from 1) is drawn for category ``CYCLE[(i - 1) % 3]``: the first, which
#: carries the ``_2`` exclusion, has room for it
CYCLE = (MACRO, MICRO, ITC)
#: longest diameter (mm) of a lesion of each category: drawn uniformly in (low, high), and
#: shrunk towards ``floor`` when the tissue has no room (ITC <= 0.2 mm < micro <= 2.0 mm < macro)
DIAMETER_MM = {ITC: (0.06, 0.16, 0.05), MICRO: (0.4, 1.6, 0.3), MACRO: (2.3, 2.9, 2.1)}
#: the lesions of a slide of each category, largest first
LESIONS = {ITC: (ITC, ITC), MICRO: (MICRO, ITC), MACRO: (MACRO, MICRO, ITC)}
#: the narrowest tissue island holds a disk of 0.18 slide sides (measured over 200 seeds):
#: room for a 2.1 mm macro-metastasis and its margin from about 7 mm a side
MIN_SIDE_MM = 7.0
#: a slide size and resolution that fit every category: 8.2 mm a side
SIZE, MPP = 8192, 1.0
#: CAMELYON17's testing layout: "There are 5 slides provided for each patient and each slide
#: corresponds to exactly one node" (https://camelyon17.grand-challenge.org/Evaluation/)
NODES_PER_PATIENT = 5
_MARGIN_PX = 48.0  # gap between lesions and to the tissue edge, as the default layout keeps
_SHRINK = 0.9


def category_of(index: int) -> str:
    """The category of tumor slide ``index`` (from 1)."""
    return CYCLE[(index - 1) % len(CYCLE)]


def side_mm(size: int, mpp: float) -> float:
    return size * mpp / 1000


def node_name(number: int) -> str:
    """CAMELYON17's name of test slide ``number`` (from 1): ``patient_000_node_0`` ..."""
    patient, node = divmod(number - 1, NODES_PER_PATIENT)
    return f"patient_{patient:03d}_node_{node}"


def longest_diameter(vertices: np.ndarray) -> float:
    """The largest distance between two vertices (the maximum Feret diameter of the polygon)."""
    diff = vertices[:, None, :] - vertices[None, :, :]
    return float(np.sqrt((diff**2).sum(-1).max()))


def place_category_lesions(
    rng: np.random.Generator, signed_dist: np.ndarray, size: int, mpp: float, category: str, with_exclusion: bool
) -> list[Outline]:
    """The lesions of a tumor slide of ``category`` (:data:`LESIONS`), well inside tissue and
    apart, plus an optional exclusion inside the largest.

    Raises:
        RuntimeError: no room in the tissue for the largest lesion, even at its floor size.
    """
    cells = np.argwhere(signed_dist > _MARGIN_PX) * LOW + (LOW - 1) / 2  # candidate centres (y, x)
    room = signed_dist[signed_dist > _MARGIN_PX]
    placed: list[tuple[str, np.ndarray, tuple[float, float], float]] = []
    for i, role in enumerate(LESIONS[category]):
        found = _place_one(rng, cells, room, placed, role, mpp)
        if found is None:
            if i == 0:  # the slide's category rests on it; the companions are optional
                low, _, floor = DIAMETER_MM[role]
                raise RuntimeError(f"no room for a {floor}-{low} mm {role} lesion in the tissue of a {size} px "
                                   f"slide at {mpp} um/px")
            continue
        placed.append(found)
    outlines = [Outline(f"Annotation {i}", "_0", role, vertices) for i, (role, vertices, _, _) in enumerate(placed)]
    if with_exclusion:
        outlines.append(_exclusion(rng, outlines[0], placed[0][2], len(outlines)))
    return outlines


def _place_one(rng, cells, room, placed, role: str, mpp: float):
    """``(role, vertices, centre, reach)`` of one lesion, shrunk until it fits; None if it never does."""
    low, high, floor = DIAMETER_MM[role]
    diameter_px, floor_px = rng.uniform(low, high) * 1000 / mpp, floor * 1000 / mpp
    n_vertices = int(rng.integers(24, 48)) if role == ITC else int(rng.integers(60, 200))
    unit = star_polygon(rng, 1.0, n_vertices, rng.uniform(0.3, 0.6))
    unit /= longest_diameter(unit)
    while True:
        shape = unit * diameter_px
        reach = float(np.linalg.norm(shape, axis=1).max())
        ok = room > reach + _MARGIN_PX
        for _, _, (x, y), other in placed:
            ok &= np.hypot(cells[:, 0] - y, cells[:, 1] - x) > reach + other + _MARGIN_PX
        if ok.any():
            cy, cx = cells[rng.choice(np.flatnonzero(ok))]
            return role, _quantise(shape + [cx, cy]), (float(cx), float(cy)), reach
        if diameter_px <= floor_px:
            return None
        diameter_px = max(diameter_px * _SHRINK, floor_px)
