"""CAMELYON16 evaluation on hand-built masks and detections whose answers are worked out below.

Masks are drawn at the evaluation level (level 5: one pixel = 32 level-0 px); ``at(r, c)``
is the level-0 ``(x, y)`` at the centre of mask pixel ``(row r, column c)``. With the
official margin (37.5 um = 4.82 px) a lesion grows by 4 px: a pixel 4 px away is within
4.82 px, one 5 px away is not.
"""

from __future__ import annotations

import numpy as np
import pytest

from vistumor.errors import AnnotationError, ConfigError, VisTumorError
from vistumor.evaluate.camelyon16 import auc as evaluation_auc
from vistumor.evaluate.camelyon16.auc import auc_ci, bootstrap_ci, roc_auc, roc_curve
from vistumor.evaluate.camelyon16.evaluation import evaluate
from vistumor.evaluate.camelyon16.froc import OFFICIAL, STRICT, froc, froc_curve, slide_hits
from vistumor.evaluate.camelyon16.masks import ITC_UM, MARGIN_UM, PIXEL_UM, evaluation_mask
from vistumor.evaluate.exclusions import parse_exclude
from vistumor.evaluate.io import ReferenceSlide
from vistumor.explain import localization
from vistumor.explain.localization import pixel_auroc
from vistumor.labels import NORMAL, TUMOR
from vistumor.stats import rank_auc


def at(r: int, c: int) -> tuple[int, int]:
    """Level-0 (x, y) of the centre of mask pixel (r, c)."""
    return c * 32 + 16, r * 32 + 16


def detections(*rows: tuple[float, tuple[int, int]]) -> np.ndarray:
    return np.array([(p, x, y) for p, (x, y) in rows], np.float64).reshape(-1, 3)


def two_lesions_and_an_itc() -> np.ndarray:
    """100 x 100 mask: lesion A rows/cols 10-59, lesion B rows 10-59 x cols 75-95 (15 px apart,
    more than twice the margin) and a 3 x 3 speck at rows/cols 80-82 / 20-22, whose dilated
    region (~12 px across) is far below the 35.4 px ITC limit."""
    tumor = np.zeros((100, 100), np.uint8)
    tumor[10:60, 10:60] = 255
    tumor[10:60, 75:96] = 255
    tumor[80:83, 20:23] = 255
    return tumor


def two_lesions() -> np.ndarray:
    tumor = two_lesions_and_an_itc()
    tumor[80:83, 20:23] = 0
    return tumor


# -- constants and the evaluation mask ------------------------------------------------------------


def test_constants_are_the_official_scripts():
    assert MARGIN_UM / (PIXEL_UM * 32) == 75 / (0.243 * 2**5 * 2) == pytest.approx(4.8225, abs=1e-4)
    assert ITC_UM / (PIXEL_UM * 32) == 275 / (0.243 * 2**5) == pytest.approx(35.365, abs=1e-3)


def test_margin_keeps_pixels_closer_than_4_82_px():
    """One tumor pixel grows into the lattice points with dx^2 + dy^2 < 4.8225^2 = 23.26:
    |dx| = 0, 1, 2 allow |dy| <= 4 (9 points each), |dx| = 3 allows 3 (7), |dx| = 4 allows 2 (5):
    9 + 2 * (9 + 9 + 7 + 5) = 69 pixels."""
    tumor = np.zeros((40, 40), bool)
    tumor[20, 20] = True
    mask = evaluation_mask(tumor)
    assert mask.area_px.tolist() == [69]
    assert mask.labels[20, 24] == 1 and mask.labels[20, 25] == 0  # 4 px in, 5 px out
    assert mask.itc.tolist() == [True]


