"""One slide through every model: the grid, the one pass, and all of its outputs.

Models whose checkpoints share a patch geometry share the reads: each batch of decoded
patches goes through every model of the group before the next is read.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vistumor.explain.methods import CANVAS_TITLES
from vistumor.files import fingerprint
from vistumor.infer.detections import nms_points, slide_score, write_detections
from vistumor.infer.engine import Scorer
from vistumor.infer.figures import summary_figure
from vistumor.infer.geometry import SlideGrid, cell_spans, plan_grid
from vistumor.infer.heatmap import ProbabilityMap, geometry, heatmap_figure, save_map
from vistumor.infer.inputs import SlideInput
from vistumor.infer.lesions import find_lesions, write_lesions
from vistumor.infer.params import InferParams
from vistumor.infer.reader import PatchStream
from vistumor.infer.stitch import CamCanvas, reduce_canvas, thumbnail_of
from vistumor.wsi.annotations import TumorAnnotation, read_annotations
from vistumor.wsi.slide import Slide, block_mean


@dataclass
class ModelRun:
    """A model taking part in a run: its name (folder), scorer, checkpoint and patch geometry."""

    name: str
    scorer: Scorer
    checkpoint: str
    tiling: dict
    input_size: int
    folder: Path
    manifest: str | None = None
    #: what a slide's outputs depend on: the checkpoint file's fingerprint, taken once
    #: (a scorer without a checkpoint file is keyed by the name given)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.fingerprint is None:
            self.fingerprint = fingerprint(self.checkpoint, "fast") if Path(self.checkpoint).is_file() \
                else self.checkpoint

    @property
    def annotation_groups(self) -> dict | None:
        """The annotation-group mapping the model's labels were made with (tiling's)."""
        return (self.tiling.get("labels") or {}).get("annotation_groups")

    @property
    def kind(self) -> str:
        """``mask`` for a segmentation model (its maps are masks), else ``gradcam++``."""
        return getattr(self.scorer, "kind", "gradcam++")

    def path(self, kind: str, slide_id: str, suffix: str) -> Path:
        return self.folder / kind / f"{slide_id}{suffix}"


OUTPUTS = (("heatmaps", ".npy"), ("heatmaps", ".json"), ("heatmaps", ".png"), ("cams", ".npy"),
           ("cams", ".json"), ("lesions", ".geojson"), ("lesions", ".xml"), ("detections", ".csv"),
           ("figures", ".png"))


def groups(models: list[ModelRun]) -> list[list[ModelRun]]:
    """Models that read the same patches (equal patch geometry), in order."""
    by_grid: dict[str, list[ModelRun]] = defaultdict(list)
    for m in models:
        geometry_key = {k: m.tiling.get(k) for k in ("grid", "tissue", "trained_mpp")}
        by_grid[json.dumps(geometry_key, sort_keys=True)].append(m)
    return list(by_grid.values())


def run_slide(item: SlideInput, models: list[ModelRun], params: InferParams,
              checksum: str | None = None) -> dict[str, Any]:
    """Every output of one slide for every model; returns per-model facts (score, lesions...).

    Args:
        checksum: the slide file's fingerprint, recorded in every sidecar.
    """
    annotation = {m.name: read_annotations(item.annotation, m.annotation_groups) if item.annotation else None
                  for m in models}
    facts: dict[str, Any] = {}
    for group in groups(models):
        start = time.perf_counter()
        with Slide(item.path, params.mpp, params.mpp_override) as slide:
            size = max(m.input_size for m in group)
            grid = plan_grid(slide, group[0].tiling, size, params.grid.stride,
                             params.grid.min_tissue_fraction, params.read.level, params.read.upsample)
        planned = time.perf_counter()
        results, stream = one_pass(item, grid, group, params)
        read_facts = {"patches": len(grid), "decoded_px": stream.decoded, "grid_px": grid_pixels(grid),
                      "read_level": grid.read_level, "pass_seconds": round(time.perf_counter() - planned, 3)}
        try:
            for m in group:
                outputs = write_outputs(item, grid, m, *results[m.name], params, annotation.get(m.name), checksum)
                facts[m.name] = {**outputs, **read_facts, "seconds": round(time.perf_counter() - start, 3)}
        finally:  # every model's canvas, even when another model's outputs failed
            for _, canvas in results.values():
                if canvas is not None:
                    canvas.close()
    return facts


def one_pass(item: SlideInput, grid: SlideGrid, group: list[ModelRun], params: InferParams):
    """Decode the grid once; every model scores every batch. Returns per model
    ``(probability map, cam canvas or None)`` and the stream (for its decode count)."""
    maps = {m.name: ProbabilityMap(grid) for m in group}
    for m in group:  # a scorer that pools the slide (MIL) starts each slide empty
        getattr(m.scorer, "reset", lambda: None)()
    canvases: dict[str, CamCanvas | None] = {m.name: None for m in group}
    stream = PatchStream(item.path, grid, params.batch_size,
                         params.read.block, params.read.threads)
    try:
        for indices, patches in stream:
            x0, y0 = grid.x0[indices], grid.y0[indices]
            for m in group:
                prob, cams = m.scorer(patches, x0, y0, grid.size0)
                maps[m.name].add(indices, prob)
                if cams is not None and params.cam.enabled:
                    if canvases[m.name] is None:
                        mask = m.kind == "mask"  # a mask: as fine already
                        canvases[m.name] = CamCanvas(grid, cams.shape[-1], 1 if mask else params.cam.px_per_cell,
                                                     m.path("cams", item.slide_id, ".npy"), weighted=not mask,
                                                     method=getattr(m.scorer, "method", "gradcam++"))
                    canvases[m.name].add(indices, prob, cams)
    except BaseException:
        for canvas in canvases.values():
            if canvas is not None:
                canvas.close()
        raise
    return {m.name: (maps[m.name], canvases[m.name]) for m in group}, stream


def grid_pixels(grid: SlideGrid) -> int:
    """Read-level pixels the tissue patches cover (their union), for the decode ratio."""
    rows, cols = grid.cells
    r0, r1, c0, c1 = (np.clip(s, 0, n) for s, n in zip(cell_spans(grid), (rows, rows, cols, cols), strict=True))
    starts = np.zeros((rows + 1, cols + 1), np.int32)  # a 2D difference array: +1/-1 at the corners
    np.add.at(starts, (r0, c0), 1)
    np.add.at(starts, (r0, c1), -1)
    np.add.at(starts, (r1, c0), -1)
    np.add.at(starts, (r1, c1), 1)
    covered = starts.cumsum(0).cumsum(1)[:rows, :cols] > 0
    return int(covered.sum() * (grid.stride0 / grid.read_downsample) ** 2)


def lesion_source(item: SlideInput, grid: SlideGrid, m: ModelRun, values: np.ndarray,
                  canvas: CamCanvas | None, params: InferParams) -> tuple[str, np.ndarray, float]:
    """The map lesions and detections come from: the probability heatmap, or (with
    ``lesions.source=mask`` and a segmentation model) its stitched mask at half a cell."""
    if params.lesions.source != "mask" or canvas is None or canvas.weighted:
        return "heatmap", values, grid.stride0
    factor = max(1, int(round(grid.stride0 / 2 / canvas.out_px0)))
    reduced, cell_px = reduce_canvas(m.path("cams", item.slide_id, ".npy"), factor)
    return "mask", reduced, cell_px


FIGURE_EDGE = 1024  # px: figures show the slide at most this large (a panel is ~350 px wide)


def figure_thumbnail(grid: SlideGrid) -> tuple[np.ndarray, float]:
    """The tissue-mask thumbnail reduced for figures, and its level-0 px per pixel: figures
    of a 100,000 px slide then cost megabytes, not the gigabyte of float overlays at 3,125 px."""
    image, ds = grid.thumbnail, grid.thumb_downsample
    factor = max(1, int(np.ceil(max(image.shape[:2]) / FIGURE_EDGE)))
    return block_mean(image, factor), ds * factor


def write_outputs(item: SlideInput, grid: SlideGrid, m: ModelRun, pmap: ProbabilityMap,
                  canvas: CamCanvas | None, params: InferParams, annotation: TumorAnnotation | None,
                  checksum: str | None = None) -> dict:
    """Heatmap (npy, json, png), stitched CAM, lesions (GeoJSON, XML), detections, figure."""
    if m.kind == "attention":  # a MIL model: its heatmap is attention (vistumor.infer.attention)
        from vistumor.infer.attention import write_attention_outputs
        return write_attention_outputs(item, grid, m, pmap, canvas, params, annotation, checksum)
    values = pmap.result()
    base = {"slide": item.slide_id, "slide_path": str(item.path), "slide_checksum": checksum,
            "model": m.name, "checkpoint": m.checkpoint,
            "input_size": m.input_size, "stride": params.grid.stride, **geometry(grid)}
    meaning = "tumor probability: mean of the patches covering the cell; NaN: no tissue patch"
    save_map(m.path("heatmaps", item.slide_id, ".npy"), values, {**base, "value": meaning})
    picture, picture_ds = figure_thumbnail(grid)
    heatmap_figure(m.path("heatmaps", item.slide_id, ".png"), picture, picture_ds, values,
                   grid.stride0, f"{item.slide_id}: {m.name}")
    cam, cam_px, scale = None, 1.0, 0.0
    if canvas is not None:
        meta = canvas.save(base)
        scale = meta["scale"]
        cam, cam_px = thumbnail_of(m.path("cams", item.slide_id, ".npy"), picture.shape[:2])
    source, lesion_map, lesion_px = lesion_source(item, grid, m, values, canvas, params)
    lesions = find_lesions(lesion_map, lesion_px, params.lesions.threshold, grid.mpp, params.lesions.min_cells)
    write_lesions(m.folder / "lesions", item.slide_id, lesions)
    d = params.detections
    radius = d.radius_um / grid.mpp if grid.mpp else d.radius_px
    points = nms_points(lesion_map, lesion_px, radius, d.min_prob)
    write_detections(m.path("detections", item.slide_id, ".csv"), points)
    summary_figure(m.path("figures", item.slide_id, ".png"), picture, picture_ds, values,
                   grid.stride0, cam, cam_px, scale, annotation, lesions, f"{item.slide_id}: {m.name}",
                   CANVAS_TITLES[params.cam.method])
    return {"score": slide_score(values, params.score.method, params.score.k), "lesions": len(lesions),
            "detections": len(points), "cam_scale": scale, "map": canvas is not None, "lesion_source": source,
            "largest_lesion_mm2": lesions[0].area_mm2 if lesions else 0.0}
