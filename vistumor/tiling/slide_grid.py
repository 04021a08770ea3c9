"""One slide's grid: where its patches are, how much tissue and tumor each holds, its label.

Also checks that a tumor slide's annotation belongs to it: a lesion outline that lies
outside the slide, or over no tissue patch, would silently turn a tumor slide into normal
patches (e.g. another slide's XML, or coordinates at another level).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

from vistumor.errors import AnnotationError, SlideError
from vistumor.labels import AMBIGUOUS, CLASS_NAMES, NORMAL, TUMOR
from vistumor.tiling import qc
from vistumor.tiling.catalog import SlideRecord
from vistumor.tiling.grid import GridSpec, box_fractions, grid_coordinates, keep_tissue, label_tiles
from vistumor.tiling.params import GridParams, TilingParams
from vistumor.tiling.tissue import TissueParams, tissue_mask
from vistumor.wsi.annotations import TumorAnnotation, read_annotations
from vistumor.wsi.catalog import ANNOTATION_SUFFIXES
from vistumor.wsi.slide import Slide

log = logging.getLogger(__name__)


def grid_spec(slide: Slide, grid: GridParams) -> GridSpec:
    """Read level and level-0 footprint of this slide's patches."""
    stride = grid.stride or grid.patch_size
    if grid.target_mpp is not None:
        level, scale = slide.level_for_mpp(grid.target_mpp)
    else:
        if not 0 <= grid.level < slide.level_count:
            raise SlideError(
                f"tiling.grid.level={grid.level} does not exist (slide has {slide.level_count} levels)",
                slide.path,
            )
        level, scale = grid.level, 1.0
    downsample = slide.level_downsamples[level]
    read_size = int(round(grid.patch_size * scale))
    return GridSpec(
        level=level,
        read_size=read_size,
        size0=read_size * downsample,
        stride0=stride * scale * downsample,
    )


@dataclass
class TissueGrid:
    """The patches of a grid with enough tissue: the tissue mask (and the thumbnail it was
    found on, ``downsample`` level-0 px per pixel), the kept corners and their tissue fractions."""

    thumbnail: np.ndarray
    downsample: float
    mask: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    fraction: np.ndarray
    n_grid: int  # grid positions before the tissue filter


def tissue_grid(slide: Slide, spec: GridSpec, tissue: TissueParams, min_fraction: float) -> TissueGrid:
    """The grid ``spec`` over ``slide``, kept where a patch holds ``min_fraction`` tissue (the
    mask at a pixel of at most an eighth of a patch)."""
    thumb, downsample = slide.thumbnail(min(tissue.downsample, spec.size0 / 8))
    mask = tissue_mask(thumb, tissue)
    x0, y0 = grid_coordinates(*slide.dimensions, spec)
    fraction = box_fractions(mask, downsample, x0, y0, spec.size0)
    keep = keep_tissue(fraction, min_fraction)
    return TissueGrid(thumb, downsample, mask, x0[keep], y0[keep], fraction[keep], int(keep.size))


def tile_slide(record: SlideRecord, params: TilingParams) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Tissue tiles of one slide with their fractions and labels, facts, and a QC image."""
    with Slide(record.path, params.mpp, params.mpp_override) as slide:
        spec = grid_spec(slide, params.grid)
        width0, height0 = slide.dimensions
        if width0 < spec.size0 or height0 < spec.size0:
            raise SlideError(
                f"slide ({width0}x{height0} px) is smaller than one patch "
                f"({spec.size0:.0f} level-0 px)", record.path,
            )
        found = tissue_grid(slide, spec, params.tissue, params.grid.min_tissue_fraction)
        mpp = slide.mpp
    if not found.mask.any():
        raise SlideError("no tissue found (check tiling.tissue.min_saturation)", record.path)
    annotation = load_annotation(record, params)
    x0, y0, tissue_fraction = found.x0, found.y0, found.fraction
    tumor_fraction = annotation.tumor_fractions(x0, y0, spec.size0, spec.size0)
    if record.kind == CLASS_NAMES[TUMOR]:
        check_placement(record, annotation, (width0, height0), tumor_fraction)
    labels = label_tiles(tumor_fraction, params.labels.min_tumor_fraction)
    table = pd.DataFrame({
        "slide_id": record.slide_id, "slide_path": str(record.path), "kind": record.kind,
        "x0": x0, "y0": y0, "level": spec.level, "read_size": spec.read_size,
        "size0": spec.size0, "tissue_fraction": tissue_fraction.round(6),
        "tumor_fraction": tumor_fraction.round(6), "label": labels,
    })
    facts = {
        "width0": width0, "height0": height0, "mpp": mpp, "level": spec.level,
        "read_size": spec.read_size, "size0": spec.size0, "n_grid": found.n_grid,
        "n_tissue": len(x0), "n_tumor": int((labels == TUMOR).sum()),
        "n_normal": int((labels == NORMAL).sum()), "n_ambiguous": int((labels == AMBIGUOUS).sum()),
        "tissue_share": round(float(found.mask.mean()), 4),
    }
    picture = qc.draw_qc(found.thumbnail, found.downsample, found.mask, annotation, x0, y0, labels, spec.size0)
    return table, facts, picture


def load_annotation(record: SlideRecord, params: TilingParams) -> TumorAnnotation:
    """The slide's annotation; a tumor slide must have one, a normal slide may not."""
    if record.annotation is not None:
        return read_annotations(record.annotation, params.labels.annotation_groups)
    if record.kind == CLASS_NAMES[TUMOR]:
        where = record.annotation_dir or "the annotation folder (data.layout.annotation_dir)"
        names = "|".join(ANNOTATION_SUFFIXES)
        raise AnnotationError(
            f"tumor slide without its annotation (expected {where}/{record.slide_id}{{{names}}})",
            record.path,
        )
    return TumorAnnotation()


def check_placement(
    record: SlideRecord, annotation: TumorAnnotation, dimensions: tuple[int, int], tumor_fraction: np.ndarray,
) -> None:
    """Refuse a tumor annotation that holds no tumor, lies outside the slide, or covers no
    tissue patch; warn when it lies partly outside."""
    width0, height0 = dimensions
    if annotation.is_empty:
        raise AnnotationError(f"tumor slide '{record.slide_id}': its annotation holds no tumor region",
                              record.annotation)
    bounds = tuple(round(v) for v in annotation.geometry.bounds)
    where = (f"tumor annotation of '{record.slide_id}' spans x {bounds[0]}-{bounds[2]}, "
             f"y {bounds[1]}-{bounds[3]} on a {width0}x{height0} px slide")
    inside = annotation.geometry.intersection(shapely.box(0, 0, width0, height0)).area
    if inside <= 0:
        raise AnnotationError(f"{where}: it lies outside the slide (another slide's file, or another "
                              "level's coordinates?)", record.annotation)
    if not (tumor_fraction > 0).any():
        raise AnnotationError(f"{where}: it covers no tissue patch (check the tissue mask in qc/)",
                              record.annotation)
    if inside < annotation.area * (1 - 1e-9):
        log.warning("%s: %s: %.1f %% of it lies outside the slide", record.annotation, where,
                    100 * (1 - inside / annotation.area))
