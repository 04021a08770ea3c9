"""Whole-slide inference over many slides: status table, resume, locks, shards, merge.

As tiling: each slide is the unit of work. ``status/<slide>.json`` is written last, so its
presence means the slide is finished; a rerun into the same folder skips slides done with
the same checkpoints, settings and slide file; a slide that fails records why, leaves no
partial output, and the others go on. ``merge`` (cheap) writes ``status.csv`` and each
model's ``slides.csv`` from the per-slide records.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from vistumor.errors import VisTumorError
from vistumor.files import atomic_path, exclusive, fingerprint, remove_temporaries, write_json
from vistumor.infer.inputs import SlideInput
from vistumor.infer.params import InferParams
from vistumor.infer.slide_run import OUTPUTS, ModelRun, run_slide
from vistumor.labels import name
from vistumor.tiling.jobs import DONE, FAILED, SKIPPED

log = logging.getLogger(__name__)

SLIDE_COLUMNS = ["slide", "score", "label", "patches", "seconds", "status", "lesions", "detections",
                 "largest_lesion_mm2", "reason"]


def slide_key(item: SlideInput, models: Sequence[ModelRun], params: InferParams) -> dict[str, Any]:
    """What a slide's outputs depend on."""
    return {"settings_hash": params.hash,
            "checkpoints": {m.name: m.fingerprint for m in models},
            "slide_checksum": fingerprint(item.path, "fast") if item.path.is_file() else None}


def process(item: SlideInput, models: Sequence[ModelRun], params: InferParams, out: Path) -> dict:
    """Run one slide unless an earlier run did; never raises for a bad slide."""
    status_path = out / "status" / f"{item.slide_id}.json"
    with exclusive(out / "locks" / f"{item.slide_id}.lock"):
        for m in models:
            for kind, suffix in OUTPUTS:
                remove_temporaries(m.path(kind, item.slide_id, suffix))
        start = time.perf_counter()
        record = {"slide": item.slide_id, "path": str(item.path),
                  "label": None if item.label is None else name(item.label),
                  "annotation": str(item.annotation) if item.annotation else ""}
        try:
            key = slide_key(item, models, params)
            previous = json.loads(status_path.read_text()) if status_path.is_file() else {}
            if previous.get("status") == DONE and all(previous.get(k) == v for k, v in key.items()) \
                    and _outputs_exist(item, models, previous):
                return {**previous, "status": SKIPPED, "reason": "already done with these settings"}
            facts = run_slide(item, list(models), params, key["slide_checksum"])
            record.update(key, status=DONE, reason="", models=facts)
        except VisTumorError as err:
            record.update(status=FAILED, reason=str(err))
        except Exception as err:  # one slide's crash must not stop the batch: recorded
            log.warning("unexpected error on %s", item.path, exc_info=True)
            record.update(status=FAILED, reason=f"{item.path}: {type(err).__name__}: {err}")
        if record["status"] == FAILED:
            _remove_outputs(item, models)
        record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(status_path, record)
        return record


def _outputs_exist(item: SlideInput, models: Sequence[ModelRun], previous: dict) -> bool:
    """Every output the finished slide had (a deleted file makes the slide run again)."""
    facts = previous.get("models") or {}
    return all(m.path(k, item.slide_id, s).is_file() for m in models for k, s in OUTPUTS
               if k != "cams" or facts.get(m.name, {}).get("map"))


def _remove_outputs(item: SlideInput, models: Sequence[ModelRun]) -> None:
    for m in models:
        for kind, suffix in OUTPUTS:
            m.path(kind, item.slide_id, suffix).unlink(missing_ok=True)


def run_slides(items: Sequence[SlideInput], models: Sequence[ModelRun], params: InferParams, out: Path,
               progress: bool = True) -> list[dict]:
    """Every slide in turn (the pass itself is parallel: reads in threads, the model batched)."""
    records = []
    for item in tqdm(items, desc="slides", unit="slide", disable=not progress):
        record = process(item, models, params, out)
        if record["status"] == FAILED:
            log.warning("failed: %s", record["reason"])
        records.append(record)
    return records


def merge(items: Sequence[SlideInput], models: Sequence[ModelRun], out: Path,
          records: Sequence[dict] | None = None, run_scale: bool = False) -> dict[str, Path]:
    """``status.csv`` (one row per slide) and each model's ``slides.csv``; with ``run_scale``
    (``cam.normalize=run``) each model's CAM sidecars also get the run's ``run_scale``."""
    known = {r["slide"]: r for r in records or []}
    rows = []
    for item in items:
        record = known.get(item.slide_id)
        path = out / "status" / f"{item.slide_id}.json"
        if record is None:
            record = json.loads(path.read_text()) if path.is_file() else {
                "slide": item.slide_id, "status": "pending", "reason": "not run yet"}
        rows.append(record)
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
