"""Lesion-level FROC of CAMELYON16: which detections hit which lesion, and the curve.

A port of ``compute_FP_TP_Probs`` and ``computeFROC`` of the official ``Evaluation_FROC.py``
(B. Ehteshami Bejnordi, 2016; copy in baidu-research/NCRF ``wsi/bin/Evaluation_FROC.py``).

Two modes:

* ``official`` reproduces the script to the bit. Its true-positive list has one entry per
  labelled region (the best hit's probability stored as float32, or 0 for a missed lesion
  and for every ITC) and its thresholds skip the lowest value (``all_probs[1:]``), which
  keeps the 0 placeholders from counting as hits; but when every lesion is hit and no
  slide has an ITC there is no 0, and the lowest *real* detection is dropped.
* ``strict``: thresholds are the probabilities of real detections only, a missed lesion or
  an ITC never counts as a hit, nothing is dropped, and probabilities stay float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vistumor.errors import ConfigError, VisTumorError
from vistumor.evaluate.camelyon16.auc import N_BOOTSTRAP, bootstrap_ci
from vistumor.evaluate.camelyon16.masks import EvaluationMask

OFFICIAL, STRICT = "official", "strict"
MODES = (OFFICIAL, STRICT)
#: Evaluation_FROC.py, __main__: eval_threshold = [.25, .5, 1, 2, 4, 8] (average FPs per slide)
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class SlideHits:
    """What one slide's detections hit.

    Attributes:
        slide: slide name.
        fp_probs: probabilities of the false positives (detections outside every region;
            every detection of a slide without tumor).
        best_probs: per region (index ``label - 1``), the highest probability among the
            detections inside it; NaN where none.
        best_points: level-0 ``(x, y)`` of that detection; -1 where none.
        itc: per region, whether it is an ITC.
        area_um2, major_axis_um: per region, its size in the evaluation mask.
        n_detections: detections on the slide.
    """

    slide: str
    fp_probs: np.ndarray
    best_probs: np.ndarray
    best_points: np.ndarray
    itc: np.ndarray
    area_um2: np.ndarray
    major_axis_um: np.ndarray
    n_detections: int

    @property
    def n_lesions(self) -> int:
        return int((~self.itc).sum())

    @property
    def n_itc(self) -> int:
        return int(self.itc.sum())

    @property
    def hits(self) -> int:
        """Lesions (not ITCs) hit by at least one detection."""
        return int((~self.itc & ~np.isnan(self.best_probs)).sum())

    @property
    def false_positives(self) -> int:
        return int(self.fp_probs.size)

    def official_tp(self) -> np.ndarray:
        """``TP_probs`` of ``compute_FP_TP_Probs``: float32, one per region, the best hit
        (it keeps ``Probs[i] > TP_probs[label]``, so only a positive one) or 0 for a miss or an ITC."""
        hit = ~self.itc & (np.nan_to_num(self.best_probs, nan=0.0) > 0)
        return np.where(hit, self.best_probs, 0.0).astype(np.float32)

    def strict_tp(self) -> np.ndarray:
        """Probabilities of the hits on lesions (not ITCs), float64."""
        return self.best_probs[~self.itc & ~np.isnan(self.best_probs)]


def slide_hits(slide: str, detections: np.ndarray, mask: EvaluationMask | None) -> SlideHits:
    """Match a slide's detections (``(n, 3)`` rows ``prob, x, y``, level-0) with its mask.

    A detection at level-0 ``(x, y)`` hits label ``mask[int(y / 32), int(x / 32)]`` (row
    from y, as the script indexes ``evaluation_mask[Y, X]``): 0 is a false positive, an ITC
    is ignored, a lesion keeps its highest probability (later hits are neither TP nor FP).
    With no mask (a slide without tumor) every detection is a false positive.
    """
    detections = _checked(slide, detections)
    probs = detections[:, 0]
    if mask is None:
        empty = np.zeros(0)
        return SlideHits(slide, probs.copy(), empty, np.zeros((0, 2), np.int64), np.zeros(0, bool),
                         empty, empty, len(probs))
    label = mask.label_at(*_cells(slide, detections, mask))
    best, points = _best_hits(detections, label, mask.n_regions)
    return SlideHits(slide, probs[label == 0], best, points, mask.itc.copy(), mask.area_um2,
                     mask.major_axis_um, len(probs))


def _checked(slide: str, detections: np.ndarray) -> np.ndarray:
    detections = np.asarray(detections, np.float64)
    if detections.size == 0:
        return np.zeros((0, 3))
    if detections.ndim != 2 or detections.shape[1] != 3:
        raise VisTumorError(f"slide {slide}: detections must be rows prob, x, y, not {detections.shape}")
    if not np.isfinite(detections).all():
        raise VisTumorError(f"slide {slide}: detections hold NaN or infinite values")
    outside = np.flatnonzero((detections[:, 0] < 0) | (detections[:, 0] > 1))
    if outside.size:
        raise VisTumorError(f"slide {slide}: detection {outside[0] + 1} has probability {detections[outside[0], 0]:g}, "
                            f"outside [0, 1] ({outside.size} such detection(s))")
    return detections


def _cells(slide: str, detections: np.ndarray, mask: EvaluationMask) -> tuple[np.ndarray, np.ndarray]:
    """Mask ``(rows, cols)`` of the detections; a point outside the mask is an error (the
    script raises IndexError, or wraps a negative index around silently)."""
    x, y = detections[:, 1], detections[:, 2]
    rows, cols = np.floor(y / mask.downsample), np.floor(x / mask.downsample)
    height, width = mask.shape
    outside = np.flatnonzero((x < 0) | (y < 0) | (rows >= height) | (cols >= width))
    if outside.size:
        i = outside[0]
        raise VisTumorError(
            f"slide {slide}: detection {i + 1} (prob {detections[i, 0]:g}) at level-0 (x, y) = "
            f"({x[i]:g}, {y[i]:g}) lies outside the evaluation mask ({width * mask.downsample} x "
            f"{height * mask.downsample} level-0 px); {outside.size} detection(s) outside in all"
        )
    return rows.astype(np.int64), cols.astype(np.int64)


def _best_hits(detections: np.ndarray, label: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Per region, the highest probability among its detections (the first one on ties, as the
    script's strict ``>``) and that detection's level-0 point."""
    best = np.full(n_regions, np.nan)
    points = np.full((n_regions, 2), -1, np.int64)
    inside = np.flatnonzero(label > 0)
    if inside.size:
        order = inside[np.lexsort((inside, -detections[inside, 0], label[inside]))]
        first = order[np.r_[True, label[order][1:] != label[order][:-1]]]
        best[label[first] - 1] = detections[first, 0]
        points[label[first] - 1] = detections[first, 1:].astype(np.int64)
    return best, points


