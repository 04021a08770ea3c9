"""Evaluating a whole-slide run: each model's detections and scores against the slides'
labels and annotations (:mod:`vistumor.evaluate`), written to ``models/<name>/evaluation/``;
then CAMELYON17's staging of its lesion polygons (metastasis categories, pN stages when the
slides make patients) into the same folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistumor.errors import VisTumorError
from vistumor.evaluate import (
    MaskSource,
    StagingInput,
    evaluate,
    evaluate_staging,
    read_detections,
    read_patients,
    write_report,
    write_staging_report,
)
from vistumor.evaluate.report import FOLDER as EVALUATION
from vistumor.infer.batch import DONE
from vistumor.infer.inputs import SlideInput
from vistumor.infer.slide_run import ModelRun
from vistumor.labels import TUMOR

log = logging.getLogger(__name__)


def evaluate_run(items: Sequence[SlideInput], models: Sequence[ModelRun], out: Path, mode: str = "official",
                 seed: int = 0, patients: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Slide AUC and lesion FROC of every model over the run's labelled, finished slides, then
    the staging of its lesions (categories; pN stages for slides of a patient: from ``patients``,
    a ``slide,patient`` CSV, or else CAMELYON17 slide names ``patient_004_node_4``).

    Returns ``model -> {"test/slide_auc", "test/slide_auc_ci95", "test/froc", "test/froc_ci95",
    "evaluation", "test/category_accuracy", "staging"}`` plus ``"test/kappa"`` when patients exist
    (``"staging_skipped": why`` instead of the staging keys when it cannot be staged), or
    ``model -> {"skipped": why}``; slides that failed are left out and named.
    """
    patient_map = read_patients(patients) if patients is not None else None
    patient_source = str(patients) if patients is not None else "slide names (patient_NNN_node_N)"
    records = {s.slide_id: _record(out, s.slide_id) for s in items}
    labelled = [s for s in items if s.label is not None]
    finished = [s for s in labelled if (records[s.slide_id] or {}).get("status") == DONE]
    left_out = sorted(s.slide_id for s in labelled if s not in finished)
    results: dict[str, dict[str, Any]] = {}
    if not finished:
        return {m.name: {"skipped": "no finished slide with a known label"} for m in models}
    for m in models:
        sidecars = {s.slide_id: _sidecar(m, s.slide_id) for s in finished}
        try:
            evaluation = _evaluate_model(m, finished, records, sidecars, mode, seed)
        except VisTumorError as err:  # e.g. a tumor slide without its annotation: AUC only is not FROC
            log.warning("%s: evaluation skipped: %s", m.name, err)
            results[m.name] = {"skipped": str(err)}
            continue
        settings = {"mode": mode, "slides": [s.slide_id for s in finished], "left_out_failed": left_out}
        paths = write_report(evaluation, m.folder / EVALUATION, settings)
        results[m.name] = {"test/slide_auc": evaluation.auc, "test/slide_auc_ci95": list(evaluation.auc_ci95),
                           "test/froc": evaluation.froc, "test/froc_ci95": list(evaluation.froc_ci95),
                           "evaluation": str(paths["json"])}
        log.info("%s: slide AUC %.3f [%.3f, %.3f], FROC %.3f [%.3f, %.3f] over %d slides", m.name,
                 evaluation.auc, *evaluation.auc_ci95, evaluation.froc, *evaluation.froc_ci95, len(finished))
        results[m.name].update(_stage_model(m, finished, sidecars, patient_map,
                                            {**settings, "patients": patient_source}))
    return results


def _stage_model(m: ModelRun, slides: Sequence[SlideInput], sidecars: dict[str, dict],
                 patients: dict[str, str] | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Categories and pN stages of one model's lesions, written beside its evaluation; a slide
    that cannot be staged (no µm per pixel, a tumor slide without annotation) skips it, named."""
    try:
        inputs = [StagingInput(s.slide_id, sidecars[s.slide_id].get("mpp"), _annotation(s),
                               m.path("lesions", s.slide_id, ".geojson")) for s in slides]
        staging = evaluate_staging(inputs, patients, groups=m.annotation_groups)
    except VisTumorError as err:
        log.warning("%s: staging skipped: %s", m.name, err)
        return {"staging_skipped": str(err)}
    paths = write_staging_report(staging, m.folder / EVALUATION, settings)
    kappa = f", pN kappa {staging.kappa:.3f} over {len(staging.patients)} patients" if staging.patients else ""
    log.info("%s: metastasis category accuracy %.3f over %d slides%s", m.name, staging.accuracy,
             len(staging.slides), kappa)
    return {**staging.metrics("test"), "staging": str(paths["json"])}


def _sidecar(m: ModelRun, slide_id: str) -> dict:
    return json.loads(m.path("heatmaps", slide_id, ".json").read_text())


def _annotation(s: SlideInput) -> Path | None:
    """A tumor slide's annotation; None for a normal slide (no lesion)."""
    if s.label != TUMOR:
        return None
    if not s.annotation:
        raise VisTumorError(f"tumor slide '{s.slide_id}' has no annotation to stage it by")
    return s.annotation


def _record(out: Path, slide_id: str) -> dict | None:
    path = out / "status" / f"{slide_id}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _evaluate_model(m: ModelRun, slides: Sequence[SlideInput], records: dict, sidecars: dict[str, dict],
                    mode: str, seed: int):
    predictions = {s.slide_id: read_detections(m.path("detections", s.slide_id, ".csv")) for s in slides}
    scores = {s.slide_id: records[s.slide_id]["models"][m.name]["score"] for s in slides}

    def dimensions(slide_id: str) -> tuple[int, int]:
        return int(sidecars[slide_id]["width0"]), int(sidecars[slide_id]["height0"])

    annotations = {s.slide_id: s.annotation for s in slides if s.label == TUMOR and s.annotation}
    masks = MaskSource(annotations, dimensions, groups=m.annotation_groups)
    return evaluate(predictions, masks, {s.slide_id: s.label for s in slides}, mode=mode, scores=scores,
                    seed=seed)
