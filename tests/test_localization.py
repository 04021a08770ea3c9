"""Localization scores on hand-made maps and masks whose answers can be written down."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vistumor.explain import localization
from vistumor.explain.localization import (
    SCORE_NAMES,
    batch_scores,
    energy,
    mean_scores,
    overlap,
    pixel_auroc,
    pointing,
    scores,
)

# A 4 x 4 map and a mask covering the left half but for its bottom-left pixel (7 tumor pixels).
CAM = np.array(
    [
        [0.9, 0.8, 0.1, 0.0],
        [0.6, 0.5, 0.2, 0.0],
        [0.4, 0.3, 0.5, 0.0],
        [0.0, 0.1, 0.0, 0.0],
    ]
)
MASK = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 0, 0],
    ],
    bool,
)


def test_pointing_hit_and_miss():
    assert pointing(CAM, MASK) == 1.0  # peak 0.9 at (0, 0)
    assert pointing(CAM, ~MASK) == 0.0


def test_pointing_flat_map_has_no_peak():
    assert math.isnan(pointing(np.zeros((4, 4)), MASK))
    assert math.isnan(pointing(np.full((4, 4), 0.3), MASK))


def test_pointing_tolerance_is_euclidean():
    mask = np.zeros((20, 20), bool)
    mask[10, 10] = True
    cam = np.zeros((20, 20))
    cam[13, 14] = 1.0  # 3-4-5: 5 px from the tumor pixel (7 px in city-block distance)
    assert pointing(cam, mask) == 0.0
    assert pointing(cam, mask, tolerance=4) == 0.0
    assert pointing(cam, mask, tolerance=5) == 1.0
    assert pointing(cam, mask, tolerance=4.9) == 0.0


def test_pointing_takes_uint8_masks():
    cam = np.zeros((5, 5))
    cam[1, 1] = 1.0
    mask = np.zeros((5, 5), np.uint8)
    mask[3, 1] = 1
    assert pointing(cam, mask, tolerance=2) == 1.0
    assert pointing(cam, mask, tolerance=1) == 0.0


def test_energy():
    inside = 0.9 + 0.8 + 0.6 + 0.5 + 0.4 + 0.3 + 0.1  # 3.6
    total = inside + 0.1 + 0.2 + 0.5  # 4.4
    assert energy(CAM, MASK) == pytest.approx(inside / total)
    assert energy(CAM, MASK.astype(np.uint8)) == pytest.approx(inside / total)
    assert math.isnan(energy(np.zeros((4, 4)), MASK))


def test_overlap_threshold_is_inclusive():
    # cam >= 0.5: (0,0) (0,1) (1,0) (1,1) (2,2) -> 5 pixels, 4 of them tumor; mask has 7
    iou, dice = overlap(CAM, MASK, 0.5)
    assert iou == pytest.approx(4 / 8)  # union 5 + 7 - 4
    assert dice == pytest.approx(2 * 4 / (5 + 7))
    iou, dice = overlap(CAM, MASK, 0.51)  # (1,1) and (2,2) drop out: 3 pixels, all tumor
    assert iou == pytest.approx(3 / 7)
    assert dice == pytest.approx(6 / 10)


def test_overlap_empty_everything_is_undefined():
    iou, dice = overlap(np.zeros((3, 3)), np.zeros((3, 3), bool), 0.5)
    assert math.isnan(iou) and math.isnan(dice)


def test_pixel_auroc_hand_counted_with_ties():
    cam = np.array([[0.9, 0.1], [0.5, 0.5]])
    mask = np.array([[1, 0], [1, 0]], bool)
    # pairs (pos, neg): 0.9>0.1, 0.9>0.5, 0.5>0.1, 0.5=0.5 (a tie counts one half)
    assert pixel_auroc(cam, mask) == pytest.approx(3.5 / 4)


def test_pixel_auroc_perfect_inverted_and_flat():
    assert pixel_auroc(MASK.astype(float), MASK) == 1.0
    assert pixel_auroc((~MASK).astype(float), MASK) == 0.0
    assert pixel_auroc(np.full((4, 4), 0.7), MASK) == 0.5


def test_pixel_auroc_undefined_on_one_class():
    assert math.isnan(pixel_auroc(CAM, np.ones((4, 4), bool)))
    assert math.isnan(pixel_auroc(CAM, np.zeros((4, 4), bool)))


def test_scores_has_every_name_and_accepts_uint8_mask():
    out = scores(CAM, MASK.astype(np.uint8), cam_threshold=0.51)
    assert tuple(out) == SCORE_NAMES
    assert out["pointing"] == 1.0
    assert out["iou"] == pytest.approx(3 / 7)
    assert out["dice"] == pytest.approx(6 / 10)
    assert out["energy"] == pytest.approx(3.6 / 4.4)
    # 7 tumor vs 9 normal pixels (six 0.0, 0.1, 0.2, 0.5); normals below each tumor value,
    # ties halved: 0.9, 0.8, 0.6: 9 each; 0.5: 8.5; 0.4, 0.3: 8 each; 0.1: 6.5 -> 58 of 63
    assert out["auroc"] == pytest.approx(58 / 63)


def test_batch_scores_skips_unknown_and_tumor_free_masks():
    cams = np.stack([CAM, CAM, CAM])
    masks = np.stack([MASK, np.zeros((4, 4), bool), MASK])
    out = batch_scores(cams, masks, usable=np.array([True, True, False]))
    assert out[0] == scores(CAM, MASK)
    assert out[1] is None  # no tumor in the mask
    assert out[2] is None  # mask unknown
    assert batch_scores(cams, masks)[2] == scores(CAM, MASK)


def test_batch_scores_passes_threshold_and_tolerance():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 10, 10] = True
    cam = np.zeros((1, 20, 20))
    cam[0, 13, 14] = 1.0
    assert batch_scores(cam, mask, tolerance=5)[0]["pointing"] == 1.0
    assert batch_scores(cam, mask, cam_threshold=1.01)[0]["iou"] == 0.0


def test_mean_scores_counts_and_ignores_nan():
    rows = [
        {"pointing": 1.0, "energy": 0.5, "iou": 0.2, "dice": 0.4, "auroc": float("nan")},
        None,
        {"pointing": 0.0, "energy": 0.7, "iou": 0.4, "dice": 0.6, "auroc": float("nan")},
        {"pointing": float("nan"), "energy": 0.9, "iou": 0.6, "dice": 0.8, "auroc": 0.75},
    ]
    means = mean_scores(rows)
    assert means["n"] == 3
    assert means["pointing"] == pytest.approx(0.5)
    assert means["energy"] == pytest.approx(0.7)
    assert means["iou"] == pytest.approx(0.4)
    assert means["dice"] == pytest.approx(0.6)
    assert means["auroc"] == pytest.approx(0.75)


def test_mean_scores_of_nothing():
    means = mean_scores([None, None])
    assert means["n"] == 0
    assert all(math.isnan(means[name]) for name in localization.SCORE_NAMES)
    all_nan = {name: float("nan") for name in SCORE_NAMES}
    assert math.isnan(mean_scores([all_nan])["auroc"]) and mean_scores([all_nan])["n"] == 1
