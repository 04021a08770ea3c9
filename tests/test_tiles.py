"""The tile grid, box fractions and labels, on inputs small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vistumor.tiling.grid import (
    AMBIGUOUS,
    NORMAL,
    TUMOR,
    GridSpec,
    box_fractions,
    grid_coordinates,
    keep_tissue,
    label_tiles,
)


def spec(size0: float, stride0: float) -> GridSpec:
    return GridSpec(level=0, read_size=int(size0), size0=size0, stride0=stride0)


def test_grid_width_10_size_4_stride_3():
    x0, y0 = grid_coordinates(10, 4, spec(4, 3))
    assert list(x0) == [0, 3, 6]  # 6 + 4 = 10 fits; 9 + 4 = 13 does not
    assert list(y0) == [0, 0, 0]


def test_grid_is_row_major():
    x0, y0 = grid_coordinates(8, 7, spec(4, 3))  # x: 0, 3 (6 + 4 > 8); y: 0, 3 (3 + 4 = 7)
    assert list(zip(x0, y0, strict=True)) == [(0, 0), (3, 0), (0, 3), (3, 3)]


@pytest.mark.parametrize(
    ("width", "size0", "stride0", "expected"),
    [
        (12, 4, 4, [0, 4, 8]),  # no overlap, exact fit
        (11, 4, 4, [0, 4]),  # the partial last tile is dropped
        (3, 4, 4, []),  # slide narrower than one tile
        (4, 4, 4, [0]),
        (10, 3, 2.5, [0, 2, 5]),  # fractional stride (target_mpp): floor(k * 2.5); 7.5 + 3 > 10
        (30, 10, 10 / 3, [0, 3, 6, 10, 13, 16, 20]),  # 20 + 10 = 30 fits despite float 6 * 10/3
    ],
)
def test_grid_coordinates(width, size0, stride0, expected):
    x0, _ = grid_coordinates(width, int(size0), spec(size0, stride0))
    assert list(x0) == expected


# A hand-made 6-row x 9-column mask (tiatoolbox test_filter_coordinates style).
MASK = np.array(
    [
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 1],
    ],
    dtype=bool,
)


def test_box_fractions_downsample_1():
    x0 = np.array([0, 3, 6, 0, 3, 6])
    y0 = np.array([0, 0, 0, 3, 3, 3])
    fractions = box_fractions(MASK, 1.0, x0, y0, 3)
    np.testing.assert_allclose(fractions, [9 / 9, 3 / 9, 0, 0, 6 / 9, 2 / 9])


def test_box_fractions_downsample_2():
    """Mask pixel (c, r) stands for level-0 point (2c + 1, 2r + 1)."""
    cases = {
        (0, 0, 6): 9 / 9,  # pixels c, r in 0..2
        (6, 6, 6): 6 / 9,  # c, r in 3..5
        (12, 6, 6): 2 / 9,  # c in 6..8, r in 3..5
        (4, 4, 4): 3 / 4,  # centres 5 and 7: c, r in 2..3
        (1, 0, 4): 4 / 4,  # centres 1 and 3: c, r in 0..1
        (4, 0, 4): 2 / 4,  # centres 5 and 7: c in 2..3, r in 0..1; column 3 is empty
        (14, 8, 6): 2 / 9,  # past the border: c in 7..9, r in 4..6; outside pixels count as empty
    }
    for (x, y, size), expected in cases.items():
        got = box_fractions(MASK, 2.0, np.array([x]), np.array([y]), size)
        assert got[0] == pytest.approx(expected), (x, y, size)


def test_box_fractions_downsample_4_counts_pixel_centres():
    """Pixel c stands for level-0 x = 4c + 2, not for the span [4c, 4c + 4) it starts."""
    # centres 10 and 14 lie in [7, 15): columns 2..3; centres 6 and 10 in [3, 11): rows 1..2
    got = box_fractions(MASK, 4.0, np.array([7]), np.array([3]), 8)
    assert got[0] == pytest.approx(3 / 4)  # (1, 2), (2, 2), (2, 3) set; (1, 3) not


def test_box_fractions_vectorised_equals_one_by_one():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    x0 = rng.integers(0, 180, 30)
    y0 = rng.integers(0, 140, 30)
    together = box_fractions(mask, 4.0, x0, y0, 24)
    for i in range(30):
        c0, r0 = int(np.ceil(x0[i] / 4 - 0.5)), int(np.ceil(y0[i] / 4 - 0.5))
        c1, r1 = int(np.ceil((x0[i] + 24) / 4 - 0.5)), int(np.ceil((y0[i] + 24) / 4 - 0.5))
        padded = np.zeros((60, 70), bool)
        padded[:40, :50] = mask
        assert together[i] == pytest.approx(padded[r0:r1, c0:c1].mean())


def test_exactly_sixty_percent_tissue_is_kept():
    mask = np.zeros((5, 5), bool)
    mask[:3] = True  # 15 of 25 = 60 %
    mask_59 = mask.copy()
    mask_59[0, 0] = False  # 14 of 25 = 56 %
    fractions = np.concatenate([
        box_fractions(mask, 1.0, np.array([0]), np.array([0]), 5),
        box_fractions(mask_59, 1.0, np.array([0]), np.array([0]), 5),
    ])
    np.testing.assert_allclose(fractions, [0.6, 0.56])
    assert list(keep_tissue(fractions, 0.6)) == [True, False]
    # 0.1 + 0.2 + 0.3 = 0.6000000000000001
    assert list(keep_tissue([0.1 + 0.2 + 0.3, 0.6 - 1e-6], 0.6)) == [True, False]


def test_label_thresholds():
    fractions = [0.0, 1e-6, 0.02, 0.05 - 1e-6, 0.05, 204.8 / 4096, 0.3 * (1 / 6), 0.5, 1.0]
    # 0.3 * (1/6) = 0.049999999999999996: "exactly 5 %" after float rounding
    expected = [NORMAL, AMBIGUOUS, AMBIGUOUS, AMBIGUOUS, TUMOR, TUMOR, TUMOR, TUMOR, TUMOR]
    assert list(label_tiles(fractions, 0.05)) == expected
    assert label_tiles(fractions, 0.05).dtype == np.int8


def test_label_threshold_is_configurable():
    assert list(label_tiles([0.0, 0.3, 0.5], 0.5)) == [NORMAL, AMBIGUOUS, TUMOR]
