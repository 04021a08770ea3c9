"""The manifest describes itself: round trip, tamper and staleness checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import tissue_image, write_tiff

from vistumor.errors import ManifestError
from vistumor.files import fingerprint
from vistumor.tiling import manifest as manifest_module
from vistumor.tiling.manifest import COLUMNS, FORMAT, is_current, load_manifest, meta_path, write_manifest
from vistumor.tiling.merge import manifest_spec
from vistumor.tiling.params import GridParams, LabelParams, TilingParams
from vistumor.tiling.sampling import SamplingParams, SplitParams
from vistumor.tiling.tissue import TissueParams


def table(n: int = 6) -> pd.DataFrame:
    rows = [
        {
            "slide_id": "001" if i % 2 else "tumor_001", "slide_path": f"/data/s{i % 2}.tif",
            "kind": "normal" if i % 2 else "tumor", "x0": 64 * i, "y0": 128, "level": 0,
            "read_size": 64, "size0": 64.0, "tissue_fraction": 0.953125,
            "tumor_fraction": 0.05 if i == 0 else 0.0, "label": int(i == 0 or i == 2),
            "split": ["train", "train", "train", "train", "val", "test"][i],
        }
        for i in range(n)
    ]
    return pd.DataFrame(rows)[COLUMNS]


def spec(params: TilingParams | None = None, seed: int = 42, mode: str = "slide") -> dict:
    return manifest_spec(params or TilingParams(), SamplingParams(), SplitParams(mode=mode), seed)


def meta(params: TilingParams | None = None, slides: dict | None = None) -> dict:
    params = params or TilingParams()
    return {**spec(params), "tiling_hash": params.hash, "slides": slides or {}}


def test_round_trip(tmp_path):
    path = write_manifest(tmp_path / "tiles" / "manifest.csv", table(), meta())
    loaded = load_manifest(path)
    pd.testing.assert_frame_equal(loaded.table, table())
    assert loaded.table["slide_id"].tolist()[:2] == ["tumor_001", "001"]  # ids stay strings
    assert loaded.meta["format"] == FORMAT and loaded.meta["seed"] == 42
    assert loaded.meta["counts"] == {
        "test": {"normal": 1, "tumor": 0},
        "train": {"normal": 2, "tumor": 2},
        "val": {"normal": 1, "tumor": 0},
    }
    assert len(loaded.split("train")) == 4 and list(loaded.split("val")["x0"]) == [256]
    # and no temporary files left beside them
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.csv", "manifest.json"]


def test_edited_csv_is_detected(tmp_path):
    path = write_manifest(tmp_path / "manifest.csv", table(), meta())
    text = path.read_text().replace(",val\n", ",train\n")
    path.write_text(text)
    with pytest.raises(ManifestError, match="does not match its metadata") as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_missing_or_foreign_files(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "manifest.csv")
    path = write_manifest(tmp_path / "manifest.csv", table(), meta())
    info = json.loads(meta_path(path).read_text())
    meta_path(path).write_text(json.dumps({**info, "format": "someone-else/2"}))
    with pytest.raises(ManifestError, match="not a VisTumor manifest"):
        load_manifest(path)
    meta_path(path).write_text("{")
    with pytest.raises(ManifestError, match="unreadable metadata"):
        load_manifest(path)
    meta_path(path).unlink()
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        load_manifest(path)


def test_table_without_required_columns(tmp_path):
    with pytest.raises(ManifestError, match=r"lacks columns \['split'\]"):
        write_manifest(tmp_path / "manifest.csv", table().drop(columns="split"), meta())
    assert not (tmp_path / "manifest.csv").exists()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest_module, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(tmp_path / "manifest.csv", table(), meta())
    assert list(tmp_path.iterdir()) == []


def test_check_spec_accepts_the_same_parameters(tmp_path):
    params = TilingParams(GridParams(patch_size=64), TissueParams(downsample=8))
    path = write_manifest(tmp_path / "manifest.csv", table(), meta(params))
    loaded = load_manifest(path)
    loaded.check_spec(spec(params))
    loaded.check_spec(spec(TilingParams(GridParams(patch_size=64), TissueParams(downsample=8.0))))
    assert is_current(path, spec(params)) and not is_current(path, spec(params, seed=7))
    assert not is_current(tmp_path / "elsewhere.csv", spec(params))


@pytest.mark.parametrize(
    ("other", "key", "detail"),
    [
        (TilingParams(GridParams(patch_size=256)), "tiling.grid.patch_size", "manifest 512 vs config 256"),
        (TilingParams(labels=LabelParams(min_tumor_fraction=0.1)), "tiling.labels.min_tumor_fraction",
         "manifest 0.05 vs config 0.1"),
        (TilingParams(tissue=TissueParams(downsample=16)), "tiling.tissue.downsample",
         "manifest 32.0 vs config 16.0"),
    ],
)
def test_check_spec_names_the_differing_key(tmp_path, other, key, detail):
    loaded = load_manifest(write_manifest(tmp_path / "manifest.csv", table(), meta(TilingParams())))
    with pytest.raises(ManifestError, match="other parameters than the config asks") as err:
        loaded.check_spec(spec(other))
    message = str(err.value)
    assert f"{key if key.startswith('tiling.') else 'tiling.' + key}: " in message and detail in message
    assert message.count(": manifest") == 1  # only the key that differs


def test_check_spec_sees_sampling_split_and_seed(tmp_path):
    """A manifest balanced or split differently is another manifest, even with the same tiles."""
    loaded = load_manifest(write_manifest(tmp_path / "manifest.csv", table(), meta()))
    with pytest.raises(ManifestError, match="split.mode: manifest 'slide' vs config 'patch'"):
        loaded.check_spec(spec(mode="patch"))
    with pytest.raises(ManifestError, match="seed: manifest 42 vs config 7"):
        loaded.check_spec(spec(seed=7))


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_verify_slides_detects_missing_and_changed_slides(tmp_path, mode):
    slide = write_tiff(tmp_path / "slides" / "normal_001.tif", tissue_image())
    other = shutil.copy(slide, tmp_path / "slides" / "normal_002.tif")
    slides = {
        "normal_001": {"path": str(slide), "checksum": fingerprint(slide, mode)},
        "normal_002": {"path": str(other), "checksum": fingerprint(other, mode)},
    }
    loaded = load_manifest(write_manifest(tmp_path / "manifest.csv", table(), meta(slides=slides)))
    loaded.verify_slides()

    rescanned = tissue_image()
    rescanned[200:210, 300:310] = (90, 30, 120)
    write_tiff(slide, rescanned)  # same name, same size class, other pixels
    with pytest.raises(ManifestError, match="slide 'normal_001' changed since tiling") as err:
        loaded.verify_slides()
    assert str(slide) in str(err.value) and "manifest.csv" in str(err.value)

    slide.unlink()
    with pytest.raises(ManifestError, match="slide 'normal_001' is missing"):
        loaded.verify_slides()


def test_fast_fingerprint_sees_a_change_in_a_large_file(tmp_path):
    """Files above 16 MiB are sampled; a truncation or a changed head still shows."""
    big = tmp_path / "big.tif"
    data = np.random.default_rng(0).integers(0, 256, 20 << 20, dtype=np.uint8).tobytes()
    big.write_bytes(data)
    before = fingerprint(big)
    assert fingerprint(big) == before
    big.write_bytes(b"X" + data[1:])
    assert fingerprint(big) != before
    big.write_bytes(data[:-1])
    assert fingerprint(big) != before
