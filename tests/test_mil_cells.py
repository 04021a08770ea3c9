"""Slide maps judged against annotations at cell level, by hand: a 3 x 4 map with NaN off
tissue, its annotation rasterised on the cells (cell centre inside), and each score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import rectangle, write_asap_xml

from vistumor.infer.cell_scores import cell_mask, run_cell_scores, slide_cell_scores
from vistumor.wsi.annotations import read_annotations

NAN = np.nan
#: 3 x 4 cells of 100 px; column 0 is glass (NaN)
VALUES = np.array([[NAN, 0.2, 0.9, 0.1],
                   [NAN, 0.1, 0.4, 0.3],
                   [NAN, 0.0, 0.2, 0.1]], np.float32)
SIDECAR = {"shape": [3, 4], "cell_size_px": 100.0}


def annotation(tmp_path):
    # tumor over x in [180, 320), y in [0, 160): cell centres (250, 50) and (250, 150) inside
    return write_asap_xml(tmp_path / "t.xml", [("lesion", "_0", rectangle(180, 0, 320, 160))])


def test_cell_mask_takes_cells_whose_centre_is_inside(tmp_path):
    mask = cell_mask(read_annotations(annotation(tmp_path)), SIDECAR)
    assert mask.astype(int).tolist() == [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_scores_by_hand(tmp_path):
    mask = cell_mask(read_annotations(annotation(tmp_path)), SIDECAR)
    got = slide_cell_scores(VALUES, mask)
    tissue = VALUES[:, 1:]
    assert got["pointing"] == 1.0  # the peak 0.9 lies in the tumor column
    assert got["energy"] == pytest.approx((0.9 + 0.4) / np.nansum(tissue), rel=1e-5)
    # >= half the peak (0.45): only the 0.9 cell; tumor cells: 0.9 and 0.4 -> IoU 1/2, Dice 2/3
    assert got["iou"] == pytest.approx(0.5) and got["dice"] == pytest.approx(2 / 3)
    # tumor {0.9, 0.4} vs 7 others {0.2, 0.1, 0.1, 0.3, 0.0, 0.2, 0.1}: 0.9 beats 7, 0.4 beats 7
    assert got["auroc"] == pytest.approx(1.0)
    assert slide_cell_scores(VALUES, np.zeros_like(mask)) is None  # no tumor cell: not scored


def test_a_run_folder_is_scored_over_its_annotated_slides(tmp_path):
    for slide in ("a", "b"):
        (tmp_path / "heatmaps").mkdir(exist_ok=True)
        np.save(tmp_path / "heatmaps" / f"{slide}.npy", VALUES if slide == "a" else VALUES[:, ::-1].copy())
        (tmp_path / "heatmaps" / f"{slide}.json").write_text(json.dumps(SIDECAR))
    xml = annotation(tmp_path)
    got = run_cell_scores(tmp_path, [("a", xml), ("b", xml)])
    assert got["test/heatmap_cell_slides"] == 2
    assert got["test/heatmap_cell_pointing"] == 0.5  # a's peak on tumor, b's (mirrored) not
    assert run_cell_scores(tmp_path, [("a", xml)], "cams") == {}  # no canvas: no scores