# -- the curve ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrocCurve:
    """FROC points, from the lowest threshold up, then the appended ``(0, 0)``.

    Attributes:
        thresholds: probability of each point but the last.
        fp_per_slide: false positives at or above the threshold per evaluated slide.
        sensitivity: lesions hit at or above the threshold per lesion (ITCs excluded).
    """

    thresholds: np.ndarray
    fp_per_slide: np.ndarray
    sensitivity: np.ndarray
    n_slides: int
    n_lesions: int
    mode: str

    def sensitivity_at(self, rates: Sequence[float] = FP_RATES) -> np.ndarray:
        """``np.interp`` of the curve at average FPs per slide, as the script's ``eval_TPs``."""
        return np.interp(rates, self.fp_per_slide[::-1], self.sensitivity[::-1])

    @property
    def score(self) -> float:
        """The FROC score: mean sensitivity at 0.25, 0.5, 1, 2, 4 and 8 FPs per slide."""
        return float(np.mean(self.sensitivity_at()))


def froc_curve(hits: Sequence[SlideHits], mode: str = OFFICIAL) -> FrocCurve:
    """``computeFROC`` over the evaluated slides (slides without tumor included)."""
    return PooledHits(hits, mode).curve()


class PooledHits:
    """The slides' false positives and true-positive entries pooled and sorted once, so that
    the curve of any resample of slides (repeats allowed) costs no sorting: a resample weighs
    each value by its slide's multiplicity (what the bootstrap needs, 1000 times over).

    In ``official`` mode the true-positive entries are the script's float32 ``TP_probs`` (one
    per region) and a threshold ``t`` counts them in float32 (``tp >= float32(t)``: NumPy casts
    the script's Python-float threshold to its float32 array's type); false positives stay float64.
    """

    def __init__(self, hits: Sequence[SlideHits], mode: str = OFFICIAL):
        if mode not in MODES:
            raise ConfigError(f"FROC mode must be one of {MODES}, got {mode!r}")
        self.mode, self.n_slides = mode, len(hits)
        tp_of = (lambda h: h.official_tp()) if mode == OFFICIAL else (lambda h: h.strict_tp())
        self.lesions = np.array([h.n_lesions for h in hits], np.int64)
        self.fp, self.fp_slide = _pool([h.fp_probs for h in hits], np.float64)
        tp_dtype = np.float32 if mode == OFFICIAL else np.float64
        self.tp, self.tp_slide = _pool([tp_of(h) for h in hits], tp_dtype)
        self.candidates = np.unique(np.concatenate([self.fp, self.tp.astype(np.float64)]))
        self.fp_rank = np.searchsorted(self.candidates, self.fp)
        self.tp_rank = np.searchsorted(self.candidates, self.tp.astype(np.float64))
        # first value >= each candidate threshold, in the dtype the comparison runs in
        self.fp_start = np.searchsorted(self.fp, self.candidates, side="left")
        self.tp_start = np.searchsorted(self.tp, self.candidates.astype(self.tp.dtype), side="left")

    def curve(self, weights: np.ndarray | None = None) -> FrocCurve:
        """The curve of the slides taken ``weights[i]`` times each (default once)."""
        weights = np.ones(self.n_slides, np.int64) if weights is None else np.asarray(weights, np.int64)
        n_slides, n_lesions = int(weights.sum()), int(weights @ self.lesions)
        if n_lesions == 0:
            raise VisTumorError(
                f"no lesion to find in {n_slides} slide(s) (ITCs do not count): the FROC is undefined"
            )
        fp_w, tp_w = weights[self.fp_slide], weights[self.tp_slide]
        present = np.zeros(self.candidates.size, bool)
        present[self.fp_rank[fp_w > 0]] = True
        present[self.tp_rank[tp_w > 0]] = True
        keep = np.flatnonzero(present)
        if self.mode == OFFICIAL:
            keep = keep[1:]  # all_probs[1:]
        n_fp = _suffix_sums(fp_w)[self.fp_start[keep]]
        n_tp = _suffix_sums(tp_w)[self.tp_start[keep]]
        fp_per_slide = np.append(n_fp, 0) / float(n_slides)
        sensitivity = np.append(n_tp, 0) / float(n_lesions)
        return FrocCurve(self.candidates[keep], fp_per_slide, sensitivity, n_slides, n_lesions, self.mode)


