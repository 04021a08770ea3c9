"""Balancing and splitting: exact counts, no slide in two splits, seeded."""

from __future__ import annotations

import pandas as pd
import pytest

from vistumor.errors import ManifestError
from vistumor.tiling.grid import AMBIGUOUS, NORMAL, TUMOR
from vistumor.tiling.sampling import SamplingParams, SplitParams, allocate, sample_manifest

SLIDE_SPLIT = SplitParams(mode="slide", fractions={"train": 0.7, "val": 0.15, "test": 0.15})
ALL = SamplingParams(target_total=None)


def make_tiles(n_normal=3, n_tumor=3, tumor=10, normal_on_tumor=20, normal=30, ambiguous=2):
    """Tile rows: each tumor slide has ``tumor`` tumor, ``normal_on_tumor`` normal and
    ``ambiguous`` ambiguous tiles; each normal slide ``normal`` normal tiles."""
    rows = []

    def add(slide_id, kind, labels):
        rows.extend(
            {"slide_id": slide_id, "kind": kind, "x0": 64 * (i % 50), "y0": 64 * (i // 50),
             "label": lab}
            for i, lab in enumerate(labels)
        )

    for i in range(n_tumor):
        labels = [TUMOR] * tumor + [NORMAL] * normal_on_tumor + [AMBIGUOUS] * ambiguous
        add(f"tumor_{i:03d}", "tumor", labels)
    for i in range(n_normal):
        add(f"normal_{i:03d}", "normal", [NORMAL] * normal)
    return pd.DataFrame(rows)


def counts(manifest: pd.DataFrame) -> dict[str, dict[int, int]]:
    table = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    return {s: {int(k): int(v) for k, v in row.items()} for s, row in table.iterrows()}


def test_slide_split_keeps_each_slide_in_one_split():
    manifest = sample_manifest(make_tiles(n_normal=5, n_tumor=7), ALL, SLIDE_SPLIT, seed=0)
    splits_per_slide = manifest.groupby("slide_id")["split"].nunique()
    assert (splits_per_slide == 1).all()
    for name in ("train", "val", "test"):
        kinds = set(manifest.loc[manifest["split"] == name, "kind"])
        assert kinds == {"tumor", "normal"}, name


def test_slide_split_counts_all_balanced():
    # one tumor slide per split: 10 tumor tiles; balanced with 10 of its 50 or so normal ones
    manifest = sample_manifest(make_tiles(), ALL, SLIDE_SPLIT, seed=0)
    assert counts(manifest) == {s: {NORMAL: 10, TUMOR: 10} for s in ("test", "train", "val")}
    assert AMBIGUOUS not in set(manifest["label"])
    assert list(manifest["split"].drop_duplicates()) == ["train", "val", "test"]


def test_target_total_is_met_exactly():
    # targets by largest remainder: 20 -> train 14, val 3, test 3; each balanced within one
    manifest = sample_manifest(make_tiles(), SamplingParams(target_total=20), SLIDE_SPLIT, seed=0)
    assert len(manifest) == 20
    assert manifest["split"].value_counts().to_dict() == {"train": 14, "val": 3, "test": 3}
    assert counts(manifest)["train"] == {NORMAL: 7, TUMOR: 7}
    for name in ("val", "test"):
        assert sorted(counts(manifest)[name].values()) == [1, 2]


def test_fractions_are_normalised():
    a = sample_manifest(make_tiles(), SamplingParams(target_total=20), SLIDE_SPLIT, seed=3)
    weights = SplitParams(mode="slide", fractions={"train": 14, "val": 3, "test": 3})
    b = sample_manifest(make_tiles(), SamplingParams(target_total=20), weights, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_tumor_share():
    # per split: 10 tumor tiles at 25 % -> 40 patches, 30 of them normal
    params = SamplingParams(target_total=None, tumor_share=0.25)
    manifest = sample_manifest(make_tiles(), params, SLIDE_SPLIT, seed=0)
    assert counts(manifest) == {s: {NORMAL: 30, TUMOR: 10} for s in ("test", "train", "val")}


def test_tumor_share_when_normal_tiles_are_scarce():
    # 3 normal tiles per split at 70 % tumor: 3 / 0.3 = 10 patches (9.999999999999998 in floats)
    tiles = make_tiles(normal_on_tumor=0, normal=3)
    params = SamplingParams(target_total=None, tumor_share=0.7)
    manifest = sample_manifest(tiles, params, SLIDE_SPLIT, seed=0)
    assert counts(manifest) == {s: {NORMAL: 3, TUMOR: 7} for s in ("test", "train", "val")}


def test_max_patches_per_slide():
    params = SamplingParams(target_total=None, max_patches_per_slide=6)
    manifest = sample_manifest(make_tiles(), params, SLIDE_SPLIT, seed=0)
    per_slide = manifest["slide_id"].value_counts()
    assert per_slide.max() <= 6
    assert set(per_slide.index) >= {f"tumor_{i:03d}" for i in range(3)}


def test_normal_only_from_normal_slides():
    params = SamplingParams(target_total=None, normal_from_tumor_slides=False)
    manifest = sample_manifest(make_tiles(), params, SLIDE_SPLIT, seed=0)
    assert set(manifest.loc[manifest["kind"] == "tumor", "label"]) == {TUMOR}
    assert counts(manifest)["train"] == {NORMAL: 10, TUMOR: 10}


def test_same_seed_same_manifest_other_seed_other_manifest():
    tiles = make_tiles(n_normal=6, n_tumor=6)
    params = SamplingParams(target_total=40)
    a = sample_manifest(tiles, params, SLIDE_SPLIT, seed=7)
    b = sample_manifest(tiles, params, SLIDE_SPLIT, seed=7)
    c = sample_manifest(tiles, params, SLIDE_SPLIT, seed=8)
    pd.testing.assert_frame_equal(a, b)
    key = ["slide_id", "x0", "y0", "split"]
    assert set(map(tuple, a[key].to_numpy())) != set(map(tuple, c[key].to_numpy()))


def test_patch_split_is_stratified():
    paper = SplitParams(mode="patch", fractions={"train": 0.9, "val": 0.1, "test": 0.0})
    manifest = sample_manifest(make_tiles(), SamplingParams(target_total=None), paper, seed=0)
    # 30 tumor tiles, balanced by 30 normal ones; each class split 27 / 3
    assert counts(manifest) == {"train": {NORMAL: 27, TUMOR: 27}, "val": {NORMAL: 3, TUMOR: 3}}
    assert manifest.groupby("slide_id")["split"].nunique().max() == 2  # the paper's leak


def test_too_few_slides_for_a_slide_split():
    message = r"2 tumor slide\(s\) cannot fill 3 splits.*split.mode=patch"
    with pytest.raises(ManifestError, match=message):
        sample_manifest(make_tiles(n_tumor=2), ALL, SLIDE_SPLIT, seed=0)


def test_split_without_tumor_patches_is_refused():
    tiles = make_tiles()
    tiles = tiles[~((tiles["slide_id"] == "tumor_001") & (tiles["label"] == TUMOR))]
    with pytest.raises(ManifestError, match=r"split '[a-z]+' has no tumor patches \(\d+ normal\)"):
        sample_manifest(tiles, ALL, SLIDE_SPLIT, seed=0)


@pytest.mark.parametrize(
    ("sampling", "split", "message"),
    [
        (ALL, SplitParams(mode="random"), "must be 'slide' or 'patch'"),
        (SamplingParams(tumor_share=1.0), SLIDE_SPLIT, "tumor_share must be in"),
        (ALL, SplitParams(fractions={"train": 0.8, "holdout": 0.2}), r"unknown splits \['hold"),
        (ALL, SplitParams(fractions={"train": 0.0, "val": 0.0}), "not all 0"),
    ],
)
def test_bad_parameters(sampling, split, message):
    with pytest.raises(ManifestError, match=message):
        sample_manifest(make_tiles(), sampling, split, seed=0)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3, {"train": 1, "val": 1, "test": 1}),
        (10, {"train": 7, "val": 2, "test": 1}),
        (20, {"train": 14, "val": 3, "test": 3}),
        (4, {"train": 2, "val": 1, "test": 1}),
        (2, None),
    ],
)
def test_allocate(n, expected):
    assert allocate(n, {"train": 0.7, "val": 0.15, "test": 0.15}) == expected
