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

import pandas as pd
from tqdm import tqdm

from vistumor.errors import ConfigError, VisTumorError
from vistumor.files import atomic_path, exclusive, fingerprint, remove_temporaries, write_json
from vistumor.tiling import qc
from vistumor.tiling.catalog import SlideRecord
from vistumor.tiling.params import TilingParams
from vistumor.tiling.slide_grid import tile_slide
from vistumor.tiling.verify import verify_tiles

log = logging.getLogger(__name__)

DONE, SKIPPED, FAILED, PENDING = "done", "skipped", "failed", "pending"
ENDINGS = (DONE, SKIPPED, FAILED)  # what a slide of a batch ends as
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
        verify: decode every candidate patch once (:mod:`vistumor.tiling.verify`).
    """

    workers: int = 2
    shard_index: int = 0
    num_shards: int = 1
    stage: str = "all"
    strict: bool = False
    progress: bool = True
    checksum: str = "fast"
    verify: bool = True

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"tiling.run.stage must be all, tile or merge, got {self.stage!r}")
        if self.checksum not in CHECKSUMS:
            raise ConfigError(f"tiling.run.checksum must be one of {CHECKSUMS}, got {self.checksum!r}")


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

    def lock(self, slide_id: str) -> Path:
        return self.root / "locks" / f"{slide_id}.lock"

    def read_status(self, record: SlideRecord) -> dict:
        path = self.status(record.slide_id)
        if not path.is_file():
            return _status(record, PENDING, reason="not tiled yet")
        return json.loads(path.read_text())

    def read_tiles(self, slide_id: str) -> pd.DataFrame:
        return pd.read_csv(self.tiles(slide_id), dtype={"slide_id": str})


def process_slide(record: SlideRecord, params: TilingParams, out_dir: str | Path, run: RunParams) -> dict:
    """Tile one slide unless an earlier run did; never raises for a bad slide.

    A slide is skipped only when it was done with the same parameters, slide and annotation
    checksums (and verified, when verification is on). Two runs on one folder take turns
    per slide: the second waits for the first and then skips.
    """
    store = SlideStore(out_dir)
    start = time.perf_counter()
    with exclusive(store.lock(record.slide_id)):
        for path in (store.tiles(record.slide_id), store.status(record.slide_id), store.qc(record.slide_id)):
            remove_temporaries(path)  # left by a run killed mid-write
        status = _tile_or_skip(record, params, store, run)
        if status["status"] == FAILED:  # no tiles or picture of an earlier run beside a failure
            store.tiles(record.slide_id).unlink(missing_ok=True)
            store.qc(record.slide_id).unlink(missing_ok=True)
        if status["status"] != SKIPPED:  # (a skipped slide's file keeps saying "done")
            status["seconds"] = round(time.perf_counter() - start, 3)
            write_json(store.status(record.slide_id), status)
    return status


def _tile_or_skip(record: SlideRecord, params: TilingParams, store: SlideStore, run: RunParams) -> dict:
    try:
        key = slide_key(record, params, run.checksum)
        previous = store.read_status(record)
        if (previous.get("status") == DONE and all(previous.get(k) == v for k, v in key.items())
                and (previous.get("verified") or not run.verify) and store.tiles(record.slide_id).is_file()):
            return {**previous, "status": SKIPPED, "reason": "already tiled with these parameters"}
        table, facts, picture = tile_slide(record, params)
        if run.verify:
            facts["verified_px"] = verify_tiles(record.path, table)
        with atomic_path(store.tiles(record.slide_id)) as tmp:
            table.to_csv(tmp, index=False)
        qc.save_png(store.qc(record.slide_id), picture)
        return _status(record, DONE, **key, verified=run.verify, **facts)
    except VisTumorError as err:
        return _status(record, FAILED, reason=str(err))
    except Exception as err:  # a crash in one slide must not stop the batch; it is recorded
        log.warning("unexpected error on %s", record.path, exc_info=True)
        return _status(record, FAILED, reason=f"{record.path}: {type(err).__name__}: {err}")


def slide_key(record: SlideRecord, params: TilingParams, checksum_mode: str) -> dict[str, str | None]:
    """What a slide's tiles depend on: the parameters, the slide file and its annotation file."""
    return {
        "params_hash": params.hash,
        "checksum": fingerprint(record.path, checksum_mode) if record.path.is_file() else None,
        "annotation_checksum": annotation_checksum(record.annotation),
    }


def annotation_checksum(path: Path | None) -> str | None:
    """Every byte of an annotation file (they are small): an edit re-tiles the slide."""
    return fingerprint(path, "full") if path is not None and path.is_file() else None


def _status(record: SlideRecord, status: str, reason: str = "", **facts) -> dict:
    return {
        "slide_id": record.slide_id, "path": str(record.path), "kind": record.kind,
        "annotation": str(record.annotation) if record.annotation else "",
        "status": status, "reason": reason, **facts,
    }


def run_slides(
    records: Sequence[SlideRecord], params: TilingParams, out_dir: str | Path, run: RunParams | None = None,
) -> list[dict]:
    """Tile slides in ``run.workers`` processes; returns their statuses in input order."""
    run = run or RunParams()
    out_dir = Path(out_dir)
    results: dict[str, dict] = {}
    bar = tqdm(total=len(records), desc="tiling", unit="slide", disable=not run.progress)
    if run.workers <= 1 or len(records) <= 1:
        for record in records:
            results[record.slide_id] = _report(process_slide(record, params, out_dir, run), bar)
    else:
        with ProcessPoolExecutor(max_workers=run.workers) as pool:
            futures = [pool.submit(process_slide, r, params, out_dir, run) for r in records]
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
