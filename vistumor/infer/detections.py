"""Detection points for the CAMELYON16 lesion FROC, and the slide score, from the map.

Points come from non-maximum suppression on the probability map (as NCRF's ``nms.py``):
take the most probable cell, record ``(prob, x, y)`` at its centre in level-0 px, suppress
every cell within ``radius`` of it, repeat while the maximum is at least ``min_prob``. They
are written in the challenge's format: no header, rows ``prob,x,y``, integer level-0 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistumor.files import write_text
from vistumor.infer.params import SCORES


def nms_points(values: np.ndarray, cell_px: float, radius_px: float, min_prob: float,
               limit: int = 10_000) -> list[tuple[float, int, int]]:
    """``(prob, x, y)`` local maxima, most probable first, at least ``radius_px`` apart.

    Equivalent to repeatedly taking the map's maximum and clearing a disc around it, in
    ``O(cells log cells)``: cells are visited once, in descending order (ties in row-major
    order, as ``argmax``), and a visited cell inside an earlier point's disc is skipped.
    """
    work = np.nan_to_num(values, nan=0.0).astype(np.float64)
    order = np.argsort(-work, axis=None, kind="stable")
    order = order[work.ravel()[order] >= max(min_prob, np.nextafter(0, 1))]
    cleared = np.zeros(work.shape, bool)
    reach = int(np.floor(radius_px / cell_px))
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    disc = dr**2 + dc**2 <= (radius_px / cell_px) ** 2
    points = []
    for flat in order:
        r, c = divmod(int(flat), work.shape[1])
        if cleared[r, c]:
            continue
        points.append((float(work[r, c]), int((c + 0.5) * cell_px), int((r + 0.5) * cell_px)))
        if len(points) == limit:
            break
        rs, cs = r + dr[disc], c + dc[disc]
        inside = (rs >= 0) & (rs < work.shape[0]) & (cs >= 0) & (cs < work.shape[1])
        cleared[rs[inside], cs[inside]] = True
    return points


def write_detections(path: Path, points: list[tuple[float, int, int]]) -> Path:
    """The official CSV: ``prob,x,y`` per line, no header."""
    write_text(path, "".join(f"{p:.6f},{x},{y}\n" for p, x, y in points))
    return path


def slide_score(values: np.ndarray, method: str = "max", k: int = 10) -> float:
    """The slide's tumor score: the map's maximum, or the mean of its ``k`` highest cells."""
    cells = values[np.isfinite(values)]
    if not cells.size:
        return 0.0
    if method == "max":
        return float(cells.max())
    if method == "topk":
        return float(np.sort(cells)[-k:].mean())
    raise ValueError(f"infer.score.method must be one of {SCORES}, got {method!r}")
