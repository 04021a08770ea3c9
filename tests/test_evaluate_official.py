"""``mode=official`` equals a direct port of the official ``Evaluation_FROC.py``
(``tests/official_froc.py``) on many seeded random cases; ``mode=strict`` equals a naive
restatement of its own rule."""

from __future__ import annotations

import numpy as np
import official_froc as official
import pytest

from vistumor.evaluate.camelyon16.auc import bootstrap_ci
from vistumor.evaluate.camelyon16.froc import OFFICIAL, STRICT, PooledHits, froc, froc_ci, froc_curve, slide_hits
from vistumor.evaluate.camelyon16.masks import evaluation_mask


def random_tumor(rng: np.random.Generator, lesion: bool = False) -> np.ndarray:
    """A 0/255 level-5 mask of 40-80 px a side with 1-5 rectangles or discs, some ITC-sized,
    some touching or overlapping, some with holes; with ``lesion``, a large disc in the middle."""
    h, w = rng.integers(40, 81, 2)
    tumor = np.zeros((h, w), np.uint8)
    rr, cc = np.mgrid[0:h, 0:w]
    if lesion:  # a disc ~40 px across once grown: no ITC
        tumor[(rr - h // 2) ** 2 + (cc - w // 2) ** 2 <= 15**2] = 255
    for _ in range(rng.integers(1, 6)):
        r, c = rng.integers(0, h), rng.integers(0, w)
        size = int(rng.choice([1, 2, 4, 8, 15, 25]))
        if rng.random() < 0.5:
            tumor[r : r + size, c : c + 2 * size] = 255
        else:
            tumor[(rr - r) ** 2 + (cc - c) ** 2 <= size**2] = 255
        if rng.random() < 0.2:
            tumor[r + 1 : r + size - 1, c + 1 : c + size - 1] = 0
    return tumor


def random_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    """NCRF-style 5-decimal probabilities (float32 rounding up and down), ties, zeros or uniform."""
    kind = rng.integers(4)
    if kind == 0:
        return np.round(rng.random(n), 5)
    if kind == 1:
        return rng.choice([0.25, 0.5, 0.75, 0.9], n)
    if kind == 2:
        return np.where(rng.random(n) < 0.3, 0.0, rng.random(n))
    return rng.random(n)


def random_case(rng: np.random.Generator, hit_everything: bool):
    """Official-format cases (name, probs, xs, ys, 0/255 RGB mask or None) and our inputs."""
    cases = []
    for i in range(int(rng.integers(1, 4)) + int(rng.integers(0, 3))):
        tumor = random_tumor(rng, lesion=i == 0) if i == 0 or rng.random() < 0.6 else None
        h, w = tumor.shape if tumor is not None else (50, 50)
        n = int(rng.integers(0, 12))
        xs, ys = rng.integers(0, w * 32, n), rng.integers(0, h * 32, n)
        if tumor is not None and (hit_everything or rng.random() < 0.5):
            points = evaluation_mask(tumor).points
            keep = rng.random(len(points)) < (1.0 if hit_everything else 0.7)
            xs, ys = np.r_[xs, points[keep, 0]], np.r_[ys, points[keep, 1]]
        probs = random_probs(rng, len(xs))
        pixels = None if tumor is None else np.repeat(tumor[:, :, None], 3, axis=2)
        cases.append((f"case_{i}", probs.tolist(), xs.tolist(), ys.tolist(), pixels))
    return cases


def ours(cases, mode: str):
    hits = []
    for name, probs, xs, ys, pixels in cases:
        mask = None if pixels is None else evaluation_mask(pixels[:, :, 0])
        hits.append(slide_hits(name, np.column_stack([probs, xs, ys]).reshape(-1, 3), mask))
    return froc_curve(hits, mode)


@pytest.mark.parametrize("seed", range(6))
def test_official_mode_equals_the_official_script(seed):
    """30 cases a seed, one in four with every region hit (the lowest-threshold quirk when
    no slide has an ITC)."""
    rng = np.random.default_rng(seed)
    for k in range(30):
        cases = random_case(rng, hit_everything=k % 4 == 0)
        fps, sensitivity, score = official.froc_of_cases(cases)
        curve = ours(cases, OFFICIAL)
        assert curve.fp_per_slide.shape == fps.shape
        np.testing.assert_allclose(curve.fp_per_slide, fps, rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve.sensitivity, sensitivity, rtol=0, atol=1e-12)
        assert abs(curve.score - score) <= 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_masks_and_itcs_equal_the_official_script(seed):
    """Labels (the distance transform runs on a crop here) and ITC lists, region by region."""
    rng = np.random.default_rng(100 + seed)
    for _ in range(25):
        tumor = random_tumor(rng)
        expected = official.evaluation_mask_from_pixels(np.repeat(tumor[:, :, None], 3, axis=2))
        mask = evaluation_mask(tumor)
        np.testing.assert_array_equal(mask.labels, expected)
        assert (np.flatnonzero(mask.itc) + 1).tolist() == official.computeITCList(expected, 0.243, 5)


def naive_strict(hits) -> tuple[list[float], list[float]]:
    """Strict rule, spelled out: thresholds are the real detections' probabilities (FPs and
    best hits on lesions), every one kept; count FPs and hit lesions at or above each."""
    fp = [p for h in hits for p in h.fp_probs.tolist()]
    tp = [p for h in hits for p in h.strict_tp().tolist()]
    n_slides, n_lesions = len(hits), sum(h.n_lesions for h in hits)
    fps, sens = [], []
    for t in sorted(set(fp + tp)):
        fps.append(sum(p >= t for p in fp) / n_slides)
        sens.append(sum(p >= t for p in tp) / n_lesions)
    return fps + [0.0], sens + [0.0]


@pytest.mark.parametrize("seed", range(4))
def test_strict_mode_equals_its_naive_rule(seed):
    rng = np.random.default_rng(200 + seed)
    for k in range(30):
        cases = random_case(rng, hit_everything=k % 3 == 0)
        hits = [slide_hits(n, np.column_stack([p, x, y]).reshape(-1, 3),
                           None if m is None else evaluation_mask(m[:, :, 0])) for n, p, x, y, m in cases]
        if sum(h.n_lesions for h in hits) == 0:
            continue
        curve = froc_curve(hits, STRICT)
        fps, sens = naive_strict(hits)
        assert curve.fp_per_slide.tolist() == fps and curve.sensitivity.tolist() == sens


@pytest.mark.parametrize("threshold", [0.0, 1.0, 2**0.5, 2.0, 5**0.5, 4.8225, 5.0, 9.645])
def test_dilation_and_hole_filling_equal_the_scripts_scipy_calls(threshold):
    """``distance_transform_edt(...) < t`` and ``binary_fill_holes``, including thresholds that
    are exactly the distance of some pixels (1, sqrt 2, 2, sqrt 5, 5: those stay out)."""
    from scipy import ndimage

    from vistumor.evaluate.camelyon16.masks import _near
    from vistumor.tiling.tissue import fill_holes as _fill_holes

    rng = np.random.default_rng(int(threshold * 1000))
    for _ in range(5):
        tumor = random_tumor(rng) > 0
        near = _near(tumor, threshold)
        np.testing.assert_array_equal(near, ndimage.distance_transform_edt(~tumor) < threshold)
        np.testing.assert_array_equal(_fill_holes(near), ndimage.binary_fill_holes(near))
        noise = rng.random(tumor.shape) < 0.45
        np.testing.assert_array_equal(_fill_holes(noise), ndimage.binary_fill_holes(noise))


@pytest.mark.parametrize("mode", [OFFICIAL, STRICT])
def test_weighted_resamples_equal_repeated_slides(mode):
    """The bootstrap's shortcut: slides weighted by their multiplicity give the curve of the
    list with each slide repeated that many times, and froc_ci draws bootstrap_ci's resamples."""
    rng = np.random.default_rng(300)
    for _ in range(15):
        cases = random_case(rng, hit_everything=False)
        hits = [slide_hits(n, np.column_stack([p, x, y]).reshape(-1, 3),
                           None if m is None else evaluation_mask(m[:, :, 0])) for n, p, x, y, m in cases]
        weights = rng.integers(0, 3, len(hits))
        weights[0] = max(weights[0], 1)  # keeps the first slide's lesion
        repeated = [h for h, w in zip(hits, weights, strict=True) for _ in range(w)]
        got, expected = PooledHits(hits, mode).curve(weights), froc_curve(repeated, mode)
        assert got.fp_per_slide.tolist() == expected.fp_per_slide.tolist()
        assert got.sensitivity.tolist() == expected.sensitivity.tolist()
        assert froc_ci(hits, mode, n=30, seed=5) == bootstrap_ci(hits, lambda s: froc(s, mode), n=30, seed=5)
