"""Evaluating a whole-slide run: each model's detections, scores and lesion polygons against the
slides' labels and annotations, through the one evaluation (:func:`vistumor.evaluate.evaluate_slides`,
as ``python -m vistumor.evaluate`` runs it), written to ``models/<name>/evaluation/``: CAMELYON16's
slide AUC and FROC, then CAMELYON17's metastasis categories (pN categories when the slides make
patients) in the same folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistumor.errors import VisTumorError
from vistumor.evaluate import Options, Outcome, SlideSet, evaluate_slides
from vistumor.evaluate.camelyon16.report import FOLDER as EVALUATION
from vistumor.evaluate.camelyon17.categories import read_patients
from vistumor.evaluate.io import ReferenceSlide, read_detections
from vistumor.infer.batch import DONE
from vistumor.infer.inputs import SlideInput
from vistumor.infer.slide_run import ModelRun
from vistumor.labels import TUMOR

log = logging.getLogger(__name__)


def evaluate_run(items: Sequence[SlideInput], models: Sequence[ModelRun], out: Path, mode: str = "official",
                 seed: int = 0, patients: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Slide AUC and lesion FROC of every model over the run's labelled, finished slides, then
    the categories of its lesions (pN categories for slides of a patient: from ``patients``, a
    ``slide,patient`` CSV, or else CAMELYON17 slide names ``patient_004_node_4``).

    Returns ``model -> {"test/slide_auc", "test/slide_auc_ci95", "test/froc", "test/froc_ci95",
    "evaluation", "test/category_accuracy", "staging"}`` plus ``"test/kappa"`` when patients exist
    (``"staging_skipped": why`` instead of the CAMELYON17 keys when it cannot run), or
    ``model -> {"skipped": why}``; slides that failed are left out and named.
    """
    patient_map = read_patients(patients) if patients is not None else None
    patient_source = str(patients) if patients is not None else "slide names (patient_NNN_node_N)"
    records = {s.slide_id: _record(out, s.slide_id) for s in items}
    labelled = [s for s in items if s.label is not None]
    finished = [s for s in labelled if (records[s.slide_id] or {}).get("status") == DONE]
    left_out = sorted(s.slide_id for s in labelled if s not in finished)
    if not finished:
        return {m.name: {"skipped": "no finished slide with a known label"} for m in models}
    settings = {"mode": mode, "slides": [s.slide_id for s in finished], "left_out_failed": left_out}
    results: dict[str, dict[str, Any]] = {}
    for m in models:
        try:
            slides = _slide_set(m, finished, records, patient_map)
            outcome = evaluate_slides(slides, m.folder / EVALUATION, Options(mode=mode, seed=seed), settings,
                                      {**settings, "patients": patient_source}, skip_failed_pn=True)
        except VisTumorError as err:  # e.g. a tumor slide without its annotation: AUC only is not FROC
            log.warning("%s: evaluation skipped: %s", m.name, err)
            results[m.name] = {"skipped": str(err)}
            continue
        results[m.name] = _summary(m.name, outcome, len(finished))
    return results


def _summary(model: str, outcome: Outcome, n_slides: int) -> dict[str, Any]:
    """The model's numbers and files, each logged."""
    ev = outcome.evaluation
    log.info("%s: slide AUC %.3f [%.3f, %.3f], FROC %.3f [%.3f, %.3f] over %d slides", model,
             ev.auc, *ev.auc_ci95, ev.froc, *ev.froc_ci95, n_slides)
    result = {"test/slide_auc": ev.auc, "test/slide_auc_ci95": list(ev.auc_ci95),
              "test/froc": ev.froc, "test/froc_ci95": list(ev.froc_ci95), "evaluation": str(outcome.files["json"])}
    if outcome.pn_skipped is not None:
        log.warning("%s: staging skipped: %s", model, outcome.pn_skipped)
        return {**result, "staging_skipped": outcome.pn_skipped}
    pn = outcome.pn
    kappa = f", pN kappa {pn.kappa:.3f} over {len(pn.patients)} patients" if pn.patients else ""
    log.info("%s: metastasis category accuracy %.3f over %d slides%s", model, pn.accuracy, len(pn.slides), kappa)
    return {**result, **pn.metrics("test"), "staging": str(outcome.pn_files["json"])}


def _slide_set(m: ModelRun, slides: Sequence[SlideInput], records: dict,
               patients: dict[str, str] | None) -> SlideSet:
    """One model's files of the finished slides: detections, scores, lesions, and the slide
    geometry its heatmap sidecars recorded."""
    sidecars = {s.slide_id: json.loads(m.path("heatmaps", s.slide_id, ".json").read_text()) for s in slides}
    reference = [ReferenceSlide(s.slide_id, s.label, (int(sidecars[s.slide_id]["width0"]),
                                                      int(sidecars[s.slide_id]["height0"]))) for s in slides]
    return SlideSet(
        reference=reference,
        predictions={s.slide_id: read_detections(m.path("detections", s.slide_id, ".csv")) for s in slides},
        annotations={s.slide_id: Path(s.annotation) for s in slides if s.label == TUMOR and s.annotation},
        scores={s.slide_id: records[s.slide_id]["models"][m.name]["score"] for s in slides},
        lesions={s.slide_id: m.path("lesions", s.slide_id, ".geojson") for s in slides
                 if m.path("lesions", s.slide_id, ".geojson").is_file()},
        mpp=lambda slide: sidecars[slide].get("mpp"),
        patients=patients, groups=m.annotation_groups,
    )


def _record(out: Path, slide_id: str) -> dict | None:
    path = out / "status" / f"{slide_id}.json"
    return json.loads(path.read_text()) if path.is_file() else None