def test_margin_and_pixel_size_are_parameters():
    """75 um (the script's comment) is 9.645 px: 9 px away is in, 10 px out. A 0.486 um pixel
    halves the margin to 2.41 px: |dx| = 0, 1 allow |dy| <= 2 (5 each), |dx| = 2 allows 1 (3):
    5 + 2 * (5 + 3) = 21 pixels."""
    tumor = np.zeros((40, 40), bool)
    tumor[20, 20] = True
    wide = evaluation_mask(tumor, margin_um=75)
    assert wide.labels[20, 29] == 1 and wide.labels[20, 30] == 0
    assert evaluation_mask(tumor, pixel_um=0.486).area_px.tolist() == [21]


def test_zero_one_and_zero_255_masks_agree():
    """NCRF issue #40: the script sees no tumor in a 0/1 mask; here any value above 0 is tumor."""
    tumor = two_lesions_and_an_itc()
    np.testing.assert_array_equal(evaluation_mask(tumor).labels, evaluation_mask(tumor // 255).labels)


def test_holes_are_filled_and_regions_labelled_in_raster_order():
    ring = np.zeros((60, 60), bool)
    ring[10:50, 10:50] = True
    ring[11:49, 11:49] = False  # a 38 px hole, far wider than the 4 px growth
    mask = evaluation_mask(ring)
    assert mask.labels[30, 30] == 1 and mask.n_regions == 1
    three = evaluation_mask(two_lesions_and_an_itc())
    # A starts at (6, 6), B at (6, 71), the speck at (76, 17): numbered in that order
    assert (three.labels[30, 30], three.labels[30, 85], three.labels[81, 21]) == (1, 2, 3)
    assert three.itc.tolist() == [False, False, True] and three.n_lesions == 2


def test_empty_mask_has_no_lesion():
    mask = evaluation_mask(np.zeros((20, 20), bool))
    assert mask.n_regions == 0 and not mask.labels.any()
    assert slide_hits("s", detections((0.5, at(3, 3))), mask).fp_probs.tolist() == [0.5]


def test_itc_is_a_major_axis_below_35_37_px():
    """With the margin cut to half a pixel (3.888 um) a region is its tumor exactly. A line
    k px long has coordinate variance (k^2 - 1) / 12, so major axis 4 sqrt((k^2 - 1) / 12):
    30 px gives 34.63 < 35.37 (ITC), 31 px gives 35.78 (a lesion)."""
    tumor = np.zeros((10, 80), bool)
    tumor[2, 5:35] = True  # 30 px
    tumor[7, 40:71] = True  # 31 px
    mask = evaluation_mask(tumor, margin_um=0.5 * 0.243 * 32)
    np.testing.assert_allclose(mask.major_axis_px, [4 * np.sqrt(899 / 12), 4 * np.sqrt(960 / 12)])
    assert mask.itc.tolist() == [True, False]
    assert evaluation_mask(tumor, margin_um=3.888, itc_um=0).itc.tolist() == [False, False]


# -- hits ---------------------------------------------------------------------------------------


def test_hits_index_row_by_y_and_column_by_x():
    """Lesion A reaches column 63 after growing (59 + 4): level-0 x = 2047 is in column 63,
    x = 2048 in column 64. The point at (row 30, col 85) is lesion B; read transposed it
    would be background."""
    mask = evaluation_mask(two_lesions_and_an_itc())
    y = 30 * 32
    hits = slide_hits("s", detections((0.5, (2047, y)), (0.4, (2048, y)), (0.3, at(30, 85))), mask)
    assert hits.best_probs[0] == 0.5 and hits.best_probs[1] == 0.3
    assert hits.fp_probs.tolist() == [0.4]


def test_duplicates_and_itc_hits_are_neither_tp_nor_fp():
    mask = evaluation_mask(two_lesions_and_an_itc())
    hits = slide_hits("s", detections((0.6, at(40, 40)), (0.9, at(30, 30)), (0.7, at(81, 21))), mask)
    assert hits.fp_probs.size == 0 and hits.hits == 1 and hits.n_lesions == 2 and hits.n_itc == 1
    assert hits.best_probs[0] == 0.9 and hits.best_points[0].tolist() == list(at(30, 30))
    assert hits.official_tp().tolist() == [np.float32(0.9), 0.0, 0.0]  # missed B and the ITC are 0
    assert hits.strict_tp().tolist() == [0.9]


def test_detection_outside_the_mask_names_slide_and_point():
    mask = evaluation_mask(two_lesions_and_an_itc())  # 100 x 100 px = 3200 x 3200 level-0 px
    with pytest.raises(VisTumorError, match=r"slide tumor_7: detection 2 .*\(3200, 10\)"):
        slide_hits("tumor_7", detections((0.5, at(1, 1)), (0.5, (3200, 10))), mask)
    with pytest.raises(VisTumorError, match=r"\(-1, 10\)"):  # the script would wrap round silently
        slide_hits("tumor_7", detections((0.5, (-1, 10))), mask)


def test_normal_slide_detections_are_all_false_positives_anywhere():
    hits = slide_hits("normal", detections((0.5, at(30, 30)), (0.4, (10**6, 10**6))), None)
    assert hits.fp_probs.tolist() == [0.5, 0.4] and hits.n_lesions == 0


def test_probabilities_outside_zero_one_are_refused_by_slide():
    """Issue 17.3, arrays handed to the API: -0.5 would sort below the official 0 placeholders."""
    with pytest.raises(VisTumorError, match=r"slide normal: detection 2 has probability -0.5, outside \[0, 1\]"):
        slide_hits("normal", detections((0.5, at(1, 1)), (-0.5, at(2, 2))), None)
    with pytest.raises(VisTumorError, match="probability 1.5"):
        slide_hits("t", detections((1.5, at(1, 1))), evaluation_mask(two_lesions()))


def test_a_tumor_mask_without_region_leaves_the_lesion_task_named():
    """Issue 17.8 through the API: test_002's mask holds no region; it is not scored in the
    lesion task (its 0.7 is no false positive), is named in ``unusable``, and stays in the AUC."""
    masks = {"test_001": evaluation_mask(two_lesions()), "test_002": evaluation_mask(np.zeros((100, 100)))}
    preds = {"test_001": detections((0.9, at(30, 30))), "test_002": detections((0.7, at(5, 5)))}
    ev = evaluate(preds, masks, {"test_001": 1, "test_002": 1, "test_003": 0}, n_bootstrap=5)
    assert ev.unusable == {"test_002": "its evaluation mask holds no tumor region"}
    assert [h.slide for h in ev.hits] == ["test_001", "test_003"] and ev.n_slides("auc") == 3
    assert sum(h.false_positives for h in ev.hits) == 0


# -- FROC ---------------------------------------------------------------------------------------


def scenario() -> list:
    """Tumor slide: A hit at 0.9 and again at 0.6 (duplicate), the ITC hit at 0.7 (ignored),
    B hit at 0.2, false positives 0.8 and 0.3. Normal slide: false positives 0.5 and 0.4.

    Official: FPs [0.8, 0.3, 0.5, 0.4]; TP list [f32(0.9), f32(0.2), 0 (the ITC)]; thresholds
    = sorted unique values without the lowest (0): 0.2, 0.3, 0.4, 0.5, 0.8, 0.9 give
    FPs >= t: 4, 4, 3, 2, 1, 0 (/ 2 slides) and TPs >= t: 2, 1, 1, 1, 1, 1 (/ 2 lesions);
    then (0, 0). FPs/slide [2, 2, 1.5, 1, .5, 0, 0], sensitivity [1, .5, .5, .5, .5, .5, 0].
    np.interp over the reversed curve: at 0.25, 0.5 and 1 FPs/slide 0.5; at 2 (the last x)
    1.0, and beyond it 1.0: FROC = (3 * 0.5 + 3 * 1) / 6 = 0.75. Strict gives the same curve
    (its lowest threshold is 0.2, a real hit, which the official list also keeps).
    """
    tumor = slide_hits("tumor", detections(
        (0.9, at(30, 30)), (0.6, at(40, 40)), (0.7, at(81, 21)), (0.8, at(90, 60)), (0.3, at(95, 95)),
        (0.2, at(30, 85)),
    ), evaluation_mask(two_lesions_and_an_itc()))
    normal = slide_hits("normal", detections((0.5, at(30, 30)), (0.4, at(1, 1))), None)
    return [tumor, normal]


@pytest.mark.parametrize("mode", [OFFICIAL, STRICT])
def test_two_lesions_one_itc_duplicate_and_normal_slide(mode):
    curve = froc_curve(scenario(), mode)
    np.testing.assert_allclose(curve.thresholds, [0.2, 0.3, 0.4, 0.5, 0.8, 0.9], atol=1e-7)
    assert curve.fp_per_slide.tolist() == [2, 2, 1.5, 1, 0.5, 0, 0]
    assert curve.sensitivity.tolist() == [1, 0.5, 0.5, 0.5, 0.5, 0.5, 0]
    assert curve.sensitivity_at().tolist() == [0.5, 0.5, 0.5, 1, 1, 1]
    assert curve.score == 0.75 and (curve.n_slides, curve.n_lesions) == (2, 2)


def test_lowest_threshold_quirk_official_and_strict_differ():
    """Both lesions hit (0.9 on A, 0.4 on B), one false positive (0.6), no ITC, one slide.

    Official: all_probs = [f32(0.4), 0.6, f32(0.9)] loses 0.4, a real hit: thresholds 0.6
    and 0.9 give (1 FP, 0.5) and (0, 0.5), then (0, 0); reversed x [0, 0, 1], y [0, .5, .5]:
    0.5 at every rate, FROC 0.5.
    Strict: thresholds 0.4, 0.6, 0.9 give (1, 1.0), (1, 0.5), (0, 0.5), then (0, 0);
    reversed x [0, 0, 1, 1], y [0, .5, .5, 1]: 0.5 at 0.25 and 0.5 FPs, 1.0 from 1 FP on:
    FROC (2 * 0.5 + 4 * 1) / 6 = 5/6.
    """
    hits = [slide_hits("t", detections((0.9, at(30, 30)), (0.4, at(30, 85)), (0.6, at(90, 60))),
                       evaluation_mask(two_lesions()))]
    official, strict = froc_curve(hits, OFFICIAL), froc_curve(hits, STRICT)
    assert official.fp_per_slide.tolist() == [1, 0, 0] and official.sensitivity.tolist() == [0.5, 0.5, 0]
    assert official.score == 0.5
    assert strict.fp_per_slide.tolist() == [1, 1, 0, 0] and strict.sensitivity.tolist() == [1, 0.5, 0.5, 0]
    assert strict.score == pytest.approx(5 / 6, abs=1e-15)


def test_official_keeps_float32_probabilities_of_hits():
    """The script stores hits in a float32 array: f32(0.3) = 0.30000001 > 0.3. A hit on A and a
    false positive, both 0.3, B missed, one slide.

    Official: TP list [f32(0.3), 0], FPs [0.3]: thresholds [0.3, f32(0.3)] give (1 FP, 0.5)
    and (0 FP, 0.5): the hit survives a threshold the FP does not; then (0, 0). Reversed
    x [0, 0, 1], y [0, .5, .5]: 0.5 everywhere, FROC 0.5.
    Strict: one threshold 0.3, (1, 0.5), then (0, 0); reversed x [0, 1], y [0, .5]: 0.125 at
    0.25 FPs, 0.25 at 0.5, 0.5 from 1 on: FROC (0.125 + 0.25 + 4 * 0.5) / 6 = 2.375 / 6.
    """
    hits = [slide_hits("t", detections((0.3, at(30, 30)), (0.3, at(90, 60))), evaluation_mask(two_lesions()))]
    official, strict = froc_curve(hits, OFFICIAL), froc_curve(hits, STRICT)
    assert official.thresholds.tolist() == [0.3, float(np.float32(0.3))]
    assert official.fp_per_slide.tolist() == [1, 0, 0] and official.sensitivity.tolist() == [0.5, 0.5, 0]
    assert official.score == 0.5
    assert strict.fp_per_slide.tolist() == [1, 0] and strict.sensitivity.tolist() == [0.5, 0]
    assert strict.score == 2.375 / 6


def test_no_lesion_and_bad_mode_are_errors():
    with pytest.raises(VisTumorError, match="no lesion"):
        froc_curve([slide_hits("n", detections((0.5, at(1, 1))), None)])
    with pytest.raises(ConfigError, match="mode"):
        froc(scenario(), "lenient")


# -- AUC and bootstrap ----------------------------------------------------------------------------


def test_auc_by_hand():
    """Tumor 0.9 and 0.4, normal 0.5 and 0.1: of 4 tumor-normal pairs 3 are ordered: 0.75.
    ROC: thresholds 0.9, 0.5, 0.4, 0.1 give (fpr, tpr) (0, .5), (.5, .5), (.5, 1), (1, 1)."""
    labels, scores = [TUMOR, TUMOR, NORMAL, NORMAL], [0.9, 0.4, 0.5, 0.1]
    assert roc_auc(labels, scores) == 0.75
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thresholds[1:].tolist() == [0.9, 0.5, 0.4, 0.1]
    assert np.trapezoid(tpr, fpr) == 0.75
    assert roc_auc([TUMOR, NORMAL], [0.5, 0.5]) == 0.5  # a tie counts one half
    with pytest.raises(VisTumorError, match="tumor and normal"):
        roc_auc([TUMOR, TUMOR], [0.1, 0.2])


def test_one_rank_auc_below_the_slide_auc_and_the_pixel_auroc():
    """Positives 3, 2, 2 and negatives 2, 1: mean ranks 5, 3, 3 (the three 2s share ranks 2-4)
    and 3, 1; R+ = 11, AUC = (11 - 3 * 4 / 2) / (3 * 2) = 5/6 (pairs: 2 + 1.5 + 1.5 of 6).
    The slide AUC and the map's pixel AUROC are that one function."""
    positive, scores = np.array([1, 1, 1, 0, 0], bool), np.array([3.0, 2, 2, 2, 1])
    assert rank_auc(positive, scores) == pytest.approx(5 / 6)
    assert roc_auc(np.where(positive, TUMOR, NORMAL), scores) == pytest.approx(5 / 6)
    assert pixel_auroc(scores.reshape(1, 5), positive.reshape(1, 5)) == pytest.approx(5 / 6)
    assert np.isnan(rank_auc(np.ones(3, bool), [0.1, 0.2, 0.3]))
    assert localization.rank_auc is evaluation_auc.rank_auc is rank_auc


def test_bootstrap_ci_by_hand():
    """Two slides valued 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4,
    so the 2.5th and 97.5th percentiles are 0 and 1. A constant gives a zero-width interval.
    With one tumor and one normal slide, half the resamples have one class and are skipped;
    the others all have AUC 1."""
    assert bootstrap_ci({"a": 0.0, "b": 1.0}, np.mean, n=1000, seed=0) == (0.0, 1.0)
    assert bootstrap_ci([2.0, 2.0, 2.0], np.mean, n=50) == (2.0, 2.0)
    assert auc_ci([TUMOR, NORMAL], [0.9, 0.1], n=200) == (1.0, 1.0)
    assert bootstrap_ci(range(20), np.mean, seed=3) == bootstrap_ci(range(20), np.mean, seed=3)
    assert bootstrap_ci(range(20), np.mean, seed=3) != bootstrap_ci(range(20), np.mean, seed=4)


# -- evaluate() ---------------------------------------------------------------------------------


def oracle_inputs(with_itc: bool):
    masks = {"tumor_1": evaluation_mask(two_lesions_and_an_itc() if with_itc else two_lesions()),
             "tumor_2": evaluation_mask(two_lesions())}
    predictions = {name: np.column_stack([np.ones(m.n_regions), m.points]) for name, m in masks.items()}
    reference = {"tumor_1": "tumor", "tumor_2": "tumor", "normal_1": "normal", "normal_2": "normal"}
    return predictions, masks, reference


def test_oracle_detections_score_one():
    """One detection (prob 1) inside each region, nothing else: every lesion found without a
    false positive, FROC 1 and AUC 1 (tumor slides score 1, normal ones 0)."""
    predictions, masks, reference = oracle_inputs(with_itc=True)
    for mode in (OFFICIAL, STRICT):
        ev = evaluate(predictions, masks, reference, mode=mode, n_bootstrap=20)
        assert ev.froc == 1.0 and ev.auc == 1.0
        assert ev.without_predictions == ["normal_1", "normal_2"] and ev.curve.n_slides == 4


def test_oracle_without_any_itc_shows_the_official_quirk():
    """No ITC and no miss: the official TP list holds no 0, so all_probs[1:] drops the only
    threshold (1.0) and the curve is the lone (0, 0): FROC 0. Strict scores 1."""
    predictions, masks, reference = oracle_inputs(with_itc=False)
    assert evaluate(predictions, masks, reference, mode=OFFICIAL, n_bootstrap=5).froc == 0.0
    assert evaluate(predictions, masks, reference, mode=STRICT, n_bootstrap=5).froc == 1.0


def test_official_exclusions_leave_129_slides_for_auc_and_128_for_froc():
    reference = [ReferenceSlide(f"Test_{i:03d}", TUMOR if i in (1, 114) else NORMAL) for i in range(1, 131)]
    predictions = {"test_001": detections((0.9, at(30, 30))), "test_114": detections((0.8, at(1, 1)))}
    masks = {"test_001": evaluation_mask(two_lesions_and_an_itc())}
    ev = evaluate(predictions, masks, reference, n_bootstrap=5)
    assert (ev.n_slides("auc"), ev.n_slides("froc")) == (129, 128)
    assert ev.excluded == {"auc": ["Test_049"], "froc": ["Test_049", "Test_114"]}
    assert ev.curve.n_slides == 128 and ev.auc == 1.0  # test_114 scores 0.8, every normal slide 0


def test_parse_exclude():
    expected = {"auc": {"test_049"}, "froc": {"test_049", "test_114"}}
    assert parse_exclude(["Test_049", "test_114:froc"]) == expected
    with pytest.raises(ConfigError, match="slide:task"):
        parse_exclude(["test_001:lesions"])


def test_names_match_case_insensitively_and_scores_override_the_max():
    masks = {"TEST_001": evaluation_mask(two_lesions_and_an_itc())}
    ev = evaluate({"Test_001": detections((0.9, at(30, 30)))}, masks, {"test_001": 1, "test_002": 0},
                  scores={"test_001": 0.2, "TEST_002": 0.3}, n_bootstrap=5)
    assert ev.auc == 0.0 and ev.hits[0].hits == 1


@pytest.mark.parametrize(("predictions", "masks", "scores", "message"), [
    ({"test_003": np.zeros((0, 3))}, {"test_001": None}, None, "reference does not list"),
    ({}, {"test_001": None}, None, "tumor slide 'test_001' has no predictions"),
    ({"test_001": np.zeros((0, 3))}, {"test_001": None}, {"test_001": 0.5}, "no score for 1 slide"),
])
def test_evaluate_errors(predictions, masks, scores, message):
    masks = {k: evaluation_mask(two_lesions()) for k in masks}
    with pytest.raises(VisTumorError, match=message):
        evaluate(predictions, masks, {"test_001": "tumor", "test_002": "normal"}, scores=scores,
                 n_bootstrap=5)


def test_masks_must_agree_with_the_reference():
    mask = evaluation_mask(two_lesions())
    with pytest.raises(AnnotationError, match="'test_002' is normal in the reference but has a"):
        evaluate({"test_001": np.zeros((0, 3))}, {"test_001": mask, "test_002": mask},
                 {"test_001": "tumor", "test_002": "normal"})
    with pytest.raises(AnnotationError, match="'test_001' is tumor in the reference but has no"):
        evaluate({"test_001": np.zeros((0, 3))}, {}, {"test_001": "tumor", "test_002": "normal"})
