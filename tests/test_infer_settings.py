"""``infer.py`` settings: every bad value is one line naming the key and the value (exit 2)
before a checkpoint or a slide is read; a level a slide lacks fails that slide in one line;
slides scanned coarser than the model are refused unless ``read.upsample=true``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_infer

from vistumor.cli import run_task
from vistumor.errors import USER_ERROR_STATUS
from vistumor.tasks import infer

infer_cfg = compose_infer


@pytest.mark.parametrize(("override", "line"), [
    ("batch_size=0", "infer.batch_size must be a whole number >= 1, got 0"),
    ("detections.radius_um=-5", "infer.detections.radius_um must be a number > 0, got -5"),
    ("lesions.threshold=nan", "infer.lesions.threshold must be a number in (0, 1], got nan"),
    ("lesions.threshold=1.5", "infer.lesions.threshold must be a number in (0, 1], got 1.5"),
    ("read.level=-1", "infer.read.level must be auto or a level number >= 0, got -1"),
    ("read.upsample=maybe", "infer.read.upsample must be true or false, got 'maybe'"),
    ("grid.min_tissue_fraction=2", "infer.grid.min_tissue_fraction must be a number in [0, 1] or null, got 2"),
    ("cam.px_per_cell=0", "infer.cam.px_per_cell must be a whole number >= 1, got 0"),
    ("precision=16", "infer.precision must be one of ('auto', 'bf16', '32'), got '16'"),
])
def test_a_bad_setting_is_one_line_and_exit_2_before_anything_is_read(tmp_path, caplog, override, line):
    """Issue 17.7: ``lesions.threshold=nan`` found no lesion and said nothing; ``batch_size=0``
    and the others failed deep inside the run, or not at all. The checkpoint does not exist:
    the settings are refused before it is looked at."""
    cfg = infer_cfg(tmp_path, tmp_path, tmp_path / "absent.ckpt", tmp_path / "run", override)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        run_task(infer, cfg)
    assert stop.value.code == USER_ERROR_STATUS == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [line]
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finer_model(trained, tmp_path_factory):
    """The trained checkpoint, as if its training slides had been 0.25 um/px (the test slides
    are 0.5 um/px: twice as coarse)."""
    ckpt = torch.load(trained.last, map_location="cpu", weights_only=True)
    tiling = ckpt["hyper_parameters"]["tiling"]
    assert tiling["trained_mpp"] == pytest.approx(0.5) and tiling["grid"]["patch_size"] == 64
    tiling["trained_mpp"] = 0.25
    path = tmp_path_factory.mktemp("finer") / "finer.ckpt"
    torch.save({"hyper_parameters": ckpt["hyper_parameters"], "state_dict": ckpt["state_dict"]}, path)
    return path


def statuses(out) -> dict[str, tuple[str, str]]:
    table = pd.read_csv(out / "status.csv", keep_default_na=False)
    return {r.slide: (r.status, r.reason) for r in table.itertuples()}


def test_a_coarser_slide_is_refused_by_default_and_read_upsampled_when_asked(trained, finer_model, tmp_path,
                                                                             caplog):
    """Issue 17.10. A 64 px patch at 0.25 um/px is 16 um: 32 level-0 px of a 0.5 um/px slide,
    cells of half a patch: 16 level-0 px, 8 um; read at level 0, upsampled 2x."""
    refused = infer(infer_cfg(trained.root, trained.data, finer_model, tmp_path / "default"))
    assert refused["failed"] == 2 and refused.get("done", 0) == 0
    for status, reason in statuses(tmp_path / "default").values():
        assert status == "failed" and "\n" not in reason
        assert reason.endswith("level 0 (0.5000 um/px) is coarser than the model's 0.2500 um/px: "
                               "set read.upsample=true to read it upsampled 2.00x")
    out = tmp_path / "upsampled"
    with caplog.at_level(logging.WARNING, logger="vistumor.infer.geometry"):
        summary = infer(infer_cfg(trained.root, trained.data, finer_model, out, "read.upsample=true"))
    assert summary["done"] == 2
    warned = [r.getMessage() for r in caplog.records if r.name == "vistumor.infer.geometry"]
    assert len(warned) == 2 and all("upsampled 2.00x" in w for w in warned)  # one line per slide
    for slide in statuses(out):
        sidecar = json.loads((out / "models" / "test_resnet" / "heatmaps" / f"{slide}.json").read_text())
        assert sidecar["upsample"] == 2.0 and sidecar["origin_level0"] == [0, 0]
        assert (sidecar["patch_size_px"], sidecar["cell_size_px"], sidecar["read_level"]) == (32, 16, 0)
        assert sidecar["cell_size_um"] == pytest.approx(8.0)
        rows, cols = -(-sidecar["height0"] // 16), -(-sidecar["width0"] // 16)
        values = np.load(out / "models" / "test_resnet" / "heatmaps" / f"{slide}.npy")
        assert values.shape == tuple(sidecar["shape"]) == (rows, cols)
        assert np.isfinite(values).any()


def test_a_level_the_slide_lacks_fails_that_slide_in_one_line(trained, tmp_path):
    summary = infer(infer_cfg(trained.root, trained.data, trained.last, tmp_path, "read.level=9"))
    assert summary["failed"] == 2
    for status, reason in statuses(tmp_path).values():
        assert status == "failed"
        assert "infer.read.level=9 does not exist: the slide has" in reason and "IndexError" not in reason
