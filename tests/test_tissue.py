"""Tissue mask: Otsu on saturation finds coloured tissue on any pale background."""

from __future__ import annotations

import numpy as np
import pytest

from vistumor.tiling.tissue import TissueParams, remove_small, saturation_threshold, tissue_mask

H, W = 120, 160
PARAMS = TissueParams(downsample=1, min_area=64)


def blob() -> np.ndarray:
    """An ellipse of radii 30 x 22 px centred in a 120 x 160 image."""
    yy, xx = np.mgrid[:H, :W]
    return ((xx - 80) / 30.0) ** 2 + ((yy - 60) / 22.0) ** 2 <= 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def paint(background, mask, colour=(190, 95, 170), noise=4.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = np.empty((H, W, 3), np.float64)
    rgb[:] = background
    rgb[mask] = colour
    rgb += rng.normal(0, noise, rgb.shape)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "background",
    [(255, 255, 255), (205, 205, 205), (243, 238, 228)],
    ids=["white", "grey", "off-white"],
)
@pytest.mark.parametrize("colour", [(190, 95, 170), (120, 80, 170)], ids=["pink", "purple"])
def test_blob_found_on_each_background(background, colour):
    truth = blob()
    mask = tissue_mask(paint(background, truth, colour), PARAMS)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert iou(mask, truth) > 0.95


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_empty_white_slide_gives_empty_mask(noise):
    empty = paint((252, 252, 252), np.zeros((H, W), bool), noise=noise)
    assert not tissue_mask(empty, PARAMS).any()


def test_threshold_is_clamped_to_the_floor_on_empty_glass():
    params = TissueParams(min_saturation=0.07)
    assert saturation_threshold(np.zeros((8, 8), np.uint8), params) == pytest.approx(0.07 * 255)


def test_stitching_line_and_specks_removed():
    truth = blob()
    rgb = paint((250, 250, 250), truth)
    rgb[:, 10] = (150, 40, 150)  # a 1-px stitching seam, full height
    rgb[100, :] = (150, 40, 150)  # and a horizontal one
    for y, x in [(10, 30), (15, 140), (105, 140), (20, 60)]:
        rgb[y : y + 2, x : x + 2] = (160, 60, 150)  # 2 x 2 px specks of dust
    rgb[5:9, 120:124] = (160, 60, 150)  # a 4 x 4 speck survives blur and opening...
    mask = tissue_mask(rgb, PARAMS)  # ... but not min_area
    assert not mask[:, 10].any() and not mask[100, :].any()
    assert not mask[:30, :].any()
    assert iou(mask, truth) > 0.95


def test_holes_filled_and_gaps_closed():
    truth = blob()
    holed = truth.copy()
    holed[55:65, 75:85] = False  # a lumen inside the tissue
    holed[:, 79:81] = False  # a 2-px crack across it
    mask = tissue_mask(paint((255, 255, 255), holed, noise=0), PARAMS)
    assert mask[60, 80] and iou(mask, truth) > 0.95


def test_dark_artefacts_are_not_tissue():
    rgb = paint((255, 255, 255), np.zeros((H, W), bool), noise=0)
    rgb[30:90, 40:120] = (20, 5, 25)  # saturated but almost black: pen ink, folds
    assert not tissue_mask(rgb, PARAMS).any()


def test_remove_small_keeps_components_at_the_limit():
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[5:8, 5:8] = True  # 9 px
    mask[9, 0] = True  # 1 px
    only_big = np.zeros((10, 10), bool)
    only_big[5:8, 5:8] = True
    np.testing.assert_array_equal(remove_small(mask, 9), only_big)
    assert remove_small(mask, 4).sum() == 13
    assert remove_small(mask, 1).sum() == 14
