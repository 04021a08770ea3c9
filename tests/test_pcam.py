"""``data=pcam``: the official PatchCamelyon files, read through torchvision's ``PCAM``.

Tiny files in the release's exact layout (``h5py``): per split 16 patches of 96 x 96 px,
labels alternating normal/tumor (patch ``i`` is tumor when ``i`` is odd), every patch a pale
pink ground of its own shade ``i``, tumor patches with a dark purple centre 32 x 32 px (the
release's label: tumor in the centre). The meta table puts the split's patches on two slides
``<split>_slide_a`` (first half) and ``<split>_slide_b``, patch ``i`` at ``(96 i, 1000 + i)``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF, PROJECT
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader
from torchvision.datasets import PCAM

from vistumor.data.datamodule import PatchDataModule
from vistumor.data.pcam import PCamDataset, PCamFiles
from vistumor.data.sources import PCamSource
from vistumor.errors import ConfigError, ManifestError
from vistumor.labels import NORMAL, TUMOR
from vistumor.runs import intervals

N = 16
FILE = "camelyonpatch_level_2_split_{split}_{kind}"
RELEASE_SPLIT = {"train": "train", "val": "valid", "test": "test"}
PINK, PURPLE = np.array([236, 200, 222]), np.array([90, 40, 130])


def patch(i: int) -> np.ndarray:
    """Patch ``i``: pink ground shaded by ``i``; tumor (odd ``i``) with a purple centre 32 px."""
    rgb = np.broadcast_to(np.clip(PINK - i, 0, 255), (96, 96, 3)).astype(np.uint8).copy()
    if i % 2:
        rgb[32:64, 32:64] = PURPLE
    return rgb


def labels(n: int = N) -> np.ndarray:
    return np.arange(n) % 2  # TUMOR where odd


def write_split(folder: Path, split: str, n: int = N, meta: bool = True) -> None:
    """One split's ``_x.h5``, ``_y.h5`` (and ``_meta.csv``) as the release writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    name = RELEASE_SPLIT[split]
    with h5py.File(folder / f"{FILE.format(split=name, kind='x')}.h5", "w") as f:
        f.create_dataset("x", data=np.stack([patch(i) for i in range(n)]), chunks=(4, 96, 96, 3))
    with h5py.File(folder / f"{FILE.format(split=name, kind='y')}.h5", "w") as f:
        f.create_dataset("y", data=labels(n).astype(np.uint8).reshape(n, 1, 1, 1))
    if meta:
        with open(folder / f"{FILE.format(split=name, kind='meta')}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"])
            for i in range(n):
                slide = f"{name}_slide_{'a' if i < n // 2 else 'b'}"
                writer.writerow([i, 1000 + i, 96 * i, bool(i % 2), bool(i % 2), slide])


def write_pcam(root: Path, meta: bool = True, pcam_folder: bool = False, n: int = N) -> Path:
    """All three splits in ``root`` (or ``root/pcam``, torchvision's layout)."""
    for split in RELEASE_SPLIT:
        write_split(root / "pcam" if pcam_folder else root, split, n, meta)
    return root


def x_file(root: Path, split: str = "val") -> Path:
    return root / f"{FILE.format(split=RELEASE_SPLIT[split], kind='x')}.h5"


def y_file(root: Path, split: str = "val") -> Path:
    return root / f"{FILE.format(split=RELEASE_SPLIT[split], kind='y')}.h5"


def meta_file(root: Path, split: str = "val") -> Path:
    return root / f"{FILE.format(split=RELEASE_SPLIT[split], kind='meta')}.csv"


@pytest.fixture(scope="module")
def pcam(tmp_path_factory) -> Path:
    """The three splits with meta tables, files directly in the root (read-only)."""
    return write_pcam(tmp_path_factory.mktemp("pcam"))


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_reads_what_torchvision_reads(tmp_path, split):
    root = write_pcam(tmp_path, pcam_folder=True)
    ours, theirs = PCamFiles(root, split), PCAM(root, split=split)
    assert len(ours) == len(theirs) == N
    for i in (0, 1, 7, N - 1):
        (image, target), (expected, expected_target) = ours[i], theirs[i]
        assert np.array_equal(np.asarray(image), np.asarray(expected)) and target == expected_target
        assert np.array_equal(ours.image(i), patch(i)) and target == i % 2


