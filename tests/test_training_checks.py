"""Damaged data and bad checkpoints found early, with one line, and nothing lost.

Reproduces what an earlier main did: a damaged level-0 tile killed training at the first
bad patch with a multi-line worker traceback and no checkpoint; a truncated PNG in a patch
folder did the same; ``train.py ckpt_path=...`` failures were tracebacks after the run
folder had been written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT, compose_train, copy_tiled, train_overrides
from PIL import Image
from test_tiling_checks import damage_level0_tile
from test_training import assert_nothing_written

from vistumor.data.datamodule import PatchDataModule
from vistumor.data.sources import ImageFolderSource
from vistumor.errors import BadPatchError, ConfigError
from vistumor.files import fingerprint, write_json
from vistumor.tasks import training
from vistumor.tiling.manifest import load_manifest, meta_path


def damaged_copy(tiled, folder, split: str = "train"):
    """A copy whose slide holding the first ``split`` tumor patch has that patch's level-0
    tile zeroed; its recorded checksum is updated, as a fast checksum of a large slide
    (16 sampled MiB) would not see the damage."""
    copy = copy_tiled(tiled, folder)
    manifest = load_manifest(copy.manifest)
    row = manifest.table[(manifest.table["split"] == split) & (manifest.table["label"] == 1)].iloc[0]
    slide = copy.data.slide(row["slide_id"])
    damage_level0_tile(slide, int(row["x0"]) + 8, int(row["y0"]) + 8)
    meta = json.loads(meta_path(copy.manifest).read_text())
    meta["slides"][row["slide_id"]]["checksum"] = fingerprint(slide, "fast")
    write_json(meta_path(copy.manifest), meta)
    return copy, row


def damaged_patches(copy, row) -> set[tuple[str, int, int]]:
    """The manifest patches of the damaged slide that touch its zeroed 128 px TIFF tile."""
    table = load_manifest(copy.manifest).table
    tx, ty = (int(row["x0"]) + 8) // 128 * 128, (int(row["y0"]) + 8) // 128 * 128
    mine = table[(table["slide_id"] == row["slide_id"]) & (table["x0"] < tx + 128) & (table["x0"] + 64 > tx)
                 & (table["y0"] < ty + 128) & (table["y0"] + 64 > ty)]
    return {(s, int(x), int(y)) for s, x, y in mine[["slide_id", "x0", "y0"]].itertuples(index=False)}


def test_an_unreadable_patch_stops_training_in_one_line_after_saving_last(tiled, tmp_path):
    copy, row = damaged_copy(tiled, tmp_path / "copy")
    cfg = compose_train(tmp_path, copy.data.root, tiles_dir=copy.tiles_dir)
    with pytest.raises(BadPatchError) as err:
        training.train(cfg)
    message = str(err.value)
    assert "\n" not in message
    named = re.search(r"slide '(\w+)' at level-0 \(x0, y0\)=\((\d+), (\d+)\)", message)
    assert named and (named[1], int(named[2]), int(named[3])) in damaged_patches(copy, row)
    assert "data.on_bad_patch=skip" in message
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, map_location="cpu", weights_only=False)["state_dict"]  # resumable


def test_skip_records_unreadable_patches_and_goes_on(tiled, tmp_path):
    copy, row = damaged_copy(tiled, tmp_path / "copy")
    cfg = compose_train(tmp_path, copy.data.root, "data.on_bad_patch=skip", "data.datamodule.num_workers=2",
                        tiles_dir=copy.tiles_dir)
    result = training.train(cfg)
    assert "test/auroc" in result
    bad = pd.read_csv(result["bad_patches"])
    assert set(map(tuple, bad[["slide_id", "x0", "y0"]].values.tolist())) == damaged_patches(copy, row)
    assert (bad["times"] == 2).all()  # once per epoch, listed once
    assert "cannot decode" in bad["reason"].iloc[0] or "JPEG" in bad["reason"].iloc[0]


def test_an_unreadable_patch_while_caching_features_is_one_line(tiled, tmp_path):
    copy, row = damaged_copy(tiled, tmp_path / "copy")
    cfg = compose_train(tmp_path, copy.data.root, "callbacks=feature_cache", tiles_dir=copy.tiles_dir)
    with pytest.raises(BadPatchError, match="while caching trunk features") as err:
        training.train(cfg)
    assert row["slide_id"] in str(err.value) and "\n" not in str(err.value)


def test_a_resume_that_fails_before_restoring_keeps_its_last_checkpoint(tiled, tmp_path):
    copy, _ = damaged_copy(tiled, tmp_path / "copy")
    training.train(compose_train(tmp_path, copy.data.root, "data.on_bad_patch=skip", "test=false",
                                 tiles_dir=copy.tiles_dir))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    cfg = compose_train(tmp_path, copy.data.root, "callbacks=feature_cache", f"ckpt_path={last}",
                        tiles_dir=copy.tiles_dir)
    with pytest.raises(BadPatchError, match="while caching trunk features"):
        training.train(cfg)
    assert last.read_bytes() == before  # not replaced by a step-0 state


def write_png(path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_a_truncated_image_in_a_patch_folder_is_refused_at_setup(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("normal", "tumor"):
            for i in range(2):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                write_png(tmp_path / split / name / f"{i}.png", pixels)
    broken = tmp_path / "train" / "tumor" / "1.png"
    broken.write_bytes(broken.read_bytes()[:200])
    jpeg = tmp_path / "val" / "normal" / "2.jpg"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:-100])
    dm = PatchDataModule(ImageFolderSource({s: str(tmp_path / s) for s in ("train", "val")}), image_size=8,
                         batch_size=2, num_workers=0)
    with pytest.raises(ConfigError, match="damaged image: OSError") as err:
        dm.setup("fit")
    assert str(err.value).startswith(f"{broken}: ")
    broken.unlink()
    with pytest.raises(ConfigError, match="truncated JPEG") as err:
        dm.setup("fit")
    assert str(jpeg) in str(err.value)
    jpeg.unlink()
    dm.setup("fit")  # clean again


# -- train.py ckpt_path=... ----------------------------------------------------------------------


class Payload:
    """A pickle that would run code on load (``torch.load(weights_only=False)``)."""

    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def bad_checkpoint(kind: str, folder, good) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.ckpt"
    if kind == "missing":
        return str(path)
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:4000])
    elif kind == "pickle":
        torch.save({"hyper_parameters": {"backbone": "test_resnet"}, "state_dict": {}, "x": Payload()}, path)
    elif kind == "weights-only":
        ckpt = torch.load(good, map_location="cpu", weights_only=False)
        torch.save({k: v for k, v in ckpt.items() if k not in ("optimizer_states", "loops")}, path)
    elif kind == "other-backbone":
        ckpt = torch.load(good, map_location="cpu", weights_only=False)
        ckpt["hyper_parameters"]["backbone"] = "test_efficientnet"
        torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "checkpoint not found"), ("truncated", "not a loadable VisTumor checkpoint"),
     ("pickle", "not a loadable VisTumor checkpoint"),
     ("weights-only", "not a Lightning checkpoint to resume .no optimizer_states, loops"),
     ("other-backbone", "checkpoint of backbone 'test_efficientnet' cannot resume model 'test_resnet'")],
)
def test_a_bad_checkpoint_to_resume_is_one_line_before_anything_is_written(
    train_cfg, tmp_path, kind, message
):
    first = train_cfg("trainer.max_epochs=1", root_dir=tmp_path / "first")
    training.train(first)
    ckpt = bad_checkpoint(kind, tmp_path / "ckpts", tmp_path / "first" / "run" / "checkpoints" / "last.ckpt")
    cfg = train_cfg(f"ckpt_path={ckpt}", root_dir=tmp_path / "second")
    with pytest.raises(ConfigError, match=message) as err:
        training.train(cfg)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400  # no key list
    assert_nothing_written(cfg)


def test_train_cli_with_a_missing_checkpoint_exits_2_in_one_line(tiled, tmp_path):
    missing = tmp_path / "nope.ckpt"
    command = [sys.executable, "train.py", *train_overrides(tmp_path, tiled.data.root, tiled.tiles_dir),
               f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{missing}: checkpoint not found" in errors[0]
    assert not (tmp_path / "run" / "csv").exists() and not (tmp_path / "run" / "checkpoints").exists()


