"""Synthetic CAMELYON16-like whole-slide images: the embedded default dataset.

Slides mimic the real files so downstream code runs unchanged on real CAMELYON16:
tiled (256 px) JPEG pyramidal TIFFs whose levels are successive main IFDs (what
OpenSlide's generic-TIFF reader expects), level-0 resolution tags giving
``openslide.mpp-x/y``, and lesion outlines in ASAP XML (groups ``_0``/``_1`` tumor,
``_2`` exclusion) in level-0 pixel coordinates, in the real folder layout::

    <root>/training/normal/normal_001.tif
    <root>/training/tumor/tumor_001.tif
    <root>/training/lesion_annotations/tumor_001.xml

Tissue is rendered in optical-density space, ``RGB = glass * exp(-(h * H + e * E))``
(Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 23:291, 2001), with per-slide stain
vectors and concentrations so that colour alone does not separate tumor from normal.
The rendered tumor region is exactly the rasterised annotation (lesions minus exclusions).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import tifffile
from shapely.geometry import Point, Polygon

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
KIND_CODES = {"normal": 0, "tumor": 1}
EXCLUSION_GROUP = "_2"  # CAMELYON16: tumor outlines are in _0 / _1, non-tumor holes in _2
TILE = 256
_LOW = 8  # level-0 pixels per cell of the low-resolution region maps
_BAND = 256  # rows composed at a time, so the float work stays in cache
_SHIFT = 3  # vertices are multiples of 1/8 px and rasterised exactly with cv2 shift=3
_REF_MPP = 0.25  # cell sizes below are in level-0 pixels at this resolution

# Reference optical-density vectors (R, G, B) of hematoxylin and eosin, nudged per slide.
# Fitted to the CAMELYON16 look-book: lymphocyte nuclei ~(75, 40, 85), lymphoid interstitium
# ~(220, 180, 200), tumor cytoplasm ~(205, 145, 175).
_H_REF = np.array([0.62, 0.71, 0.34])
_E_REF = np.array([0.17, 0.80, 0.55])


# ----------------------------------------------------------------------------- stain


@dataclass(frozen=True)
class _Stain:
    """Per-slide optical appearance."""

    h_vec: np.ndarray
    e_vec: np.ndarray
    h_scale: float
    e_scale: float
    glass: np.ndarray  # RGB of empty glass
    blur_sigma: float
    jpeg_quality: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Stain:
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


@dataclass(frozen=True)
class _Style:
    """Per-slide tissue phenotype: neither nuclear density nor colour alone gives the class away."""

    lymph_density: float  # chance that a lymphocyte grid cell is filled
    lymph_h: float  # hematoxylin of lymphocyte nuclei
    sinus_level: float  # threshold on the sinus noise: lower means more loose sinus tissue
    follicle_rate: float
    interstitium_e: float
    tumor_h: float  # hematoxylin of vesicular tumor nuclei
    tumor_dark: float  # fraction of hyperchromatic tumor nuclei
    tumor_cyto: tuple[float, float]  # (h, e) of tumor cytoplasm
    infiltrate: float  # chance of a lymphocyte grid cell inside a lesion

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Style:
        return cls(
            lymph_density=float(rng.uniform(0.72, 1.0)),
            lymph_h=float(rng.uniform(1.15, 1.7)),
            sinus_level=float(rng.uniform(0.7, 1.7)),
            follicle_rate=float(rng.uniform(0.5, 2.0)),
            interstitium_e=float(rng.uniform(0.22, 0.42)),
            tumor_h=float(rng.uniform(0.25, 0.5)),
            tumor_dark=float(rng.uniform(0.05, 0.45)),
            tumor_cyto=(float(rng.uniform(0.1, 0.2)), float(rng.uniform(0.45, 0.75))),
            infiltrate=float(rng.uniform(0.02, 0.15)),
        )


# ----------------------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit std (float32).

    Wide filters run on a coarser grid and are upsampled: same look, a fraction of the cost.
    """
    step = max(1.0, sigma / 3)
    coarse = (int(np.ceil(shape[0] / step)) + 2, int(np.ceil(shape[1] / step)) + 2)
    noise = rng.standard_normal(coarse, dtype=np.float32)
    if sigma > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
    if step > 1:
        noise = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    else:
        noise = noise[1 : shape[0] + 1, 1 : shape[1] + 1]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


