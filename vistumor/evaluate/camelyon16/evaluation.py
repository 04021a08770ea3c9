"""One evaluation of a set of predictions: CAMELYON16 slide AUC and lesion FROC, with
bootstrap confidence intervals over slides.

Which slides count, and where this differs from the official ``Evaluation_FROC.py``:
the reference table (not the folder of prediction files) lists the slides; a prediction
file must name a reference slide and every tumor slide needs one (the script silently
treats an unknown file as a normal slide and returns NaN without tumors: NCRF issue #61);
a normal slide without a file has no detections and still counts in the FPs per slide; a tumor
slide whose annotation gives no lesion (no tumor region, or wholly outside the slide) is left out
of the lesion task with a warning and marked ``unusable`` (the script would count 0 lesions and
score its detections as false positives), and stays in the slide task, whose label it keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vistumor.errors import AnnotationError, VisTumorError
from vistumor.evaluate.camelyon16.auc import N_BOOTSTRAP, auc_ci, roc_auc, roc_curve
from vistumor.evaluate.camelyon16.froc import (
    FP_RATES,
    OFFICIAL,
    FrocCurve,
    SlideHits,
    froc_ci,
    froc_curve,
    slide_hits,
)
from vistumor.evaluate.camelyon16.masks import EvaluationMask, UnusableAnnotation
from vistumor.evaluate.exclusions import AUC, FROC, OFFICIAL_EXCLUDE, TASKS, parse_exclude
from vistumor.evaluate.io import ReferenceSlide
from vistumor.labels import is_tumor, name, parse_label

log = logging.getLogger(__name__)

_EMPTY = np.zeros((0, 3))


@dataclass(frozen=True)
class SlideRow:
    """One reference slide's part in the evaluation: its AUC score (None when excluded from
    the slide task), its hits (None when excluded from the lesion task) and, for a tumor slide
    whose annotation gives no lesion, why (then it has no hits)."""

    slide: str
    label: int
    n_detections: int
    score: float | None
    hits: SlideHits | None
    unusable: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """Results of :func:`evaluate` (see :mod:`vistumor.evaluate.camelyon16.report` for files)."""

    mode: str
    curve: FrocCurve
    froc_ci95: tuple[float, float]
    auc: float
    auc_ci95: tuple[float, float]
    roc: tuple[np.ndarray, np.ndarray]
    slides: list[SlideRow]
    excluded: dict[str, list[str]]
    without_predictions: list[str]

    @property
    def unusable(self) -> dict[str, str]:
        """Tumor slides left out of the lesion task because their annotation gives no lesion: why."""
        return {row.slide: row.unusable for row in self.slides if row.unusable is not None}

    @property
    def froc(self) -> float:
        return self.curve.score

    @property
    def sensitivity_at_fp(self) -> dict[float, float]:
        return dict(zip(FP_RATES, self.curve.sensitivity_at(FP_RATES).tolist(), strict=True))

    @property
    def hits(self) -> list[SlideHits]:
        """Hits of the slides of the lesion task."""
        return [row.hits for row in self.slides if row.hits is not None]

    def n_slides(self, task: str) -> int:
        return sum((row.score if task == AUC else row.hits) is not None for row in self.slides)

    def metrics(self, split: str = "test") -> dict[str, float]:
        """The headline numbers under ``split/name`` keys."""
        return {f"{split}/froc": self.froc, f"{split}/slide_auc": self.auc}


def evaluate(
    predictions: Mapping[str, np.ndarray], masks: Mapping[str, EvaluationMask],
    reference: Sequence[ReferenceSlide] | Mapping[str, int | str], *, mode: str = OFFICIAL,
    scores: Mapping[str, float] | None = None, exclude: Iterable[str] = OFFICIAL_EXCLUDE,
    n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
) -> Evaluation:
    """Slide AUC and lesion FROC of detections against the reference.

    Args:
        predictions: slide name -> ``(n, 3)`` detections ``prob, x, y`` (level-0 pixels).
        masks: slide name -> evaluation mask, for the tumor slides of the lesion task
            (read lazily, one at a time: a :class:`~vistumor.evaluate.camelyon16.masks.MaskSource` works).
        reference: the slides with their labels, as :class:`ReferenceSlide` or name -> label.
        mode: ``official`` (the script to the bit) or ``strict`` (see :mod:`~vistumor.evaluate.camelyon16.froc`).
        scores: slide name -> score for the AUC; default the slide's highest detection
            probability (0 without detections).
        exclude: slides left out, ``name`` or ``name:task`` (default the official exclusions).
        n_bootstrap, seed: resamples of the confidence intervals and their seed.

    Slide names match case-insensitively. Raises :class:`VisTumorError` on predictions or
    scores for unknown slides, a tumor slide without predictions or mask, a detection
    outside its slide's mask, or a task without both classes / without lesions. A tumor slide
    whose mask holds no region (:class:`~vistumor.evaluate.camelyon16.masks.UnusableAnnotation`)
    leaves the lesion task with a warning and is marked in :attr:`Evaluation.unusable`.
    """
    ref = _reference(reference)
    preds = _by_slide(predictions, ref, "predictions")
    score_map = None if scores is None else _by_slide(scores, ref, "a score")
    excluded = parse_exclude(exclude)
    tasks = {task: [key for key in ref if key not in excluded[task]] for task in TASKS}
    _check_inputs(ref, preds, score_map, masks, tasks)
    hits, unusable = _lesion_task(ref, preds, masks, tasks[FROC])
    curve = froc_curve(list(hits.values()), mode)
    slide_scores = {key: _slide_score(key, preds, score_map) for key in tasks[AUC]}
    labels = [ref[key].label for key in tasks[AUC]]
    values = list(slide_scores.values())
    fpr, tpr, _ = roc_curve(labels, values)
    return Evaluation(
        mode=mode, curve=curve,
        froc_ci95=froc_ci(list(hits.values()), mode, n_bootstrap, seed),
        auc=roc_auc(labels, values), auc_ci95=auc_ci(labels, values, n_bootstrap, seed), roc=(fpr, tpr),
        slides=[SlideRow(r.slide, r.label, len(preds.get(key, _EMPTY)), slide_scores.get(key), hits.get(key),
                         unusable.get(key))
                for key, r in ref.items() if key in hits or key in slide_scores or key in unusable],
        excluded={task: sorted(ref[k].slide for k in ref if k in excluded[task]) for task in TASKS},
        without_predictions=sorted(r.slide for key, r in ref.items() if key not in preds),
    )


def _reference(reference: Sequence[ReferenceSlide] | Mapping[str, int | str]) -> dict[str, ReferenceSlide]:
    if isinstance(reference, Mapping):
        reference = [ReferenceSlide(slide, _label(slide, value)) for slide, value in reference.items()]
    ref: dict[str, ReferenceSlide] = {}
    for slide in reference:
        if slide.slide.lower() in ref:
            raise VisTumorError(f"the reference lists slide '{slide.slide}' twice")
        ref[slide.slide.lower()] = slide
    if not ref:
        raise VisTumorError("the reference lists no slide")
    return ref


def _label(slide: str, value: int | str) -> int:
    label = parse_label(value)
    if label is None:
        raise VisTumorError(f"slide '{slide}': unknown label {value!r} (expected tumor/normal/1/0)")
    return label


def _by_slide(values: Mapping[str, object], ref: Mapping[str, ReferenceSlide], what: str) -> dict:
    """``values`` by lower-case slide name; a name the reference lacks is an error."""
    out = {}
    for slide, value in values.items():
        key = slide.lower()
        if key not in ref:
            examples = ", ".join(r.slide for r in list(ref.values())[:3])
            raise VisTumorError(f"{what} for slide '{slide}', which the reference does not list "
                                f"({len(ref)} slides, e.g. {examples})")
        if key in out:
            raise VisTumorError(f"{what} for slide '{slide}' given twice (names match case-insensitively)")
        out[key] = value
    return out


def _check_inputs(ref, preds, score_map, masks, tasks) -> None:
    """Every tumor slide has predictions (and a mask for the lesion task); no normal slide has a mask."""
    needs_predictions = set(tasks[FROC]) | (set() if score_map is not None else set(tasks[AUC]))
    for key in sorted(needs_predictions):
        if is_tumor(ref[key].label) and key not in preds:
            slide = ref[key].slide
            raise VisTumorError(f"tumor slide '{slide}' has no predictions (expected {slide}.csv)")
    if score_map is not None:
        missing = [ref[key].slide for key in tasks[AUC] if key not in score_map]
        if missing:
            raise VisTumorError(f"no score for {len(missing)} slide(s) of the AUC: {', '.join(missing[:5])}")
    with_mask = {slide.lower() for slide in masks}
    for key in tasks[FROC]:
        if is_tumor(ref[key].label) != (key in with_mask):
            has = "a" if key in with_mask else "no"
            raise AnnotationError(f"slide '{ref[key].slide}' is {name(ref[key].label)} in the reference "
                                  f"but has {has} annotation or mask")


def _lesion_task(ref, preds, masks: Mapping[str, EvaluationMask],
                 keys: list[str]) -> tuple[dict[str, SlideHits], dict[str, str]]:
    """Each slide's hits, building one mask at a time, and the tumor slides whose annotation
    gives no lesion (left out, with the reason, each named in a warning)."""
    mask_key = {slide.lower(): slide for slide in masks}
    hits, unusable = {}, {}
    for key in keys:
        try:
            mask = _usable_mask(masks, mask_key[key]) if key in mask_key else None
        except UnusableAnnotation as err:
            unusable[key] = str(err)
            log.warning("tumor slide '%s': annotation unusable (%s): left out of the lesion task (FROC)",
                        ref[key].slide, err)
            continue
        hits[key] = slide_hits(ref[key].slide, preds.get(key, _EMPTY), mask)
    return hits, unusable


def _usable_mask(masks: Mapping[str, EvaluationMask], slide: str) -> EvaluationMask:
    mask = masks[slide]
    if mask.n_regions == 0:
        raise UnusableAnnotation("its evaluation mask holds no tumor region")
    return mask


def _slide_score(key: str, preds: Mapping[str, np.ndarray], score_map: Mapping[str, float] | None) -> float:
    if score_map is not None:
        return float(score_map[key])
    detections = np.asarray(preds.get(key, _EMPTY), np.float64).reshape(-1, 3)
    return float(detections[:, 0].max()) if len(detections) else 0.0
