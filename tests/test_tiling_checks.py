"""Labels never go stale or wrong silently, and damaged data is found at tiling.

Each test reproduces a problem found on an earlier main (issue "Nothing silently wrong"):
an edited annotation was ignored, an annotation of another slide turned a tumor slide into
normal patches, ``data.mpp`` overrode recorded values, damaged level-0 tiles got past
tiling, killed runs left temporaries, two runs tiled the same slides twice.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
import tifffile
from conftest import (
    N_TUMOR,
    REAL_SVS,
    REAL_XML,
    TUMOR_REGIONS,
    needs_real_fixtures,
    rectangle,
    tissue_image,
    write_asap_xml,
    write_tiff,
)
from test_tiling import meta_without_time, out_dir, status_table, store_dir

from vistumor.errors import ManifestError
from vistumor.files import exclusive
from vistumor.runner import RunSettings
from vistumor.tasks.tiling import slide_records, tile, tiling_params
from vistumor.tiling.jobs import TilingChecks, tile_slides
from vistumor.tiling.manifest import load_manifest


def copy_data(dataset, tmp_path) -> Path:
    return shutil.copytree(dataset.root, tmp_path / "data")


def annotation(data: Path, slide_id: str) -> Path:
    return data / "training" / "lesion_annotations" / f"{slide_id}.xml"


# -- 1. an edited annotation re-tiles its slide; a manifest made before it is refused --------


def test_an_edited_annotation_retiles_its_slide_and_the_old_manifest_is_refused(
    dataset, tiling_cfg, tmp_path
):
    data = copy_data(dataset, tmp_path)
    cfg = tiling_cfg(data)
    tile(cfg)
    old = json.loads((out_dir(cfg) / "manifest.json").read_text())["slides"]["tumor_002"]
    assert old["annotation_checksum"].startswith("sha256:")
    # the pathologist drops the 5 % strip: tile (384, 128) is no longer tumor but normal
    kept = [(n, g, rectangle(*box)) for n, g, *box in TUMOR_REGIONS if n != "five percent"]
    write_asap_xml(annotation(data, "tumor_002"), kept)
    with pytest.raises(ManifestError, match="annotation of slide 'tumor_002' changed since tiling") as err:
        load_manifest(out_dir(cfg) / "manifest.csv").verify_slides()  # what training runs first
    assert str(annotation(data, "tumor_002")) in str(err.value)

    result = tile(cfg)
    assert (result["done"], result["skipped"]) == (1, 5)
    status = status_table(cfg)
    assert status.loc["tumor_002", "status"] == "done" and status.loc["tumor_002", "n_tumor"] == N_TUMOR - 1
    new = meta_without_time(cfg)["slides"]["tumor_002"]
    assert new["annotation_checksum"] != old["annotation_checksum"]
    load_manifest(out_dir(cfg) / "manifest.csv").verify_slides()  # current again


def test_an_annotation_deleted_after_tiling_is_named(dataset, tiling_cfg, tmp_path):
    data = copy_data(dataset, tmp_path)
    cfg = tiling_cfg(data)
    tile(cfg)
    annotation(data, "tumor_003").unlink()
    with pytest.raises(ManifestError, match="annotation of slide 'tumor_003' is missing") as err:
        load_manifest(out_dir(cfg) / "manifest.csv").verify_slides()
    assert str(annotation(data, "tumor_003")) in str(err.value)


# -- 2. an annotation that misses its slide --------------------------------------------------


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([("far", "_0", rectangle(69914, 80000, 73235, 82000))],
         r"spans x 69914-73235, y 80000-82000 on a 768x512 px slide: it lies outside the slide"),
        ([("glass", "_0", rectangle(8, 8, 100, 100))], "covers no tissue patch"),
        ([("only fat", "_2", rectangle(130, 130, 200, 200))], "its annotation holds no tumor region"),
    ],
    ids=["outside", "on-glass", "no-tumor"],
)
def test_an_annotation_that_misses_its_slide_fails_that_slide(
    dataset, tiling_cfg, tmp_path, regions, message
):
    data = copy_data(dataset, tmp_path)
    write_asap_xml(annotation(data, "tumor_002"), regions)
    cfg = tiling_cfg(data, "tiling.split.mode=patch")
    result = tile(cfg)
    assert (result["done"], result["failed"]) == (5, 1)
    reason = status_table(cfg).loc["tumor_002", "reason"]
    assert "\n" not in reason and str(annotation(data, "tumor_002")) in reason
    assert re.search(message, reason), reason
    assert "tumor_002" not in set(pd.read_csv(out_dir(cfg) / "manifest.csv")["slide_id"])


@needs_real_fixtures
def test_the_real_tumor_001_annotation_on_a_small_slide_is_refused(dataset, tiling_cfg, tmp_path):
    data = copy_data(dataset, tmp_path)
    shutil.copy(REAL_XML, annotation(data, "tumor_001"))
    cfg = tiling_cfg(data, "tiling.split.mode=patch")
    tile(cfg)
    reason = status_table(cfg).loc["tumor_001", "reason"]
    assert "spans x 69" in reason and "on a 768x512 px slide: it lies outside the slide" in reason


def test_an_annotation_partly_outside_warns_and_tiles(dataset, tiling_cfg, tmp_path, caplog):
    data = copy_data(dataset, tmp_path)
    regions = [(n, g, rectangle(*box)) for n, g, *box in TUMOR_REGIONS]
    regions.append(("beyond the edge", "_0", rectangle(700, 0, 868, 100)))  # 100 of 168 px wide outside
    write_asap_xml(annotation(data, "tumor_002"), regions)
    cfg = tiling_cfg(data)
    tile(cfg)
    assert status_table(cfg).loc["tumor_002", "status"] == "done"
    assert "lies outside the slide" in caplog.text and "tumor_002" in caplog.text


# -- 3. data.mpp fills in a missing value, it does not override a recorded one ---------------


@needs_real_fixtures
def test_data_mpp_applies_only_to_slides_without_one(tmp_path, tiling_cfg):
    data = tmp_path / "data"
    normal = data / "training" / "normal"
    normal.mkdir(parents=True)
    shutil.copy(REAL_SVS, normal / "cmu.svs")  # records 0.499 um/px
    write_tiff(normal / "nompp.tif", tissue_image(width=2048, height=2048), mpp=None)
    overrides = ["data.mpp=0.25", "tiling.grid.patch_size=512", "tiling.grid.target_mpp=0.5",
                 "data.layout.slides.normal=[training/normal/*]", "data.layout.slides.tumor=[]"]
    cfg = tiling_cfg(data, *overrides)
    params = tiling_params(cfg)
    from vistumor.tiling.jobs import process_slide

    records = {r.slide_id: r for r in slide_records(cfg.data)}
    run = TilingChecks(verify=False)
    facts = {k: process_slide(r, params, tmp_path / "tiles", run) for k, r in records.items()}
    assert facts["cmu"]["read_size"] == facts["cmu"]["size0"] == 513  # 0.499 um/px as recorded: not 1,024
    assert facts["nompp"]["size0"] == 1024  # 0.25 um/px given by data.mpp: level 1, 512 px
    forced = tiling_params(tiling_cfg(data, *overrides, "data.mpp_override=all"))
    again = process_slide(records["cmu"], forced, tmp_path / "forced", TilingChecks(verify=False))
    assert again["read_size"] == again["size0"] == 1024


# -- 4. damaged level-0 tiles are found at tiling ---------------------------------------------


def damage_level0_tile(path: Path, x: int, y: int) -> None:
    """Zero the compressed bytes of the level-0 TIFF tile holding pixel ``(x, y)``."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        index = (y // page.tilelength) * per_row + x // page.tilewidth
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * count)


