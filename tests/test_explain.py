"""Explanations in training (the CamMonitor callback) and on demand (``explain(cfg)``,
``explain.py``), on one tiny model trained once on the tiny CAMELYON16-layout dataset."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from conftest import DATA, PROJECT, compose_stage
from omegaconf import open_dict
from PIL import Image

from vistumor.errors import ConfigError
from vistumor.explain import sanity, selection
from vistumor.explain.localization import SCORE_NAMES
from vistumor.explain.monitor import CamMonitor
from vistumor.labels import outcomes
from vistumor.model.checkpoints import load_classifier
from vistumor.model.classifier import PatchClassifier

SCORE_KEYS = [f"cam_{n}" for n in SCORE_NAMES]
def explain_cfg(trained, out: Path, *overrides: str, ckpt: str | None = None):
    return compose_stage("explain", trained.root, trained.data, out, "device=cpu",
                       f"ckpt_path={ckpt or trained.last}", *overrides)


def run_explain(trained, out: Path, *overrides: str, ckpt: str | None = None) -> dict:
    from vistumor.tasks import explain

    return explain(explain_cfg(trained, out, *overrides, ckpt=ckpt))


def patches(manifest: pd.DataFrame, split: str, label: int) -> pd.DataFrame:
    return manifest[(manifest["split"] == split) & (manifest["label"] == label)]


# -- CamMonitor during a real fit -------------------------------------------------------------------


def test_fit_writes_a_cam_grid_every_epoch(trained):
    assert (trained.run / "cam" / "epoch_000.png").is_file()
    assert (trained.run / "cam" / "epoch_001.png").is_file()
    assert not (trained.run / "cam" / "epoch_002.png").exists()
    with Image.open(trained.run / "cam" / "epoch_001.png") as png:
        assert png.size[0] > 300 and png.size[1] > 300


def test_fit_logs_localization_scores(trained):
    assert {f"val/{k}" for k in SCORE_KEYS} <= set(trained.result)
    assert {f"test/{k}" for k in SCORE_KEYS} <= set(trained.result)
    logged = pd.read_csv(trained.run / "csv" / "metrics.csv")
    assert logged["val/cam_energy"].notna().sum() == 2  # one value per validation epoch
    assert 0 <= trained.result["test/cam_energy"] <= 1


# -- CamMonitor, unit by unit ------------------------------------------------------------------------


class FakePatches:
    """A patch dataset of dark noisy images, tumor ones holding a bright annotated square."""

    def __init__(self, labels, fraction=None, size: int = 64, masked: bool = True):
        self.labels = np.asarray(labels)
        if fraction is not None:
            self.tumor_fraction = np.asarray(fraction, float)
        self.image_size = size
        self.masked = masked

    def read(self, index: int):
        rng = np.random.default_rng(index)
        rgb = rng.integers(10, 40, (self.image_size, self.image_size, 3)).astype(np.uint8)
        mask = np.zeros((self.image_size, self.image_size), np.uint8)
        if self.labels[index] == 1:
            r, c = 8 + 3 * (index % 8), 20
            rgb[r : r + 16, c : c + 16] = 240
            mask[r : r + 16, c : c + 16] = 1
        return rgb, mask if self.masked else None


class FakeTrainer(SimpleNamespace):
    """The trainer attributes CamMonitor reads, with a logger that records images."""

    def __init__(self, dataset, folder: Path, epoch: int = 0, **kwargs):
        images = []
        logger = SimpleNamespace(log_image=lambda **kw: images.append(kw))
        datamodule = SimpleNamespace(dataset=lambda split: dataset, test_split="test")
        defaults = dict(sanity_checking=False, current_epoch=epoch, datamodule=datamodule,
                        is_global_zero=True, log_dir=None, default_root_dir=str(folder), loggers=[logger],
                        global_step=10 * epoch)
        super().__init__(**{**defaults, **kwargs}, logged_images=images)


@pytest.fixture
def module(monkeypatch) -> PatchClassifier:
    """A frozen-trunk classifier whose ``log_dict`` calls are recorded in ``module.logged``."""
    torch.manual_seed(0)
    model = PatchClassifier("test_resnet", pretrained=False)
    model.logged = {}
    monkeypatch.setattr(model, "log_dict", lambda values, **kw: model.logged.update(values))
    return model


LABELS = [1, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0]
FRACTION = [1.0, 0, 0.3, 1.0, 0, 0.06, 0, 1.0, 0, 0, 0.5, 0]


def test_select_prefers_partly_covered_tumor_then_whole_then_normal():
    indices = CamMonitor(seed=3).select(FakePatches(LABELS, FRACTION), 5, 3)
    assert len(indices) == 8 and len(set(indices)) == 8
    assert set(indices[:3]) == {2, 5, 10}  # partly covered, in seeded order
    assert set(indices[3:5]) <= {0, 3, 7}  # then whole ones
    assert all(LABELS[i] == 0 for i in indices[5:])


def test_select_is_seeded():
    dataset = FakePatches(LABELS, FRACTION)
    first = CamMonitor(seed=3).select(dataset, 6, 6)
    assert CamMonitor(seed=3).select(dataset, 6, 6) == first
    orders = {tuple(CamMonitor(seed=s).select(dataset, 6, 6)) for s in range(8)}
    assert len(orders) > 1


def test_select_without_fractions_and_with_too_few_patches():
    dataset = FakePatches([1, 0, 0])
    assert sorted(CamMonitor().select(dataset, 4, 1)[:1]) == [0]
    assert len(CamMonitor().select(dataset, 4, 5)) == 3


def snapshot(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def test_validation_hook_draws_scores_and_restores_the_model(module, tmp_path):
    module.train()
    module.net.layer2.train()  # a frozen stage left in train mode: must stay so
    module.net.fc.eval()  # and the head in eval mode
    before = snapshot(module)
    trainer = FakeTrainer(FakePatches(LABELS, FRACTION), tmp_path, epoch=3)
    monitor = CamMonitor(n_tumor=3, n_normal=2, score_patches=4)
    monitor.on_validation_epoch_end(trainer, module)
    assert (tmp_path / "cam" / "epoch_003.png").is_file()
    assert monitor.paths == [tmp_path / "cam" / "epoch_003.png"]
    assert trainer.logged_images == [{"key": "val/cam_grid", "images": [str(monitor.paths[0])], "step": 30}]
    assert set(module.logged) == {f"val/{k}" for k in SCORE_KEYS}
    assert all(0 <= v <= 1 or math.isnan(v) for v in module.logged.values())
    assert snapshot(module) == before
    assert all(not m._forward_hooks for m in module.modules())


def test_validation_hook_skips_sanity_check_and_off_epochs(module, tmp_path):
    dataset = FakePatches(LABELS, FRACTION)
    monitor = CamMonitor(every_n_epochs=2, score_patches=2, n_tumor=1, n_normal=1)
    monitor.on_validation_epoch_end(FakeTrainer(dataset, tmp_path, epoch=0), module)
    monitor.on_validation_epoch_end(FakeTrainer(dataset, tmp_path, epoch=1, sanity_checking=True), module)
    assert not (tmp_path / "cam").exists() and not module.logged
    monitor.on_validation_epoch_end(FakeTrainer(dataset, tmp_path, epoch=1), module)
    assert [p.name for p in (tmp_path / "cam").iterdir()] == ["epoch_001.png"]


def test_test_hook_logs_test_scores(module, tmp_path):
    CamMonitor(test_score_patches=3).on_test_epoch_end(FakeTrainer(FakePatches(LABELS, FRACTION), tmp_path),
                                                       module)
    assert set(module.logged) == {f"test/{k}" for k in SCORE_KEYS}
    assert not (tmp_path / "cam").exists()


def test_unannotated_patches_log_no_scores(module, tmp_path):
    trainer = FakeTrainer(FakePatches(LABELS, FRACTION, masked=False), tmp_path)
    CamMonitor(n_tumor=1, n_normal=1, score_patches=3).on_validation_epoch_end(trainer, module)
    assert not module.logged
    assert (tmp_path / "cam" / "epoch_000.png").is_file()


def test_memory_stays_flat_across_epochs(module, tmp_path):
    dataset = FakePatches(LABELS, FRACTION)
    monitor = CamMonitor(n_tumor=2, n_normal=1, score_patches=3, dirpath=str(tmp_path))
    process = psutil.Process()

    def epoch(i):
        monitor.on_validation_epoch_end(FakeTrainer(dataset, tmp_path, epoch=i), module)

    for i in range(2):
        epoch(i)
    gc.collect()
    tensors = sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())
    rss = process.memory_info().rss
    for i in range(2, 8):
        epoch(i)
    gc.collect()
    assert sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()) <= tensors
    assert process.memory_info().rss - rss < 32 * 2**20
    assert len(monitor.paths) == 8


# -- explain(cfg) -------------------------------------------------------------------------------------


def test_explain_compares_two_models_on_the_same_patches(trained, resized, tmp_path):
    summary = run_explain(trained, tmp_path, ckpt=f"[{trained.last},{resized}]")
    assert list(summary["models"]) == ["test_resnet", "test_resnet#2"]
    assert summary["models"]["test_resnet#2"]["image_size"] == 48
    assert summary["methods"] == ["gradcam++", "saliency"]
    assert json.loads((tmp_path / "summary.json").read_text())["models"].keys() == summary["models"].keys()
    table = pd.read_csv(tmp_path / "scores.csv")
    assert list(table.columns) == ["model", "slide_id", "x0", "y0", "label", "prob", "pred", "outcome",
                                   *SCORE_KEYS]
    test = trained.manifest[trained.manifest["split"] == "test"]
    assert len(table) == 2 * len(test) == 2 * summary["candidates"]
    first, second = (table[table["model"] == m].reset_index(drop=True) for m in summary["models"])
    assert first[["slide_id", "x0", "y0", "label"]].equals(second[["slide_id", "x0", "y0", "label"]])
    scored = first[first["label"] == 1]
    assert scored["cam_iou"].notna().all() and first[first["label"] == 0]["cam_iou"].isna().all()
    assert set(first["outcome"]) <= {"tp", "fn", "fp", "tn"}
    assert summary["models"]["test_resnet"]["scored_patches"] == len(scored)
    with Image.open(tmp_path / "explanations.png") as png:  # patch | 2 models x 2 methods | truth
        assert png.size[0] == round(1.9 * 110 * 6)
        assert png.size[1] == round((1.9 * summary["shown"] + 0.6) * 110)


def test_explain_selects_by_coordinates(trained, tmp_path):
    tumor = patches(trained.manifest, "train", 1).iloc[0]  # the train split: masks still drawn
    summary = run_explain(trained, tmp_path, "select.split=train",
                          f"select.coordinates=[[{tumor.slide_id},{tumor.x0},{tumor.y0}]]")
    table = pd.read_csv(tmp_path / "scores.csv")
    assert summary["shown"] == summary["candidates"] == len(table) == 1
    assert tuple(table.loc[0, ["slide_id", "x0", "y0", "label"]]) == (tumor.slide_id, tumor.x0, tumor.y0, 1)
    assert table.loc[0, SCORE_KEYS[1:4]].notna().all()


def test_explain_selects_by_slides(trained, tmp_path):
    normal = patches(trained.manifest, "val", 0)
    slide = normal["slide_id"].iloc[0]
    summary = run_explain(trained, tmp_path, "select.split=val", f"select.slides=[{slide}]",
                          "select.per_kind=1", "methods=[gradcam]")
    table = pd.read_csv(tmp_path / "scores.csv")
    assert set(table["slide_id"]) == {slide}
    assert len(table) == (trained.manifest["slide_id"] == slide).sum()
    assert summary["shown"] == min(4, len(table))


def write_patch_folder(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("tumor", "normal"):
        (folder / kind).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / kind / f"{i}.png")
    return folder


def test_explain_patch_folder_without_masks_skips_scores(trained, tmp_path, caplog):
    folder = write_patch_folder(tmp_path / "patches")
    with caplog.at_level(logging.WARNING):
        summary = run_explain(trained, tmp_path / "out", f"select.patch_source={folder}")
    assert "localization scores skipped" in caplog.text
    table = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert len(table) == 6 and table[SCORE_KEYS].isna().all().all()
    assert summary["models"]["test_resnet"]["scored_patches"] == 0
    assert summary["models"]["test_resnet"]["cam_iou"] is None
    assert (tmp_path / "out" / "explanations.png").is_file()


def test_explain_patch_folder_with_masks_scores_them(trained, tmp_path, caplog):
    folder = write_patch_folder(tmp_path / "patches")
    (folder / "masks" / "tumor").mkdir(parents=True)
    for i in range(2):  # the third tumor image has no mask
        mask = np.zeros((64, 64), np.uint8)
        mask[8:40, 16:48] = 255
        Image.fromarray(mask).save(folder / "masks" / "tumor" / f"{i}.png")
    with caplog.at_level(logging.WARNING):
        summary = run_explain(trained, tmp_path / "out", f"select.patch_source={folder}")
    assert "skipped" not in caplog.text
    table = pd.read_csv(tmp_path / "out" / "scores.csv", dtype={"slide_id": str}).set_index("slide_id")
    assert table.loc[table["label"] == 1, "cam_iou"].notna().sum() == 2
    assert math.isnan(table[table["label"] == 1].loc["2", "cam_iou"])
    assert summary["models"]["test_resnet"]["scored_patches"] == 2


@pytest.mark.parametrize("flat", [False, True])
def test_explain_sanity_check_adds_randomization_similarity(trained, tmp_path, monkeypatch, flat):
    if flat:  # every map constant: the rank correlation is undefined
        monkeypatch.setattr(sanity, "rank_similarity", lambda a, b: float("nan"))
    summary = run_explain(trained, tmp_path, "sanity_check=true", "select.per_kind=1")
    similarity = summary["models"]["test_resnet"]["randomization"]
    assert set(similarity) == {"gradcam++", "saliency"}
    if flat:
        assert similarity == {"gradcam++": None, "saliency": None}
    else:
        assert all(-1 <= v <= 1 for v in similarity.values())
    strict = json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail)  # no NaN
    assert strict["models"]["test_resnet"]["randomization"] == similarity


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("methods=[gradcam, gradkam]",), r"unknown explanation method 'gradkam'; known: gradcam\+\+"),
        (("methods=[]",), "explain.methods is empty"),
        (("target_layer=layer44",), r"target layer 'layer44' does not exist.*layer4"),
        (("select.slides=[tumor_999]",), "empty selection"),
        (("select.coordinates=[[tumor_999,0,0]]",), r"no patch at \['tumor_999', 0, 0\]"),
        (("select.kinds=[tp,xx]",), "unknown outcomes"),
    ],
)
def test_explain_bad_options(trained, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_explain(trained, tmp_path, *overrides)
    assert not (tmp_path / "summary.json").exists()


def test_explain_empty_outcome_selection(trained, tmp_path):
    table = pd.read_csv(trained.run / "predictions.csv")  # the test split, by the best checkpoint
    absent = [k for k, (label, pred) in {"tp": (1, 1), "fn": (1, 0), "fp": (0, 1), "tn": (0, 0)}.items()
              if not ((table["label"] == label) & (table["pred"] == pred)).any()]
    if not absent:
        pytest.skip("the tiny model made every kind of call on the test split")
    with pytest.raises(ConfigError, match="empty selection"):
        run_explain(trained, tmp_path, f"select.kinds=[{absent[0]}]", ckpt=trained.result["best_ckpt"])


def bad_checkpoint(kind: str, folder: Path, good: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    hparams = torch.load(good, map_location="cpu", weights_only=True)["hyper_parameters"]
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "no-hyper-parameters":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "pickled-object":
        torch.save({"hyper_parameters": SimpleNamespace(backbone="x")}, path)
    elif kind == "other-module":
        torch.save({"hyper_parameters": {"backbone": "test_resnet", "hidden": 3}, "state_dict": {}}, path)
    elif kind == "wrong-weights":
        torch.save({"hyper_parameters": hparams, "state_dict": {"net.fc.weight": torch.zeros(2, 2)}}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "checkpoint not found"), ("random-bytes", "not a loadable VisTumor checkpoint"),
     ("no-hyper-parameters", "not a VisTumor checkpoint"),
     ("pickled-object", "not a loadable VisTumor checkpoint"),
     ("other-module", "not a VisTumor checkpoint.*hidden"),
     ("wrong-weights", "checkpoint weights do not fit test_resnet")],
)
def test_explain_bad_checkpoints(trained, tmp_path, kind, message):
    path = bad_checkpoint(kind, tmp_path, trained.last)
    with pytest.raises(ConfigError, match=message) as err:
        run_explain(trained, tmp_path / "out", ckpt=str(path))
    assert str(path) in str(err.value)


def test_explain_needs_a_checkpoint(trained, tmp_path):
    from vistumor.tasks import explain

    cfg = explain_cfg(trained, tmp_path)
    with open_dict(cfg):
        cfg.ckpt_path = "???"
    with pytest.raises(ConfigError, match="ckpt_path"):
        explain(cfg)


def test_explain_cli_end_to_end(trained, tmp_path):
    out = tmp_path / "cli"
    args = [*DATA, f"paths.root_dir={trained.root}", f"data.root={trained.data}", f"hydra.run.dir={out}",
            f"ckpt_path={trained.last}", "device=cpu", "select.per_kind=1"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(PROJECT / "explain.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"explanations written to {out}" in done.stdout + done.stderr
    for name in ("explanations.png", "scores.csv", "summary.json"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["test_resnet"]["checkpoint"] == str(trained.last)


# -- pieces -------------------------------------------------------------------------------------------


def test_select_by_outcome_most_confident_first():
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    prob = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.45, 0.99])
    assert selection.select_by_outcome(labels, prob, 0.5, ["tp"], 2) == [6, 0]
    assert selection.select_by_outcome(labels, prob, 0.5, ["fn", "fp", "tn"], 5) == [2, 3, 4, 5]
    # another threshold: the most confident miss is the one called most surely normal
    assert selection.select_by_outcome(labels, prob, 0.95, ["tp", "fn"], 2) == [6, 2, 1]


def test_outcomes():
    got = outcomes(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    assert list(got) == ["tp", "fn", "fp", "tn"]


def test_select_by_coordinates_whole_slides_and_places():
    places = [("a", 0, 0), ("a", 64, 0), ("b", 0, 0)]
    describe = places.__getitem__
    assert selection.select_by_coordinates(describe, 3, [["a"]]) == [0, 1]
    assert selection.select_by_coordinates(describe, 3, [["b", 0, 0], ["a", 64, 0]]) == [2, 1]
    with pytest.raises(ConfigError, match="no patch"):
        selection.select_by_coordinates(describe, 3, [["a", 1, 1]])


def test_rank_similarity():
    a = np.random.default_rng(0).random((2, 8, 8))
    assert sanity.rank_similarity(a, a) == pytest.approx(1)
    assert sanity.rank_similarity(a, 1 - a) == pytest.approx(-1)
    assert math.isnan(sanity.rank_similarity(a, np.zeros_like(a)))


def test_randomized_copy_leaves_the_model(trained):
    model = load_classifier(trained.last)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    clone = sanity.randomized(model, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream untouched
    again = sanity.randomized(model, seed=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in clone.state_dict().items())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert not torch.equal(clone.net.layer4[0].conv1.weight, model.net.layer4[0].conv1.weight)
    assert not clone.training


def test_explain_uses_the_manifest_the_checkpoint_was_trained_on(trained, tmp_path):
    """Another tiling in the explain config must neither re-tile nor change the patches."""
    import torch

    recorded = torch.load(trained.last, weights_only=True)["hyper_parameters"]["manifest_path"]
    assert Path(recorded).is_file()
    summary = run_explain(trained, tmp_path / "out", "tiling.name=other", "tiling.grid.stride=32")
    assert not (trained.root / "outputs" / "tiles" / "camelyon16" / "other").exists()
    scores = pd.read_csv(summary["scores"])
    expected = trained.manifest[trained.manifest["split"] == "test"]
    assert len(scores) == len(expected)
    places = set(zip(expected["slide_id"], expected["x0"], expected["y0"], strict=True))
    assert set(zip(scores["slide_id"], scores["x0"], scores["y0"], strict=True)) <= places
