"""Bags in the CLAM/TRIDENT layout: written and read with h5py directly, checked with one-line
errors, extracted from the tiny dataset's slides at known coordinates, resumable, cached by
trunk and grid, and equal to the trunk on the same pixels read alone."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import MASK_DOWNSAMPLE, N_TISSUE, PATCH, TISSUE_BOX

from vistumor.data.bags import read_bag, write_bag
from vistumor.errors import ConfigError
from vistumor.infer.bags import BagSettings, TrunkFeatures, bag_folder, extract_bags
from vistumor.tiling.params import GridParams
from vistumor.tiling.tissue import TissueParams
from vistumor.wsi.slide import Slide

TRUNK = {"_target_": "vistumor.model.classifier.PatchClassifier", "backbone": "test_resnet", "pretrained": False,
         "image_size": PATCH}
TILING = {"grid": {**GridParams(patch_size=PATCH).__dict__},
          "tissue": {**TissueParams().__dict__, "downsample": MASK_DOWNSAMPLE}}


@pytest.fixture(scope="module")
def trunk() -> TrunkFeatures:
    return TrunkFeatures(TRUNK)


def test_a_written_bag_opens_in_h5py_in_the_clam_layout(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    coords = np.array([[0, 0], [64, 0], [0, 64]])
    path = write_bag(tmp_path / "s.h5", features, coords, {"patch_size_level0": 64.0, "patch_size": 64,
                                                            "patch_level": 0, "trunk": "x"})
    with h5py.File(path, "r") as f:
        assert set(f) == {"features", "coords"}
        assert f["features"].dtype == np.float32 and f["features"].shape == (3, 4)
        assert f["coords"].dtype == np.int64 and f["coords"][()].tolist() == coords.tolist()
        assert f.attrs["patch_size"] == 64 and f.attrs["patch_level"] == 0 and f.attrs["trunk"] == "x"
    assert not list(tmp_path.glob("*.tmp*"))


def test_trident_style_float16_bags_are_read(tmp_path):
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["features"] = np.ones((5, 8), np.float16)
        f["coords"] = np.zeros((5, 2), np.int32)
    bag = read_bag(tmp_path / "t.h5", dim=8)
    assert bag.features.dtype == np.float32 and len(bag) == 5


@pytest.mark.parametrize(("datasets", "message"), [
    ({"coords": np.zeros((3, 2))}, "no dataset 'features'"),
    ({"features": np.zeros((3, 4))}, "no dataset 'coords'"),
    ({"features": np.zeros((3, 4)), "coords": np.zeros((2, 2))}, "3 feature rows but 2 coords"),
    ({"features": np.zeros((3, 4, 1)), "coords": np.zeros((3, 2))}, r"'features' must be N x D, got shape \(3, 4, 1\)"),
    ({"features": np.zeros((3, 4)), "coords": np.zeros((3, 3))}, r"'coords' must be N x 2"),
])
def test_bad_bags_are_one_line_naming_the_file(tmp_path, datasets, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f[name] = data
    with pytest.raises(ConfigError, match=message) as err:
        read_bag(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_other_widths_and_non_hdf5_files_are_refused(tmp_path):
    write_bag(tmp_path / "a.h5", np.zeros((2, 4)), np.zeros((2, 2)), {})
    with pytest.raises(ConfigError, match="4-dimensional, the other bags 8"):
        read_bag(tmp_path / "a.h5", dim=8)
    (tmp_path / "b.h5").write_text("not hdf5")
    with pytest.raises(ConfigError, match="not a readable HDF5 bag"):
        read_bag(tmp_path / "b.h5")


def test_extraction_puts_every_tissue_patch_at_its_level0_corner(dataset, tmp_path, trunk):
    slide_id = dataset.tumor[0]
    settings = BagSettings(stride=PATCH, batch_size=8)
    folder = bag_folder(tmp_path, trunk, TILING, settings.stride)
    records = extract_bags([(slide_id, dataset.slide(slide_id))], folder, trunk, TILING, settings)
    assert records[0]["status"] == "done" and records[0]["patches"] == N_TISSUE
    with h5py.File(folder / f"{slide_id}.h5", "r") as f:
        coords, features = f["coords"][()], f["features"][()]
        attrs = dict(f.attrs)
    x0, y0, x1, y1 = TISSUE_BOX  # the 8 x 4 tissue tiles, row-major
    expected = [[x, y] for y in range(y0, y1, PATCH) for x in range(x0, x1, PATCH)]
    assert coords.tolist() == expected
    assert features.shape == (N_TISSUE, trunk.model.net.num_features)
    assert attrs["patch_size_level0"] == PATCH and attrs["patch_size"] == PATCH and attrs["patch_level"] == 0
    assert attrs["trunk"] == "test_resnet" and attrs["grid_hash"] in folder.name
    assert json.loads(attrs["tiling"])["grid"]["patch_size"] == PATCH
    # the same pixels read alone through the trunk give the same features
    with Slide(dataset.slide(slide_id)) as slide:
        patch = slide.read_region(int(coords[5, 0]), int(coords[5, 1]), 0, PATCH, PATCH)
    np.testing.assert_allclose(trunk(patch[None])[0], features[5], rtol=1e-4, atol=1e-5)


def test_extraction_resumes_and_is_cached_by_trunk_and_grid(dataset, tmp_path, trunk):
    slides = [(s, dataset.slide(s)) for s in dataset.slide_ids[:2]]
    settings = BagSettings(stride=PATCH)
    folder = bag_folder(tmp_path, trunk, TILING, settings.stride)
    assert [r["status"] for r in extract_bags(slides, folder, trunk, TILING, settings)] == ["done", "done"]
    (folder / f"{slides[1][0]}.h5").unlink()
    again = extract_bags(slides, folder, trunk, TILING, settings)
    assert [r["status"] for r in again] == ["skipped", "done"]
    assert (folder / "status.csv").is_file()
    assert bag_folder(tmp_path, trunk, TILING, None) != folder  # another grid, another folder
    other = TrunkFeatures({**TRUNK, "image_size": 32})
    assert bag_folder(tmp_path, other, TILING, settings.stride) != folder


def test_a_slide_that_fails_is_recorded_and_the_others_go_on(dataset, tmp_path, trunk):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a slide")
    slides = [("broken", broken), (dataset.normal[0], dataset.slide(dataset.normal[0]))]
    records = extract_bags(slides, tmp_path / "bags", trunk, TILING, BagSettings(stride=PATCH))
    assert [r["status"] for r in records] == ["failed", "done"]
    assert str(broken) in records[0]["reason"]
    assert not (tmp_path / "bags" / "broken.h5").exists()


@pytest.mark.parametrize("trunk_config", ["small_cnn", "tiny_fm"])
def test_any_model_config_is_a_trunk_foundation_models_too(trunk_config):
    from conftest import CONF
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=mil", "model=clam_sb", f"model@model.trunk={trunk_config}"])
    trunk = TrunkFeatures(OmegaConf.to_container(cfg.model.trunk, resolve=True))
    patches = np.random.default_rng(0).integers(0, 255, (3, 96, 96, 3), dtype=np.uint8)  # resized to the input
    features = trunk(patches)
    assert features.ndim == 2 and len(features) == 3 and features.dtype == np.float32  # D: the embedding rule's
    np.testing.assert_array_equal(TrunkFeatures(OmegaConf.to_container(cfg.model.trunk, resolve=True))(patches),
                                  features)  # a random-init trunk is rebuilt the same (inference = extraction)
