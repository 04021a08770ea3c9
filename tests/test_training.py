"""Training end to end through ``vistumor.tasks.train`` on the tiny dataset, and bad input.

The tiny manifest (``conftest.tiled``) holds 10 patches per split, 5 tumor and 5 normal;
with batches of 8 an epoch is 2 optimiser steps. ``small_cnn`` is timm's ``test_resnet``:
96 features, so a frozen trunk leaves ``96 * 2 + 2 = 194`` trainable parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import PROJECT, compose_train, copy_tiled, train_overrides
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from vistumor.cli import run_task
from vistumor.data.datamodule import PatchDataModule
from vistumor.data.features import FeatureDataset
from vistumor.errors import ConfigError, ManifestError
from vistumor.model.classifier import PatchClassifier
from vistumor.runs import compare, tracking
from vistumor.tasks import training

HEAD = ("net.fc.",)
METRIC_PREFIXES = ("train/", "val/", "test/")


@dataclass
class Run:
    """A finished ``train(cfg)`` with the objects it built and what a trunk hook saw."""

    cfg: DictConfig
    result: dict
    model: PatchClassifier
    dm: PatchDataModule
    initial: dict[str, torch.Tensor]
    #: per forward of the hooked trunk module: (model in training, output requires grad,
    #: hooked module in training, batch size)
    calls: list[tuple[bool, bool, bool, int]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.cfg.paths.output_dir)

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.result.items() if k.startswith(METRIC_PREFIXES) and "per_s" not in k}


def run_train(cfg: DictConfig, hooked: str = "layer4") -> Run:
    """``train(cfg)`` on a model (with a forward hook on ``net.<hooked>``) and datamodule
    built here, kept for inspection."""
    calls: list = []
    training.seed(cfg)  # as train() does before it builds: the head starts from the seed
    model = training.build_model(cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def hook(module, args, out):
        calls.append((model.training, out.requires_grad, module.training, len(out)))

    model.net.get_submodule(hooked).register_forward_hook(hook)
    dm = training.build_datamodule(cfg, model.input_size)
    result = training.train(cfg, model, dm)
    return Run(cfg, result, model, dm, initial, calls)


def is_head(key: str) -> bool:
    return key.startswith(HEAD)


@pytest.fixture(scope="module")
def run2(tiled, tmp_path_factory) -> Run:
    """Two epochs of the frozen-trunk paper setup, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("run2")
    return run_train(compose_train(root, tiled.data.root, tiles_dir=tiled.tiles_dir))


# -- end to end -------------------------------------------------------------------------------


def test_fast_dev_run_fits_and_tests(train_cfg):
    result = training.train(train_cfg("+trainer.fast_dev_run=true"))
    assert {"train/loss", "val/acc", "test/acc", "test/auroc"} <= set(result)
    out = Path(result["run_dir"])
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == result["test/acc"]


def test_two_epochs_write_every_artifact(run2, tiled):
    result, out = run2.result, run2.out
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))
    assert result["model"] == "test_resnet"
    assert result["params_trainable"] == run2.model.net.num_features * 2 + 2 == 194
    assert result["params_total"] == sum(p.numel() for p in run2.model.parameters())
    assert result["images_per_s"] > 0 and result["wall_time_s"] > 0
    for name in ("learning_curves.png", "confusion_matrix.png", "roc.png", "predictions.csv",
                 "csv/metrics.csv", "csv/hparams.yaml", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert Path(result["best_ckpt"]).parent == out / "checkpoints"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        {"last.ckpt", Path(result["best_ckpt"]).name})

    predictions = pd.read_csv(out / "predictions.csv", dtype={"slide_id": str})
    expected = run2.dm.source.manifest.split("test")
    assert sorted(zip(predictions.slide_id, predictions.x0, predictions.y0, predictions.label, strict=True)) \
        == sorted(zip(expected.slide_id, expected.x0, expected.y0, expected.label, strict=True))
    assert (predictions["pred"] == (predictions["prob"] >= 0.5)).all()
    counts = [result[f"test_{k}"] for k in ("tp", "fp", "tn", "fn")]
    assert sum(counts) == 10 and counts[0] + counts[3] == 5
    assert result["test/acc"] == pytest.approx((predictions["pred"] == predictions["label"]).mean())
    assert result["test/acc"] == pytest.approx((counts[0] + counts[2]) / 10)

    log = pd.read_csv(out / "csv" / "metrics.csv")
    assert sorted(log.dropna(subset=["val/acc"])["epoch"]) == [0, 1]
    assert sorted(log.dropna(subset=["train/loss"])["epoch"]) == [0, 1]


