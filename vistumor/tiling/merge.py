"""The global step of tiling: per-slide results -> status table + manifest.

The per-slide jobs (:mod:`vistumor.tiling.jobs`) may run in one process pool or as the
shards of a cluster array job; :func:`merge_manifest` then reads every slide's result, writes the
status table, balances and splits (:mod:`vistumor.tiling.sampling`) and writes the manifest
(:mod:`vistumor.tiling.manifest`). It is cheap, so changing sampling or split re-runs only this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from vistumor.errors import ManifestError
from vistumor.files import atomic_path
from vistumor.runner import DONE, FAILED, PENDING, SKIPPED, merge_records
from vistumor.tiling.catalog import SlideRecord
from vistumor.tiling.jobs import SlideStore, TilingJob
from vistumor.tiling.manifest import write_manifest
from vistumor.tiling.params import TilingParams
from vistumor.tiling.sampling import SamplingParams, SplitParams, sample_manifest

log = logging.getLogger(__name__)

STATUS_COLUMNS = [
    "slide_id", "kind", "status", "reason", "n_tissue", "n_tumor", "n_normal", "n_ambiguous",
    "seconds", "path", "annotation",
]


def write_status_table(
    out_dir: str | Path, statuses: Sequence[dict], name: str = "status.csv"
) -> Path:
    """One row per slide: done / skipped (done earlier) / failed (why) / pending."""
    path = Path(out_dir) / name
    table = pd.DataFrame(list(statuses)).reindex(columns=STATUS_COLUMNS)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def merge_manifest(
    records: Sequence[SlideRecord],
    params: TilingParams,
    sampling: SamplingParams,
    split: SplitParams,
    seed: int,
    out_dir: str | Path,
    statuses: Sequence[dict] | None = None,
    strict: bool = False,
    store_dir: str | Path | None = None,
) -> Path:
    """Build ``manifest.csv`` from the per-slide results of all ``records``.

    Args:
        statuses: this run's statuses where known (else read from disk).
        strict: refuse to write a manifest when any slide failed.
        store_dir: where the per-slide results are (default: ``out_dir``).
    """
    store = SlideStore(store_dir or out_dir)
    statuses = merge_records(records, TilingJob(params, store.root), store.root, statuses)
    write_status_table(out_dir, statuses)
    ok = [s for s in statuses if s["status"] in (DONE, SKIPPED) and s.get("params_hash") == params.hash]
    failed = [s for s in statuses if s["status"] == FAILED]
    stale = [s for s in statuses if s["status"] in (DONE, SKIPPED) and s not in ok]
    pending = [s for s in statuses if s["status"] == PENDING] + stale
    status_csv = Path(out_dir) / "status.csv"
    if pending:
        raise ManifestError(
            f"{len(pending)} slide(s) not tiled with these parameters yet "
            f"(e.g. {pending[0]['slide_id']}): run the remaining shards first",
            status_csv,
        )
    if strict and failed:
        raise ManifestError(f"{len(failed)} slide(s) failed and tiling.run.strict is set", status_csv)
    if not ok:
        raise ManifestError(f"all {len(statuses)} slide(s) failed; see the reasons", status_csv)
    tiles = pd.concat([store.read_tiles(s["slide_id"]) for s in ok], ignore_index=True)
    table = sample_manifest(tiles, sampling, split, seed)
    slides = {
        s["slide_id"]: {
            "path": s["path"], "checksum": s.get("checksum"), "kind": s["kind"],
            "annotation": s.get("annotation", ""), "annotation_checksum": s.get("annotation_checksum"),
            "split": _split_of(table, s["slide_id"]), "mpp": s.get("mpp"),
        }
        for s in ok
    }
    meta = {
        **manifest_spec(params, sampling, split, seed), "tiling_hash": params.hash,
        "slides": slides, "failed": {s["slide_id"]: s["reason"] for s in failed},
    }
    path = write_manifest(Path(out_dir) / "manifest.csv", table, meta)
    for s in failed:
        log.warning("not in the manifest: %s", s["reason"])
    return path


def manifest_spec(
    params: TilingParams, sampling: SamplingParams, split: SplitParams, seed: int
) -> dict:
    """Everything that decides a manifest's rows (see :data:`vistumor.tiling.manifest.SPEC_KEYS`)."""
    return {
        "tiling": params.as_dict(),
        "sampling": asdict(sampling),
        "split": {"mode": split.mode, "fractions": {k: float(v) for k, v in split.fractions.items()}},
        "seed": int(seed),
    }


def _split_of(table: pd.DataFrame, slide_id: str) -> str | None:
    splits = sorted(set(table.loc[table["slide_id"] == slide_id, "split"]))
    return ",".join(splits) if splits else None

