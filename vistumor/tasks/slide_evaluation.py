"""Evaluating a whole-slide run: each model's detections and scores against the slides'
labels and annotations (:mod:`vistumor.evaluate`), written to ``models/<name>/evaluation/``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistumor.errors import VisTumorError
from vistumor.evaluate import MaskSource, evaluate, read_detections, write_report
from vistumor.infer.inputs import SlideInput
from vistumor.infer.slide_run import ModelRun
from vistumor.labels import TUMOR

log = logging.getLogger(__name__)


def evaluate_run(items: Sequence[SlideInput], models: Sequence[ModelRun], out: Path, mode: str = "official",
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Slide AUC and lesion FROC of every model over the run's labelled, finished slides.

    Returns ``model -> {"test/slide_auc", "test/slide_auc_ci95", "test/froc", "test/froc_ci95",
    "evaluation"}``, or ``model -> {"skipped": why}``; slides that failed are left out and named.
    """
    records = {s.slide_id: _record(out, s.slide_id) for s in items}
    labelled = [s for s in items if s.label is not None]
    finished = [s for s in labelled if (records[s.slide_id] or {}).get("status") == "done"]
    left_out = sorted(s.slide_id for s in labelled if s not in finished)
    results: dict[str, dict[str, Any]] = {}
    if not finished:
        return {m.name: {"skipped": "no finished slide with a known label"} for m in models}
    for m in models:
        try:
            evaluation = _evaluate_model(m, finished, records, mode, seed)
        except VisTumorError as err:  # e.g. a tumor slide without its annotation: AUC only is not FROC
            log.warning("%s: evaluation skipped: %s", m.name, err)
            results[m.name] = {"skipped": str(err)}
            continue
        settings = {"mode": mode, "slides": [s.slide_id for s in finished], "left_out_failed": left_out}
        paths = write_report(evaluation, m.folder / "evaluation", settings)
        results[m.name] = {"test/slide_auc": evaluation.auc, "test/slide_auc_ci95": list(evaluation.auc_ci95),
                           "test/froc": evaluation.froc, "test/froc_ci95": list(evaluation.froc_ci95),
                           "evaluation": str(paths["json"])}
        log.info("%s: slide AUC %.3f [%.3f, %.3f], FROC %.3f [%.3f, %.3f] over %d slides", m.name,
                 evaluation.auc, *evaluation.auc_ci95, evaluation.froc, *evaluation.froc_ci95, len(finished))
    return results


def _record(out: Path, slide_id: str) -> dict | None:
    path = out / "status" / f"{slide_id}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _evaluate_model(m: ModelRun, slides: Sequence[SlideInput], records: dict, mode: str, seed: int):
    predictions = {s.slide_id: read_detections(m.path("detections", s.slide_id, ".csv")) for s in slides}
    scores = {s.slide_id: records[s.slide_id]["models"][m.name]["score"] for s in slides}

    def dimensions(slide_id: str) -> tuple[int, int]:
        sidecar = json.loads(m.path("heatmaps", slide_id, ".json").read_text())
        return int(sidecar["width0"]), int(sidecar["height0"])

    annotations = {s.slide_id: s.annotation for s in slides if s.label == TUMOR and s.annotation}
    masks = MaskSource(annotations, dimensions)
    return evaluate(predictions, masks, {s.slide_id: s.label for s in slides}, mode=mode, scores=scores,
                    seed=seed)
