"""``infer.py`` with real checkpoints: a manifest split, several checkpoints sharing their
reads, resume, the CLI, and bad input."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, compose_infer

from vistumor.cli import run_task
from vistumor.errors import ConfigError
from vistumor.tasks import infer


def infer_cfg(trained, out, *overrides: str):
    return compose_infer(trained.root, trained.data, trained.last, out, *overrides)


def test_infer_on_the_checkpoints_test_slides(trained, tmp_path):
    summary = infer(infer_cfg(trained, tmp_path))
    test_slides = sorted(trained.manifest.loc[trained.manifest["split"] == "test", "slide_id"].unique())
    assert summary["done"] == len(test_slides) == 2 and summary["models"] == ["test_resnet"]
    folder = tmp_path / "models" / "test_resnet"
    table = pd.read_csv(folder / "slides.csv")
    assert table["slide"].tolist() == test_slides and (table["status"] == "done").all()
    assert set(table["label"]) == {"normal", "tumor"} and table["score"].between(0, 1).all()
    for slide in test_slides:
        for kind, suffix in (("heatmaps", ".npy"), ("heatmaps", ".png"), ("cams", ".npy"), ("lesions", ".geojson"),
                             ("lesions", ".xml"), ("detections", ".csv"), ("figures", ".png")):
            assert (folder / kind / f"{slide}{suffix}").is_file(), (kind, slide)
        sidecar = json.loads((folder / "heatmaps" / f"{slide}.json").read_text())
        assert sidecar["checkpoint"] == str(trained.last) and sidecar["patch_size_px"] == 64
        assert sidecar["cell_size_px"] == 32 and sidecar["cell_size_um"] == pytest.approx(16.0)  # 0.5 um/px
        assert np.load(folder / "heatmaps" / f"{slide}.npy").shape == tuple(sidecar["shape"]) == (16, 24)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["models"][0]["tiling"]["grid"]["patch_size"] == 64  # the scale the model was trained at
    assert run["models"][0]["tiling"]["trained_mpp"] == pytest.approx(0.5)  # its training slides' um/px
    assert infer(infer_cfg(trained, tmp_path))["skipped"] == 2  # resume: nothing redone


def test_several_checkpoints_share_the_reads(trained, resized, tmp_path):  # noqa: F811
    summary = infer(infer_cfg(trained, tmp_path, f"ckpt_path=[{trained.last},{resized}]"))
    assert summary["models"] == ["test_resnet", "test_resnet-2"]
    status = json.loads(next((tmp_path / "status").glob("*.json")).read_text())
    first, second = status["models"]["test_resnet"], status["models"]["test_resnet-2"]
    assert first["decoded_px"] == second["decoded_px"] > 0 and first["patches"] == second["patches"]
    assert first["read_level"] == 0  # 64 px patches for a 64 px input: no coarser level is fine enough


def test_infer_cli_end_to_end(trained, tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "infer.py", "data=camelyon16", "data.generate=null", f"data.root={trained.data}",
               f"ckpt_path={trained.last}", "slides=all", "device=cpu", "run.progress=false",
               "cam.enabled=false", f"hydra.run.dir={out}"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(out / "status.csv")) == 6  # every slide of the data config
    assert not (out / "models" / "test_resnet" / "cams").exists()


def test_infer_cli_takes_a_list_of_slides(trained, dataset, tmp_path):
    """Issue 17.1: the README's ``'slides=[a.tif,b.tif]'`` exited 1 with ``TypeError: expected
    str ... not ListConfig`` (``config.plain`` converted only DictConfig)."""
    out = tmp_path / "cli"
    first, second = dataset.slide("tumor_002"), dataset.slide("normal_001")
    command = [sys.executable, "infer.py", "data=camelyon16", "data.generate=null", f"data.root={trained.data}",
               f"ckpt_path={trained.last}", f"slides=[{first},{second}]", "device=cpu", "run.progress=false",
               "cam.enabled=false", "evaluate.enabled=false", f"hydra.run.dir={out}"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done 2, skipped 0, failed 0" in done.stdout + done.stderr
    status = pd.read_csv(out / "status.csv")
    assert status["slide"].tolist() == ["tumor_002", "normal_001"] and (status["status"] == "done").all()
    assert status["path"].tolist() == [str(first), str(second)]


def test_infer_exits_1_with_the_counts_when_a_slide_failed(trained, dataset, tmp_path, caplog):
    """Issue 17.5: ``infer.py`` exited 0 even when every slide failed."""
    broken = tmp_path / "broken.tif"
    broken.write_bytes(dataset.slide("normal_002").read_bytes()[:3000])
    cfg = infer_cfg(trained, tmp_path / "run", f"slides=[{dataset.slide('normal_001')},{broken}]",
                    "cam.enabled=false", "evaluate.enabled=false")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        run_task(infer, cfg)
    assert exit_.value.code == 1
    assert "done 1, skipped 0, failed 1" in caplog.text
    status = pd.read_csv(tmp_path / "run" / "status.csv").set_index("slide")["status"]
    assert status.to_dict() == {"normal_001": "done", "broken": "failed"}  # the good slide's results stand


def test_slides_whose_names_differ_only_by_case_stop_the_run_before_anything_is_written(trained, dataset,
                                                                                        tmp_path):
    """Issue 17.2: ``a.tif`` and ``a.TIF`` in one folder both ran as slide ``a``, exit 0."""
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(dataset.slide("normal_001"), folder / "a.tif")
    shutil.copy(dataset.slide("tumor_001"), folder / "a.TIF")
    with pytest.raises(ConfigError, match=r"a.TIF and .*a.tif are both slide 'a'"):
        infer(infer_cfg(trained, tmp_path / "run", f"slides={folder}"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (("ckpt_path=/nowhere/x.ckpt",), "checkpoint not found"),
    (("slides=/nowhere",), "slide file or folder not found"),
    (("score.method=median",), "infer.score.method must be one of"),
    (("data.mpp_override=sometimes",), "data.mpp_override must be one of"),
    (("+run.workers=2",), r"unknown key\(s\) \['workers'\] in run; known"),
    (("run.stage=extract",), "run.stage must be all, infer or merge, got 'extract'"),
    (("run.num_shards=2", "run.shard_index=2"), r"shard_index=2 must be in \[0, num_shards=2\)"),
])
def test_bad_input_is_one_line_before_any_slide_is_read(trained, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        infer(infer_cfg(trained, tmp_path, *overrides))
    assert not (tmp_path / "status").exists()
