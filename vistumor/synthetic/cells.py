"""Placement of nuclei on a level-0 canvas: lymph node everywhere, tumor cells inside lesions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vistumor.synthetic.lesions import EXCLUSION_GROUP, Outline
from vistumor.synthetic.nuclei import ANGLE_BINS, CELL_TYPES, Sprites, sprite_bank
from vistumor.synthetic.tissue import Maps, Style, sample_low

_STEERING_MAPS = ("stroma", "germinal", "mantle", "sinus")  # region maps that steer placement


@dataclass
class Canvas:
    """Level-0 nucleus layers (uint8, same scales as Sprites)."""

    cover: np.ndarray
    h: np.ndarray
    e: np.ndarray

    @classmethod
    def empty(cls, size: int) -> Canvas:
        return cls(*(np.zeros((size, size), np.uint8) for _ in range(3)))

    def stamp(self, sprites: Sprites, ys: np.ndarray, xs: np.ndarray, ids: np.ndarray) -> None:
        """Draw sprites centred at (ys, xs); overlapping nuclei keep the darker value."""
        size, k = self.cover.shape[0], sprites.cover.shape[1]
        top = np.rint(ys).astype(np.int64) - k // 2
        left = np.rint(xs).astype(np.int64) - k // 2
        inside = (top >= 0) & (left >= 0) & (top + k <= size) & (left + k <= size)
        top, left, ids = top[inside], left[inside], ids[inside]
        offsets = (np.arange(k)[:, None] * size + np.arange(k)[None, :]).ravel()
        step = max(1, 4_000_000 // (k * k))
        for s in range(0, len(ids), step):
            idx = ((top[s : s + step] * size + left[s : s + step])[:, None] + offsets).ravel()
            for layer, src in ((self.cover, sprites.cover), (self.h, sprites.h), (self.e, sprites.e)):
                np.maximum.at(layer.reshape(-1), idx, src[ids[s : s + step]].reshape(-1))


def _grid_points(rng: np.random.Generator, size: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Jittered grid: one candidate per cell, spacing close to a packed tissue."""
    centres = np.arange(cell / 2, size, cell)
    ys, xs = (a.ravel() for a in np.meshgrid(centres, centres, indexing="ij"))
    ys = ys + rng.uniform(-0.38, 0.38, ys.size) * cell
    xs = xs + rng.uniform(-0.38, 0.38, xs.size) * cell
    return ys, xs


def _keep(rng: np.random.Generator, prob: np.ndarray) -> np.ndarray:
    return rng.random(prob.shape) < prob


def populate(
    rng: np.random.Generator,
    maps: Maps,
    labels: np.ndarray,
    outlines: Sequence[Outline],
    zoom: float,
    style: Style,
) -> Canvas:
    """Place every nucleus on a level-0 canvas: lymph node everywhere, tumor inside lesions."""
    size = labels.shape[0]
    canvas = Canvas.empty(size)

    def candidates(cell_type: str):
        ys, xs = _grid_points(rng, size, CELL_TYPES[cell_type][2] * zoom)
        in_tissue = sample_low(maps.signed_dist, ys, xs) > 8 * zoom
        normal = (
            labels[np.clip(ys.astype(np.intp), 0, size - 1), np.clip(xs.astype(np.intp), 0, size - 1)] == 0
        )
        at = {name: sample_low(getattr(maps, name), ys, xs) for name in _STEERING_MAPS}
        return ys, xs, in_tissue, normal, at

    def place(cell_type: str, ys, xs, keep, ids=None):
        bank = sprite_bank(rng, cell_type, zoom, style)
        if ids is None:
            ids = rng.integers(len(bank.cover), size=int(keep.sum()))
        canvas.stamp(bank, ys[keep], xs[keep], ids)

    ys, xs, in_tissue, normal, at = candidates("lymphocyte")
    prob = np.clip(
        style.lymph_density
        - 0.9 * at["stroma"]
        - 0.5 * at["germinal"]
        - 0.6 * at["sinus"]
        + 0.1 * at["mantle"],
        0.02,
        1,
    )
    prob *= np.where(normal, 1, style.infiltrate)
    place("lymphocyte", ys, xs, _keep(rng, prob) & in_tissue)

    ys, xs, in_tissue, normal, at = candidates("centroblast")
    place("centroblast", ys, xs, _keep(rng, 0.55 * at["germinal"]) & in_tissue & normal)

    ys, xs, in_tissue, normal, at = candidates("histiocyte")
    prob = (0.35 * at["sinus"] + 0.03 + 0.1 * at["germinal"]) * (1 - at["stroma"])
    place("histiocyte", ys, xs, _keep(rng, prob) & in_tissue & normal)

    ys, xs, in_tissue, normal, at = candidates("spindle")
    keep = _keep(rng, 0.3 * at["stroma"] + 0.01) & in_tissue & normal
    cos2, sin2 = (sample_low(maps.fibre[..., i], ys, xs) for i in (0, 1))
    along = 0.5 * np.arctan2(sin2, cos2)[keep]
    bins = np.rint(np.mod(along, np.pi) / (np.pi / ANGLE_BINS)).astype(int) % ANGLE_BINS
    per_bin = 48 // ANGLE_BINS
    place("spindle", ys, xs, keep, bins + ANGLE_BINS * rng.integers(per_bin, size=bins.size))

    _place_tumor_cells(rng, canvas, labels, outlines, zoom, style)
    return canvas


