"""Tiling slide by slide: the unit of work, run by the shared runner (:mod:`vistumor.runner`).

Each slide becomes, in a results folder (``tiling.slides_dir/<hash of the parameters>``,
shared by every config that tiles alike): ``slides/<id>.csv`` (its tissue tiles with
fractions and labels), ``slides/<id>.json`` (its status, written last, so its presence
means the slide is finished) and ``qc/<id>.png``. A rerun with the same parameters and an
unchanged slide skips it; a failed slide records why and is retried next time. The cheap
global step (:func:`vistumor.tiling.merge.merge_manifest`) turns these results into a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vistumor.errors import ConfigError
from vistumor.files import atomic_path, fingerprint
from vistumor.runner import RunSettings, SlideJob, run_one, run_slides
from vistumor.tiling import qc
from vistumor.tiling.catalog import SlideRecord
from vistumor.tiling.params import TilingParams
from vistumor.tiling.slide_grid import tile_slide
from vistumor.tiling.verify import verify_tiles

CHECKSUMS = ("fast", "full")
#: the work stage of ``tiling.run.stage`` (besides ``all`` and ``merge``)
TILE_STAGE = "tile"


@dataclass(frozen=True)
class TilingChecks:
    """What tiling checks as it goes (config ``tiling.run``, beside the runner's
    :class:`~vistumor.runner.RunSettings`); never changes a tile.

    Attributes:
        checksum: ``fast`` or ``full`` slide fingerprints (:func:`vistumor.files.fingerprint`).
        verify: decode every candidate patch once (:mod:`vistumor.tiling.verify`).
    """

    checksum: str = "fast"
    verify: bool = True

    def __post_init__(self):
        if self.checksum not in CHECKSUMS:
            raise ConfigError(f"tiling.run.checksum must be one of {CHECKSUMS}, got {self.checksum!r}")


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

    def read_tiles(self, slide_id: str) -> pd.DataFrame:
        return pd.read_csv(self.tiles(slide_id), dtype={"slide_id": str})


@dataclass(frozen=True)
class TilingJob(SlideJob[SlideRecord]):
    """Tile one slide into ``out``: its tiles table, QC picture and record.

    A slide is current when it was done with the same parameters, slide and annotation
    checksums (and verified, when verification is on).
    """

    params: TilingParams
    out: Path
    checks: TilingChecks = TilingChecks()

    status_dir = "slides"
    id_field = "slide_id"
    skip_reason = "already tiled with these parameters"
    pending_reason = "not tiled yet"
    desc = "tiling"

    @property
    def store(self) -> SlideStore:
        return SlideStore(self.out)

    def describe(self, record: SlideRecord) -> dict[str, Any]:
        return {"slide_id": record.slide_id, "path": str(record.path), "kind": record.kind,
                "annotation": str(record.annotation) if record.annotation else ""}

    def key(self, record: SlideRecord) -> dict[str, str | None]:
        """What a slide's tiles depend on: the parameters, the slide file and its annotation file."""
        return {
            "params_hash": self.params.hash,
            "checksum": fingerprint(record.path, self.checks.checksum) if record.path.is_file() else None,
            "annotation_checksum": annotation_checksum(record.annotation),
        }

    def current(self, previous, key) -> bool:
        return super().current(previous, key) and (bool(previous.get("verified")) or not self.checks.verify)

    def outputs(self, record: SlideRecord) -> list[Path]:
        return [self.store.tiles(record.slide_id), self.store.qc(record.slide_id)]

    def complete(self, record: SlideRecord, previous) -> bool:
        return self.store.tiles(record.slide_id).is_file()

    def run(self, record: SlideRecord) -> dict[str, Any]:
        table, facts, picture = tile_slide(record, self.params)
        if self.checks.verify:
            facts["verified_px"] = verify_tiles(record.path, table)
        with atomic_path(self.store.tiles(record.slide_id)) as tmp:
            table.to_csv(tmp, index=False)
        qc.save_png(self.store.qc(record.slide_id), picture)
        return {"verified": self.checks.verify, **facts}


def annotation_checksum(path: Path | None) -> str | None:
    """Every byte of an annotation file (they are small): an edit re-tiles the slide."""
    return fingerprint(path, "full") if path is not None and path.is_file() else None


def process_slide(record: SlideRecord, params: TilingParams, out_dir: str | Path,
                  checks: TilingChecks = TilingChecks()) -> dict:
    """Tile one slide unless an earlier run did; never raises for a bad slide."""
    return run_one(record, TilingJob(params, Path(out_dir), checks), out_dir)


def tile_slides(records: list[SlideRecord], params: TilingParams, out_dir: str | Path,
                settings: RunSettings | None = None, checks: TilingChecks = TilingChecks()) -> list[dict]:
    """Tile this shard's slides in ``settings.workers`` processes; their records in input order."""
    return run_slides(records, TilingJob(params, Path(out_dir), checks), settings or RunSettings(), out_dir)
