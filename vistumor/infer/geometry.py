"""Where a slide's patches are, at the scale a checkpoint was trained on, and how to read them.

Everything is in level-0 pixels: a patch covers ``size0`` px, patches are ``stride0`` px
apart, and the probability heatmap has one cell per ``stride0 x stride0`` block from the
slide's origin. The pixels come from the coarsest pyramid level that is still at least as
fine as the model's input (a 512 px level-0 patch resized to 224 reads 256 px at level 1):
only the reading level changes, never where a patch is.

A slide scanned coarser than the model was trained (a 20x slide, 0.5 µm/px, for a model of
0.25 µm/px) has no level fine enough and is refused, unless ``read.upsample`` allows it:
then a patch is the same tissue read at level 0 in ``patch_size / factor`` px, resized up to
the model input like any other patch; the grid stays in level-0 px, and ``upsample``
(the factor) is recorded beside the heatmap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vistumor.config import build
from vistumor.errors import ConfigError, SlideError
from vistumor.tiling.grid import GridSpec
from vistumor.tiling.params import GridParams
from vistumor.tiling.slide_grid import grid_spec, tissue_grid
from vistumor.tiling.tissue import TissueParams
from vistumor.wsi.slide import Slide

log = logging.getLogger(__name__)


@dataclass
class SlideGrid:
    """One slide's tissue patches and how they are read.

    Attributes:
        width0, height0: level-0 slide size.
        size0, stride0: patch edge and patch spacing in level-0 px (``stride0`` is the cell size).
        x0, y0: level-0 top-left corners of the tissue patches, row-major.
        read_level, read_downsample: the level pixels are decoded at, and its downsample.
        read_size: patch edge in ``read_level`` px.
        mpp: microns per level-0 px (None when unknown).
        thumbnail, thumb_downsample, tissue: the tissue mask's image, scale and mask.
        upsample: how much finer the model's scale is than level 0 (1.0: not upsampled).
    """

    width0: int
    height0: int
    size0: float
    stride0: float
    x0: np.ndarray
    y0: np.ndarray
    read_level: int
    read_downsample: float
    read_size: int
    mpp: float | None
    thumbnail: np.ndarray
    thumb_downsample: float
    tissue: np.ndarray
    upsample: float = 1.0

    @property
    def cells(self) -> tuple[int, int]:
        """Heatmap shape ``(rows, cols)``: ``stride0`` cells covering the slide from its origin."""
        return math.ceil(self.height0 / self.stride0), math.ceil(self.width0 / self.stride0)

    @property
    def cell_um(self) -> float | None:
        return self.stride0 * self.mpp if self.mpp else None

    def __len__(self) -> int:
        return len(self.x0)


def plan_grid(
    slide: Slide, tiling: Mapping[str, Any], input_size: int, stride: int | None = None,
    min_tissue_fraction: float | None = None, read_level: int | str = "auto", upsample: bool = False,
) -> SlideGrid:
    """The tissue grid of ``slide`` for a model trained with manifest tiling ``tiling``.

    Args:
        tiling: the checkpoint's ``tiling`` (``grid``, ``tissue``): patch size, level or
            µm/px, tissue-mask parameters.
        input_size: the model's input edge (what a patch is resized to).
        stride: patch spacing in px at the patch's resolution; None = half a patch.
        min_tissue_fraction: keep patches with this much tissue; None = as in training.
        read_level: ``auto`` (coarsest level at least as fine as the input) or a level.
        upsample: read a slide coarser than the model's scale at level 0, upsampled.

    Raises:
        SlideError: a slide coarser than the model's scale (without ``upsample``).
        ConfigError: ``read_level`` beyond the slide's levels.
    """
    grid = trained_scale(slide, build(GridParams, {**tiling["grid"], "stride": None}, "checkpoint tiling.grid"),
                         tiling.get("trained_mpp"))
    tissue_params = build(TissueParams, tiling["tissue"], "checkpoint tiling.tissue")
    factor = upsample_factor(slide, grid, upsample)
    spec = upsampled_spec(grid, factor) if factor > 1 else grid_spec(slide, grid)
    stride0 = (stride if stride else grid.patch_size / 2) * spec.size0 / grid.patch_size
    spec = GridSpec(spec.level, spec.read_size, spec.size0, stride0)
    min_tissue = grid.min_tissue_fraction if min_tissue_fraction is None else min_tissue_fraction
    found = tissue_grid(slide, spec, tissue_params, min_tissue)
    level = reading_level(slide, spec.size0, input_size) if read_level == "auto" else int(read_level)
    if not 0 <= level < slide.level_count:
        raise ConfigError(f"infer.read.level={level} does not exist: the slide has {slide.level_count} "
                          f"levels (0-{slide.level_count - 1})", slide.path)
    downsample = slide.level_downsamples[level]
    width0, height0 = slide.dimensions
    return SlideGrid(
        width0=width0, height0=height0, size0=spec.size0, stride0=stride0, x0=found.x0, y0=found.y0,
        read_level=level, read_downsample=downsample, read_size=int(round(spec.size0 / downsample)),
        mpp=slide.mpp, thumbnail=found.thumbnail, thumb_downsample=found.downsample, tissue=found.mask,
        upsample=factor,
    )


def upsample_factor(slide: Slide, grid: GridParams, allowed: bool) -> float:
    """How much finer ``grid``'s µm/px is than the slide's level 0 (1.0 when level 0 is fine
    enough, as :meth:`Slide.level_for_mpp` allows: 1 %); refused unless ``allowed``."""
    if grid.target_mpp is None or slide.mpp is None or slide.mpp <= grid.target_mpp * 1.01:
        return 1.0
    factor = slide.mpp / grid.target_mpp
    if not allowed:
        raise SlideError(f"level 0 ({slide.mpp:.4f} um/px) is coarser than the model's {grid.target_mpp:.4f} "
                         f"um/px: set read.upsample=true to read it upsampled {factor:.2f}x", slide.path)
    log.warning("%s: %.4f um/px, the model was trained at %.4f: reading level 0 upsampled %.2fx "
                "(read.upsample=true)", slide.path.name, slide.mpp, grid.target_mpp, factor)
    return factor


def upsampled_spec(grid: GridParams, factor: float) -> GridSpec:
    """Patches of ``grid.patch_size`` px at the model's scale, read at level 0 in
    ``patch_size / factor`` px (the same tissue), to be resized up to the model input."""
    read_size = int(round(grid.patch_size / factor))
    return GridSpec(level=0, read_size=read_size, size0=float(read_size),
                    stride0=(grid.stride or grid.patch_size) / factor)


def trained_scale(slide: Slide, grid: GridParams, trained_mpp: float | None) -> GridParams:
    """A checkpoint tiled at level 0 read slides of ``trained_mpp`` µm/px; a slide of another
    scale is read at that µm/px instead (a 40x scanner's 512 px are not a 20x scanner's), so
    the model sees the scale it was trained on. Slides without µm/px keep the level."""
    mpp = slide.mpp
    if grid.target_mpp is not None or grid.level != 0 or not trained_mpp or not mpp:
        return grid
    if abs(mpp / trained_mpp - 1) <= 0.1:
        return grid
    log.info("%s: %.3f um/px, the model was trained at %.3f: reading patches at %.3f um/px",
             slide.path.name, mpp, trained_mpp, trained_mpp)
    return replace(grid, target_mpp=float(trained_mpp))


def reading_level(slide: Slide, size0: float, input_size: int) -> int:
    """The coarsest level whose pixels are still at least as fine as the model's input:
    downsample ``<= size0 / input_size`` (level 0 when none is coarser)."""
    limit = size0 / input_size * (1 + 1e-6)
    fine_enough = [lv for lv, ds in enumerate(slide.level_downsamples) if ds <= limit]
    return max(fine_enough) if fine_enough else 0


def cell_spans(grid: SlideGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per patch, the heatmap cells it covers: rows ``[r0, r1)`` and columns ``[c0, c1)``.

    A cell belongs to a patch when the cell's centre ``((c + .5) stride0, (r + .5) stride0)``
    lies inside the patch (the rule tiling uses for mask pixels).
    """
    def first(pos: np.ndarray) -> np.ndarray:
        return np.ceil(pos / grid.stride0 - 0.5 - 1e-9).astype(np.int64)

    return first(grid.y0), first(grid.y0 + grid.size0), first(grid.x0), first(grid.x0 + grid.size0)
