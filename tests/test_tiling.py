"""Tiling end to end through ``vistumor.tasks.tile`` on the tiny dataset, and bad input.

The expected counts come from the geometry in ``conftest.py``: 32 tissue tiles per slide;
on a tumor slide 5 tumor, 1 ambiguous and 26 normal tiles. Three slides of each kind split
by slide give one of each per split: 5 tumor tiles, balanced by 5 normal ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    AMBIGUOUS_TILES,
    CONF,
    N_AMBIGUOUS,
    N_NORMAL_ON_TUMOR_SLIDE,
    N_TISSUE,
    N_TUMOR,
    PROJECT,
    TISSUE_BOX,
    TUMOR_TILES,
    make_dataset,
    rectangle,
    tissue_image,
    write_asap_xml,
    write_tiff,
)
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from vistumor.cli import run_task
from vistumor.config import build
from vistumor.errors import ConfigError, ManifestError
from vistumor.tasks.tiling import slide_results_dir, tile, tiling_params
from vistumor.tiling import jobs as slide_jobs
from vistumor.tiling.grid import AMBIGUOUS, NORMAL, TUMOR
from vistumor.tiling.sampling import SamplingParams, SplitParams

SPLITS = ("train", "val", "test")
BALANCED = {s: {"normal": N_TUMOR, "tumor": N_TUMOR} for s in SPLITS}


def out_dir(cfg) -> Path:
    """Where the manifest and status table go."""
    return Path(cfg.tiling.out_dir)


def store_dir(cfg) -> Path:
    """Where the per-slide results go."""
    return slide_results_dir(cfg, tiling_params(cfg))


def status_table(cfg) -> pd.DataFrame:
    return pd.read_csv(out_dir(cfg) / "status.csv", dtype={"reason": str}).set_index("slide_id")


def meta_without_time(cfg) -> dict:
    meta = json.loads((out_dir(cfg) / "manifest.json").read_text())
    meta.pop("created")
    return meta


def manifest_bytes(cfg) -> bytes:
    return (out_dir(cfg) / "manifest.csv").read_bytes()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["synthetic", "camelyon16"])
@pytest.mark.parametrize("tiling", ["default", "paper", "demo"])
def test_every_tiling_config_composes_and_builds(tmp_path, data, tiling):
    overrides = [f"data={data}", f"tiling={tiling}", f"paths.root_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("tiling", overrides=overrides)
    params = tiling_params(cfg)
    assert params.grid.patch_size == 512  # the paper's protocol
    assert (params.grid.min_tissue_fraction, params.labels.min_tumor_fraction) == (0.6, 0.05)
    assert params.labels.annotation_groups["_2"] == "exclude"
    split = build(SplitParams, OmegaConf.to_container(cfg.tiling.split), "tiling.split")
    assert split.mode == {"default": "slide", "paper": "patch", "demo": "slide"}[tiling]
    assert build(SamplingParams, OmegaConf.to_container(cfg.tiling.sampling), "tiling.sampling")
    assert Path(cfg.tiling.out_dir) == tmp_path / "outputs" / "tiles" / data / tiling


def test_slurm_launcher_config_composes(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("tiling", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert get_class(cfg.hydra.launcher._target_).__name__ == "SlurmLauncher"
    assert cfg.hydra.launcher.cpus_per_task == 8


# -- the happy path --------------------------------------------------------------------------


def test_end_to_end_hand_computed(dataset, tiling_cfg):
    cfg = tiling_cfg(dataset.root)
    result = tile(cfg)
    out = out_dir(cfg)
    assert result["done"] == 6 and result["failed"] == 0 and result["skipped"] == 0
    assert Path(result["manifest"]) == out / "manifest.csv"
    for name in ("manifest.csv", "manifest.json", "status.csv"):
        assert (out / name).is_file(), name
    for slide_id in dataset.slide_ids:
        assert (store_dir(cfg) / "qc" / f"{slide_id}.png").stat().st_size > 0
        assert json.loads((store_dir(cfg) / "slides" / f"{slide_id}.json").read_text())["status"] == "done"

    status = status_table(cfg)
    assert (status["status"] == "done").all()
    assert status["n_tissue"].tolist() == [N_TISSUE] * 6
    assert status["n_tumor"].tolist() == [0, 0, 0] + [N_TUMOR] * 3
    assert status["n_ambiguous"].tolist() == [0, 0, 0] + [N_AMBIGUOUS] * 3
    assert status["n_normal"].tolist() == [N_TISSUE] * 3 + [N_NORMAL_ON_TUMOR_SLIDE] * 3

    # the tissue tiles are exactly the 8 x 4 tiles of the tissue rectangle
    tiles = pd.read_csv(store_dir(cfg) / "slides" / "tumor_002.csv")
    x0, y0, x1, y1 = TISSUE_BOX
    assert set(zip(tiles["x0"], tiles["y0"], strict=True)) == {
        (x, y) for x in range(x0, x1, 64) for y in range(y0, y1, 64)
    }
    assert (tiles["tissue_fraction"] >= 0.6).all()
    xy = list(zip(tiles["x0"], tiles["y0"], strict=True))
    fractions = dict(zip(xy, tiles["tumor_fraction"], strict=True))
    labelled = dict(zip(xy, tiles["label"], strict=True))
    for corner, expected in {**TUMOR_TILES, **AMBIGUOUS_TILES}.items():
        assert fractions[corner] == pytest.approx(expected, abs=1e-6), corner
    assert {c for c, lab in labelled.items() if lab == TUMOR} == set(TUMOR_TILES)
    assert {c for c, lab in labelled.items() if lab == AMBIGUOUS} == set(AMBIGUOUS_TILES)

    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 30 and set(manifest["label"]) == {NORMAL, TUMOR}
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["counts"] == BALANCED
    assert meta["failed"] == {} and meta["split"]["mode"] == "slide"
    assert set(meta["slides"]) == set(dataset.slide_ids)
    assert all(info["checksum"].startswith("fast-sha256:") for info in meta["slides"].values())
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        tumor_slides = [
            s for s, i in meta["slides"].items() if i["split"] == split and i["kind"] == "tumor"
        ]
        assert len(tumor_slides) == 1  # one tumor slide per split, and all its tumor tiles
        tumor_rows = rows[rows["label"] == TUMOR]
        assert set(tumor_rows["slide_id"]) == set(tumor_slides)
        assert set(zip(tumor_rows["x0"], tumor_rows["y0"], strict=True)) == set(TUMOR_TILES)
    assert manifest.groupby("slide_id")["split"].nunique().max() == 1
    assert (manifest["read_size"] == 64).all() and (manifest["level"] == 0).all()


@pytest.mark.parametrize(
    "read_at",
    [("tiling.grid.level=1",), ("tiling.grid.target_mpp=1.0",),
     ("data.mpp=0.25", "data.mpp_override=all", "tiling.grid.target_mpp=0.5")],
    ids=["level-1", "target-mpp", "mpp-override"],
)
def test_reading_at_level_1_gives_the_same_tiles(dataset, tiling_cfg, read_at):
    """32 px at level 1 (1.0 um/px) cover the same 64 level-0 px as 64 px at level 0.

    With ``data.mpp=0.25`` forced on all slides (``data.mpp_override=all``) the slides are
    taken as 0.25 um/px: 0.5 um/px is then level 1.
    """
    cfg = tiling_cfg(dataset.root, "tiling.grid.patch_size=32", *read_at)
    tile(cfg)
    status = status_table(cfg)
    assert status["n_tissue"].tolist() == [N_TISSUE] * 6
    assert status["n_tumor"].tolist() == [0, 0, 0] + [N_TUMOR] * 3
    manifest = pd.read_csv(out_dir(cfg) / "manifest.csv")
    assert (manifest["level"] == 1).all() and (manifest["read_size"] == 32).all()
    assert (manifest["size0"] == 64).all() and set(manifest["x0"] % 64) == {0}
    assert meta_without_time(cfg)["counts"] == BALANCED


def test_overlapping_tiles_hand_computed(dataset, tiling_cfg):
    """Stride 32: 15 x 7 = 105 tiles lie inside the tissue (half-tissue edge tiles are < 60 %).

    Tumor: the 4 x 4 tiles x0, y0 in {128, 160, 192, 224} overlapping the lesion by at least
    25 %, and the tile exactly on the 5 % strip; ambiguous: the two tiles half on the 5 %
    strip (2.5 %) and the three on the 2 % strip (1 %, 2 %, 1 %).
    """
    cfg = tiling_cfg(dataset.root, "tiling.grid.stride=32", "tiling.split.mode=patch")
    tile(cfg)
    status = status_table(cfg).loc["tumor_001"]
    assert (status["n_tissue"], status["n_tumor"], status["n_ambiguous"]) == (105, 17, 5)
    assert status["n_normal"] == 83
    tiles = pd.read_csv(store_dir(cfg) / "slides" / "tumor_001.csv").set_index(["x0", "y0"])
    assert tiles.loc[(224, 224), "tumor_fraction"] == 0.25
    assert tiles.loc[(160, 128), "tumor_fraction"] == (4096 - 16 * 32) / 4096  # the exclusion
    assert tiles.loc[(416, 128), "tumor_fraction"] == pytest.approx(0.025)


def test_same_seed_same_manifest(dataset, tiling_cfg, tmp_path):
    first = tiling_cfg(dataset.root, root_dir=tmp_path / "a")
    second = tiling_cfg(dataset.root, root_dir=tmp_path / "b")
    other = tiling_cfg(dataset.root, "tiling.seed=7", root_dir=tmp_path / "c")
    for cfg in (first, second, other):
        tile(cfg)
    assert manifest_bytes(first) == manifest_bytes(second)
    assert meta_without_time(first) == meta_without_time(second)
    assert manifest_bytes(first) != manifest_bytes(other)
    assert meta_without_time(other)["counts"] == BALANCED


def test_workers_2_same_manifest_as_workers_1(dataset, tiling_cfg, tmp_path):
    one = tiling_cfg(dataset.root, root_dir=tmp_path / "one")
    two = tiling_cfg(dataset.root, "tiling.run.workers=2", root_dir=tmp_path / "two")
    tile(one)
    assert tile(two)["done"] == 6
    assert manifest_bytes(one) == manifest_bytes(two)
    for slide_id in dataset.slide_ids:
        a = (store_dir(one) / "slides" / f"{slide_id}.csv").read_bytes()
        assert a == (store_dir(two) / "slides" / f"{slide_id}.csv").read_bytes()


def test_rerun_skips_every_slide(dataset, tiling_cfg):
    cfg = tiling_cfg(dataset.root)
    tile(cfg)
    before = manifest_bytes(cfg)
    result = tile(cfg)
    assert (result["done"], result["skipped"], result["failed"]) == (0, 6, 0)
    assert (status_table(cfg)["status"] == "skipped").all()
    assert manifest_bytes(cfg) == before
    saved = json.loads((store_dir(cfg) / "slides" / "tumor_001.json").read_text())
    assert saved["status"] == "done"  # the file keeps the state; "skipped" is what this run did


def test_interrupted_run_resumes_where_it_stopped(dataset, tiling_cfg, tmp_path, monkeypatch):
    reference = tiling_cfg(dataset.root, root_dir=tmp_path / "reference")
    tile(reference)
    cfg = tiling_cfg(dataset.root, root_dir=tmp_path / "run")
    real = slide_jobs.tile_slide

    def interrupted(record, params):
        if record.slide_id == "tumor_002":
            raise KeyboardInterrupt  # Ctrl-C, a killed job: nothing after it runs
        return real(record, params)

    monkeypatch.setattr(slide_jobs, "tile_slide", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tile(cfg)
    slides = store_dir(cfg) / "slides"
    finished = sorted(p.stem for p in slides.glob("*.json"))
    assert finished == ["normal_001", "normal_002", "normal_003", "tumor_001"]
    assert not (slides / "tumor_002.csv").exists() and not (out_dir(cfg) / "manifest.csv").exists()

    monkeypatch.undo()
    result = tile(cfg)
    assert (result["done"], result["skipped"]) == (2, 4)
    status = status_table(cfg)["status"]
    assert status[["tumor_002", "tumor_003"]].tolist() == ["done", "done"]
    assert manifest_bytes(cfg) == manifest_bytes(reference)


def test_lost_status_and_changed_slide_are_redone(dataset, tiling_cfg, tmp_path):
    data = shutil.copytree(dataset.root, tmp_path / "data")
    cfg = tiling_cfg(data)
    tile(cfg)
    (store_dir(cfg) / "slides" / "normal_002.json").unlink()
    write_tiff(data / "training" / "tumor" / "tumor_003.tif", tissue_image(shade=9))  # re-scanned
    result = tile(cfg)
    assert (result["done"], result["skipped"]) == (2, 4)
    status = status_table(cfg)["status"]
    assert sorted(status[status == "done"].index) == ["normal_002", "tumor_003"]
    assert meta_without_time(cfg)["counts"] == BALANCED


def test_other_tiling_parameters_redo_every_slide(dataset, tiling_cfg):
    tile(tiling_cfg(dataset.root))
    cfg = tiling_cfg(dataset.root, "tiling.grid.min_tissue_fraction=0.99")
    result = tile(cfg)
    assert result["done"] == 6
    # the four corner tiles of the rectangle lose a few mask pixels to the median blur
    assert status_table(cfg)["n_tissue"].tolist() == [N_TISSUE - 4] * 6


def test_sampling_change_reuses_slides_and_paper_split(dataset, tiling_cfg):
    tile(tiling_cfg(dataset.root))
    cfg = tiling_cfg(dataset.root, "tiling=paper")
    result = tile(cfg)
    assert result["skipped"] == 6  # only the global merge step reran
    meta = meta_without_time(cfg)
    assert meta["split"] == {"mode": "patch", "fractions": {"train": 0.9, "val": 0.1, "test": 0.0}}
    # 15 tumor tiles balanced by 15 normal ones; each class split 14 / 1 (largest remainder)
    assert meta["counts"] == {
        "train": {"normal": 14, "tumor": 14}, "val": {"normal": 1, "tumor": 1},
    }


def test_shards_then_merge_equal_one_run(dataset, tiling_cfg, tmp_path):
    single = tiling_cfg(dataset.root, root_dir=tmp_path / "single")
    tile(single)
    shards = tmp_path / "shards"
    sharded = ("tiling.run.stage=tile", "tiling.run.num_shards=2")
    first = tile(tiling_cfg(dataset.root, *sharded, "tiling.run.shard_index=0", root_dir=shards))
    assert first["slides"] == 3 and "manifest" not in first
    out = Path(first["out_dir"])
    assert (out / "status.shard0of2.csv").is_file()
    finished = sorted(p.stem for p in (Path(first["slides_dir"]) / "slides").glob("*.json"))
    assert finished == ["normal_001", "normal_003", "tumor_002"]  # every second slide

    merge = tiling_cfg(dataset.root, "tiling.run.stage=merge", "tiling.run.num_shards=2", root_dir=shards)
    with pytest.raises(ManifestError, match=r"3 slide\(s\) not tiled .*remaining shards first"):
        tile(merge)
    assert not (out / "manifest.csv").exists()
    assert (pd.read_csv(out / "status.csv")["status"] == "pending").sum() == 3

    tile(tiling_cfg(dataset.root, *sharded, "tiling.run.shard_index=1", root_dir=shards))
    assert "manifest" in tile(merge)
    assert (out / "manifest.csv").read_bytes() == manifest_bytes(single)
    assert (pd.read_csv(out / "status.csv")["status"] == "done").all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tiling.run.stage=everything"], "tiling.run.stage must be all, tile or merge"),
        (["tiling.run.num_shards=2", "tiling.run.shard_index=2"], r"shard_index=2 must be in \[0, num"),
        (["+tiling.nonexistent=1"], r"unknown key\(s\) \['nonexistent'\] in tiling;"),
        (["+tiling.tissue.radius=3"], r"unknown key\(s\) \['radius'\] in tiling.tissue;"),
        (["+tiling.sampling.per_class=3"], r"unknown key\(s\) \['per_class'\] in tiling.sampling;"),
    ],
)
def test_config_errors(dataset, tiling_cfg, overrides, message):
    cfg = tiling_cfg(dataset.root, *overrides)
    with pytest.raises(ConfigError, match=message):
        tile(cfg)
    assert not Path(cfg.tiling.slides_dir).exists()  # nothing tiled, nothing written


# -- bad input -------------------------------------------------------------------------------

SMALL_BOMB = """<?xml version="1.0"?>
<!DOCTYPE b [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<ASAP_Annotations><Annotations><Annotation Name="&d;" Type="Polygon" PartOfGroup="_0">
<Coordinates><Coordinate Order="0" X="0" Y="0"/></Coordinates></Annotation></Annotations>
</ASAP_Annotations>
"""

#: slide id -> what its one-line failure reason must say
BAD_SLIDES = {
    "normal_901": "not a slide OpenSlide can read",  # truncated TIFF
    "normal_902": "not a slide OpenSlide can read",  # a text file named .tif
    "normal_903": "no tissue found",  # all white
    "normal_904": "is smaller than one patch",  # 48 x 40 px
    "normal_905": "no microns-per-pixel",  # target_mpp asked, no resolution tags
    "tumor_901": "tumor slide without its annotation",
    "tumor_902": "malformed XML",
    "tumor_903": "refused hostile XML",
    "tumor_904": "annotation group '_7' (in 'odd') is not mapped",
}


def add_bad_slides(data: Path) -> dict[str, Path]:
    """Write the slides of :data:`BAD_SLIDES`; returns the file each message must name."""
    normal, tumor = data / "training" / "normal", data / "training" / "tumor"
    notes = data / "training" / "lesion_annotations"
    good = (normal / "normal_001.tif").read_bytes()
    (normal / "normal_901.tif").write_bytes(good[: len(good) // 2])
    (normal / "normal_902.tif").write_text("scanner log, not a slide\n")
    write_tiff(normal / "normal_903.tif", np.full((512, 768, 3), 255, np.uint8))
    write_tiff(normal / "normal_904.tif", tissue_image(width=48, height=40), tile=16, levels=1)
    write_tiff(normal / "normal_905.tif", tissue_image(), mpp=None)
    for slide_id in ("tumor_901", "tumor_902", "tumor_903", "tumor_904"):
        write_tiff(tumor / f"{slide_id}.tif", tissue_image())
    (notes / "tumor_902.xml").write_text("<ASAP_Annotations><Annotations><Annotation Name='a'")
    (notes / "tumor_903.xml").write_text(SMALL_BOMB)
    write_asap_xml(notes / "tumor_904.xml", [("odd", "_7", rectangle(130, 130, 200, 200))])
    named = {s: (normal if s.startswith("normal") else tumor) / f"{s}.tif" for s in BAD_SLIDES}
    named.update({s: notes / f"{s}.xml" for s in ("tumor_902", "tumor_903", "tumor_904")})
    return named


def test_bad_slides_fail_alone_and_are_recorded(dataset, tiling_cfg, tmp_path):
    data = shutil.copytree(dataset.root, tmp_path / "data")
    named = add_bad_slides(data)
    cfg = tiling_cfg(data, "tiling.grid.target_mpp=0.5", "tiling.run.workers=2")
    result = tile(cfg)
    assert (result["done"], result["failed"]) == (6, len(BAD_SLIDES))

    status = status_table(cfg)
    out = out_dir(cfg)
    for slide_id, problem in BAD_SLIDES.items():
        reason = status.loc[slide_id, "reason"]
        assert status.loc[slide_id, "status"] == "failed"
        assert problem in reason and str(named[slide_id]) in reason, reason
        assert "\n" not in reason
        assert not (store_dir(cfg) / "slides" / f"{slide_id}.csv").exists()  # no partial output
        assert not (store_dir(cfg) / "qc" / f"{slide_id}.png").exists()
    assert (status.loc[list(dataset.slide_ids), "status"] == "done").all()

    meta = meta_without_time(cfg)
    assert meta["counts"] == BALANCED  # the good slides alone, as without the bad ones
    assert set(meta["failed"]) == set(BAD_SLIDES) and set(meta["slides"]) == set(dataset.slide_ids)
    assert set(pd.read_csv(out / "manifest.csv")["slide_id"]) <= set(dataset.slide_ids)


def test_slide_broken_after_tiling_leaves_no_stale_output(dataset, tiling_cfg, tmp_path):
    data = shutil.copytree(dataset.root, tmp_path / "data")
    cfg = tiling_cfg(data, "tiling.split.mode=patch")  # two normal slides are enough
    tile(cfg)
    slide = data / "training" / "normal" / "normal_002.tif"
    slide.write_bytes(slide.read_bytes()[:1000])  # a copy that stopped short
    result = tile(cfg)
    assert (result["skipped"], result["failed"]) == (5, 1)
    assert str(slide) in status_table(cfg).loc["normal_002", "reason"]
    assert not (store_dir(cfg) / "slides" / "normal_002.csv").exists()
    assert not (store_dir(cfg) / "qc" / "normal_002.png").exists()
    assert "normal_002" in meta_without_time(cfg)["failed"]


def test_tiling_exits_1_with_the_counts_when_a_slide_failed(dataset, tiling_cfg, tmp_path, caplog):
    """Issue 17.5, as infer.py: a run in which a slide failed ends non-zero (after the manifest
    of the others is written), the counts on one line."""
    data = shutil.copytree(dataset.root, tmp_path / "data")
    slide = data / "training" / "normal" / "normal_002.tif"
    slide.write_bytes(slide.read_bytes()[:1000])
    cfg = tiling_cfg(data, "tiling.split.mode=patch")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        run_task(tile, cfg)
    assert exit_.value.code == 1
    assert "done 5, skipped 0, failed 1" in caplog.text
    assert (out_dir(cfg) / "manifest.csv").is_file()
    assert "normal_002" in meta_without_time(cfg)["failed"]


def test_strict_refuses_a_manifest_when_a_slide_failed(dataset, tiling_cfg, tmp_path):
    data = shutil.copytree(dataset.root, tmp_path / "data")
    (data / "training" / "lesion_annotations" / "tumor_003.xml").unlink()
    cfg = tiling_cfg(data, "tiling.run.strict=true")
    with pytest.raises(ManifestError, match=r"1 slide\(s\) failed and tiling.run.strict is set"):
        tile(cfg)
    assert not (out_dir(cfg) / "manifest.csv").exists()
    assert status_table(cfg).loc["tumor_003", "status"] == "failed"


def test_unexpected_crash_in_one_slide_is_recorded(dataset, tiling_cfg, monkeypatch):
    real = slide_jobs.tile_slide

    def flaky(record, params):
        if record.slide_id == "normal_002":
            raise RuntimeError("libtiff hiccup")
        return real(record, params)

    monkeypatch.setattr(slide_jobs, "tile_slide", flaky)
    cfg = tiling_cfg(dataset.root, "tiling.split.mode=patch")  # two normal slides are enough
    result = tile(cfg)
    assert (result["done"], result["failed"]) == (5, 1)
    reason = status_table(cfg).loc["normal_002", "reason"]
    assert "RuntimeError: libtiff hiccup" in reason and str(dataset.slide("normal_002")) in reason

    monkeypatch.undo()
    assert tile(cfg)["done"] == 1  # a failed slide is retried on the next run


def test_all_slides_failing_is_fatal_without_manifest(tmp_path, tiling_cfg):
    data = tmp_path / "data"
    (data / "training" / "normal").mkdir(parents=True)
    (data / "training" / "normal" / "normal_001.tif").write_text("nothing here\n")
    write_tiff(data / "training" / "tumor" / "tumor_001.tif", tissue_image())
    cfg = tiling_cfg(data)
    with pytest.raises(ManifestError, match=r"all 2 slide\(s\) failed"):
        tile(cfg)
    assert not (out_dir(cfg) / "manifest.csv").exists()
    assert (status_table(cfg)["status"] == "failed").all()


def test_empty_or_missing_data_folder(tmp_path, tiling_cfg):
    empty = tmp_path / "empty"
    (empty / "training" / "normal").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no slides found") as err:
        tile(tiling_cfg(empty))
    assert str(empty) in str(err.value)
    with pytest.raises(ConfigError, match="data folder not found"):
        tile(tiling_cfg(tmp_path / "nowhere"))


def test_too_few_tumor_slides_for_a_slide_split(tmp_path, tiling_cfg):
    data = make_dataset(tmp_path / "data", n_normal=3, n_tumor=2)
    with pytest.raises(ManifestError, match=r"2 tumor slide\(s\) cannot fill 3 splits"):
        tile(tiling_cfg(data.root))
    # the slides themselves were tiled: a patch split needs no rerun of them
    result = tile(tiling_cfg(data.root, "tiling=paper"))
    assert result["skipped"] == 5


# -- the command line (two subprocesses only; the second is marked slow) -------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VISTUMOR_ROOT": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(PROJECT / "tiling.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_unknown_key_is_refused_by_hydra(tmp_path):
    done = run_cli(tmp_path, "tiling.nonexistent=1")
    assert done.returncode != 0
    assert "Could not override 'tiling.nonexistent'" in done.stderr
    assert not (tmp_path / "outputs" / "tiles").exists()


def test_run_task_turns_a_user_error_into_one_line_and_exit_2(caplog):
    def fails(cfg):
        raise ConfigError("no slides found", "/data/empty")

    with caplog.at_level(logging.ERROR, logger="vistumor"), pytest.raises(SystemExit) as exit_:
        run_task(fails, OmegaConf.create())
    assert exit_.value.code == 2
    assert caplog.messages == ["/data/empty: no slides found"]


@pytest.mark.slow  # ~13 s here, most of it importing torch via vistumor.tasks
def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(tmp_path, "data=camelyon16", f"data.root={empty}", "tiling.run.progress=false")
    assert done.returncode == 2, done.stderr
    output = done.stdout + done.stderr
    assert f"{empty}: no slides found" in output
    assert "Traceback" not in output


def test_tiling_configs_keep_their_own_manifests_and_share_equal_slide_results(dataset, tiling_cfg):
    """The demo's overlapping tiling must not overwrite the default's results, and a config
    with the same per-slide parameters (paper) reuses them."""
    default = tiling_cfg(dataset.root)
    assert tile(default)["done"] == 6
    overlap = tiling_cfg(dataset.root, "tiling.name=overlap", "tiling.grid.stride=32")
    assert tile(overlap)["done"] == 6  # other per-slide parameters: results of its own
    assert tile(default)["skipped"] == 6  # ... which left the default's intact
    assert tile(tiling_cfg(dataset.root, "tiling=paper"))["skipped"] == 6  # same tiles: shared
    manifests = {out_dir(c) / "manifest.csv" for c in (default, overlap)}
    assert len(manifests) == 2 and all(p.is_file() for p in manifests)
    assert store_dir(default) != store_dir(overlap)