def _pool(arrays: list[np.ndarray], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """All values sorted, and the slide each came from."""
    values = np.concatenate([np.zeros(0, dtype)] + [np.asarray(a, dtype) for a in arrays])
    slide = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays]).astype(np.int64)
    order = np.argsort(values, kind="stable")
    return values[order], slide[order]


def _suffix_sums(weights: np.ndarray) -> np.ndarray:
    """``out[i] = weights[i:].sum()``, with ``out[len] = 0``: how many values from rank i up."""
    return np.append(np.cumsum(weights[::-1])[::-1], 0)


def froc_ci(
    hits: Sequence[SlideHits], mode: str = OFFICIAL, n: int = N_BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % interval of the FROC score over slides (resamples without a lesion skipped).

    Draws the same resamples as :func:`~vistumor.evaluate.camelyon16.auc.bootstrap_ci` over ``hits``
    with :func:`froc` as the statistic, only faster.
    """
    pooled = PooledHits(hits, mode)

    def score(sample: list[int]) -> float:
        return pooled.curve(np.bincount(sample, minlength=len(hits))).score

    return bootstrap_ci(range(len(hits)), score, n=n, seed=seed)


def froc(hits: Sequence[SlideHits], mode: str = OFFICIAL) -> float:
    """The FROC score of the evaluated slides' hits."""
    return froc_curve(hits, mode).score
