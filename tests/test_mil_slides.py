"""Attention MIL end to end on tiny synthetic slides: generated on first use, bags extracted
(CLAM layout, opened with h5py), trained on slide labels, then the held-out slides through
the whole-slide pass (training's ``slides=test`` and ``infer.py ckpt_path=<MIL>``): the slide
probability in slides.csv equals the bag's, the attention heatmap with its sidecar geometry,
lesions and detections, the attention's cell scores, the comparison table and the viewer."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from vistumor.runs.compare import collect
from vistumor.tasks.mil import train_mil

TINY = ("data.generate.n_normal=3", "data.generate.n_tumor=3", "data.generate.size=1024", "data.generate.workers=1",
        "model@model.trunk=small_cnn", "model.trunk.image_size=64", "trainer=cpu", "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false", "logger=csv", "data.mil.extract.batch_size=16")


def compose_stage(name: str, root, out, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.fixture(scope="module")
def mil_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mil")
    result = train_mil(compose_stage("train", root, root / "run", "experiment=mil", *TINY))
    return root, result


def test_bags_are_clam_h5_files(mil_run):
    root, result = mil_run
    bags = sorted((root / "data" / "bags" / "synthetic_mil").glob("test_resnet-*/*.h5"))
    assert len(bags) == 6 and result["extracted"] == 6
    with h5py.File(bags[0], "r") as f:
        n, dim = f["features"].shape
        assert f["coords"].shape == (n, 2) and dim == 96 and f.attrs["patch_size_level0"] == 256
        assert f.attrs["mpp"] == 1.0 and f.attrs["trunk"] == "test_resnet"


def test_training_runs_the_held_out_slides_through_the_whole_slide_pass(mil_run):
    root, result = mil_run
    run = root / "run"
    model_dir = next((run / "slides" / "models").iterdir())
    slides = pd.read_csv(model_dir / "slides.csv", dtype={"slide": str})
    predictions = pd.read_csv(run / "predictions.csv", dtype={"slide_id": str})
    assert sorted(slides["slide"]) == sorted(predictions["slide_id"])  # the test split: 1 + 1
    # the slide probability read from the slide equals the one from its bag (same grid, reader, trunk)
    by_bag = dict(zip(predictions["slide_id"], predictions["prob"], strict=True))
    for slide, score in zip(slides["slide"], slides["score"], strict=True):
        assert score == pytest.approx(by_bag[slide], abs=1e-4)
    for slide in slides["slide"]:
        values = np.load(model_dir / "heatmaps" / f"{slide}.npy")
        sidecar = json.loads((model_dir / "heatmaps" / f"{slide}.json").read_text())
        assert list(values.shape) == sidecar["shape"] and sidecar["cell_size_px"] == 128  # half a 256 px patch
        assert np.nanmax(values) == pytest.approx(1.0) and np.nanmin(values) >= 0
        assert "attention" in sidecar["value"] and 0 <= sidecar["slide_probability"] <= 1
        raw = np.load(model_dir / "attention" / f"{slide}.npy")
        np.testing.assert_allclose(raw / np.nanmax(raw), values, rtol=1e-5)
        for kind, suffix in (("lesions", ".geojson"), ("detections", ".csv"), ("figures", ".png")):
            assert (model_dir / kind / f"{slide}{suffix}").is_file()
    for name in ("pointing", "energy", "iou", "dice", "auroc"):
        assert f"test/heatmap_cell_{name}" in result
    assert result["test/heatmap_cell_slides"] == 1  # the one tumor test slide
    assert 0.0 <= result["test/heatmap_cell_auroc"] <= 1.0


def test_infer_py_runs_a_mil_checkpoint_on_its_test_split(mil_run):
    from vistumor.tasks import infer

    root, result = mil_run
    out = root / "infer"
    summary = infer(compose_stage("infer", root, out, "data=synthetic_mil", f"ckpt_path={result['best_ckpt']}",
                                  "slides=test", "run.progress=false"))
    assert summary["done"] == 2 and summary.get("failed", 0) == 0
    model_dir = out / "models" / summary["models"][0]
    again = pd.read_csv(model_dir / "slides.csv", dtype={"slide": str}).set_index("slide")["score"]
    first = pd.read_csv(next((root / "run" / "slides" / "models").iterdir()) / "slides.csv",
                        dtype={"slide": str}).set_index("slide")["score"]
    pd.testing.assert_series_equal(again.sort_index(), first.sort_index(), atol=1e-6)


def test_the_comparison_table_shows_the_mil_run(mil_run):
    root, result = mil_run
    row = collect(root / "run").iloc[0]
    assert row["kind"] == "mil" and row["model"] == "abmil/test_resnet"
    assert row["AUROC"] == result["test/auroc"]
    assert row["heatmap cell AUROC"] == result["test/heatmap_cell_auroc"]  # the attention vs the annotation


def test_the_viewer_shows_the_attention_heatmap(mil_run):
    from vistumor.viewer.layers import ATTENTION_TITLE, HeatTiles, describe
    from vistumor.viewer.run import RunFolder
    from vistumor.viewer.tiles import ByteLRU

    root, _ = mil_run
    run = RunFolder(root / "run" / "slides")
    model = next((root / "run" / "slides" / "models").iterdir()).name
    slide = run.slides[0] if isinstance(run.slides, list) else next(iter(run.slides))
    layer = describe(HeatTiles(run, ByteLRU(1 << 20)), model, slide)["probability"]
    assert layer["available"] and layer["title"] == ATTENTION_TITLE and layer["vmax"] == 1.0