def test_learning_curves_pair_each_epoch_with_its_own_metrics(run2):
    state = torch.load(run2.out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    history = state["callbacks"]["LearningCurves"]["history"]
    log = pd.read_csv(run2.out / "csv" / "metrics.csv")
    assert [row["epoch"] for row in history] == [0, 1]
    for row in history:
        logged = log[log["epoch"] == row["epoch"]]
        for name in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert row[name] == pytest.approx(logged[name].dropna().item()), (row["epoch"], name)


def test_frozen_trunk_is_bit_identical_after_training(run2):
    after = run2.model.state_dict()
    last = torch.load(run2.out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    last = last["state_dict"]
    buffers = [k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(buffers) > 30  # the test sees every BatchNorm's statistics
    for state in (after, last):
        assert set(state) == set(run2.initial)
        for key, value in state.items():
            if not is_head(key):
                assert torch.equal(value, run2.initial[key]), key
        assert not torch.equal(state["net.fc.weight"], run2.initial["net.fc.weight"])
    assert all(int(after[k]) == 0 for k in buffers if k.endswith("num_batches_tracked"))


def test_no_autograd_graph_through_a_frozen_trunk(run2):
    steps = [c for c in run2.calls if c[0]]
    assert len(steps) == 4  # 2 epochs x 2 training batches
    assert not any(requires_grad for _, requires_grad, _, _ in steps)
    assert not any(trunk_training for _, _, trunk_training, _ in steps)
    assert sorted(n for *_, n in steps) == [2, 2, 8, 8]


def test_same_seed_same_metrics(run2, train_cfg):
    again = run_train(train_cfg())
    assert again.metrics() == run2.metrics()
    first = pd.read_csv(run2.out / "predictions.csv")
    assert pd.read_csv(again.out / "predictions.csv").equals(first)


def test_resume_continues_from_the_checkpoint(run2, train_cfg, tmp_path):
    last = run2.out / "checkpoints" / "last.ckpt"
    resumed = run_train(train_cfg(f"ckpt_path={last}", "trainer.max_epochs=3"))
    log = pd.read_csv(resumed.out / "csv" / "metrics.csv")
    assert sorted(log.dropna(subset=["train/loss"])["epoch"]) == [2]  # epochs 0 and 1 not redone
    state = torch.load(resumed.out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 6
    assert len([c for c in resumed.calls if c[0]]) == 2  # one epoch of 2 training batches
    assert "test/acc" in resumed.result


def test_training_the_whole_network_changes_the_trunk(train_cfg):
    run = run_train(train_cfg("model.freeze=none", "trainer.max_epochs=1"))
    assert run.result["params_trainable"] == run.result["params_total"]
    after = run.model.state_dict()
    assert not torch.equal(after["net.conv1.0.weight"], run.initial["net.conv1.0.weight"])
    assert not torch.equal(after["net.bn1.running_mean"], run.initial["net.bn1.running_mean"])
    steps = [c for c in run.calls if c[0]]
    assert steps and all(requires_grad and trunk_training for _, requires_grad, trunk_training, _ in steps)


# -- feature cache ----------------------------------------------------------------------------


def test_feature_cache_runs_the_trunk_once_per_patch_and_variant(train_cfg):
    cfg = train_cfg("callbacks=feature_cache", "callbacks.feature_cache.variants=2")
    run = run_train(cfg, hooked="conv1")
    train, val = run.dm.served["train"], run.dm.served["val"]
    assert isinstance(train, FeatureDataset) and isinstance(val, FeatureDataset)
    assert train.features.shape == (10, 2, 96) and val.features.shape == (10, 1, 96)
    # extraction (eval mode): 10 train patches x 2 variants + 10 val; then 10 test patches;
    # no trunk pass at all in the training steps of either epoch
    assert sum(n for training_, *_, n in run.calls if training_) == 0
    assert sum(n for *_, n in run.calls) == 10 * 2 + 10 + 10
    # variant 0 is the patch as evaluated: the features the model computes from its pixels
    source = run.dm.dataset("train")  # the image dataset stays what it was
    assert source.state.transform is not None  # the train split augments: read it without
    transform, source.state.transform = source.state.transform, None
    try:
        images = torch.stack([source[i]["image"] for i in range(len(source))])
    finally:
        source.state.transform = transform
    with torch.no_grad():
        expected = run.model.eval().features(images)
    assert train.features.dtype == torch.float16  # rounded once from float32: relative error <= 2**-11
    torch.testing.assert_close(train.features[:, 0].float(), expected, rtol=2**-11, atol=1e-5)
    assert not torch.equal(train.features[:, 0], train.features[:, 1])  # variant 1 is augmented
    assert {"test/acc", "val/acc", "train/loss"} <= set(run.result)


def test_feature_cache_needs_a_frozen_trunk(train_cfg):
    with pytest.raises(ConfigError, match="feature cache needs a frozen trunk"):
        training.train(train_cfg("callbacks=feature_cache", "model.freeze=none"))


# -- bad input: one line, nothing written -------------------------------------------------------


def assert_nothing_written(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model.backbone=resnet5"], ConfigError, "unknown backbone 'resnet5'; did you mean .*resnet50"),
        (["model.pretrained=true"], ConfigError, "weights are not available.*model.weights_path"),
        (["tiling.grid.min_tissue_fraction=0.5"], ManifestError,
         "manifest.csv: made with other parameters.*"
         "tiling.grid.min_tissue_fraction: manifest 0.6 vs config 0.5"),
        (["data.datamodule.batch_size=11"], ConfigError, "batch_size=11 is larger than the 10 training"),
        (["trainer=directml"], ConfigError, "trainer.accelerator=directml needs torch-directml"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(train_cfg, overrides, error, message):
    cfg = train_cfg(*overrides)
    with pytest.raises(error, match=message) as err:
        training.train(cfg)
    assert "\n" not in str(err.value)
    assert_nothing_written(cfg)


def test_entry_script_reports_a_model_error_in_one_line(train_cfg, caplog):
    with pytest.raises(SystemExit) as exit_:
        run_task(training.train, train_cfg("model.backbone=resnet5"))
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("unknown backbone 'resnet5'")


def test_missing_manifest_is_named(train_cfg, tmp_path):
    missing = tmp_path / "elsewhere" / "manifest.csv"
    cfg = train_cfg(f"data.datamodule.source.manifest_path={missing}")
    with pytest.raises(ManifestError, match=f"{missing}: manifest not found"):
        training.train(cfg)
    assert_nothing_written(cfg)


@pytest.mark.parametrize("problem", ["no tumor in val", "slide changed", "slide missing"])
def test_bad_manifest_or_slides(tiled, tmp_path, problem):
    keep = (lambda t: ~((t["split"] == "val") & (t["label"] == 1))) if problem == "no tumor in val" else None
    copy = copy_tiled(tiled, tmp_path / "copy", keep=keep)
    slide = copy.data.slide("tumor_001")
    if problem == "slide changed":
        slide.write_bytes(slide.read_bytes()[:-1])
    elif problem == "slide missing":
        slide.unlink()
    cfg = compose_train(tmp_path, copy.data.root, tiles_dir=copy.tiles_dir)
    expected = {"no tumor in val": "split 'val' has no tumor patches",
                "slide changed": "slide 'tumor_001' changed since tiling",
                "slide missing": "slide 'tumor_001' is missing"}[problem]
    with pytest.raises(ManifestError, match=expected) as err:
        training.train(cfg)
    assert str(err.value).startswith(f"{copy.manifest}: ")
    assert_nothing_written(cfg)


# -- Weights & Biases -----------------------------------------------------------------------


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """An empty home (no ~/.netrc) and no W&B variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_wandb_online_without_a_key_is_a_config_error(no_wandb_key, train_cfg):
    with pytest.raises(ConfigError, match="online but there is no API key"):
        tracking.wandb_mode("online")
    cfg = train_cfg("logger=wandb", "logger.wandb.mode=online")
    with pytest.raises(ConfigError, match="no API key"):
        training.train(cfg)
    assert_nothing_written(cfg)


def test_wandb_auto_mode_follows_the_key(no_wandb_key, monkeypatch):
    assert tracking.wandb_mode("auto") == tracking.wandb_mode(None) == "offline"
    netrc = no_wandb_key / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert tracking.wandb_mode("auto") == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert tracking.wandb_mode("auto") == tracking.wandb_mode("online") == "online"


def test_wandb_mode_from_the_environment_wins(no_wandb_key, monkeypatch, train_cfg):
    cfg = train_cfg("logger=wandb", "logger.wandb.mode=online")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode("online") == "disabled"
    assert tracking.build_loggers(cfg.logger) == []
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    (logger,) = tracking.build_loggers(cfg.logger)
    assert isinstance(logger, WandbLogger) and logger._wandb_init["mode"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="must be one of"):
        tracking.wandb_mode(None)


# -- comparison table -----------------------------------------------------------------------


def test_comparison_table_of_finished_runs(tmp_path):
    runs = {
        "1": {"model": "densenet201", "test/acc": 0.9, "test/fpr": 0.1, "test/fnr": 0.1, "test/recall": 0.9,
              "test/auroc": 0.95, "params_trainable": 3842, "params_total": 18_096_770,
              "images_per_s": 120.5, "wall_time_s": 61.0, "val/acc": 0.5},
        "0": {"model": "resnet50", "test/acc": 0.8, "test/fpr": 0.3, "test/fnr": 0.1, "test/recall": 0.9,
              "test/auroc": 0.85, "test/cam_iou": 0.4, "params_trainable": 4098, "params_total": 23_512_130,
              "images_per_s": 150.0, "wall_time_s": 50.0},
    }
    for name, metrics in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "metrics.json").write_text("{interrupted")
    table = compare.write_comparison(tmp_path)
    assert list(table.columns) == ["model", "accuracy", "FPR", "FNR", "recall", "AUROC", "map IoU",
                                   "trainable params", "total params", "images/s", "wall time (s)", "run"]
    assert table["model"].tolist() == ["resnet50", "densenet201"]  # by run folder
    assert table["run"].tolist() == [str(tmp_path / "0"), str(tmp_path / "1")]
    assert pd.isna(table.loc[1, "map IoU"]) and table.loc[0, "map IoU"] == 0.4
    written = pd.read_csv(tmp_path / "comparison.csv")
    assert written["accuracy"].tolist() == [0.8, 0.9]
    markdown = (tmp_path / "comparison.md").read_text().splitlines()
    assert markdown[0].startswith("| model | accuracy | FPR |") and len(markdown) == 4
    assert "| resnet50 | 0.8 | 0.3 |" in markdown[2] and "23,512,130" in markdown[2]


def test_compare_cli_on_an_empty_folder_fails(tmp_path):
    assert compare.main([str(tmp_path / "nowhere")]) == 2
    done = subprocess.run([sys.executable, "-m", "vistumor.runs.compare", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert f"{tmp_path}: no finished runs" in done.stderr


def test_two_model_multirun_writes_the_comparison_table(tiled, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "train.py", "-m", "model.backbone=test_resnet,test_efficientnet",
        *train_overrides(tmp_path, tiled.data.root, tiled.tiles_dir), "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(sweep / "comparison.csv")
    assert table["model"].tolist() == ["test_resnet", "test_efficientnet"]
    assert table["run"].tolist() == [str(sweep / "0"), str(sweep / "1")]
    assert table["accuracy"].between(0, 1).all() and (table["trainable params"] < table["total params"]).all()
    assert (sweep / "comparison.md").read_text().count("| test_") == 2


def test_operating_point_is_chosen_on_validation_and_applied_to_test(run2):
    threshold = run2.result["val/operating_threshold"]
    assert 0 <= threshold <= 1
    table = pd.read_csv(run2.out / "predictions.csv")
    called = (table["prob"] >= threshold).astype(int)
    fp = int(((called == 1) & (table["label"] == 0)).sum())
    fn = int(((called == 0) & (table["label"] == 1)).sum())
    assert run2.result["test/fpr_op"] == pytest.approx(fp / int((table["label"] == 0).sum()), abs=1e-6)
    assert run2.result["test/fnr_op"] == pytest.approx(fn / int((table["label"] == 1).sum()), abs=1e-6)