def test_a_damaged_slide_fails_at_tiling_naming_the_region(dataset, tiling_cfg, tmp_path):
    data = copy_data(dataset, tmp_path)
    slide = data / "training" / "normal" / "normal_002.tif"
    damage_level0_tile(slide, 300, 200)  # the 128 px TIFF tile [256, 384) x [128, 256): in the tissue
    cfg = tiling_cfg(data, "tiling.split.mode=patch")
    result = tile(cfg)
    assert (result["done"], result["failed"]) == (5, 1)
    reason = status_table(cfg).loc["normal_002", "reason"]
    # the first 64 px patch in reading order that touches the damaged tile
    assert "cannot decode the 64x64 px patch at level 0, (x0, y0)=(256, 128)" in reason
    assert str(slide) in reason and "\n" not in reason
    # without verification the damage goes unseen (reads only the thumbnail level)
    unchecked = tiling_cfg(data, "tiling.split.mode=patch", "tiling.run.verify=false",
                           root_dir=tmp_path / "b")
    assert tile(unchecked)["failed"] == 0


def test_a_verified_rerun_verifies_slides_tiled_without_it(dataset, tiling_cfg, tmp_path):
    data = copy_data(dataset, tmp_path)
    tile(tiling_cfg(data, "tiling.run.verify=false"))
    result = tile(tiling_cfg(data))
    assert result["done"] == 6  # none was verified yet
    assert tile(tiling_cfg(data))["skipped"] == 6
    statuses = [json.loads(p.read_text()) for p in (store_dir(tiling_cfg(data)) / "slides").glob("*.json")]
    assert all(s["verified"] and s["verified_px"] > 0 for s in statuses)


