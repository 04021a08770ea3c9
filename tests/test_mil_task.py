"""The MIL training task on given (TRIDENT/CLAM-style) bags of known answer: slide labels only,
held-out slides ranked right, predictions and intervals over slides, the comparison table's
row, a resumed run equal to an uninterrupted one, and the trunk x aggregator sweep composed."""

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

from vistumor.errors import ConfigError
from vistumor.runs.compare import collect
from vistumor.tasks.mil import is_mil_config, train_mil

N_SLIDES, N_PATCHES, DIM = 32, 16, 8


def known_bags(folder, seed: int = 0):
    """Bags of N(0, 1) noise; a tumor slide's bag holds 3 patches with +6 on feature 0 (the
    lesion). Labels in ``labels.csv`` (slide,label)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N_SLIDES):
        label = i % 2
        features = rng.normal(0, 1, (N_PATCHES, DIM)).astype(np.float32)
        if label:
            features[rng.choice(N_PATCHES, 3, replace=False), 0] += 6.0
        with h5py.File(folder / f"slide_{i:02d}.h5", "w") as f:  # as TRIDENT writes them
            f["features"] = features
            f["coords"] = np.stack([np.arange(N_PATCHES) * 256, np.zeros(N_PATCHES)], 1).astype(np.int64)
            f.attrs["patch_size_level0"] = 256
        rows.append({"slide": f"slide_{i:02d}", "label": "tumor" if label else "normal"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


def mil_cfg(root, bags, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=mil", f"paths.root_dir={root}", f"data.bags_dir={bags}", f"data.mil.labels={bags}/labels.csv",
            "data.generate=null", "slides=null", "trainer=cpu", "trainer.max_epochs=6", "logger=csv",
            "+trainer.enable_progress_bar=false", "model.optimizer.lr=0.005", "model.hidden_dim=16",
            "model.attention_dim=8", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    return cfg


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return known_bags(tmp_path_factory.mktemp("bags"))


@pytest.mark.parametrize("aggregator", ["abmil", "clam_sb"])
def test_mil_on_slide_labels_ranks_held_out_tumor_slides_first(tmp_path, bags, aggregator):
    cfg = mil_cfg(tmp_path, bags, f"model={aggregator}", "model.instance_k=3")
    assert is_mil_config(cfg)
    result = train_mil(cfg)
    assert result["kind"] == "mil" and result["aggregator"] == aggregator
    assert result["test/auroc"] >= 0.9  # 3 + 3 held-out slides (split by slide, stratified)
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert split.groupby(["split", "label"]).size().to_dict() == {
        ("test", 0): 3, ("test", 1): 3, ("train", 0): 10, ("train", 1): 10, ("val", 0): 3, ("val", 1): 3}
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert sorted(predictions["slide_id"]) == sorted(split.loc[split["split"] == "test", "slide"])
    assert len(result["test/auroc_ci95"]) == 2  # resampling slides
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/auroc"] == result["test/auroc"]
    row = collect(tmp_path).iloc[0]
    assert row["kind"] == "mil" and row["AUROC"] == result["test/auroc"]


def test_a_resumed_mil_run_equals_an_uninterrupted_one(tmp_path, bags):
    volatile = ("wall_time_s", "run_dir", "best_ckpt", "predictions", "split", "bags")
    common = ("model=clam_sb", "model.instance_k=3", "trainer.max_epochs=4")
    whole = train_mil(mil_cfg(tmp_path / "whole", bags, *common))
    with pytest.raises(SystemExit, match="killed in epoch 2"):
        train_mil(mil_cfg(tmp_path / "killed", bags, *common, "+callbacks.crash._target_=conftest.CrashAt",
                          "+callbacks.crash.epoch=2"))
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt"
    resumed = train_mil(mil_cfg(tmp_path / "resumed", bags, *common, f"ckpt_path={last}"))
    def numbers(result: dict) -> dict:  # every value, intervals unpacked, as floats
        out = {}
        for k, v in result.items():
            if k not in volatile and v is not None and not isinstance(v, str):
                out.update({f"{k}[{i}]": x for i, x in enumerate(v)} if isinstance(v, list) else {k: v})
        return out

    same = numbers(whole)
    assert numbers(resumed) == pytest.approx(same, abs=1e-6)
    assert {k: v for k, v in resumed.items() if isinstance(v, str) and k not in volatile} == \
        {k: v for k, v in whole.items() if isinstance(v, str) and k not in volatile}
    assert any(k.startswith("val/") for k in same) and any(k.startswith("test/") for k in same)


def test_bad_inputs_are_one_line(tmp_path, bags):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"empty: no bag for 32 slide\(s\) \(first: \['slide_00', 'slide_01'"):
        train_mil(mil_cfg(tmp_path, empty, f"data.mil.labels={bags}/labels.csv"))
    train_mil(mil_cfg(tmp_path / "a", bags, "trainer.max_epochs=1"))
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="checkpoint of aggregator 'abmil' cannot resume model 'clam_sb'"):
        train_mil(mil_cfg(tmp_path / "b", bags, "model=clam_sb", f"ckpt_path={last}"))
    with pytest.raises(ConfigError, match="unknown key"):
        train_mil(mil_cfg(tmp_path / "c", bags, "+data.mil.cache=x"))


def test_the_sweep_composes_trunk_x_aggregator():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = ["experiment=mil", "hparams_search=mil"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            run = compose("train", overrides=["experiment=mil", *job])
        seen.add((run.model.aggregator, run.model.trunk.backbone))
    assert seen == {(a, t) for a in ("abmil", "clam_sb") for t in ("tf_efficientnet_lite0", "test_resnet")}
