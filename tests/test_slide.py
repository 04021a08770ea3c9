"""Slides through OpenSlide: RGB on white, level-0 coordinates, thumbnails, mpp, a real SVS."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import openslide
import pytest
from conftest import REAL_SVS, needs_real_fixtures

from vistumor.errors import ConfigError, SlideError
from vistumor.tiling.catalog import SlideRecord
from vistumor.tiling.params import GridParams, TilingParams
from vistumor.tiling.slide_grid import grid_spec, tile_slide
from vistumor.tiling.tissue import TissueParams
from vistumor.wsi import slide as slide_module
from vistumor.wsi.slide import Slide, rgba_to_rgb

RED, BLUE = (220, 30, 40), (30, 40, 200)


def quadrants() -> np.ndarray:
    """512 x 512 white, red in [256, 384) x [128, 256), blue in [0, 128) x [384, 512)."""
    rgb = np.full((512, 512, 3), 255, np.uint8)
    rgb[128:256, 256:384] = RED
    rgb[384:512, 0:128] = BLUE
    return rgb


def block_mean(rgb: np.ndarray, f: int) -> np.ndarray:
    h, w = rgb.shape[0] // f, rgb.shape[1] // f
    return rgb[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)


# -- RGBA ------------------------------------------------------------------------------------


def test_rgba_to_rgb_composites_on_white():
    rgba = np.array(
        [[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128], [0, 0, 0, 51]]], np.uint8
    )
    expected = [[200, 100, 50], [255, 255, 255], [227, 177, 152], [204, 204, 204]]
    # 200 * 128/255 + 255 * 127/255 = 227.39; 0 * 51/255 + 255 * 204/255 = 204
    np.testing.assert_array_equal(rgba_to_rgb(rgba)[0], expected)
    opaque = np.full((2, 2, 4), 255, np.uint8)
    assert rgba_to_rgb(opaque).shape == (2, 2, 3)


def test_transparent_tiff_reads_as_white(tiny_tiff):
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 255
    rgba[:, 128:, 3] = 0  # outside the scanned area
    path = tiny_tiff("alpha.tif", rgba, compression="zlib", levels=1)
    with Slide(path) as s:
        rgb = s.read_region(0, 0, 0, 256, 256)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
    assert (rgb[:, :128] == (200, 100, 50)).all()
    assert (rgb[:, 128:] == 255).all()


def test_outside_the_slide_reads_as_white(tiny_tiff):
    with Slide(tiny_tiff("q.tif", quadrants(), compression="zlib")) as s:
        rgb = s.read_region(500, 500, 0, 20, 20)
    assert (rgb[12:, :] == 255).all() and (rgb[:, 12:] == 255).all()


# -- coordinates -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_tiny_tiff_pyramid_as_openslide_sees_it(tiny_tiff, compression):
    path = tiny_tiff("q.tif", quadrants(), compression=compression, mpp=0.25, levels=3)
    with Slide(path) as s:
        assert s.dimensions == (512, 512)
        assert s.level_count == 3
        assert s.level_dimensions == ((512, 512), (256, 256), (128, 128))
        assert s.level_downsamples == (1.0, 2.0, 4.0)
        assert s.mpp == pytest.approx(0.25)
        assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert s.slide_id == "q"


def test_read_region_takes_level0_coordinates_at_level_1(tiny_tiff):
    image = quadrants()
    with Slide(tiny_tiff("q.tif", image, compression="zlib")) as s:
        red = s.read_region(256, 128, 1, 64, 64)  # level-0 (256, 128) = level-1 (128, 64)
        assert (red == RED).all()
        blue = s.read_region(0, 384, 1, 64, 64)
        assert (blue == BLUE).all()
        whole = s.read_region(0, 0, 1, 256, 256)
    np.testing.assert_array_equal(whole, block_mean(image, 2))


def test_read_region_bad_level(tiny_tiff):
    with Slide(tiny_tiff("q.tif", quadrants())) as s:
        with pytest.raises(SlideError, match="level 2 does not exist"):
            s.read_region(0, 0, 2, 8, 8)


@pytest.mark.parametrize(
    ("asked", "actual", "shape"),
    [
        (1, 1.0, (600, 1000)),  # level 0
        (2, 2.0, (300, 500)),  # level 1 as is
        (8, 8.0, (75, 125)),  # level 1, 4 x 4 blocks
        (3, 4.0, (150, 250)),  # level 1, round(3 / 2) = 2
    ],
)
def test_thumbnail_size_and_downsample(tiny_tiff, asked, actual, shape):
    image = np.full((600, 1000, 3), 255, np.uint8)
    image[96:304, 200:600] = RED
    with Slide(tiny_tiff("t.tif", image, compression="zlib")) as s:
        thumb, downsample = s.thumbnail(asked)
    assert downsample == actual
    assert thumb.shape == (*shape, 3)
    np.testing.assert_array_equal(thumb, block_mean(image, int(actual)))


def test_thumbnail_in_chunks_equals_thumbnail_at_once(tiny_tiff, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    with Slide(tiny_tiff("noise.tif", image, compression="zlib")) as s:
        at_once, _ = s.thumbnail(8)
        monkeypatch.setattr(slide_module, "_CHUNK", 40)  # 10 x 10 output px per read
        chunked, _ = s.thumbnail(8)
    np.testing.assert_array_equal(chunked, at_once)


# -- mpp -------------------------------------------------------------------------------------


def test_mpp_override_and_missing_mpp(tiny_tiff):
    path = tiny_tiff("nompp.tif", quadrants(), mpp=None)
    with Slide(path) as s:
        assert s.mpp is None
        with pytest.raises(SlideError, match=r"no microns-per-pixel.*data\.mpp") as err:
            s.require_mpp()
        assert str(path) in str(err.value)
    with Slide(path, mpp=0.243) as s:
        assert s.mpp == 0.243
    recorded = tiny_tiff("mpp.tif", quadrants(), mpp=0.5)
    with Slide(recorded, mpp=0.25) as s:
        assert s.mpp == s.recorded_mpp == 0.5  # by default data.mpp only fills in a missing value


def test_mpp_override_all_forces_it_with_a_warning(tiny_tiff, caplog):
    recorded = tiny_tiff("mpp.tif", quadrants(), mpp=0.5)
    with Slide(recorded, mpp=0.25, mpp_override="all") as s:
        assert s.mpp == 0.25 and s.recorded_mpp == 0.5
    assert "data.mpp=0.25 replaces the recorded 0.5" in caplog.text and str(recorded) in caplog.text
    caplog.clear()
    with Slide(recorded, mpp=0.5, mpp_override="all") as s:  # the same value: nothing to say
        assert s.mpp == 0.5
    assert not caplog.text
    with pytest.raises(ConfigError, match="data.mpp_override must be one of"):
        Slide(recorded, mpp=0.25, mpp_override="some")


@pytest.mark.parametrize(
    ("target", "level", "scale"),
    [
        (0.5, 0, 1.0), (1.0, 1, 1.0), (2.0, 2, 1.0), (0.75, 0, 1.5), (1.5, 1, 1.5),
        (8.0, 2, 4.0), (1.005, 1, 1.005),  # within 1 % of level 1: read there, barely rescaled
    ],
)
def test_level_for_mpp(tiny_tiff, target, level, scale):
    with Slide(tiny_tiff("q.tif", quadrants(), mpp=0.5, levels=3)) as s:
        assert s.level_for_mpp(target) == (level, pytest.approx(scale))


def test_target_mpp_finer_than_level_0(tiny_tiff):
    with Slide(tiny_tiff("q.tif", quadrants(), mpp=0.5)) as s:
        with pytest.raises(SlideError, match="finer than level 0"):
            s.level_for_mpp(0.25)


def test_grid_spec_from_level_and_from_target_mpp(tiny_tiff):
    with Slide(tiny_tiff("q.tif", quadrants(), mpp=0.5, levels=3)) as s:
        at_level = grid_spec(s, GridParams(patch_size=32, level=1))
        assert astuple(at_level) == (1, 32, 64.0, 64.0)  # level, read_size, size0, stride0
        by_mpp = grid_spec(s, GridParams(patch_size=32, stride=16, target_mpp=1.5))
        assert astuple(by_mpp) == (1, 48, 96.0, 48.0)
        with pytest.raises(SlideError, match="tiling.grid.level=3 does not exist"):
            grid_spec(s, GridParams(level=3))


# -- errors ----------------------------------------------------------------------------------


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SlideError, match="slide file not found"):
        Slide(tmp_path / "gone.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a slide\n")
    with pytest.raises(SlideError, match="not a slide OpenSlide can read") as err:
        Slide(text)
    assert str(text) in str(err.value)


# -- the real SVS ----------------------------------------------------------------------------


@needs_real_fixtures
def test_real_svs_opens():
    with Slide(REAL_SVS) as s:
        assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert s.mpp == pytest.approx(0.499)
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1
        region = s.read_region(1000, 2000, 0, 64, 32)
        thumb, downsample = s.thumbnail(16)
    assert region.shape == (32, 64, 3) and region.dtype == np.uint8
    assert downsample == 16 and thumb.shape == (2967 // 16, 2220 // 16, 3)
    assert 40 < thumb.std() < 80  # real tissue on glass, not a blank image


@needs_real_fixtures
def test_real_svs_tiles_sensibly():
    record = SlideRecord("cmu_small_region", Path(REAL_SVS), "normal", None)
    params = TilingParams(GridParams(patch_size=256), TissueParams(downsample=16))
    table, facts, picture = tile_slide(record, params)
    assert facts["n_grid"] == (2220 // 256) * (2967 // 256)  # 8 x 11
    assert 10 <= facts["n_tissue"] < facts["n_grid"]
    assert (table["tissue_fraction"] >= 0.6).all() and (table["tissue_fraction"] <= 1).all()
    assert 0.1 < facts["tissue_share"] < 0.8
    assert facts["n_normal"] == facts["n_tissue"] and (table["label"] == 0).all()
    assert facts["mpp"] == pytest.approx(0.499)
    assert picture.ndim == 3 and picture.shape[2] == 3


@needs_real_fixtures
def test_real_svs_grid_at_target_mpp():
    with Slide(REAL_SVS) as s:
        spec = grid_spec(s, GridParams(patch_size=256, target_mpp=1.0))
    # one level at 0.499 um/px: read round(256 * 1.0 / 0.499) = 513 px and resize
    assert (spec.level, spec.read_size, spec.size0) == (0, 513, 513.0)
    assert spec.stride0 == pytest.approx(256 / 0.499)
