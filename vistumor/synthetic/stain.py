"""H&E staining in optical-density space: per-slide stain vectors and the level-0 RGB render.

``RGB = glass * exp(-(h * H + e * E))`` (Ruifrok & Johnston, Anal. Quant. Cytol. Histol.
23:291, 2001), with per-slide stain vectors and concentrations so that colour alone does
not separate tumor from normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from vistumor.synthetic.artefacts import tissue_holes
from vistumor.synthetic.cells import Canvas
from vistumor.synthetic.noise import FibreTexture, PeriodicTexture, smooth_noise
from vistumor.synthetic.tissue import Maps, Style, stroma_weights, upsample_rows

_BAND = 256  # rows composed at a time, so the float work stays in cache

# Reference optical-density vectors (R, G, B) of hematoxylin and eosin, nudged per slide.
# Fitted to the CAMELYON16 look-book: lymphocyte nuclei ~(75, 40, 85), lymphoid interstitium
# ~(220, 180, 200), tumor cytoplasm ~(205, 145, 175).
_H_REF = np.array([0.62, 0.71, 0.34])
_E_REF = np.array([0.17, 0.80, 0.55])


@dataclass(frozen=True)
class Stain:
    """Per-slide optical appearance."""

    h_vec: np.ndarray
    e_vec: np.ndarray
    h_scale: float
    e_scale: float
    glass: np.ndarray  # RGB of empty glass
    blur_sigma: float
    jpeg_quality: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Stain:
        def nudge(vec: np.ndarray, spread: float) -> np.ndarray:
            v = np.clip(vec + rng.normal(0.0, spread, 3), 0.03, None)
            return v / np.linalg.norm(v)

        pink_shift = np.array([rng.uniform(-0.05, 0.08), 0.0, rng.uniform(-0.18, 0.03)])
        return cls(
            h_vec=nudge(_H_REF, 0.06),
            e_vec=nudge(_E_REF + pink_shift, 0.03),
            h_scale=float(rng.uniform(0.7, 1.3)),
            e_scale=float(rng.uniform(0.55, 1.6)),
            glass=np.clip(rng.uniform(228, 243) + rng.normal(0.0, 2.5, 3), 222, 248),
            blur_sigma=float(rng.uniform(0.75, 1.4)),
            jpeg_quality=int(rng.integers(80, 91)),
        )


def _runs(flags: np.ndarray, gap: int = 64) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a 1-D array, merging runs closer than ``gap``."""
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(idx) > gap)
    starts, ends = np.r_[idx[0], idx[cuts + 1]], np.r_[idx[cuts], idx[-1]] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def compose(
    rng: np.random.Generator,
    maps: Maps,
    labels: np.ndarray,
    canvas: Canvas,
    stain: Stain,
    style: Style,
    zoom: float,
) -> tuple[np.ndarray, float]:
    """Level-0 RGB from stain concentrations, band by band; returns (image, tissue fraction)."""
    size = labels.shape[0]
    tex = {
        name: PeriodicTexture(rng, size, sigma * zoom, period)
        for name, sigma, period in (
            ("grain", 1.3, 521),
            ("cloud", 7.0, 1031),
            ("edge", 3.0, 521),
            ("pixel", 0.0, 521),
        )
    }
    hole_mask = tissue_holes(rng, labels, zoom)
    fibres = FibreTexture(rng, size, zoom)
    n = maps.shape[0]
    eosin = (
        style.interstitium_e - 0.05 * maps.sinus + 0.04 * maps.germinal + 0.03 * smooth_noise(rng, (n, n), 40)
    ).astype(np.float32)
    hema = (0.09 + 0.04 * maps.germinal + 0.02 * maps.sinus).astype(np.float32)
    h_vec = (stain.h_vec * stain.h_scale).astype(np.float32)
    e_vec = (stain.e_vec * stain.e_scale).astype(np.float32)
    glass = stain.glass.astype(np.float32)
    image = np.empty((size, size, 3), np.uint8)
    tissue_px = 0
    for y0 in range(0, size, _BAND):
        y1 = min(size, y0 + _BAND)

        up = partial(upsample_rows, y0=y0, y1=y1, width=size)

        light = up(maps.illumination)
        grit = 2.5 * tex["pixel"].rows(y0, y1)
        signed = up(maps.signed_dist)
        if signed.max() < -20 * zoom:  # glass only
            for c in range(3):
                image[y0:y1, :, c] = np.clip(light * glass[c] + grit, 0, 255)
            continue
        grain, cloud = tex["grain"].rows(y0, y1), tex["cloud"].rows(y0, y1)
        holes = hole_mask[y0:y1] > 0
        tissue = ((signed + 6 * zoom * tex["edge"].rows(y0, y1)) > 0) & ~holes
        clear = 1 - 0.7 * np.clip((cloud - 0.3) / 1.2, 0, 1)  # loose, pale interstitium
        e = up(eosin) * (1 + 0.12 * grain + 0.18 * cloud) * clear
        h = up(hema) * (1 + 0.2 * grain) * clear
        layers = stroma_weights(signed, up(maps.cap_width), up(maps.ridge), up(maps.ridge_gate), zoom)
        stroma = np.maximum(*layers)
        runs = _runs(stroma.max(0) > 0.01)
        direction = up(maps.fibre) if runs else None
        for x0, x1 in runs:
            fibre = fibres.block(y0, y1, x0, x1, direction[:, x0:x1])
            collagen = np.clip(0.55 + 0.3 * fibre, 0, 1)
            e[:, x0:x1] += stroma[:, x0:x1] * (0.12 + 0.4 * collagen) * (1 + 0.25 * cloud[:, x0:x1])
        lesion = labels[y0:y1] > 0
        if lesion.any():
            cyto_h, cyto_e = style.tumor_cyto
            clearing = 1 - 0.7 * np.clip((cloud - 0.4) / 1.0, 0, 1)  # patchy pale cytoplasm
            e = np.where(lesion, cyto_e * (1 + 0.2 * grain + 0.2 * cloud) * clearing, e)
            h = np.where(lesion, cyto_h * (1 + 0.25 * grain), h)
        cover = canvas.cover[y0:y1] * np.float32(1 / 255)
        solid = ~holes * np.float32(0.01)
        h = (h * (1 - cover) * tissue + canvas.h[y0:y1] * solid) * up(maps.stain_h)
        e = (e * (1 - 0.8 * cover) * tissue + canvas.e[y0:y1] * solid) * up(maps.stain_e)
        for c in range(3):
            value = np.exp(-(h * h_vec[c] + e * e_vec[c])) * light * glass[c] + grit
            image[y0:y1, :, c] = np.clip(value, 0, 255)
        tissue_px += int(np.count_nonzero(tissue))
    cv2.GaussianBlur(image, (0, 0), max(0.3, stain.blur_sigma * zoom), dst=image)
    return image, tissue_px / size**2
