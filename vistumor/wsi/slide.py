"""Whole-slide images through OpenSlide, in one coordinate convention.

Every position is level-0 ``(x0, y0)``; every size names its level. Pixels come back as
``uint8`` RGB arrays of shape ``(height, width, 3)``: OpenSlide's RGBA is composited on
white, so transparent areas outside the scanned region read as background.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import openslide
from openslide import OpenSlideError

from vistumor.errors import ConfigError, SlideError

log = logging.getLogger(__name__)

#: file suffixes OpenSlide reads (a folder is searched for these)
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".dcm")
#: when ``data.mpp`` applies: to slides that lack the property (default), or to all
MPP_OVERRIDES = ("missing", "all")
# Largest region read in one call when building a thumbnail: bounded memory on any slide.
_CHUNK = 4096


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA uint8 image on white (OpenSlide's alpha is not premultiplied).

    Opaque regions, the usual case, take OpenCV's channel drop (~40x faster than slicing
    and copying in numpy); only transparent areas pay for the blend.
    """
    rgba = np.ascontiguousarray(rgba)
    alpha_min, _, _, _ = cv2.minMaxLoc(cv2.extractChannel(rgba, 3))
    if alpha_min == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    a = rgba[..., 3:4].astype(np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class Slide:
    """A whole-slide image opened read-only.

    Args:
        path: slide file (any format OpenSlide reads: TIFF, SVS, NDPI, MRXS, ...).
        mpp: microns per level-0 pixel for slides whose scanner did not record it.
        mpp_override: ``missing`` (default): ``mpp`` applies only when the slide records no
            value; ``all``: ``mpp`` replaces the recorded value too (with a warning when
            they differ).
    """

    def __init__(self, path: str | Path, mpp: float | None = None, mpp_override: str = "missing"):
        self.path = Path(path)
        check_mpp_override(mpp_override)
        if not self.path.is_file():
            raise SlideError("slide file not found", self.path)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except OpenSlideError as err:
            raise SlideError(f"not a slide OpenSlide can read ({err})", self.path) from err
        self._mpp = self._resolve_mpp(mpp, mpp_override)

    # -- geometry ---------------------------------------------------------------------------

    @property
    def slide_id(self) -> str:
        return self.path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self._osr.dimensions

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._osr.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._osr.level_downsamples

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    @property
    def recorded_mpp(self) -> float | None:
        """The slide's own microns per level-0 pixel (``openslide.mpp-x``), if valid."""
        value = self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            mpp = float(value) if value is not None else None
        except ValueError:
            mpp = None
        return mpp if mpp and mpp > 0 else None

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel in use: recorded, or ``data.mpp`` as configured."""
        return self._mpp

    def _resolve_mpp(self, configured: float | None, override: str) -> float | None:
        recorded = self.recorded_mpp
        if configured is None:
            return recorded
        configured = float(configured)
        if recorded is None:
            return configured
        if override == "all":
            if abs(recorded - configured) > 1e-6 * recorded:
                log.warning("%s: data.mpp=%g replaces the recorded %g um/px (data.mpp_override=all)",
                            self.path, configured, recorded)
            return configured
        return recorded

    def require_mpp(self) -> float:
        mpp = self.mpp
        if mpp is None:
            raise SlideError(
                "no microns-per-pixel in the slide properties (openslide.mpp-x); "
                "set data.mpp to override it, or tile by level instead of target_mpp",
                self.path,
            )
        return mpp

    def level_for_mpp(self, target_mpp: float) -> tuple[int, float]:
        """The coarsest level at least as fine as ``target_mpp``, and the read scale.

        Returns:
            ``(level, scale)`` where ``scale = target_mpp / level_mpp`` (>= 1): a patch of
            ``n`` pixels at ``target_mpp`` is read as ``round(n * scale)`` pixels at ``level``.
        """
        mpp = self.require_mpp()
        candidates = [
            (level, mpp * ds)
            for level, ds in enumerate(self.level_downsamples)
            if mpp * ds <= target_mpp * 1.01
        ]
        if not candidates:
            raise SlideError(
                f"target_mpp={target_mpp} is finer than level 0 ({mpp:.4f} um/px)", self.path
            )
        level, level_mpp = candidates[-1]
        return level, target_mpp / level_mpp

    # -- pixels -----------------------------------------------------------------------------

    def read_region(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of a ``width x height`` box at ``level`` whose top-left is level-0 ``(x0, y0)``."""
        if not 0 <= level < self.level_count:
            raise SlideError(f"level {level} does not exist (slide has {self.level_count})", self.path)
        try:
            region = self._osr.read_region((int(x0), int(y0)), level, (int(width), int(height)))
        except OpenSlideError as err:
            raise SlideError(
                f"cannot read {width}x{height} px at level {level}, (x0, y0)=({x0}, {y0}): {err}",
                self.path,
            ) from err
        return rgba_to_rgb(np.asarray(region))

    def thumbnail(self, downsample: float) -> tuple[np.ndarray, float]:
        """The whole slide at about ``downsample`` level-0 pixels per output pixel.

        Reads the coarsest level no coarser than ``downsample`` in bounded chunks and
        block-averages it by an integer factor, so no full-resolution level is ever held.

        Returns:
            ``(rgb, actual_downsample)``; the image covers ``floor(width0 / actual)`` columns.
        """
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        level = self._osr.get_best_level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        factor = max(1, int(round(downsample / level_ds)))
        width, height = self.level_dimensions[level]
        out_w, out_h = width // factor, height // factor
        if out_w < 1 or out_h < 1:
            raise SlideError(
                f"slide is smaller than one thumbnail pixel at downsample {downsample}", self.path
            )
        out = np.empty((out_h, out_w, 3), np.uint8)
        step = max(factor, (_CHUNK // factor) * factor)  # chunk edge, a multiple of factor
        for ly in range(0, out_h * factor, step):
            for lx in range(0, out_w * factor, step):
                cw = min(step, out_w * factor - lx)
                ch = min(step, out_h * factor - ly)
                x0, y0 = int(lx * level_ds), int(ly * level_ds)
                chunk = self.read_region(x0, y0, level, cw, ch)
                out[ly // factor : (ly + ch) // factor, lx // factor : (lx + cw) // factor] = (
                    block_mean(chunk, factor)
                )
        return out, level_ds * factor

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp})"


def check_mpp_override(value: str) -> None:
    """Refuse an unknown ``data.mpp_override``."""
    if value not in MPP_OVERRIDES:
        raise ConfigError(f"data.mpp_override must be one of {MPP_OVERRIDES}, got {value!r}")


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks (exact area downsampling by an integer, halves
    rounded up): OpenCV's area filter takes this integer path, ~100x numpy's mean."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)