# -- 9. temporaries of killed runs, the missing-annotation message, concurrent runs ----------


def test_a_rerun_removes_temporaries_of_a_killed_run(dataset, tiling_cfg, tmp_path):
    data = copy_data(dataset, tmp_path)
    cfg = tiling_cfg(data)
    tile(cfg)
    store = store_dir(cfg)
    stale = [store / "qc" / ".tumor_001.png.k4j2.tmp", store / "slides" / ".normal_002.csv.x81q.tmp",
             store / "slides" / ".normal_002.json.zz.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert tile(cfg)["skipped"] == 6
    assert not any(p.exists() for p in stale)


def test_missing_annotation_names_the_folder(dataset, tiling_cfg, tmp_path):
    data = copy_data(dataset, tmp_path)
    annotation(data, "tumor_003").unlink()
    cfg = tiling_cfg(data, "tiling.split.mode=patch")
    tile(cfg)
    reason = status_table(cfg).loc["tumor_003", "reason"]
    folder = data / "training" / "lesion_annotations"
    assert f"expected {folder}/tumor_003{{.xml|.geojson|.json}}" in reason
    assert "<annotation_dir>" not in reason


def test_two_runs_on_one_folder_tile_each_slide_once(dataset, tiling_cfg, tmp_path):
    cfg = tiling_cfg(dataset.root)
    params, records = tiling_params(cfg), slide_records(cfg.data)
    folder = tmp_path / "shared"
    results: list[list[dict]] = []
    run = RunSettings(workers=1, progress=False)
    threads = [threading.Thread(target=lambda: results.append(tile_slides(records, params, folder, run)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [s["status"] for result in results for s in result]
    assert statuses.count("done") == 6 and statuses.count("skipped") == 6


def test_the_slide_lock_makes_the_second_holder_wait(tmp_path):
    order: list[str] = []
    lock = tmp_path / "locks" / "a.lock"
    with exclusive(lock):
        waiter = threading.Thread(target=lambda: (exclusive(lock).__enter__(), order.append("second")))
        waiter.start()
        waiter.join(0.3)
        order.append("first")
    waiter.join(5)
    assert order == ["first", "second"]


def test_verify_counts_each_pixel_about_once(dataset, tiling_cfg, tmp_path):
    from vistumor.tiling.verify import verify_tiles

    cfg = tiling_cfg(dataset.root, "tiling.grid.stride=32")
    tile(cfg)
    tiles = pd.read_csv(store_dir(cfg) / "slides" / "normal_001.csv")
    decoded = verify_tiles(dataset.slide("normal_001"), tiles)
    x0, y0 = tiles["x0"].to_numpy(), tiles["y0"].to_numpy()
    union = (x0.max() - x0.min() + 64) * (y0.max() - y0.min() + 64)
    assert decoded == union  # one region: every pixel once, although the patches overlap 4x
    assert decoded < len(tiles) * 64 * 64 / 3  # a patch-by-patch reader decodes each pixel ~4x
