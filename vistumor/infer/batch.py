"""Whole-slide inference over many slides, run by the shared runner (:mod:`vistumor.runner`).

As tiling: each slide is the unit of work. ``status/<slide>.json`` is written last, so its
presence means the slide is finished; a rerun into the same folder skips slides done with
the same checkpoints, settings and slide file; a slide that fails records why, leaves no
partial output, and the others go on. :func:`merge_tables` (cheap) writes ``status.csv`` and
each model's ``slides.csv`` from the per-slide records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vistumor.files import atomic_path, fingerprint, write_json
from vistumor.infer.inputs import SlideInput
from vistumor.infer.params import InferParams
from vistumor.infer.slide_run import OUTPUTS, ModelRun, run_slide
from vistumor.labels import name
from vistumor.runner import DONE, SKIPPED, RunSettings, SlideJob, merge_records, run_one, run_slides

log = logging.getLogger(__name__)

SLIDE_COLUMNS = ["slide", "score", "label", "patches", "seconds", "status", "lesions", "detections",
                 "largest_lesion_mm2", "reason"]
#: the work stage of infer's ``run.stage`` (besides ``all`` and ``merge``)
INFER_STAGE = "infer"


@dataclass
class InferJob(SlideJob[SlideInput]):
    """One slide through every model (:func:`~vistumor.infer.slide_run.run_slide`)."""

    models: Sequence[ModelRun]
    params: InferParams

    status_dir = "status"
    id_field = "slide"

    def describe(self, item: SlideInput) -> dict[str, Any]:
        return {"slide": item.slide_id, "path": str(item.path),
                "label": None if item.label is None else name(item.label),
                "annotation": str(item.annotation) if item.annotation else ""}

    def key(self, item: SlideInput) -> dict[str, Any]:
        """What a slide's outputs depend on."""
        return {"settings_hash": self.params.hash,
                "checkpoints": {m.name: m.fingerprint for m in self.models},
                "slide_checksum": fingerprint(item.path, "fast") if item.path.is_file() else None}

    def run(self, item: SlideInput) -> dict[str, Any]:
        checksum = fingerprint(item.path, "fast") if item.path.is_file() else None
        return {"models": run_slide(item, list(self.models), self.params, checksum)}

    def outputs(self, item: SlideInput) -> list[Path]:
        return [m.path(kind, item.slide_id, suffix) for m in self.models for kind, suffix in OUTPUTS]

    def complete(self, item: SlideInput, previous: dict) -> bool:
        """Every output the finished slide had (CAMs only where it made a map)."""
        facts = previous.get("models") or {}
        return all(m.path(k, item.slide_id, s).is_file() for m in self.models for k, s in OUTPUTS
                   if k != "cams" or facts.get(m.name, {}).get("map"))


def process(item: SlideInput, models: Sequence[ModelRun], params: InferParams, out: Path) -> dict:
    """Run one slide unless an earlier run did; never raises for a bad slide."""
    return run_one(item, InferJob(models, params), out)


def infer_slides(items: Sequence[SlideInput], models: Sequence[ModelRun], params: InferParams, out: Path,
                 settings: RunSettings | None = None) -> list[dict]:
    """This shard's slides in turn (the pass itself is parallel: reads in threads, the model batched)."""
    return run_slides(items, InferJob(models, params), settings or RunSettings(), out)


def merge_tables(items: Sequence[SlideInput], models: Sequence[ModelRun], out: Path,
                 records: Sequence[dict] | None = None, run_scale: bool = False) -> dict[str, Path]:
    """``status.csv`` (one row per slide) and each model's ``slides.csv``; with ``run_scale``
    (``cam.normalize=run``) each model's CAM sidecars also get the run's ``run_scale``."""
    rows = merge_records(items, InferJob(models, InferParams()), out, records)
    written = {"status": _write_csv(out / "status.csv", pd.DataFrame(
        [{k: r.get(k) for k in ("slide", "status", "reason", "seconds", "label", "path")} for r in rows]))}
    for m in models:
        table = pd.DataFrame([_model_row(r, m.name) for r in rows], columns=SLIDE_COLUMNS)
        written[m.name] = _write_csv(m.folder / "slides.csv", table)
        if run_scale:
            write_run_scale(m, rows)
    return written


def write_run_scale(m: ModelRun, records: Sequence[dict]) -> float:
    """The largest slide CAM ``scale`` of a model over the run's finished slides, written as
    ``run_scale`` into each of their CAM sidecars (one colour scale for every slide)."""
    facts = {r["slide"]: (r.get("models") or {}).get(m.name, {}) for r in records
             if r.get("status") in (DONE, SKIPPED)}
    mapped = [s for s, f in facts.items() if f.get("map")]
    scale = max((float(facts[s].get("cam_scale") or 0.0) for s in mapped), default=0.0)
    for slide in mapped:
        path = m.path("cams", slide, ".json")
        if path.is_file():
            write_json(path, {**json.loads(path.read_text()), "run_scale": scale})
    return scale


def _model_row(record: dict, model: str) -> dict:
    facts = (record.get("models") or {}).get(model, {})
    status = DONE if record.get("status") in (DONE, SKIPPED) else record.get("status")
    return {"slide": record["slide"], "label": record.get("label"), "status": status,
            "reason": record.get("reason", ""), **{k: facts.get(k) for k in SLIDE_COLUMNS if k in facts}}


def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
