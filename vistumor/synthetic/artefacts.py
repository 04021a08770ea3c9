"""Preparation and scanning artefacts: tears, vacuoles and clefts in tissue, dust and seams on glass."""

from __future__ import annotations

import cv2
import numpy as np

from vistumor.synthetic.lesions import SHIFT, star_polygon


def tissue_holes(rng: np.random.Generator, labels: np.ndarray, zoom: float) -> np.ndarray:
    """Small tears and vacuoles everywhere, retraction clefts inside tumor nests."""
    size = labels.shape[0]
    mask = np.zeros((size, size), np.uint8)
    count = int(rng.poisson(size**2 / (450 * zoom) ** 2))
    inside = np.argwhere(labels[::16, ::16] > 0) * 16
    centres = [rng.uniform(0, size, 2) for _ in range(count)]
    kinds = ["hole"] * count
    if len(inside):
        extra = int(rng.poisson(len(inside) * 256 / (520 * zoom) ** 2))
        centres += [inside[i][::-1] + rng.uniform(0, 16, 2) for i in rng.integers(len(inside), size=extra)]
        kinds += ["cleft"] * extra
    for centre, kind in zip(centres, kinds, strict=True):
        radius = rng.uniform(3, 14) * zoom if kind == "hole" else rng.uniform(6, 16) * zoom
        shape = star_polygon(rng, radius, 24, 1.2)
        if kind == "cleft":
            turn = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
            shape = (shape * [rng.uniform(1.2, 2.0), rng.uniform(0.4, 0.7)]) @ rot.T
        pts = np.rint((shape + centre) * (1 << SHIFT)).astype(np.int32)[None]
        cv2.fillPoly(mask, pts, 1, cv2.LINE_8, SHIFT)
    return mask


def add_debris(rng: np.random.Generator, image: np.ndarray, zoom: float) -> None:
    """Dust specks and fibres on the glass, and sometimes a faint scanner stitching seam."""
    size = image.shape[0]
    for _ in range(int(rng.poisson(50 * (size / 6144) ** 2)) + 3):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        grey = rng.uniform(70, 190)
        colour = tuple(float(grey * t) for t in (1.0, rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.05)))
        pick = rng.random()
        if pick < 0.55:
            cv2.circle(image, centre, int(rng.integers(1, 5) * max(zoom, 0.5)), colour, -1, cv2.LINE_AA)
        elif pick < 0.85:
            axes = (int(rng.integers(3, 14) * zoom) + 1, int(rng.integers(1, 4) * zoom) + 1)
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            steps = rng.normal(0, 1, (int(rng.integers(4, 12)), 2)).cumsum(0) * 10 * zoom
            pts = np.rint(steps + centre).astype(np.int32)[None]
            cv2.polylines(image, pts, False, colour, 1, cv2.LINE_AA)
    if rng.random() < 0.5:
        pos = int(rng.integers(size // 5, 4 * size // 5))
        shift = np.clip(np.arange(256) + int(rng.choice([-3, -2, 2, 3])), 0, 255).astype(np.uint8)
        view = image[:, pos:] if rng.random() < 0.5 else image[pos:]
        view[...] = cv2.LUT(np.ascontiguousarray(view), shift)