def test_files_directly_in_the_root_are_found_where_torchvision_looks_only_in_pcam(pcam):
    with pytest.raises(RuntimeError, match="Dataset not found"):
        PCAM(pcam, split="val")
    files = PCamFiles(pcam, "val")
    assert files.folder == pcam and np.array_equal(files.targets, labels())


def test_items_carry_label_slide_and_place_from_the_meta_table(pcam):
    dataset = PCamDataset(PCamFiles(pcam, "test"), image_size=96, with_masks=True)
    assert dataset.labels.tolist() == [NORMAL, TUMOR] * (N // 2)
    item = dataset[5]
    assert item["label"] == TUMOR and (item["slide_id"], item["x0"], item["y0"]) == ("test_slide_a", 480, 1005)
    assert torch.equal(item["image"], torch.from_numpy(patch(5)).permute(2, 0, 1))
    assert item["has_mask"] is False and not item["mask"].any()  # PCam has no masks
    assert dataset.describe(12) == ("test_slide_b", 1152, 1012)
    assert "mask" not in PCamDataset(PCamFiles(pcam, "test"), 96, with_masks=False)[0]


def test_items_are_resized_to_the_model_input(pcam):
    item = PCamDataset(PCamFiles(pcam, "val"), image_size=48)[1]
    assert item["image"].shape == (3, 48, 48)
    centre, corner = item["image"][:, 24, 24], item["image"][:, 2, 2]
    assert centre.tolist() == PURPLE.tolist() and corner.tolist() == (PINK - 1).tolist()


def test_without_meta_each_patch_is_its_own_unknown_slide(tmp_path, caplog):
    root = write_pcam(tmp_path, meta=False)
    with caplog.at_level(logging.WARNING):
        dataset = PCamDataset(PCamFiles(root, "val"), 96)
    assert f"{meta_file(root)} not found: slide ids unknown" in caplog.text
    assert [dataset.describe(i) for i in (0, 15)] == [("unknown_val_000000", 0, 0), ("unknown_val_000015", 0, 0)]


def test_images_are_read_one_patch_at_a_time(pcam, monkeypatch):
    reads: list[tuple[str, object]] = []
    original = h5py.Dataset.__getitem__

    def record(self, key):
        reads.append((self.name, key))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", record)
    dataset = PCamDataset(PCamFiles(pcam, "train"), 96)
    for i in (3, 9):
        dataset[i]
    image_reads = [key for name, key in reads if name == "/x"]
    assert image_reads == [3, 9]  # labels ('/y', N bytes) are read whole, images never
    assert [name for name, _ in reads if name != "/x"] == ["/y"]


def test_pickled_and_forked_readers_open_their_own_handle(pcam):
    files = PCamFiles(pcam, "val")
    files.image(0)  # the parent holds an open handle
    copy = pickle.loads(pickle.dumps(files))
    assert copy._file is None and np.array_equal(copy.image(3), patch(3))
    dataset = PCamDataset(files, 96, with_masks=False)
    loader = DataLoader(dataset, batch_size=4, num_workers=1)
    images = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(images, torch.stack([torch.from_numpy(patch(i)).permute(2, 0, 1) for i in range(N)]))


# -- bad files: one line naming the file --------------------------------------------------------------


def rewrite(path: Path, name: str, data) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BREAKAGES = {
    "missing y file": (lambda r: y_file(r).unlink(), y_file(Path()).name,
                       "not found: PCam split 'val' needs it beside"),
    "missing split": (lambda r: (x_file(r).unlink(), y_file(r).unlink()), "",
                      "camelyonpatch_level_2_split_valid_x.h5 not found"),
    "wrong dataset name": (lambda r: rewrite(x_file(r), "images", np.zeros((N, 96, 96, 3), np.uint8)),
                           x_file(Path()).name, "no dataset 'x' (found ['images'])"),
    "wrong shape": (lambda r: rewrite(x_file(r), "x", np.zeros((N, 64, 64, 3), np.uint8)),
                    x_file(Path()).name, "dataset 'x' has shape (16, 64, 64, 3), expected (N, 96, 96, 3)"),
    "not uint8": (lambda r: rewrite(x_file(r), "x", np.zeros((N, 96, 96, 3), np.float32)),
                  x_file(Path()).name, "dataset 'x' holds float32, expected uint8"),
    "length mismatch": (lambda r: rewrite(y_file(r), "y", np.zeros((N - 2, 1, 1, 1), np.uint8)),
                        y_file(Path()).name, "14 labels for the 16 patches of camelyonpatch_level_2_split_valid_x.h5"),
    "labels flat": (lambda r: rewrite(y_file(r), "y", labels().astype(np.uint8)),
                    y_file(Path()).name, "dataset 'y' has shape (16,), expected (N, 1, 1, 1)"),
    "labels not 0/1": (lambda r: rewrite(y_file(r), "y", np.full((N, 1, 1, 1), 2, np.uint8)),
                       y_file(Path()).name, "dataset 'y' holds labels [2], expected 0 (normal) or 1 (tumor)"),
    "truncated": (lambda r: truncate(x_file(r)), x_file(Path()).name, "not a readable HDF5 file, truncated or damaged"),
    "not HDF5": (lambda r: x_file(r).write_text("x,y\n1,2\n"), x_file(Path()).name, "not a readable HDF5 file"),
    "meta rows": (lambda r: meta_file(r).write_text(meta_file(r).read_text().rsplit("\n", 2)[0] + "\n"),
                  meta_file(Path()).name, "meta table has 15 rows for 16 patches"),
    "meta columns": (lambda r: pd.read_csv(meta_file(r)).drop(columns="wsi").to_csv(meta_file(r), index=False),
                     meta_file(Path()).name, "meta table lacks columns ['wsi']"),
    "meta of another split": (lambda r: meta_file(r).write_text(meta_file(r).read_text().replace("True", "X").replace(
        "False", "True").replace("X", "False")), meta_file(Path()).name,
        "center_tumor_patch disagrees with the y labels at 16 row(s) (first: row 0"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_bad_file_is_refused_in_one_line_naming_it(tmp_path, breakage):
    root = write_pcam(tmp_path)
    damage, name, phrase = BREAKAGES[breakage]
    damage(root)
    with pytest.raises(ConfigError) as err:
        PCamSource(str(root)).dataset("val", 96, None, with_masks=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(root / name)) and phrase in message, message


def test_an_unknown_split_is_refused(pcam):
    with pytest.raises(ConfigError, match="PCam has splits train, val, test; got 'holdout'"):
        PCamFiles(pcam, "holdout")


def test_a_split_with_one_class_names_its_labels_file(tmp_path):
    root = write_pcam(tmp_path)
    rewrite(y_file(root, "train"), "y", np.zeros((N, 1, 1, 1), np.uint8))
    meta_file(root, "train").unlink()
    dm = PatchDataModule(PCamSource(str(root)), image_size=32, batch_size=4, num_workers=0)
    with pytest.raises(ManifestError) as err:
        dm.setup("fit")
    assert str(err.value) == f"{y_file(root, 'train')}: split 'train' has no tumor patches (16 normal)"


def test_a_segmentation_model_is_refused_pcam_has_no_masks(pcam):
    dm = PatchDataModule(PCamSource(str(pcam)), image_size=32, batch_size=4, num_workers=0, train_masks=True)
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    assert str(err.value) == (f"{y_file(pcam, 'train')}: a segmentation model learns from tumor masks, and "
                              "PCamSource has none: train a classifier on it")


# -- through the real config ------------------------------------------------------------------------

TRAIN = (
    "data=pcam",
    "model=small_cnn",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "+trainer.enable_progress_bar=false",
    "logger=csv",
    "model.image_size=64",
    "data.datamodule.batch_size=8",
    "data.datamodule.num_workers=0",
    "data.datamodule.persistent_workers=false",
)


def compose_pcam(name: str, root: Path, data_root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={root}", f"data.root={data_root}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    return cfg


def test_the_config_reads_pcam_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PCAM_ROOT", str(tmp_path / "elsewhere"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["data=pcam"])
    assert cfg.data.root == str(tmp_path / "elsewhere")
    source = instantiate(cfg.data.datamodule.source, _convert_="all")
    assert isinstance(source, PCamSource) and source.root == str(tmp_path / "elsewhere")


@pytest.fixture(scope="module")
def trained(pcam, tmp_path_factory):
    """Two epochs of ``train(cfg)`` with ``data=pcam`` (CamMonitor included) and what they wrote."""
    from vistumor.tasks import train

    root = tmp_path_factory.mktemp("pcam_run")
    cfg = compose_pcam("train", root, pcam, *TRAIN)
    return cfg, train(cfg)


def test_train_on_pcam_through_the_real_config(trained):
    cfg, result = trained
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "metrics.json").read_text())["test/auroc"] == result["test/auroc"]
    assert result["test_tp"] + result["test_fn"] == N // 2 and result["test_tn"] + result["test_fp"] == N // 2
    # purple centres are separable even by the frozen random trunk: the head learns them, and the
    # operating point chosen on validation calls every test patch right
    assert result["test/auroc"] == 1.0 and result["test/fpr_op"] == result["test/fnr_op"] == 0
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["slide_id"].unique()) == ["test_slide_a", "test_slide_b"]  # real slide ids
    assert sorted(intervals.read_slides(out / "predictions.csv")) == ["test_slide_a", "test_slide_b"]
    assert table.sort_values("x0")["label"].tolist() == labels().tolist()
    assert (out / "cam" / "epoch_001.png").is_file()  # the CAM grid, without masks
    assert not any(k.startswith("val/cam_") for k in result)  # no masks, no localization scores


def test_the_feature_cache_trains_on_pcam(pcam, tmp_path):
    from vistumor.tasks import train

    result = train(compose_pcam("train", tmp_path, pcam, *TRAIN, "callbacks=feature_cache", "~callbacks.cam"))
    assert result["test/auroc"] == 1.0 and result["test_tp"] + result["test_fn"] == N // 2


def test_an_unreadable_patch_becomes_a_bad_patch_marker(tmp_path):
    root = write_pcam(tmp_path)
    dataset = PCamDataset(PCamFiles(root, "val"), 96)
    x_file(root).unlink()  # gone after the check: the worker's first read fails
    assert dataset[3] == {"bad": dataset[3]["bad"], "slide_id": "valid_slide_a", "x0": 288, "y0": 1003}
    assert dataset[3]["bad"].startswith(f"{x_file(root)}: cannot read patch 3 (")


def test_whole_slides_are_refused_for_pcam_before_training(pcam, tmp_path):
    from vistumor.tasks import train

    cfg = compose_pcam("train", tmp_path, pcam, *TRAIN, "slides=test")
    with pytest.raises(ConfigError, match=r"^slides=test: whole-slide inference needs slides, and data=pcam "):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_tiling_pcam_is_refused_in_one_line(pcam, tmp_path):
    from vistumor.tasks import tile

    with pytest.raises(ConfigError, match=r"^data=pcam holds patches, not slides: nothing to tile"):
        tile(compose_pcam("tiling", tmp_path, pcam, "data=pcam"))


def test_whole_slide_inference_refuses_a_pcam_checkpoint(trained, pcam, tmp_path):
    from vistumor.tasks import infer

    _, result = trained
    cfg = compose_pcam("infer", tmp_path, pcam, "data=pcam", "device=cpu", f"ckpt_path={result['best_ckpt']}",
                       "slides=all")
    with pytest.raises(ConfigError, match="checkpoint records no tiling"):
        infer(cfg)


def test_explain_a_pcam_checkpoint_on_its_test_patches(trained, pcam, tmp_path, caplog):
    from vistumor.tasks import explain

    cfg, result = trained
    explain_cfg = compose_pcam("explain", tmp_path, pcam, "data=pcam", "device=cpu",
                               f"ckpt_path={result['best_ckpt']}", "select.per_kind=1")
    with caplog.at_level(logging.WARNING):
        summary = explain(explain_cfg)
    assert "localization scores skipped" in caplog.text  # PCam has no annotations
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert len(scores) == N and set(scores["slide_id"]) == {"test_slide_a", "test_slide_b"}
    assert summary["candidates"] == N and summary["models"]["test_resnet"]["scored_patches"] == 0
    assert (tmp_path / "run" / "explanations.png").is_file()


def test_train_cli_on_pcam_files(pcam, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "train.py", *TRAIN, f"data.root={pcam}", f"paths.root_dir={tmp_path}",
               "trainer.max_epochs=1", "~callbacks.cam", f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_tp"] + metrics["test_fn"] == N // 2 and metrics["test_tn"] + metrics["test_fp"] == N // 2
    assert 0 <= metrics["test/auroc"] <= 1