def _place_tumor_cells(
    rng, canvas: Canvas, labels: np.ndarray, outlines: Sequence[Outline], zoom: float, style: Style
) -> None:
    """Tumor nuclei lie wholly inside their lesion; cell membranes follow their Voronoi cells."""
    bank = sprite_bank(rng, "tumor", zoom, style)
    cell = CELL_TYPES["tumor"][2] * zoom
    size = labels.shape[0]
    for i, outline in enumerate(outlines):
        if outline.group == EXCLUSION_GROUP:
            continue
        x0, y0 = np.floor(outline.vertices.min(0)).astype(int) - 2
        x1, y1 = np.ceil(outline.vertices.max(0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
        mine = (labels[y0:y1, x0:x1] == i + 1).astype(np.uint8)
        depth = cv2.distanceTransform(mine, cv2.DIST_L2, 5)
        ys, xs = _grid_points(rng, max(y1 - y0, x1 - x0), cell)
        ys, xs = ys + y0 + rng.uniform(0, cell), xs + x0 + rng.uniform(0, cell)
        ok = (ys >= y0) & (ys < y1 - 1) & (xs >= x0) & (xs < x1 - 1)
        ys, xs = ys[ok], xs[ok]
        tries = rng.integers(len(bank.cover), size=(ys.size, 3))  # first sprite that fits wins
        room = depth[np.rint(ys).astype(int) - y0, np.rint(xs).astype(int) - x0]
        fits = room[:, None] >= bank.extent[tries] + 1.5
        ids = tries[np.arange(ys.size), fits.argmax(1)]
        keep = fits.any(1) & _keep(rng, np.full(ys.size, 0.97))
        canvas.stamp(bank, ys[keep], xs[keep], ids[keep])
        _draw_membranes(canvas, mine, ys[keep] - y0, xs[keep] - x0, (y0, x0), cell)


def _draw_membranes(
    canvas: Canvas, mine: np.ndarray, ys: np.ndarray, xs: np.ndarray, origin: tuple[int, int], cell: float
) -> None:
    """Faint eosinophilic cell borders: boundaries of the Voronoi cells of the nuclei."""
    if ys.size < 2:
        return
    seeds = np.ones(mine.shape, np.uint8)
    seeds[np.rint(ys).astype(int), np.rint(xs).astype(int)] = 0
    dist, nearest = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    border = np.zeros(mine.shape, bool)
    border[:, 1:] |= nearest[:, 1:] != nearest[:, :-1]
    border[1:, :] |= nearest[1:, :] != nearest[:-1, :]
    border &= (mine > 0) & (dist < 0.75 * cell)
    y0, x0 = origin
    view = canvas.e[y0 : y0 + mine.shape[0], x0 : x0 + mine.shape[1]]
    np.maximum(view, border.astype(np.uint8) * 30, out=view)
