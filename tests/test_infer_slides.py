"""Whole slides end to end: alignment you can trust (an oracle model through the real grid
-> heatmap -> lesion -> export path), reads at non-power-of-two levels, batch behaviour
(a corrupt slide fails alone, resume, shards), and real checkpoints sharing their reads."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from conftest import write_asap_xml

from vistumor.files import write_json
from vistumor.infer.batch import infer_slides, merge_tables
from vistumor.infer.engine import OracleScorer
from vistumor.infer.inputs import SlideInput
from vistumor.infer.params import CamSettings, InferParams, LesionSettings
from vistumor.infer.slide_run import ModelRun, run_slide
from vistumor.runner import DONE, FAILED, SKIPPED, RunSettings
from vistumor.wsi.annotations import read_annotations

PINK = (214, 112, 186)
CELL = 128  # level-0 px: patches of 256 at half-patch stride
#: the oracle slide's lesions: a rough blob, a disc, and a square with a large exclusion hole
BLOB = [(1200 + r * np.cos(t), 1100 + r * np.sin(t) * 0.8)
        for t, r in zip(np.linspace(0, 2 * np.pi, 40, endpoint=False),
                        600 + 90 * np.sin(3 * np.linspace(0, 2 * np.pi, 40, endpoint=False)), strict=True)]
DISC = [(2900 + 420 * np.cos(t), 900 + 420 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 48, endpoint=False)]
RING = [(2300, 1800), (3500, 1800), (3500, 2800), (2300, 2800)]
HOLE = [(2650, 2050), (3150, 2050), (3150, 2550), (2650, 2550)]
QUIET = RunSettings(progress=False)
TILING = {
    "grid": {"patch_size": 256, "stride": None, "level": 0, "target_mpp": None, "min_tissue_fraction": 0.6},
    "tissue": {"downsample": 16, "blur": 5, "min_saturation": 0.07, "max_saturation": 0.3, "min_value": 0.12,
               "open_radius": 1, "close_radius": 3, "fill_holes": True, "min_area": 64},
}


def write_slide(path: Path, image: np.ndarray, downsamples=(2, 4), mpp: float = 0.25) -> Path:
    """A tiled pyramidal TIFF whose levels are ``image`` reduced by ``downsamples`` (any factor)."""
    with tifffile.TiffWriter(path) as tif:
        for i, ds in enumerate((1, *downsamples)):
            level = image if ds == 1 else cv2.resize(
                image, (round(image.shape[1] / ds), round(image.shape[0] / ds)), interpolation=cv2.INTER_AREA)
            per_cm = 1e4 / (mpp * ds)
            tif.write(np.ascontiguousarray(level), tile=(128, 128), compression="jpeg", photometric="rgb",
                      subfiletype=0 if i == 0 else 1, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def oracle_slide(tmp_path_factory) -> SlideInput:
    folder = tmp_path_factory.mktemp("oracle")
    image = np.full((3072, 4096, 3), 245, np.uint8)
    image[256:-256, 256:-256] = PINK
    write_slide(folder / "tumor_oracle.tif", image)
    write_asap_xml(folder / "tumor_oracle.xml", [("blob", "_0", BLOB), ("disc", "_0", DISC),
                                                 ("ring", "_1", RING), ("hole", "_2", HOLE)])
    return SlideInput("tumor_oracle", folder / "tumor_oracle.tif", 1, folder / "tumor_oracle.xml")


def oracle_run(item: SlideInput, out: Path, threshold: float = 0.5) -> tuple[ModelRun, dict]:
    model = ModelRun("oracle", OracleScorer(read_annotations(item.annotation)), "none", TILING, 128,
                     out / "models" / "oracle")
    params = InferParams(lesions=LesionSettings(threshold=threshold))
    return model, run_slide(item, [model], params)["oracle"]


def test_the_oracle_gets_every_lesion_back_within_one_cell(oracle_slide, tmp_path):
    model, facts = oracle_run(oracle_slide, tmp_path)
    truth = read_annotations(oracle_slide.annotation)
    assert facts["read_level"] == 1 and facts["lesions"] == 3
    predicted = read_annotations(model.path("lesions", "tumor_oracle", ".geojson"))
    for lesion in truth.polygons:  # blob, disc, ring with its hole
        match = max(predicted.polygons, key=lambda p: p.intersection(lesion).area)
        assert shapely.distance(match.centroid, lesion.centroid) <= CELL
        inner = lesion.buffer(-CELL, join_style="mitre")
        outer = lesion.buffer(CELL, join_style="mitre")
        assert inner.difference(match).area < 1e-6 and match.difference(outer).area < 1e-6
        assert abs(match.area - lesion.area) <= lesion.exterior.length * CELL / 2
    assert len(max(predicted.polygons, key=lambda p: p.intersection(shapely.Polygon(RING)).area).interiors) == 1


def test_the_exports_overlap_the_truth_at_the_heatmap_scale(oracle_slide, tmp_path):
    model, _ = oracle_run(oracle_slide, tmp_path)
    truth = read_annotations(oracle_slide.annotation).mask(CELL, (4096, 3072))
    for suffix in (".geojson", ".xml"):
        mask = read_annotations(model.path("lesions", "tumor_oracle", suffix)).mask(CELL, (4096, 3072))
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou >= 0.8, (suffix, iou)
    heatmap = np.load(model.path("heatmaps", "tumor_oracle", ".npy"))
    sidecar = json.loads(model.path("heatmaps", "tumor_oracle", ".json").read_text())
    assert heatmap.shape == tuple(sidecar["shape"]) == truth.shape
    assert sidecar["cell_size_px"] == CELL and sidecar["cell_size_um"] == pytest.approx(CELL * 0.25)
    assert sidecar["origin_level0"] == [0, 0] and sidecar["read_level"] == 1
    detections = pd.read_csv(model.path("detections", "tumor_oracle", ".csv"), header=None)
    hits = truth[(detections[2] // CELL).astype(int), (detections[1] // CELL).astype(int)]
    assert hits[detections[0] >= 0.5].all()  # every confident point lies on tumor


def test_a_known_patch_lands_in_its_cells_on_a_slide_with_downsample_3(tmp_path):
    """Level 1 is 1/3 of level 0: a 192 px patch is read as 64 px there. A dark-blue square
    exactly covering the patch at level-0 (384, 192) must light exactly its four cells."""
    image = np.full((576, 768, 3), PINK, np.uint8)
    image[192:384, 384:576] = (40, 40, 200)
    path = write_slide(tmp_path / "odd.tif", image, downsamples=(3,))

    def blue_share(patches, x0, y0, size0):
        blue = (patches[..., 2].astype(int) - patches[..., 0]) > 80
        return blue.mean(axis=(1, 2)), None

    tiling = {**TILING, "grid": {**TILING["grid"], "patch_size": 192},
              "tissue": {**TILING["tissue"], "downsample": 8}}
    model = ModelRun("blue", blue_share, "none", tiling, 64, tmp_path / "models" / "blue")
    facts = run_slide(SlideInput("odd", path), [model], InferParams(cam=CamSettings(enabled=False)))["blue"]
    assert facts["read_level"] == 1
    values = np.load(model.path("heatmaps", "odd", ".npy"))
    # the square's cells: (1 + 0.5 + 0.5 + 0.25) / 4 each; every other cell at most 0.1875 (3 / 16)
    lit = np.argwhere(np.nan_to_num(values) > 0.4)
    assert sorted(map(tuple, lit.tolist())) == [(2, 4), (2, 5), (3, 4), (3, 5)]  # rows 192-384, cols 384-576
    assert values[2:4, 4:6] == pytest.approx(np.full((2, 2), 0.5625), abs=0.03)


# -- batches ----------------------------------------------------------------------------------


def test_a_corrupt_slide_fails_alone_and_a_rerun_skips_the_done(oracle_slide, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(oracle_slide.path.read_bytes()[:5000])
    items = [oracle_slide, SlideInput("broken", broken, 0)]
    model = ModelRun("oracle", OracleScorer(read_annotations(oracle_slide.annotation)), str(oracle_slide.path),
                     TILING, 128, tmp_path / "models" / "oracle")
    records = infer_slides(items, [model], InferParams(), tmp_path, QUIET)
    assert [r["status"] for r in records] == ["done", "failed"]
    assert str(broken) in records[1]["reason"] and "\n" not in records[1]["reason"]
    assert not list((tmp_path / "models" / "oracle").rglob("broken*"))  # no partial output
    tables = merge_tables(items, [model], tmp_path, records)
    slides = pd.read_csv(tables["oracle"])
    assert slides["status"].tolist() == ["done", "failed"] and slides["score"].iloc[0] == pytest.approx(1.0)
    again = infer_slides(items, [model], InferParams(), tmp_path, QUIET)
    assert [r["status"] for r in again] == ["skipped", "failed"]
    changed = infer_slides(items[:1], [model], InferParams(lesions=LesionSettings(0.7)), tmp_path, QUIET)
    assert changed[0]["status"] == "done"  # other settings: redone


def test_a_slides_annotation_is_read_with_the_models_annotation_groups(oracle_slide, tmp_path):
    groups = {"Metastasis": "tumor"}  # not CAMELYON16's _0/_1/_2: unreadable without the model's mapping
    xml = write_asap_xml(tmp_path / "tumor_oracle.xml", [("disc", "Metastasis", DISC)])
    item = SlideInput("tumor_oracle", oracle_slide.path, 1, xml)
    model = ModelRun("oracle", OracleScorer(read_annotations(xml, groups)), "none",
                     {**TILING, "labels": {"annotation_groups": groups}}, 128, tmp_path / "models" / "oracle")
    assert run_slide(item, [model], InferParams())["oracle"]["lesions"] == 1


def test_cam_normalize_run_records_the_runs_largest_slide_scale_in_every_cam_sidecar(tmp_path):
    model = ModelRun("m", None, "m.ckpt", TILING, 128, tmp_path / "models" / "m")
    facts = {"a": (DONE, 0.5), "b": (SKIPPED, 2.0), "c": (FAILED, None)}  # c: failed, no CAM
    for slide, (_, scale) in facts.items():
        if scale is not None:
            write_json(model.path("cams", slide, ".json"), {"slide": slide, "scale": scale})
    records = [{"slide": s, "status": status, "models": {} if scale is None else
                {"m": {"map": True, "cam_scale": scale}}} for s, (status, scale) in facts.items()]
    items = [SlideInput(s, tmp_path / f"{s}.tif", 1) for s in facts]
    merge_tables(items, [model], tmp_path, records)  # cam.normalize=slide: sidecars untouched
    assert "run_scale" not in json.loads(model.path("cams", "a", ".json").read_text())
    merge_tables(items, [model], tmp_path, records, run_scale=True)
    for slide, scale in (("a", 0.5), ("b", 2.0)):
        assert json.loads(model.path("cams", slide, ".json").read_text()) == {
            "slide": slide, "scale": scale, "run_scale": 2.0}
    assert not model.path("cams", "c", ".json").exists()


def test_a_killed_run_leaves_no_temporaries_behind_a_rerun(oracle_slide, tmp_path):
    model = ModelRun("oracle", OracleScorer(read_annotations(oracle_slide.annotation)), str(oracle_slide.path),
                     TILING, 128, tmp_path / "models" / "oracle")
    stale = tmp_path / "models" / "oracle" / "heatmaps" / ".tumor_oracle.npy.abc.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    infer_slides([oracle_slide], [model], InferParams(), tmp_path, QUIET)
    assert not stale.exists()