class _Texture:
    """A seamless periodic noise tile repeated over the slide: cheap level-0 texture."""

    def __init__(self, rng: np.random.Generator, width: int, sigma: float, period: int = 1031):
        pad = int(3 * sigma) + 1
        tile = np.pad(rng.standard_normal((period, period), dtype=np.float32), pad, "wrap")
        if sigma > 0:
            tile = cv2.GaussianBlur(tile, (0, 0), sigma)
        tile = tile[pad:-pad, pad:-pad]
        tile = (tile - tile.mean()) / (tile.std() + 1e-6)
        self._wide = np.ascontiguousarray(np.tile(tile, (1, width // period + 2)))
        self._period, self._width = period, width
        self._dx, self._dy = (int(v) for v in rng.integers(period, size=2))

    def rows(self, y0: int, y1: int) -> np.ndarray:
        idx = (np.arange(y0, y1) + self._dy) % self._period
        return self._wide[idx, self._dx : self._dx + self._width]


def _upsample_rows(low: np.ndarray, y0: int, y1: int, width: int) -> np.ndarray:
    """Rows [y0, y1) of the bilinear level-0 upsampling of a low-resolution map."""
    r0 = max(y0 // _LOW - 1, 0)
    r1 = min(-(-y1 // _LOW) + 1, low.shape[0])
    block = cv2.resize(low[r0:r1], (low.shape[1] * _LOW, (r1 - r0) * _LOW), interpolation=cv2.INTER_LINEAR)
    return block[y0 - r0 * _LOW : y1 - r0 * _LOW, :width]


# ----------------------------------------------------------------------------- region maps


@dataclass
class _Maps:
    """Low-resolution (1/_LOW) maps of one slide; level-0 lengths are in pixels."""

    signed_dist: np.ndarray  # distance to the tissue outline, > 0 inside tissue
    stroma: np.ndarray  # capsule and trabeculae, 0..1
    cap_width: np.ndarray  # inputs of _stroma, to redo it at level 0
    ridge: np.ndarray
    ridge_gate: np.ndarray
    germinal: np.ndarray  # germinal centres of follicles, 0..1
    mantle: np.ndarray  # dense lymphocyte rim of follicles, 0..1
    sinus: np.ndarray  # loose sinus tissue with histiocytes, 0..1
    fibre: np.ndarray  # (n, n, 2) collagen direction a as (cos 2a, sin 2a), x right, y down
    stain_h: np.ndarray  # slow multiplicative stain variation
    stain_e: np.ndarray
    illumination: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.signed_dist.shape


def _low_coords(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (y, x) of the low-res cell centres, as cv2.resize(INTER_LINEAR) maps them."""
    c = np.arange(n, dtype=np.float32) * _LOW + (_LOW - 1) / 2
    return np.meshgrid(c, c, indexing="ij")


def _spread_centres(rng: np.random.Generator, count: int) -> list[tuple[float, float]]:
    """Island centres in relative units, kept apart so islands stay separate."""
    if count == 1:
        return [tuple(0.5 + rng.uniform(-0.06, 0.06, 2))]
    for _ in range(200):
        pts = rng.uniform(0.27, 0.73, (count, 2))
        gaps = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(count)
        if gaps.min() > 0.42:
            break
    return [tuple(p) for p in pts]


def _tissue_mask_low(rng: np.random.Generator, n: int) -> np.ndarray:
    """1-3 irregular tissue islands covering roughly 35-52% of the slide."""
    yy, xx = (c / (n * _LOW) for c in _low_coords(n))
    field = np.full((n, n), -10.0, np.float32)
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    target = rng.uniform(0.36, 0.52)
    for cy, cx in _spread_centres(rng, count):
        radius = np.sqrt(target / count / np.pi) * rng.uniform(0.85, 1.15)
        aspect, angle = rng.uniform(1.0, 1.7), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)
        theta = np.arctan2(v, u)
        m = np.arange(1, 7)[:, None, None]
        wobble = (
            rng.normal(0, 0.1, 6)[:, None, None]
            / m
            * np.cos(m * theta + rng.uniform(0, 2 * np.pi, 6)[:, None, None])
        ).sum(0)
        rho = np.hypot(u / np.sqrt(aspect), v * np.sqrt(aspect))
        field = np.maximum(field, 1 - rho / (radius * (1 + wobble)))
    field += 0.1 * _smooth_noise(rng, (n, n), n / 30) + 0.04 * _smooth_noise(rng, (n, n), n / 150)
    edge = np.minimum(np.minimum(yy, xx), np.minimum(1 - yy, 1 - xx))
    reach = np.hypot(yy - 0.5, xx - 0.5)  # islands round off towards the border, not along it
    field -= 2.5 * np.clip((reach - 0.4) / 0.12, 0, 1) ** 2 + 3 * np.clip((0.03 - edge) / 0.03, 0, 1)
    return (field > np.quantile(field, 1 - target)).astype(np.uint8)


def _follicles(rng: np.random.Generator, signed_dist: np.ndarray, zoom: float, rate: float):
    """Germinal centre and mantle weights of a few round follicles near the capsule."""
    yy, xx = _low_coords(signed_dist.shape[0])
    germinal = np.zeros(signed_dist.shape, np.float32)
    mantle = np.zeros_like(germinal)
    count = int(rng.poisson(rate * (1 + signed_dist.size * _LOW**2 / 12e6)))
    for _ in range(count):
        radius = rng.uniform(230, 420) * zoom
        ok = np.argwhere((signed_dist > radius * 0.9) & (signed_dist < radius * 2.5))
        if len(ok) == 0:
            continue
        cy, cx = ok[rng.integers(len(ok))] * _LOW
        d = np.hypot(yy - cy, (xx - cx) / rng.uniform(0.8, 1.25)) / radius
        germinal = np.maximum(germinal, np.clip((0.62 - d) / 0.12, 0, 1))
        mantle = np.maximum(mantle, np.clip((1.0 - d) / 0.15, 0, 1) - np.clip((0.7 - d) / 0.1, 0, 1))
    return germinal, np.clip(mantle, 0, 1)


def _region_maps(rng: np.random.Generator, size: int, zoom: float, style: _Style) -> _Maps:
    n = -(-size // _LOW)
    mask = _tissue_mask_low(rng, n)
    signed = (
        cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        - cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ) * _LOW
    signed = cv2.GaussianBlur(signed, (0, 0), 1.5)

    def noise(sigma_px: float) -> np.ndarray:  # smooth noise with a level-0 length scale
        return _smooth_noise(rng, (n, n), sigma_px / _LOW)

    cap_width = (rng.uniform(25, 70) * zoom * (1 + 0.35 * noise(600 * zoom))).astype(np.float32)
    ridge = noise(900 * zoom)
    gate = np.clip((noise(1200 * zoom) - 0.6) / 0.2, 0, 1)
    capsule, trabecula = _stroma(signed, cap_width, ridge, gate, zoom)
    stroma = np.maximum(capsule, trabecula)
    subcapsular = np.clip(1 - np.abs(signed - cap_width - 40 * zoom) / (30 * zoom), 0, 1)
    sinus = np.maximum(np.clip((noise(260 * zoom) - style.sinus_level) / 0.4, 0, 1), 0.7 * subcapsular)
    sinus = (sinus * (1 - stroma)).astype(np.float32)
    germinal, mantle = _follicles(rng, signed, zoom, style.follicle_rate)
    return _Maps(
        signed_dist=signed.astype(np.float32),
        stroma=stroma,
        germinal=germinal,
        mantle=mantle,
        sinus=sinus,
        cap_width=cap_width,
        ridge=ridge,
        ridge_gate=gate,
        fibre=_fibre_direction(rng, signed, capsule, ridge, trabecula),
        stain_h=(1 + 0.07 * noise(size / 5)).astype(np.float32),
        stain_e=(1 + 0.09 * noise(size / 5)).astype(np.float32),
        illumination=(1 + 0.006 * noise(size / 8)).astype(np.float32),
    )


def _stroma(signed, cap_width, ridge, gate, zoom) -> tuple[np.ndarray, np.ndarray]:
    """Capsule and trabecula weights (0..1); evaluated per level-0 band for smooth outlines."""
    inside = signed > 0
    capsule = np.clip((cap_width - signed) / (15 * zoom) + 0.5, 0, 1) * inside
    trabecula = np.clip(1 - np.abs(ridge) / 0.045, 0, 1) * gate * inside
    return capsule, trabecula


def _fibre_direction(rng, signed, capsule, ridge_field, trabecula) -> np.ndarray:
    """Collagen direction as (cos 2a, sin 2a): along the capsule and trabeculae, else drifting.

    Doubled angles make directions a and a + pi equal, so they average and interpolate.
    """

    def doubled(field: np.ndarray, weight: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(field)
        along = np.arctan2(gy, gx) + np.pi / 2
        return weight * np.exp(2j * along)

    n = signed.shape[0]
    drift = np.exp(2j * np.pi * _smooth_noise(rng, (n, n), n / 6))
    vec = doubled(signed, 4 * capsule) + doubled(ridge_field, 4 * trabecula) + 0.2 * drift
    vec = cv2.GaussianBlur(np.stack([vec.real, vec.imag], -1).astype(np.float32), (0, 0), 2)
    return vec / (np.linalg.norm(vec, axis=-1, keepdims=True) + 1e-6)


def _sample(low: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Nearest low-res value at level-0 points."""
    iy = np.clip((ys // _LOW).astype(np.intp), 0, low.shape[0] - 1)
    ix = np.clip((xs // _LOW).astype(np.intp), 0, low.shape[1] - 1)
    return low[iy, ix]


# ----------------------------------------------------------------------------- nuclei


@dataclass(frozen=True)
class _Sprites:
    """A library of pre-drawn nuclei: cover (0-255), hematoxylin and eosin (OD x 100)."""

    cover: np.ndarray  # (n, k, k) uint8, how much of the underlying stroma is hidden
    h: np.ndarray
    e: np.ndarray
    extent: np.ndarray  # (n,) radius of the drawn support, level-0 px


def _outline(rng, k: int, radius: float, aspect: float, roughness: float, angle: float):
    """Irregular ellipse on a k x k grid: antialiased alpha, depth (0 rim .. 1 centre), rho / r."""
    yy, xx = np.mgrid[0:k, 0:k].astype(np.float32) - (k - 1) / 2
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = yy * np.cos(angle) - xx * np.sin(angle)
    m = np.arange(2, 8)[:, None]
    table = np.linspace(-np.pi, np.pi, 721)  # the radius as a function of the polar angle
    wobble = (
        roughness * rng.normal(0, 1, (6, 1)) / m * np.cos(m * table + rng.uniform(0, 2 * np.pi, (6, 1)))
    ).sum(0)
    bins = np.rint((np.arctan2(v, u) + np.pi) * (720 / (2 * np.pi))).astype(np.intp)
    r = radius * np.clip(1 + wobble, 0.75, 1.25).astype(np.float32)[bins]
    rho = np.hypot(u / np.sqrt(aspect), v * np.sqrt(aspect))
    alpha = np.clip(r - rho + 0.5, 0, 1)
    return alpha, np.clip(1 - rho / r, 0, 1), rho / r


def _speckle(rng, k: int, sigma: float) -> np.ndarray:
    return _smooth_noise(rng, (k, k), sigma)


def _disc(k: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:k, 0:k]
    return np.clip(radius - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1).astype(np.float32)


def _lymphocyte(rng, k, zoom, angle, style):
    """Small round dark nucleus with clumped chromatin, sometimes a retraction halo."""
    radius = rng.uniform(10.0, 13.0) * zoom
    alpha, depth, rel = _outline(rng, k, radius, rng.uniform(1.0, 1.25), 0.14, angle)
    chrom = _speckle(rng, k, 1.0 * zoom)
    rim = np.exp(-((depth * radius / (2.0 * zoom)) ** 2))
    h = alpha * (style.lymph_h * rng.uniform(0.8, 1.15) * (0.8 + 0.22 * chrom) + 0.2 * rim)
    cover = alpha
    if rng.random() < 0.6:  # retraction artefact: a clear ring around the nucleus
        halo = np.clip((1 + rng.uniform(2, 5) * zoom / radius - rel) * radius, 0, 1)
        cover = np.maximum(alpha, rng.uniform(0.4, 0.75) * halo)
    return cover, h, 0.6 * alpha


def _tumor_cell(rng, k, zoom, angle, style):
    """Large pleomorphic vesicular nucleus: pale, dark membrane, coarse chromatin, nucleoli."""
    radius = rng.uniform(17, 27) * zoom
    alpha, depth, _ = _outline(rng, k, radius, rng.uniform(1.05, 1.5), rng.uniform(0.06, 0.22), angle)
    chrom = _speckle(rng, k, 1.4 * zoom)
    dark = rng.random() < style.tumor_dark  # some hyperchromatic nuclei
    base = rng.uniform(0.9, 1.25) if dark else style.tumor_h * rng.uniform(0.8, 1.2)
    rim = rng.uniform(0.5, 0.9) * np.exp(-((depth * radius / (2.3 * zoom)) ** 2))
    h = alpha * (base * (1 + 0.25 * chrom) + 0.45 * np.clip(chrom - 0.5, 0, None) + rim)
    e = (rng.uniform(0.55, 0.7) if dark else rng.uniform(0.3, 0.45)) * alpha
    inner = np.argwhere(depth > 0.4)
    for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
        cy, cx = inner[rng.integers(len(inner))]
        blob = _disc(k, cy, cx, rng.uniform(2.5, 4.5) * zoom) * alpha
        h, e = np.maximum(h, 1.3 * blob), e + 0.5 * blob
    return alpha, h, e


def _centroblast(rng, k, zoom, angle, style):
    """Germinal-centre blast: medium, round, vesicular, nucleoli on the membrane."""
    radius = rng.uniform(13, 17) * zoom
    alpha, depth, _ = _outline(rng, k, radius, rng.uniform(1.0, 1.25), 0.15, angle)
    chrom = _speckle(rng, k, 1.2 * zoom)
    rim = 0.6 * np.exp(-((depth * radius / (2.0 * zoom)) ** 2))
    h = alpha * (rng.uniform(0.55, 0.8) * (1 + 0.2 * chrom) + rim)
    rim_pts = np.argwhere((depth > 0.12) & (depth < 0.3))
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rim_pts[rng.integers(len(rim_pts))]
        h = np.maximum(h, 1.3 * _disc(k, cy, cx, 2.2 * zoom) * alpha)
    return alpha, h, 0.45 * alpha


def _histiocyte(rng, k, zoom, angle, style):
    """Sinus histiocyte: oval or bean-shaped, pale, fine chromatin."""
    radius = rng.uniform(12, 16) * zoom
    alpha, depth, _ = _outline(rng, k, radius, rng.uniform(1.3, 2.0), 0.3, angle)
    chrom = _speckle(rng, k, 1.0 * zoom)
    rim = 0.35 * np.exp(-((depth * radius / (1.8 * zoom)) ** 2))
    h = alpha * (rng.uniform(0.5, 0.7) * (1 + 0.2 * chrom) + rim)
    return alpha, h, 0.4 * alpha


def _spindle(rng, k, zoom, angle, style):
    """Fibroblast or endothelial nucleus: thin, elongated along the collagen."""
    radius = rng.uniform(8.5, 11) * zoom
    alpha, _, _ = _outline(rng, k, radius, rng.uniform(4, 8), 0.08, angle)
    chrom = _speckle(rng, k, 1.0 * zoom)
    h = alpha * rng.uniform(1.1, 1.5) * (0.9 + 0.1 * chrom)
    return alpha, h, 0.5 * alpha


_CELL_TYPES = {  # drawing function, sprite box (px at 0.25 um/px), grid cell of the placement
    "lymphocyte": (_lymphocyte, 46, 23),
    "tumor": (_tumor_cell, 96, 42),
    "centroblast": (_centroblast, 52, 44),
    "histiocyte": (_histiocyte, 60, 56),
    "spindle": (_spindle, 90, 46),
}
_ANGLE_BINS = 8  # spindle nuclei are drawn in this many orientations


def _sprite_bank(
    rng: np.random.Generator, cell_type: str, zoom: float, style: _Style, count: int = 48
) -> _Sprites:
    draw, box, _ = _CELL_TYPES[cell_type]
    k = int(np.ceil(box * zoom)) | 1
    layers = []
    for i in range(count):
        angle = (i % _ANGLE_BINS) * np.pi / _ANGLE_BINS if cell_type == "spindle" else rng.uniform(0, np.pi)
        layers.append(draw(rng, k, zoom, angle, style))
    cover, h, e = (np.stack([layer[j] for layer in layers]) for j in range(3))
    for i in range(count):  # nuclei above or below the focal plane: soft and paler
        if rng.random() < 0.35:
            sigma = rng.uniform(0.8, 2.2) * zoom
            fade = rng.uniform(0.65, 0.9)
            cover[i] = cv2.GaussianBlur(cover[i], (0, 0), sigma)
            h[i] = cv2.GaussianBlur(h[i], (0, 0), sigma) * fade
            e[i] = cv2.GaussianBlur(e[i], (0, 0), sigma)
    yy, xx = np.mgrid[0:k, 0:k] - (k - 1) / 2
    extent = np.array([np.hypot(yy, xx)[c > 0.02].max() for c in cover])
    q = lambda a, s: np.clip(np.rint(a * s), 0, 255).astype(np.uint8)  # noqa: E731
    return _Sprites(q(cover, 255), q(h, 100), q(e, 100), extent)


@dataclass
class _Canvas:
    """Level-0 nucleus layers (uint8, same scales as _Sprites)."""

    cover: np.ndarray
    h: np.ndarray
    e: np.ndarray

    @classmethod
    def empty(cls, size: int) -> _Canvas:
        return cls(*(np.zeros((size, size), np.uint8) for _ in range(3)))

    def stamp(self, sprites: _Sprites, ys: np.ndarray, xs: np.ndarray, ids: np.ndarray) -> None:
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


# ----------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _Outline:
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


def _star_polygon(rng: np.random.Generator, radius: float, n_vertices: int, roughness: float) -> np.ndarray:
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
    return np.rint(vertices * (1 << _SHIFT)) / (1 << _SHIFT)


def _place_lesions(
    rng: np.random.Generator, signed_dist: np.ndarray, size: int, zoom: float, with_exclusion: bool
) -> list[_Outline]:
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
        _Outline(f"Annotation {i}", "_1" if use_group_1 and rng.random() < 0.5 else "_0", role, vertices)
        for i, (role, vertices, _) in enumerate(placed)
    ]
    if with_exclusion:
        outlines.append(_exclusion(rng, outlines[0], placed[0][2], len(outlines)))
    return outlines


def _try_layout(rng, signed_dist, size, zoom, roles, large_scale):
    """[(role, vertices, centre)] with every promised lesion placed, or None."""
    margin = 48.0
    cells = np.argwhere(signed_dist > margin) * _LOW + (_LOW - 1) / 2  # candidate centres (y, x)
    room = signed_dist[signed_dist > margin]
    placed, reaches = [], []
    for role in roles:
        (lo, hi), (min_px, cap), (v_lo, v_hi) = _LESION_SIZES[role]
        radius = max(rng.uniform(lo, hi) * size, min(min_px, cap * size) * rng.uniform(1.0, 1.3))
        radius *= large_scale if role == "large" else 1.0
        while True:
            shape = _star_polygon(rng, radius, int(rng.integers(v_lo, v_hi)), rng.uniform(0.3, 0.65))
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


def _exclusion(
    rng: np.random.Generator, lesion: _Outline, centre: tuple[float, float], index: int
) -> _Outline:
    """A non-tumor hole strictly inside a lesion (CAMELYON16 group _2)."""
    host = Polygon(lesion.vertices)
    radius = rng.uniform(0.3, 0.42) * host.exterior.distance(Point(centre))
    for _ in range(20):
        vertices = _quantise(_star_polygon(rng, radius, int(rng.integers(30, 80)), 0.3) + centre)
        if host.buffer(-16).contains(Polygon(vertices)):
            return _Outline(f"Annotation {index}", "_2", "exclusion", vertices)
        radius *= 0.85
    raise RuntimeError(f"could not fit an exclusion inside {lesion.name}")


def _rasterise(outlines: Sequence[_Outline], size: int) -> np.ndarray:
    """Level-0 label image: 0 normal, i + 1 inside tumor outline i, exclusions cut out.

    Vertices are multiples of 1/8 px, so cv2's fixed-point fill (shift=3) uses them exactly.
    """
    labels = np.zeros((size, size), np.uint8)
    holes = [o for o in outlines if o.group == EXCLUSION_GROUP]
    for i, outline in enumerate(outlines):
        if outline.group != EXCLUSION_GROUP:
            cv2.fillPoly(labels, _fixed_point(outline), i + 1, cv2.LINE_8, _SHIFT)
    for outline in holes:
        cv2.fillPoly(labels, _fixed_point(outline), 0, cv2.LINE_8, _SHIFT)
    return labels


def _fixed_point(outline: _Outline) -> list[np.ndarray]:
    return [np.rint(outline.vertices * (1 << _SHIFT)).astype(np.int32)]


# ----------------------------------------------------------------------------- cells


def _keep(rng: np.random.Generator, prob: np.ndarray) -> np.ndarray:
    return rng.random(prob.shape) < prob


def _populate(
    rng: np.random.Generator,
    maps: _Maps,
    labels: np.ndarray,
    outlines: Sequence[_Outline],
    zoom: float,
    style: _Style,
) -> _Canvas:
    """Place every nucleus on a level-0 canvas: lymph node everywhere, tumor inside lesions."""
    size = labels.shape[0]
    canvas = _Canvas.empty(size)

    def candidates(cell_type: str):
        ys, xs = _grid_points(rng, size, _CELL_TYPES[cell_type][2] * zoom)
        in_tissue = _sample(maps.signed_dist, ys, xs) > 8 * zoom
        normal = (
            labels[np.clip(ys.astype(np.intp), 0, size - 1), np.clip(xs.astype(np.intp), 0, size - 1)] == 0
        )
        at = {
            name: _sample(getattr(maps, name), ys, xs) for name in ("stroma", "germinal", "mantle", "sinus")
        }
        return ys, xs, in_tissue, normal, at

    def place(cell_type: str, ys, xs, keep, ids=None):
        bank = _sprite_bank(rng, cell_type, zoom, style)
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
    along = 0.5 * np.arctan2(_sample(maps.fibre[..., 1], ys, xs), _sample(maps.fibre[..., 0], ys, xs))[keep]
    bins = np.rint(np.mod(along, np.pi) / (np.pi / _ANGLE_BINS)).astype(int) % _ANGLE_BINS
    per_bin = 48 // _ANGLE_BINS
    place("spindle", ys, xs, keep, bins + _ANGLE_BINS * rng.integers(per_bin, size=bins.size))

    _place_tumor_cells(rng, canvas, labels, outlines, zoom, style)
    return canvas


def _place_tumor_cells(
    rng, canvas: _Canvas, labels: np.ndarray, outlines: Sequence[_Outline], zoom: float, style: _Style
) -> None:
    """Tumor nuclei lie wholly inside their lesion; cell membranes follow their Voronoi cells."""
    bank = _sprite_bank(rng, "tumor", zoom, style)
    cell = _CELL_TYPES["tumor"][2] * zoom
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
    canvas: _Canvas, mine: np.ndarray, ys: np.ndarray, xs: np.ndarray, origin: tuple[int, int], cell: float
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


# ----------------------------------------------------------------------------- compose


class _Fibres:
    """Wavy collagen: anisotropic noise in four orientations, blended by the local direction."""

    def __init__(self, rng: np.random.Generator, width: int, zoom: float, period: int = 521):
        along, across = 18 * zoom, 1.7 * zoom
        half = int(3 * along)
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
        self._dirs = [(np.cos(2 * a), np.sin(2 * a)) for a in np.arange(4) * np.pi / 4]
        self._tiles = []
        for c2, s2 in self._dirs:
            angle = np.arctan2(s2, c2) / 2
            u = xx * np.cos(angle) + yy * np.sin(angle)
            v = yy * np.cos(angle) - xx * np.sin(angle)
            kernel = np.exp(-0.5 * ((u / along) ** 2 + (v / across) ** 2)).astype(np.float32)
            white = np.pad(rng.standard_normal((period, period), dtype=np.float32), half, "wrap")
            tile = cv2.filter2D(white, -1, kernel)[half:-half, half:-half]
            tile = (tile - tile.mean()) / tile.std()
            self._tiles.append(np.ascontiguousarray(np.tile(tile, (1, width // period + 2))[:, :width]))
        self._period, self._dy = period, int(rng.integers(period))

    def block(self, y0: int, y1: int, x0: int, x1: int, direction: np.ndarray) -> np.ndarray:
        """Fibre intensity (about unit std) of rows [y0, y1), columns [x0, x1)."""
        idx = (np.arange(y0, y1) + self._dy) % self._period
        total, norm = 0.0, 0.0
        for (c2, s2), tile in zip(self._dirs, self._tiles, strict=True):
            weight = np.maximum(direction[..., 0] * c2 + direction[..., 1] * s2, 0) ** 2
            total = total + weight * tile[idx, x0:x1]
            norm = norm + weight * weight
        return total / np.sqrt(norm + 1e-3)


def _runs(flags: np.ndarray, gap: int = 64) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a 1-D array, merging runs closer than ``gap``."""
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(idx) > gap)
    starts, ends = np.r_[idx[0], idx[cuts + 1]], np.r_[idx[cuts], idx[-1]] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _holes(rng: np.random.Generator, labels: np.ndarray, zoom: float) -> np.ndarray:
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
        shape = _star_polygon(rng, radius, 24, 1.2)
        if kind == "cleft":
            turn = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
            shape = (shape * [rng.uniform(1.2, 2.0), rng.uniform(0.4, 0.7)]) @ rot.T
        pts = np.rint((shape + centre) * (1 << _SHIFT)).astype(np.int32)[None]
        cv2.fillPoly(mask, pts, 1, cv2.LINE_8, _SHIFT)
    return mask


def _compose(
    rng: np.random.Generator,
    maps: _Maps,
    labels: np.ndarray,
    canvas: _Canvas,
    stain: _Stain,
    style: _Style,
    zoom: float,
) -> tuple[np.ndarray, float]:
    """Level-0 RGB from stain concentrations, band by band; returns (image, tissue fraction)."""
    size = labels.shape[0]
    tex = {
        name: _Texture(rng, size, sigma * zoom, period)
        for name, sigma, period in (
            ("grain", 1.3, 521),
            ("cloud", 7.0, 1031),
            ("edge", 3.0, 521),
            ("pixel", 0.0, 521),
        )
    }
    hole_mask = _holes(rng, labels, zoom)
    fibres = _Fibres(rng, size, zoom)
    n = maps.shape[0]
    eosin = (
        style.interstitium_e
        - 0.05 * maps.sinus
        + 0.04 * maps.germinal
        + 0.03 * _smooth_noise(rng, (n, n), 40)
    ).astype(np.float32)
    hema = (0.09 + 0.04 * maps.germinal + 0.02 * maps.sinus).astype(np.float32)
    h_vec = (stain.h_vec * stain.h_scale).astype(np.float32)
    e_vec = (stain.e_vec * stain.e_scale).astype(np.float32)
    glass = stain.glass.astype(np.float32)
    image = np.empty((size, size, 3), np.uint8)
    tissue_px = 0
    for y0 in range(0, size, _BAND):
        y1 = min(size, y0 + _BAND)

        up = partial(_upsample_rows, y0=y0, y1=y1, width=size)

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
        stroma = np.maximum(*_stroma(signed, up(maps.cap_width), up(maps.ridge), up(maps.ridge_gate), zoom))
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


def _add_debris(rng: np.random.Generator, image: np.ndarray, zoom: float) -> None:
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


# ----------------------------------------------------------------------------- files


class _AtomicPath:
    """A temporary sibling of ``path``, moved over it only when the block succeeds."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Level 0 and successive 2x downsamples until the smaller side is <= 512 (>= 3 levels)."""
    levels = [image]
    while min(levels[-1].shape[:2]) > 512 or len(levels) < 3:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA))
    return levels


def _write_tiff(path: Path, image: np.ndarray, mpp: float, quality: int) -> list[list[int]]:
    """Tiled JPEG pyramid, levels as successive main IFDs (OpenSlide generic TIFF)."""
    levels = _pyramid(image)
    with _AtomicPath(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
        for i, level in enumerate(levels):
            per_cm = 1e4 / (mpp * image.shape[1] / level.shape[1])
            tif.write(
                level,
                photometric="rgb",
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                metadata=None,
                software=False,
                maxworkers=1,
            )
    return [[lv.shape[1], lv.shape[0]] for lv in levels]


def _fmt(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def _asap_xml(outlines: Sequence[_Outline]) -> str:
    """ASAP annotation XML exactly as in CAMELYON16 (tabs, groups _0, _1, _2)."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for outline in outlines:
        lines += [
            f'\t\t<Annotation Name="{outline.name}" Type="Polygon" '
            f'PartOfGroup="{outline.group}" Color="#F4FA58">',
            "\t\t\t<Coordinates>",
        ]
        lines += [
            f'\t\t\t\t<Coordinate Order="{i}" X="{_fmt(x)}" Y="{_fmt(y)}" />'
            for i, (x, y) in enumerate(outline.vertices)
        ]
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for group, colour in (("_0", "#FF0000"), ("_1", "#FF0000"), ("_2", "#00FF00")):
        lines += [
            f'\t\t<Group Name="{group}" PartOfGroup="None" Color="{colour}">',
            "\t\t\t<Attributes />",
            "\t\t</Group>",
        ]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- public API


_MIN_SIZE = {"normal": 512, "tumor": 1024}  # a tumor slide needs room for two separate lesions


def _check_args(path, kind: str, size: int, mpp: float) -> None:
    if kind not in KIND_CODES:
        raise ValueError(f"{path}: kind must be one of {sorted(KIND_CODES)}, got {kind!r}")
    if size < _MIN_SIZE[kind] or mpp <= 0:
        raise ValueError(
            f"{path}: a {kind} slide needs size >= {_MIN_SIZE[kind]} and mpp > 0, got size={size}, mpp={mpp}"
        )


def generate_slide(
    path: str | Path,
    kind: str,
    size: int = 6144,
    mpp: float = 0.25,
    seed: int | Sequence[int] = 0,
    annotation_path: str | Path | None = None,
    with_exclusion: bool = False,
) -> dict:
    """Render one synthetic slide (and its ASAP XML for a tumor slide).

    Args:
        path: output ``.tif``; written atomically.
        kind: ``"normal"`` or ``"tumor"``.
        size: level-0 width and height in pixels.
        mpp: level-0 microns per pixel; cells keep their physical size.
        seed: anything ``np.random.default_rng`` accepts; the file depends only on it
            and on the other arguments.
        annotation_path: where to write the lesion XML (tumor slides only).
        with_exclusion: add a ``_2`` exclusion polygon inside the largest lesion.

    Returns:
        Metadata: level sizes, tissue fraction, tumor area and every outline with its
        group, role (large / medium / micro / exclusion), bbox and level-0 coordinates.
    """
    _check_args(path, kind, size, mpp)
    if kind == "normal" and (annotation_path is not None or with_exclusion):
        raise ValueError(f"{path}: normal slides have no lesions, hence no annotation or exclusion")
    rng = np.random.default_rng(seed)
    zoom = _REF_MPP / mpp
    stain, style = _Stain.sample(rng), _Style.sample(rng)
    maps = _region_maps(rng, size, zoom, style)
    outlines = _place_lesions(rng, maps.signed_dist, size, zoom, with_exclusion) if kind == "tumor" else []
    labels = _rasterise(outlines, size)
    canvas = _populate(rng, maps, labels, outlines, zoom, style)
    image, tissue_fraction = _compose(rng, maps, labels, canvas, stain, style, zoom)
    del canvas
    _add_debris(rng, image, zoom)
    levels = _write_tiff(Path(path), image, mpp, stain.jpeg_quality)
    if annotation_path is not None:
        with _AtomicPath(Path(annotation_path)) as tmp:
            tmp.write_text(_asap_xml(outlines), encoding="utf-8")
    return {
        "kind": kind,
        "size": size,
        "mpp": mpp,
        "levels": levels,
        "tissue_fraction": round(tissue_fraction, 4),
        "tumor_area_px": int(np.count_nonzero(labels)),
        "outlines": [o.to_dict() for o in outlines],
    }


@dataclass(frozen=True)
class _Job:
    path: Path
    kind: str
    seed: tuple[int, int, int]
    annotation: Path | None
    with_exclusion: bool


def _plan(root: Path, n_normal: int, n_tumor: int, seed: int) -> list[_Job]:
    """CAMELYON16 layout; each slide's seed is (seed, kind code, index)."""
    jobs = []
    for kind, count in (("normal", n_normal), ("tumor", n_tumor)):
        for index in range(1, count + 1):
            name = f"{kind}_{index:03d}"
            xml = root / "training" / "lesion_annotations" / f"{name}.xml" if kind == "tumor" else None
            jobs.append(
                _Job(
                    root / "training" / kind / f"{name}.tif",
                    kind,
                    (seed, KIND_CODES[kind], index),
                    xml,
                    kind == "tumor" and index == 1,
                )
            )
    return jobs


def _run_job(job: _Job, size: int, mpp: float) -> dict:
    log.info("rendering %s", job.path.name)
    return generate_slide(job.path, job.kind, size, mpp, job.seed, job.annotation, job.with_exclusion)


def _run_job_in_worker(job: _Job, size: int, mpp: float) -> dict:
    cv2.setNumThreads(1)  # one slide per process; the pool already fills the cores
    return _run_job(job, size, mpp)


def _read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not a readable synthetic-dataset record ({err}); "
            "pass overwrite=True (--overwrite) to regenerate"
        ) from err


def _write_manifest(path: Path, record: dict) -> None:
    text = json.dumps(record, indent=1) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with _AtomicPath(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _check_root(root: Path, params: dict, old: dict | None, jobs: list[_Job], overwrite: bool) -> None:
    """Refuse to mix slides of different parameters (or foreign files) unless overwriting."""
    manifest = root / MANIFEST
    if old is None:
        present = sorted(p for p in (root / "training").glob("*/*") if p.suffix in (".tif", ".xml"))
        if present and not overwrite:
            raise ValueError(
                f"{root}: holds slides ({present[0].name}, ...) but no {MANIFEST}; "
                "pass overwrite=True (--overwrite) to replace them or use another root"
            )
        return
    if old.get("params") == params:
        return
    changed = {
        k: (old.get("params", {}).get(k), v) for k, v in params.items() if old.get("params", {}).get(k) != v
    }
    if not overwrite:
        raise ValueError(
            f"{manifest}: dataset was generated with other parameters "
            f"(old, new): {changed}; pass overwrite=True (--overwrite) to regenerate "
            "or use another root"
        )
    keep = {job.path for job in jobs} | {job.annotation for job in jobs}
    for entry in old.get("slides", []):
        for rel in (entry.get("path"), entry.get("annotation")):
            if rel and (root / rel) not in keep:
                (root / rel).unlink(missing_ok=True)


def generate_dataset(
    root: str | Path,
    n_normal: int = 5,
    n_tumor: int = 5,
    size: int = 6144,
    mpp: float = 0.25,
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
) -> list[Path]:
    """Write a synthetic CAMELYON16-like training set under ``root``; return the slide paths.

    The parameters and per-slide metadata are recorded in ``<root>/synthetic.json``,
    updated after every slide. A rerun with the same parameters renders only what is
    missing, so an interrupted run resumes (files are written atomically: a present file
    is complete). Different parameters raise ``ValueError`` unless ``overwrite``, which
    regenerates every slide and deletes those of the old record that are no longer planned.
    A slide depends only on (seed, kind, index), size and mpp: not on ``workers`` or on the
    slide counts. ``workers > 1`` renders slides in "spawn" processes, so a calling script
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    if n_normal < 0 or n_tumor < 0 or n_normal + n_tumor == 0:
        raise ValueError(f"{root}: need some slides, got n_normal={n_normal}, n_tumor={n_tumor}")
    root = Path(root)
    for kind, count in (("normal", n_normal), ("tumor", n_tumor)):
        if count:
            _check_args(root, kind, size, mpp)
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_normal": n_normal,
        "n_tumor": n_tumor,
        "size": size,
        "mpp": mpp,
        "seed": seed,
    }
    jobs = _plan(root, n_normal, n_tumor, seed)
    old = _read_manifest(root / MANIFEST)
    _check_root(root, params, old, jobs, overwrite)
    for job in jobs:
        for path in (job.path, job.annotation):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
    same = old is not None and old.get("params") == params
    entries = {e["path"]: e for e in old.get("slides", [])} if same and not overwrite else {}

    def present(job: _Job) -> bool:
        files = [job.path] + ([job.annotation] if job.annotation else [])
        return _relative(job.path, root) in entries and all(p.exists() for p in files)

    todo = [job for job in jobs if not present(job)]
    log.info("%s: %d slides to render, %d already present", root, len(todo), len(jobs) - len(todo))

    def record(complete: bool) -> None:
        slides = [entries[rel] for rel in (_relative(j.path, root) for j in jobs) if rel in entries]
        _write_manifest(root / MANIFEST, {"params": params, "complete": complete, "slides": slides})

    def finished(job: _Job, meta: dict) -> None:
        entries[_relative(job.path, root)] = _manifest_entry(job, meta, root)
        record(complete=False)

    record(complete=not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_job_in_worker, job, size, mpp): job for job in todo}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for job in todo:
            finished(job, _run_job(job, size, mpp))
    record(complete=True)
    return [job.path for job in jobs]


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _manifest_entry(job: _Job, meta: dict, root: Path) -> dict:
    """Slide metadata for synthetic.json (outline coordinates stay in the XML)."""
    outlines = [{k: v for k, v in o.items() if k != "coordinates"} for o in meta["outlines"]]
    return {
        "path": _relative(job.path, root),
        "annotation": _relative(job.annotation, root) if job.annotation else None,
        "seed": list(job.seed),
        **{k: v for k, v in meta.items() if k != "outlines"},
        "outlines": outlines,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m vistumor.synthetic --root data/synthetic --workers 2``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--n-normal", type=int, default=5)
    parser.add_argument("--n-tumor", type=int, default=5)
    parser.add_argument("--size", type=int, default=6144, help="level-0 side in pixels")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 microns per pixel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--overwrite", action="store_true", help="regenerate even if slides with other parameters are present"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        generate_dataset(
            args.root,
            args.n_normal,
            args.n_tumor,
            args.size,
            args.mpp,
            args.seed,
            args.overwrite,
            args.workers,
        )
    except ValueError as err:  # a parameter clash: say what to do, without a traceback
        parser.exit(2, f"error: {err}\n")
    print(args.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
