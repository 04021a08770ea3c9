"""Tiling slide by slide: the unit of work, resumable, parallel and shardable.

Each slide becomes, in a results folder (``tiling.slides_dir/<hash of the parameters>``,
shared by every config that tiles alike): ``slides/<id>.csv`` (its tissue tiles with
fractions and labels), ``slides/<id>.json`` (its status, written last, so its presence
means the slide is finished) and ``qc/<id>.png``. A rerun with the same parameters and an
unchanged slide skips it; a failed slide records why and is retried next time. The cheap
global step (:func:`vistumor.tiling.merge.merge`) turns these per-slide results into a manifest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vistumor.errors import AnnotationError, ConfigError, SlideError, VisTumorError
from vistumor.files import atomic_path, fingerprint, write_json
from vistumor.labels import AMBIGUOUS, NORMAL, TUMOR
from vistumor.tiling import qc
from vistumor.tiling.catalog import SlideRecord
from vistumor.tiling.grid import GridSpec, box_fractions, grid_coordinates, keep_tissue, label_tiles
from vistumor.tiling.params import GridParams, TilingParams
from vistumor.tiling.tissue import tissue_mask
from vistumor.wsi.annotations import TumorAnnotation, read_annotations
from vistumor.wsi.slide import Slide

log = logging.getLogger(__name__)

DONE, SKIPPED, FAILED, PENDING = "done", "skipped", "failed", "pending"
CHECKSUMS = ("fast", "full")
STAGES = ("all", "tile", "merge")


@dataclass(frozen=True)
class RunParams:
    """How the tiling work is run (config ``tiling.run``); never changes a tile.

    Attributes:
        workers: slides tiled in parallel processes.
        shard_index, num_shards: this job's share of the slide list (cluster array jobs).
        stage: ``all``, ``tile`` (this shard's slides only) or ``merge`` (the manifest only).
        strict: no manifest when any slide failed.
        progress: show a progress bar.
        checksum: ``fast`` or ``full`` slide fingerprints (:func:`vistumor.files.fingerprint`).
    """

    workers: int = 2
    shard_index: int = 0
    num_shards: int = 1
    stage: str = "all"
    strict: bool = False
    progress: bool = True
    checksum: str = "fast"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"tiling.run.stage must be all, tile or merge, got {self.stage!r}")
        if self.checksum not in CHECKSUMS:
            raise ConfigError(f"tiling.run.checksum must be one of {CHECKSUMS}, got {self.checksum!r}")


# -- one slide -------------------------------------------------------------------------------


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
        thumb, mask_ds = slide.thumbnail(min(params.tissue.downsample, spec.size0 / 8))
        mpp = slide.mpp
    tissue = tissue_mask(thumb, params.tissue)
    if not tissue.any():
        raise SlideError("no tissue found (check tiling.tissue.min_saturation)", record.path)
    annotation = _annotation(record, params)
    x0, y0 = grid_coordinates(width0, height0, spec)
    tissue_fraction = box_fractions(tissue, mask_ds, x0, y0, spec.size0)
    keep = keep_tissue(tissue_fraction, params.grid.min_tissue_fraction)
    x0, y0, tissue_fraction = x0[keep], y0[keep], tissue_fraction[keep]
    tumor_fraction = annotation.tumor_fractions(x0, y0, spec.size0, spec.size0)
    labels = label_tiles(tumor_fraction, params.labels.min_tumor_fraction)
    table = pd.DataFrame({
        "slide_id": record.slide_id, "slide_path": str(record.path), "kind": record.kind,
        "x0": x0, "y0": y0, "level": spec.level, "read_size": spec.read_size,
        "size0": spec.size0, "tissue_fraction": tissue_fraction.round(6),
        "tumor_fraction": tumor_fraction.round(6), "label": labels,
    })
    facts = {
        "width0": width0, "height0": height0, "mpp": mpp, "level": spec.level,
        "read_size": spec.read_size, "size0": spec.size0, "n_grid": int(keep.size),
        "n_tissue": int(keep.sum()), "n_tumor": int((labels == TUMOR).sum()),
        "n_normal": int((labels == NORMAL).sum()), "n_ambiguous": int((labels == AMBIGUOUS).sum()),
        "tissue_share": round(float(tissue.mean()), 4),
    }
    picture = qc.draw_qc(thumb, mask_ds, tissue, annotation, x0, y0, labels, spec.size0)
    return table, facts, picture


def _annotation(record: SlideRecord, params: TilingParams) -> TumorAnnotation:
    if record.annotation is not None:
        return read_annotations(record.annotation, params.labels.annotation_groups)
    if record.kind == "tumor":
        raise AnnotationError(
            "tumor slide without its annotation (expected <annotation_dir>/"
            f"{record.slide_id}.xml)", record.path,
        )
    return TumorAnnotation()


# -- the batch -------------------------------------------------------------------------------


class SlideStore:
    """Where per-slide results live under a tiling output folder."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)

    def tiles(self, slide_id: str) -> Path:
        return self.root / "slides" / f"{slide_id}.csv"

    def status(self, slide_id: str) -> Path:
        return self.root / "slides" / f"{slide_id}.json"

    def qc(self, slide_id: str) -> Path:
        return self.root / "qc" / f"{slide_id}.png"

    def read_status(self, record: SlideRecord) -> dict:
        path = self.status(record.slide_id)
        if not path.is_file():
            return _status(record, PENDING, reason="not tiled yet")
        return json.loads(path.read_text())

    def read_tiles(self, slide_id: str) -> pd.DataFrame:
        return pd.read_csv(self.tiles(slide_id), dtype={"slide_id": str})


def process_slide(
    record: SlideRecord, params: TilingParams, out_dir: str | Path, checksum_mode: str = "fast"
) -> dict:
    """Tile one slide unless an earlier run did; never raises for a bad slide.

    Args:
        checksum_mode: ``fast`` or ``full`` slide fingerprints (:func:`vistumor.files.fingerprint`).
    """
    store = SlideStore(out_dir)
    start = time.perf_counter()
    try:
        checksum = fingerprint(record.path, checksum_mode) if record.path.is_file() else None
        previous = store.read_status(record)
        if (
            previous.get("status") == DONE
            and previous.get("params_hash") == params.hash
            and previous.get("checksum") == checksum
            and store.tiles(record.slide_id).is_file()
        ):
            return {**previous, "status": SKIPPED, "reason": "already tiled with these parameters"}
            # (the file keeps saying "done": skipping is what this run did, not a new state)
        table, facts, picture = tile_slide(record, params)
        with atomic_path(store.tiles(record.slide_id)) as tmp:
            table.to_csv(tmp, index=False)
        qc.save_png(store.qc(record.slide_id), picture)
        status = _status(record, DONE, checksum=checksum, params_hash=params.hash, **facts)
    except VisTumorError as err:
        status = _status(record, FAILED, reason=str(err))
    except Exception as err:  # a crash in one slide must not stop the batch; it is recorded
        log.warning("unexpected error on %s", record.path, exc_info=True)
        status = _status(record, FAILED, reason=f"{record.path}: {type(err).__name__}: {err}")
    if status["status"] == FAILED:  # no tiles or picture of an earlier run beside a failure
        store.tiles(record.slide_id).unlink(missing_ok=True)
        store.qc(record.slide_id).unlink(missing_ok=True)
    status["seconds"] = round(time.perf_counter() - start, 3)
    write_json(store.status(record.slide_id), status)
    return status


def _status(record: SlideRecord, status: str, reason: str = "", **facts) -> dict:
    return {
        "slide_id": record.slide_id, "path": str(record.path), "kind": record.kind,
        "annotation": str(record.annotation) if record.annotation else "",
        "status": status, "reason": reason, **facts,
    }


def run_slides(
    records: Sequence[SlideRecord], params: TilingParams, out_dir: str | Path, workers: int = 1,
    progress: bool = True, checksum_mode: str = "fast",
) -> list[dict]:
    """Tile slides in ``workers`` processes; returns their statuses in input order."""
    out_dir = Path(out_dir)
    results: dict[str, dict] = {}
    bar = tqdm(total=len(records), desc="tiling", unit="slide", disable=not progress)
    if workers <= 1 or len(records) <= 1:
        for record in records:
            results[record.slide_id] = _report(process_slide(record, params, out_dir, checksum_mode), bar)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(process_slide, r, params, out_dir, checksum_mode) for r in records]
            for future in as_completed(futures):
                status = _report(future.result(), bar)
                results[status["slide_id"]] = status
    bar.close()
    return [results[r.slide_id] for r in records]


def _report(status: dict, bar: tqdm) -> dict:
    bar.update(1)
    if status["status"] == FAILED:
        log.warning("failed: %s", status["reason"])
    return status
