"""Lymph-node tissue of one slide: low-resolution region maps and the phenotype that shapes them.

The maps hold the tissue outline, capsule and trabeculae, follicles, sinuses, the collagen
direction and slow stain drift, on a grid of ``LOW`` level-0 pixels per cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vistumor.synthetic.noise import smooth_noise

LOW = 8  # level-0 pixels per cell of the low-resolution region maps


@dataclass(frozen=True)
class Style:
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
    def sample(cls, rng: np.random.Generator) -> Style:
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


@dataclass
class Maps:
    """Low-resolution (1/LOW) maps of one slide; level-0 lengths are in pixels."""

    signed_dist: np.ndarray  # distance to the tissue outline, > 0 inside tissue
    stroma: np.ndarray  # capsule and trabeculae, 0..1
    cap_width: np.ndarray  # inputs of stroma_weights, to redo it at level 0
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
    c = np.arange(n, dtype=np.float32) * LOW + (LOW - 1) / 2
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
    yy, xx = (c / (n * LOW) for c in _low_coords(n))
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
    field += 0.1 * smooth_noise(rng, (n, n), n / 30) + 0.04 * smooth_noise(rng, (n, n), n / 150)
    edge = np.minimum(np.minimum(yy, xx), np.minimum(1 - yy, 1 - xx))
    reach = np.hypot(yy - 0.5, xx - 0.5)  # islands round off towards the border, not along it
    field -= 2.5 * np.clip((reach - 0.4) / 0.12, 0, 1) ** 2 + 3 * np.clip((0.03 - edge) / 0.03, 0, 1)
    return (field > np.quantile(field, 1 - target)).astype(np.uint8)


def _follicles(rng: np.random.Generator, signed_dist: np.ndarray, zoom: float, rate: float):
    """Germinal centre and mantle weights of a few round follicles near the capsule."""
    yy, xx = _low_coords(signed_dist.shape[0])
    germinal = np.zeros(signed_dist.shape, np.float32)
    mantle = np.zeros_like(germinal)
    count = int(rng.poisson(rate * (1 + signed_dist.size * LOW**2 / 12e6)))
    for _ in range(count):
        radius = rng.uniform(230, 420) * zoom
        ok = np.argwhere((signed_dist > radius * 0.9) & (signed_dist < radius * 2.5))
        if len(ok) == 0:
            continue
        cy, cx = ok[rng.integers(len(ok))] * LOW
        d = np.hypot(yy - cy, (xx - cx) / rng.uniform(0.8, 1.25)) / radius
        germinal = np.maximum(germinal, np.clip((0.62 - d) / 0.12, 0, 1))
        mantle = np.maximum(mantle, np.clip((1.0 - d) / 0.15, 0, 1) - np.clip((0.7 - d) / 0.1, 0, 1))
    return germinal, np.clip(mantle, 0, 1)


def region_maps(rng: np.random.Generator, size: int, zoom: float, style: Style) -> Maps:
    """The maps of a ``size`` px square slide; ``zoom`` scales lengths given at 0.25 um/px."""
    n = -(-size // LOW)
    mask = _tissue_mask_low(rng, n)
    signed = (
        cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        - cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ) * LOW
    signed = cv2.GaussianBlur(signed, (0, 0), 1.5)

    def noise(sigma_px: float) -> np.ndarray:  # smooth noise with a level-0 length scale
        return smooth_noise(rng, (n, n), sigma_px / LOW)

    cap_width = (rng.uniform(25, 70) * zoom * (1 + 0.35 * noise(600 * zoom))).astype(np.float32)
    ridge = noise(900 * zoom)
    gate = np.clip((noise(1200 * zoom) - 0.6) / 0.2, 0, 1)
    capsule, trabecula = stroma_weights(signed, cap_width, ridge, gate, zoom)
    stroma = np.maximum(capsule, trabecula)
    subcapsular = np.clip(1 - np.abs(signed - cap_width - 40 * zoom) / (30 * zoom), 0, 1)
    sinus = np.maximum(np.clip((noise(260 * zoom) - style.sinus_level) / 0.4, 0, 1), 0.7 * subcapsular)
    sinus = (sinus * (1 - stroma)).astype(np.float32)
    germinal, mantle = _follicles(rng, signed, zoom, style.follicle_rate)
    return Maps(
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


def stroma_weights(signed, cap_width, ridge, gate, zoom) -> tuple[np.ndarray, np.ndarray]:
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
    drift = np.exp(2j * np.pi * smooth_noise(rng, (n, n), n / 6))
    vec = doubled(signed, 4 * capsule) + doubled(ridge_field, 4 * trabecula) + 0.2 * drift
    vec = cv2.GaussianBlur(np.stack([vec.real, vec.imag], -1).astype(np.float32), (0, 0), 2)
    return vec / (np.linalg.norm(vec, axis=-1, keepdims=True) + 1e-6)


def sample_low(low: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Nearest low-res value at level-0 points."""
    iy = np.clip((ys // LOW).astype(np.intp), 0, low.shape[0] - 1)
    ix = np.clip((xs // LOW).astype(np.intp), 0, low.shape[1] - 1)
    return low[iy, ix]


def upsample_rows(low: np.ndarray, y0: int, y1: int, width: int) -> np.ndarray:
    """Rows [y0, y1) of the bilinear level-0 upsampling of a low-resolution map."""
    r0 = max(y0 // LOW - 1, 0)
    r1 = min(-(-y1 // LOW) + 1, low.shape[0])
    block = cv2.resize(low[r0:r1], (low.shape[1] * LOW, (r1 - r0) * LOW), interpolation=cv2.INTER_LINEAR)
    return block[y0 - r0 * LOW : y1 - r0 * LOW, :width]
