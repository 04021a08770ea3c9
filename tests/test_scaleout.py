"""The scale-out path, proven (issue 17.12): tiling and whole-slide inference sharded over two
array jobs by a real submitit launcher (``hydra/launcher=submitit_local``, the Slurm config's
code path on one machine), then merged, give what one process gives: the same manifest, the
same heatmaps and the same slide table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import CONF, PROJECT, compose_tiling
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from vistumor.tasks import infer, tile

#: the tiling overrides of ``compose_tiling`` (tests/conftest.py), for the command line
TILING = ("data=camelyon16", "data.generate=null", "tiling.grid.patch_size=64", "tiling.tissue.downsample=8",
          "tiling.run.workers=1", "tiling.run.progress=false")
SHARDS = ("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")


def infer_cfg(root: Path, data: Path, out: Path, *overrides: str):
    """The real ``conf/infer.yaml`` writing into ``out``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=["data=camelyon16", "data.generate=null", f"paths.root_dir={root}",
                                          f"data.root={data}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def launch(script: str, *overrides: str) -> None:
    """``python <script> -m hydra/launcher=submitit_local ...``: every job of the sweep as a
    submitit job (its own process); the launcher waits for them."""
    done = subprocess.run([sys.executable, script, *SHARDS, *overrides], cwd=PROJECT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def test_sharded_tiling_through_submitit_then_merge_equals_one_process(dataset, tmp_path):
    single = compose_tiling(tmp_path / "single", dataset.root)
    tile(single)
    root = tmp_path / "sharded"
    launch("tiling.py", *TILING, f"paths.root_dir={root}", f"data.root={dataset.root}", "tiling.run.stage=tile",
           "tiling.run.num_shards=2", "tiling.run.shard_index=range(2)")
    out = root / "outputs" / "tiles" / "camelyon16" / "default"
    assert sorted(p.name for p in out.glob("status.shard*.csv")) == ["status.shard0of2.csv", "status.shard1of2.csv"]
    merged = compose_tiling(root, dataset.root, "tiling.run.stage=merge", "tiling.run.num_shards=2")
    assert tile(merged)["slides"] == 6
    assert (out / "manifest.csv").read_bytes() == (Path(single.tiling.out_dir) / "manifest.csv").read_bytes()
    meta = [json.loads((Path(folder) / "manifest.json").read_text()) for folder in (out, single.tiling.out_dir)]
    assert [{k: v for k, v in m.items() if k != "created"} for m in meta][0] == \
        [{k: v for k, v in m.items() if k != "created"} for m in meta][1]


def test_sharded_inference_through_submitit_then_merge_equals_one_process(trained, tmp_path):
    slides = f"slides=[{trained.data}/training/tumor/tumor_001.tif,{trained.data}/training/normal/normal_001.tif]"
    settings = (slides, "device=cpu", "run.progress=false", "evaluate.enabled=false", "cam.enabled=false",
                f"ckpt_path={trained.last}")
    one = tmp_path / "one"
    infer(infer_cfg(tmp_path, trained.data, one, *settings))
    two = tmp_path / "two"
    launch("infer.py", "data=camelyon16", "data.generate=null", f"paths.root_dir={tmp_path}",
           f"data.root={trained.data}", *settings, f"paths.output_dir={two}", "run.stage=infer",
           "run.num_shards=2", "run.shard_index=range(2)")
    assert len(list((two / "status").glob("*.json"))) == 2 and not (two / "status.csv").exists()
    summary = infer(infer_cfg(tmp_path, trained.data, two, *settings, "run.stage=merge", "run.num_shards=2"))
    assert summary["slides"] == 2 and "done" not in summary  # the merge ran no slide

    folders = [run / "models" / "test_resnet" for run in (one, two)]
    tables = [pd.read_csv(f / "slides.csv").drop(columns="seconds") for f in folders]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert tables[1]["slide"].tolist() == ["tumor_001", "normal_001"] and (tables[1]["status"] == "done").all()
    for slide in tables[0]["slide"]:
        maps = [np.load(f / "heatmaps" / f"{slide}.npy") for f in folders]
        np.testing.assert_array_equal(maps[0], maps[1])
        assert (folders[0] / "lesions" / f"{slide}.geojson").read_bytes() == \
            (folders[1] / "lesions" / f"{slide}.geojson").read_bytes()
