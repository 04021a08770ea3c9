"""The whole-slide stage, piece by piece, on hand-computed inputs: reading, the heatmap,
the Grad-CAM++ canvas, lesions and their exports, detections and scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from conftest import tissue_image

from vistumor.errors import VisTumorError
from vistumor.infer import inputs
from vistumor.infer.detections import nms_points, slide_score, write_detections
from vistumor.infer.geometry import SlideGrid, cell_spans, reading_level
from vistumor.infer.heatmap import ProbabilityMap
from vistumor.infer.lesions import find_lesions, to_asap_xml, to_geojson, write_lesions
from vistumor.infer.reader import PatchStream, plan_blocks
from vistumor.infer.slide_run import grid_pixels
from vistumor.infer.stitch import CamCanvas, hann
from vistumor.labels import NORMAL, TUMOR
from vistumor.wsi.annotations import read_annotations
from vistumor.wsi.slide import Slide


def grid_of(x0, y0, size0=64.0, stride0=32.0, width0=256, height0=128, read_downsample=1.0, read_level=0,
            mpp=0.5) -> SlideGrid:
    """A hand-made grid (no slide needed)."""
    return SlideGrid(width0, height0, size0, stride0, np.asarray(x0), np.asarray(y0), read_level,
                     read_downsample, int(round(size0 / read_downsample)), mpp, np.zeros((8, 16, 3), np.uint8),
                     16.0, np.ones((8, 16), bool))


# -- geometry and the heatmap ------------------------------------------------------------------


def test_cells_a_patch_covers_are_those_whose_centre_it_holds():
    grid = grid_of([0, 32, 96], [0, 0, 32])
    r0, r1, c0, c1 = cell_spans(grid)
    assert grid.cells == (4, 8)  # 128 / 32, 256 / 32
    assert (r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist()) == ([0, 0, 1], [2, 2, 3], [0, 1, 3], [2, 3, 5])


def test_grid_pixels_count_the_union_of_the_patches_cells_at_the_read_level():
    grid = grid_of([0, 32, 96], [0, 0, 32])  # cells: rows 0-1 x cols 0-2 (6) and rows 1-2 x cols 3-4 (4)
    assert grid_pixels(grid) == 10 * 32 * 32
    assert grid_pixels(grid_of([0, 32, 96], [0, 0, 32], read_downsample=2.0)) == 10 * 16 * 16
    assert grid_pixels(grid_of([224], [96])) == 1 * 32 * 32  # spans clipped at the slide's edge


def test_heatmap_cell_is_the_mean_of_the_patches_covering_it():
    grid = grid_of([0, 32], [0, 0])  # two patches overlapping on column 1
    pmap = ProbabilityMap(grid)
    pmap.add(np.array([0, 1]), np.array([0.2, 0.8]))
    values = pmap.result()
    assert values[0, :3].tolist() == pytest.approx([0.2, 0.5, 0.8])
    assert values[1, :3].tolist() == pytest.approx([0.2, 0.5, 0.8])
    assert np.isnan(values[2:]).all() and np.isnan(values[:, 3:]).all()  # no tissue patch: NaN


def test_reading_level_is_the_coarsest_still_fine_enough(tiny_tiff):
    path = tiny_tiff("levels.tif", tissue_image(), levels=3)  # downsamples 1, 2, 4
    with Slide(path) as slide:
        assert reading_level(slide, 512, 224) == 1  # 512 / 224 = 2.29: level 1 (2), not level 2 (4)
        assert reading_level(slide, 512, 128) == 2  # exactly 4
        assert reading_level(slide, 256, 224) == 0


# -- reading each pixel about once --------------------------------------------------------------


def test_blocks_decode_each_pixel_about_once_and_cut_the_same_pixels(tiny_tiff):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)
    path = tiny_tiff("noise.tif", image, compression="zlib", levels=2)
    xs, ys = np.meshgrid(np.arange(0, 768 - 63, 32), np.arange(0, 512 - 63, 32))  # stride half a patch
    grid = grid_of(xs.ravel(), ys.ravel(), width0=768, height0=512, read_downsample=2.0, read_level=1)
    stream = PatchStream(path, grid, batch_size=37, block=8, threads=2)
    seen = np.zeros(len(grid), int)
    with Slide(path) as slide:
        for indices, patches in stream:
            seen[indices] += 1
            for i, patch in zip(indices, patches, strict=True):
                direct = slide.read_region(int(grid.x0[i]), int(grid.y0[i]), 1, 32, 32)
                assert np.array_equal(patch, direct)
    assert (seen == 1).all()
    # 23 x 15 positions (level-1 stride 16, patch 32) in blocks of 8 x 8: 3 x 2 blocks whose
    # regions are 144, 144, 128 px wide (7 * 16 + 32, 6 * 16 + 32) and 144, 128 px high
    assert len(plan_blocks(grid, 8)) == 6
    union = 384 * 256  # the grid covers the whole level-1 image
    assert stream.decoded == (144 + 144 + 128) * (144 + 128)
    assert stream.decoded / union == pytest.approx(1.151, abs=1e-3)  # a patch-by-patch reader: ~4


# -- the Grad-CAM++ canvas ----------------------------------------------------------------------


def test_canvas_weights_maps_by_probability_and_blends_overlaps(tmp_path):
    grid = grid_of([0, 32, 160], [0, 0, 0])
    canvas = CamCanvas(grid, cam_cells=2, px_per_cell=4, path=tmp_path / "cams" / "s.npy")
    assert canvas.out_px0 == 8 and canvas.shape == (16, 32)  # 64 level-0 px -> 8 output px
    ones = np.ones((3, 2, 2), np.float32)
    canvas.add(np.array([0, 1, 2]), np.array([1.0, 0.5, 0.0]), ones * np.array([2.0, 2.0, 7.0])[:, None, None])
    meta = canvas.save({"slide": "s"})
    canvas.close()
    out = np.load(tmp_path / "cams" / "s.npy")
    window = hann(8)
    # columns 0-3: only patch 0 (value 2 * p=1); columns 4-7: patches 0 and 1 blended
    assert out[:8, :4] == pytest.approx(np.full((8, 4), 2.0))
    both = (2.0 * window[:, 4:] + 1.0 * window[:, :4]) / (window[:, 4:] + window[:, :4])
    assert out[:8, 4:8] == pytest.approx(both)
    assert out[:8, 20:28] == pytest.approx(np.zeros((8, 8)))  # a normal patch (p = 0) stays cold
    assert np.isnan(out[8:]).all() and np.isnan(out[:, 12:20]).all()  # no patch: NaN
    assert meta["scale"] == pytest.approx(2.0) and meta["cell_size_px"] == 8
    assert not list((tmp_path / "cams").glob("*.tmp"))  # accumulators removed


# -- lesions, exports, detections, scores ----------------------------------------------------------


L_SHAPE = np.array([  # 5 x 6 cells; an L with a one-cell hole in its thick part
    [0.9, 0.9, 0.9, 0.0, 0.0, 0.0],
    [0.9, 0.2, 0.9, 0.0, 0.0, np.nan],
    [0.9, 0.9, 0.9, 0.0, 0.0, 0.0],
    [0.9, 0.0, 0.0, 0.0, 0.6, 0.0],
    [0.9, 0.9, 0.9, 0.0, 0.0, 0.0],
], np.float32)


def test_lesions_are_connected_cells_with_exact_outlines_and_holes():
    lesions = find_lesions(L_SHAPE, cell_px=100, threshold=0.5, mpp=0.5)
    assert len(lesions) == 2
    big, small = lesions
    assert big.cells == 12 and big.area_px == 12 * 100**2  # 3 + 2 + 3 + 1 + 3 cells
    assert len(big.polygon.interiors) == 1 and shapely.Polygon(big.polygon.interiors[0]).area == 100**2
    assert big.max_prob == pytest.approx(0.9) and big.mean_prob == pytest.approx(0.9)
    assert small.polygon.bounds == (400, 300, 500, 400) and small.max_prob == pytest.approx(0.6)
    assert small.area_mm2 == pytest.approx(100 * 100 * 0.0005**2)


def test_cells_touching_at_a_corner_are_two_lesions_each_held_to_min_cells():
    values = np.array([[0.9, 0.9, 0.0], [0.0, 0.0, 0.8]], np.float32)  # one 8-neighbour group, two polygons
    assert sorted(le.cells for le in find_lesions(values, 10, 0.5, None)) == [1, 2]
    assert [le.cells for le in find_lesions(values, 10, 0.5, None, min_cells=2)] == [2]
    assert find_lesions(values, 10, 0.5, None, min_cells=3) == []


def test_exports_read_back_through_the_annotation_reader(tmp_path):
    lesions = find_lesions(L_SHAPE, cell_px=100, threshold=0.5, mpp=0.5)
    geojson, xml = write_lesions(tmp_path, "s1", lesions)
    collection = json.loads(geojson.read_text())
    assert [f["geometry"]["type"] for f in collection["features"]] == ["Polygon", "Polygon"]
    props = collection["features"][0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tumor"
    assert set(props["measurements"]) >= {"tumor_probability", "area_mm2"}
    text = xml.read_text()
    for group in ("Tumor", "Exclusion"):  # every group an annotation names is defined
        assert f'PartOfGroup="{group}"' in text and f'<Group Name="{group}"' in text
    for path in (geojson, xml):
        back = read_annotations(path)
        assert back.area == pytest.approx(13 * 100**2)
        assert back.geometry.symmetric_difference(shapely.union_all([le.polygon for le in lesions])).area < 1e-6
    assert "<Annotations>" in to_asap_xml([]) and to_geojson([], "x")["features"] == []


def test_nms_points_are_maxima_apart_in_level0_pixels(tmp_path):
    values = np.zeros((5, 5), np.float32)
    values[1, 1], values[1, 2], values[4, 4], values[0, 4] = 0.9, 0.8, 0.7, 0.05
    points = nms_points(values, cell_px=10, radius_px=15, min_prob=0.1)
    assert points == [(pytest.approx(0.9), 15, 15), (pytest.approx(0.7), 45, 45)]  # (1, 2) suppressed
    path = write_detections(tmp_path / "d.csv", points)
    assert path.read_text().splitlines() == ["0.900000,15,15", "0.700000,45,45"]


def test_slide_score_max_or_top_k_mean():
    values = np.array([[0.1, 0.9, np.nan], [0.5, 0.7, 0.3]], np.float32)
    assert slide_score(values, "max") == pytest.approx(0.9)
    assert slide_score(values, "topk", k=2) == pytest.approx(0.8)
    assert slide_score(np.full((2, 2), np.nan), "max") == 0.0


def naive_nms(values, cell_px, radius_px, min_prob):
    """The definition: repeatedly take the maximum, clear a disc around it."""
    work = np.nan_to_num(values, nan=0.0).astype(np.float64)
    rows, cols = np.indices(work.shape)
    points = []
    while True:
        r, c = divmod(int(np.argmax(work)), work.shape[1])
        if work[r, c] < min_prob or work[r, c] <= 0:
            return points
        points.append((float(work[r, c]), int((c + 0.5) * cell_px), int((r + 0.5) * cell_px)))
        work[(rows - r) ** 2 + (cols - c) ** 2 <= (radius_px / cell_px) ** 2] = 0.0


@pytest.mark.parametrize("seed", range(5))
def test_fast_nms_and_cell_outlines_equal_their_definitions(seed):
    rng = np.random.default_rng(seed)
    values = rng.random((30, 40)).astype(np.float32)
    values[rng.random(values.shape) < 0.2] = np.nan
    values[3, 3] = values[3, 5] = 0.999  # a tie: row-major order decides, as argmax
    assert nms_points(values, 10, 25, 0.3) == naive_nms(values, 10, 25, 0.3)
    blob = rng.random((30, 40)) < 0.4
    rows, cols = np.nonzero(blob)
    boxes = shapely.union_all(shapely.box(cols * 7, rows * 7, (cols + 1) * 7, (rows + 1) * 7))
    from vistumor.infer.lesions import cells_polygon

    assert cells_polygon(rows, cols, 7).symmetric_difference(boxes).area < 1e-9


def test_slides_of_another_scale_are_read_at_the_trained_scale(tiny_tiff):
    from vistumor.infer.geometry import plan_grid, trained_scale
    from vistumor.tiling.params import GridParams

    tiling = {"grid": {"patch_size": 64, "stride": None, "level": 0, "target_mpp": None, "min_tissue_fraction": 0.6},
              "tissue": {"downsample": 8}}
    path = tiny_tiff("half.tif", tissue_image(), mpp=0.5, levels=3)
    with Slide(path) as slide:
        assert trained_scale(slide, GridParams(64), 0.52).target_mpp is None  # within 10 %: as trained
        assert trained_scale(slide, GridParams(64), None).target_mpp is None  # unknown: the level
        assert trained_scale(slide, GridParams(64), 1.0).target_mpp == 1.0
        grid = plan_grid(slide, {**tiling, "trained_mpp": 1.0}, input_size=32)
        assert grid.size0 == 128 and grid.stride0 == 64  # 64 px at 1.0 um/px = 128 level-0 px at 0.5
        assert plan_grid(slide, {**tiling, "trained_mpp": 0.5}, input_size=32).size0 == 64


def test_a_slide_coarser_than_the_model_is_refused_unless_upsampled(tiny_tiff, caplog):
    """Issue 17.10: a 0.5 um/px slide for a model of 0.25 um/px. A 64 px patch at 0.25 um/px
    is 16 um: 32 level-0 px at 0.5, the cells half of it (16 px, 8 um), read at level 0."""
    from vistumor.errors import ConfigError, SlideError
    from vistumor.infer.geometry import plan_grid

    tiling = {"grid": {"patch_size": 64, "stride": None, "level": 0, "target_mpp": None, "min_tissue_fraction": 0.6},
              "tissue": {"downsample": 8}, "trained_mpp": 0.25}
    path = tiny_tiff("half.tif", tissue_image(), mpp=0.5, levels=3)
    with Slide(path) as slide:
        with pytest.raises(SlideError, match=r"half.tif: level 0 \(0.5000 um/px\) is coarser than the model's "
                                             r"0.2500 um/px: set read.upsample=true to read it upsampled 2.00x$"):
            plan_grid(slide, tiling, input_size=64)
        with caplog.at_level("WARNING", logger="vistumor.infer.geometry"):
            grid = plan_grid(slide, tiling, input_size=64, upsample=True)
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            "half.tif: 0.5000 um/px, the model was trained at 0.2500: reading level 0 upsampled 2.00x "
            "(read.upsample=true)"]
        assert (grid.upsample, grid.size0, grid.stride0, grid.read_level, grid.read_size) == (2.0, 32, 16, 0, 32)
        assert grid.cell_um == 8.0 and grid.cells == (-(-slide.dimensions[1] // 16), -(-slide.dimensions[0] // 16))
        assert len(grid) and not (grid.x0 % 16).any() and not (grid.y0 % 16).any()
        same = plan_grid(slide, {**tiling, "trained_mpp": 0.5}, input_size=64, upsample=True)
        assert same.upsample == 1.0 and same.size0 == 64  # nothing to upsample: as before
        with pytest.raises(ConfigError, match=r"half.tif: infer.read.level=9 does not exist: the slide has 3 "
                                              r"levels \(0-2\)"):
            plan_grid(slide, tiling, input_size=64, read_level=9, upsample=True)


# -- inputs --------------------------------------------------------------------------------------


def test_a_layouts_slides_take_their_labels_from_an_official_headerless_reference(tmp_path):
    for name in ("test_001.tif", "test_002.tif", "test_003.tif"):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "reference.csv").write_text("Test_001,Tumor,Macro,Primary\ntest_002.tif,Normal\n")
    layout = {"slides": {"unlabelled": ["images/*.tif"]}, "reference": "reference.csv"}
    slides = inputs.from_layout(tmp_path, layout)
    assert [(s.slide_id, s.label) for s in slides] == [("test_001", TUMOR), ("test_002", NORMAL), ("test_003", None)]
    (tmp_path / "reference.csv").write_text("slide,label\ntest_001,tumor\nTEST_001,normal\n")
    with pytest.raises(VisTumorError, match=r"reference.csv.*row 3: slide 'TEST_001' is listed twice"):
        inputs.from_layout(tmp_path, layout)


def test_two_slide_files_of_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tumor_001.tif").write_bytes(b"")
    with pytest.raises(VisTumorError, match="are both slide 'tumor_001'"):
        inputs.from_layout(tmp_path, {"slides": {"tumor": ["a/*.tif"], "unlabelled": ["b/*.tif"]}})
