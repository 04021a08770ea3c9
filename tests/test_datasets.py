"""Patch datasets (slides of a manifest, image folders, CSVs), augmentation streams, datamodule.

Geometry from ``conftest.py``: on a tumor slide, tile ``(128, 128)`` is the lesion's corner
(its 64 x 64 mask is 1 except the exclusion ``[16, 48)^2``: 75 % tumor) and tile ``(384, 128)``
holds the 5 % strip: rows whose pixel centre lies above ``y = 3.2``, i.e. rows 0, 1, 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PATCH, PINK, copy_tiled
from PIL import Image
from torch.utils.data import DataLoader

from vistumor.data.augment import HEDJitter, build_pipeline
from vistumor.data.datamodule import PatchDataModule
from vistumor.data.epochs import EpochSampler
from vistumor.data.images import ImagePatchDataset, image_samples
from vistumor.data.patches import PatchDataset
from vistumor.data.sources import ImageFolderSource, ManifestSource
from vistumor.errors import ConfigError, ManifestError

GROUPS = {"_0": "tumor", "_1": "tumor", "Tumor": "tumor", "_2": "exclude", "Exclusion": "exclude"}
VFLIP = {"_target_": "albumentations.VerticalFlip", "p": 1.0}
KEYS = {"image", "label", "slide_id", "x0", "y0", "mask", "has_mask"}


def datamodule(manifest, spec=None, verify_slides: bool = True, **options) -> PatchDataModule:
    source = ManifestSource(str(manifest), spec=spec, verify_slides=verify_slides, annotation_groups=GROUPS)
    values = {"image_size": PATCH, "batch_size": 8, "num_workers": 0}
    return PatchDataModule(source, **{**values, **options})


def tissue_colour(slide_id: str, tiled) -> np.ndarray:
    """The slide's pink (``conftest.tissue_image``: shade = position among normal + tumor)."""
    shade = (tiled.data.normal + tiled.data.tumor).index(slide_id)
    return np.clip(np.array(PINK) + (-6 * shade, 4 * shade, -3 * shade), 0, 255)


def index_of(dataset: PatchDataset, x0: int, y0: int, label: int) -> int:
    hits = np.flatnonzero((dataset.x0 == x0) & (dataset.y0 == y0) & (dataset.labels == label))
    return int(hits[0])


def write_png(path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# -- patches from slides ----------------------------------------------------------------------


def test_items_of_a_manifest_split(tiled):
    dm = datamodule(tiled.manifest)
    test, train = dm.dataset("test"), dm.dataset("train")
    assert isinstance(test, PatchDataset) and len(test) == len(train) == 10
    assert sorted(test.labels) == [0] * 5 + [1] * 5
    for i in range(len(test)):
        item = test[i]
        assert set(item) == KEYS
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, PATCH, PATCH)
        assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (PATCH, PATCH)
        assert isinstance(item["label"], int) and isinstance(item["slide_id"], str)
        assert isinstance(item["x0"], int) and isinstance(item["y0"], int)
        assert item["has_mask"] is True  # annotated tumor slide, or a normal slide
        # every tile lies inside the tissue rectangle: the slide's own pink (JPEG: +-4)
        pixel = item["image"][:, PATCH // 2, PATCH // 2].numpy().astype(int)
        assert np.abs(pixel - tissue_colour(item["slide_id"], tiled)).max() <= 4
        fraction = item["mask"].float().mean().item()
        assert fraction == pytest.approx(test.tumor_fraction[i], abs=1 / PATCH)
        assert item["label"] == int(fraction >= 0.04)
    corner = test[index_of(test, 128, 128, 1)]["mask"]
    assert corner.float().mean().item() == 0.75 and corner[16:48, 16:48].sum() == 0
    assert set(train[0]) == KEYS - {"mask", "has_mask"}  # training never reads masks: none made


def test_mask_moves_with_the_image_under_a_flip(tiled):
    plain = datamodule(tiled.manifest).dataset("test")
    flipped = datamodule(tiled.manifest, augment={"eval": [VFLIP]}).dataset("test")
    i = index_of(plain, 384, 128, 1)
    rows = np.flatnonzero(plain[i]["mask"].numpy().any(axis=1))
    assert rows.tolist() == [0, 1, 2]
    assert plain[i]["mask"][:3].all()
    item = flipped[i]
    assert np.flatnonzero(item["mask"].numpy().any(axis=1)).tolist() == [61, 62, 63]
    assert torch.equal(item["mask"], plain[i]["mask"].flip(0))
    assert torch.equal(item["image"], plain[i]["image"].flip(1))


def test_image_and_mask_stay_aligned_under_random_augmentation(tmp_path):
    rgb = np.full((32, 32, 3), 200, np.uint8)
    rgb[2:9, 20:30] = 0  # a dark block, exactly where the mask is
    mask = np.zeros((32, 32), np.uint8)
    mask[2:9, 20:30] = 255
    samples = pd.DataFrame({
        "path": [str(write_png(tmp_path / "tumor" / "a.png", rgb))] * 8, "label": [1] * 8,
        "mask_path": [str(write_png(tmp_path / "masks" / "tumor" / "a.png", mask))] * 8,
    })
    transforms = [{"_target_": f"albumentations.{t}", "p": 0.5}
                  for t in ("HorizontalFlip", "VerticalFlip", "RandomRotate90", "Transpose")]
    dataset = ImagePatchDataset(samples, 32, build_pipeline(transforms))
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        dark = (item["image"] == 0).all(0)
        assert torch.equal(dark, item["mask"].bool()) and item["mask"].sum() == 70
        seen.add(tuple(np.flatnonzero(dark.numpy().ravel())[:1]))
    assert len(seen) > 1  # the block did move


def test_workers_have_their_own_augmentation_streams_and_a_seed_reproduces_them(tmp_path):
    path = write_png(tmp_path / "normal" / "a.png", np.full((16, 16, 3), (214, 112, 186), np.uint8))
    samples = pd.DataFrame({"path": [str(path)] * 4, "label": [0] * 4})
    dataset = ImagePatchDataset(samples, 16, build_pipeline([HEDJitter(sigma=0.2, bias=0.1, p=1.0)]))

    def epoch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, shuffle=False)
        return [batch["image"][0] for batch in loader]

    first = epoch(0)
    # items 0 and 1 are the first draws of workers 0 and 1: equal if the streams were shared
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0), strict=True))
    assert not torch.equal(first[0], epoch(1)[0])
    # a fixed per-item seed (the feature cache's variants) reproduces one augmentation
    assert torch.equal(dataset.item(0, seed=7)["image"], dataset.item(0, seed=7)["image"])
    assert not torch.equal(dataset.item(0, seed=7)["image"], dataset.item(0, seed=8)["image"])


def test_read_size_other_than_image_size_is_resized(tiled):
    table = datamodule(tiled.manifest).source.manifest.split("test")
    i = index_of(PatchDataset(table, PATCH), 384, 128, 1)
    annotations = {s: tiled.data.annotation(s) for s in tiled.data.tumor}
    small = PatchDataset(table, 32, annotations=annotations, annotation_groups=GROUPS)
    item = small[i]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert np.flatnonzero(item["mask"].numpy().any(axis=1)).tolist() == [0, 1]  # centres above 3.2 / 2
    # level 1, 32 px read, shown at 64 px: the same tissue and the same mask
    level1 = table.assign(level=1, read_size=PATCH // 2)
    upscaled = PatchDataset(level1, PATCH, annotations=annotations, annotation_groups=GROUPS)[i]
    assert upscaled["image"].shape == (3, PATCH, PATCH)
    colour = tissue_colour(upscaled["slide_id"], tiled)
    assert np.abs(upscaled["image"][:, 32, 32].numpy().astype(int) - colour).max() <= 4
    assert np.flatnonzero(upscaled["mask"].numpy().any(axis=1)).tolist() == [0, 1, 2]


# -- patches from image folders and CSVs ---------------------------------------------------------


def test_image_folder_with_masks(tmp_path):
    root = tmp_path / "train"
    write_png(root / "normal" / "n1.png", np.full((20, 20, 3), 10, np.uint8))
    write_png(root / "tumor" / "t1.png", np.full((40, 40, 3), 20, np.uint8))
    write_png(root / "tumor" / "t2.jpg", np.full((40, 40, 3), 30, np.uint8))
    (root / "tumor" / "notes.txt").write_text("not an image")
    mask = np.zeros((40, 40), np.uint8)
    mask[:10] = 1
    write_png(root / "masks" / "tumor" / "t1.png", mask)
    samples = image_samples(root)
    assert [p.split("/")[-1] for p in samples["path"]] == ["n1.png", "t1.png", "t2.jpg"]
    assert samples["label"].tolist() == [0, 1, 1]
    dataset = ImagePatchDataset(samples, 20)
    items = [dataset[i] for i in range(3)]
    assert [it["has_mask"] for it in items] == [False, True, False]
    assert [it["slide_id"] for it in items] == ["n1", "t1", "t2"]
    assert all(it["image"].shape == (3, 20, 20) and it["image"].dtype == torch.uint8 for it in items)
    assert items[0]["image"].max() == 10
    assert items[1]["mask"][:5].all() and items[1]["mask"][5:].sum() == 0  # 40 -> 20 px: 10 rows -> 5
    with pytest.raises(ConfigError, match="no images in class folders") as err:
        image_samples(tmp_path / "train" / "masks", classes={"x": 0})
    assert "masks" in str(err.value)


def test_rgba_images_are_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, 4:] = (200, 0, 0, 255)  # right half opaque red, left half fully transparent (black)
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black over white
    path = write_png(tmp_path / "tumor" / "a.png", rgba)
    image = ImagePatchDataset(image_samples(tmp_path), 8)[0]["image"].permute(1, 2, 0).numpy()
    assert (image[1:, :4] == 255).all()
    assert (image[:, 4:] == (200, 0, 0)).all()
    assert image[0, 0].tolist() == [127, 127, 127]  # 255 * (255 - 128) / 255
    assert path.is_file()


def test_patch_csv(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", np.full((8, 8, 3), 50, np.uint8))
    write_png(tmp_path / "imgs" / "b.png", np.full((8, 8, 3), 60, np.uint8))
    write_png(tmp_path / "imgs" / "b_mask.png", np.full((8, 8), 255, np.uint8))
    csv = tmp_path / "patches.csv"
    csv.write_text("path,label,mask_path\nimgs/a.png,0,\nimgs/b.png,1,imgs/b_mask.png\n")
    dataset = ImagePatchDataset(image_samples(csv), 8)
    assert dataset.labels.tolist() == [0, 1]
    assert dataset[0]["has_mask"] is False and dataset[1]["has_mask"] is True
    assert dataset[1]["mask"].all() and dataset[1]["image"].max() == 60
    unmasked = ImagePatchDataset(image_samples(csv), 8, with_masks=False)  # training: labels only
    assert "mask" not in unmasked[1] and unmasked[1]["image"].max() == 60
    csv.write_text("path,label\nimgs/a.png,2\n")
    with pytest.raises(ConfigError, match=r"labels must be 0 \(normal\) or 1 \(tumor\), found \[2\]"):
        image_samples(csv)
    csv.write_text("file,label\nimgs/a.png,0\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        image_samples(csv)


# -- datamodule -------------------------------------------------------------------------------


def test_batch_larger_than_the_data(tiled):
    with pytest.raises(ConfigError, match="batch_size=11 is larger than the 10 training patches"):
        datamodule(tiled.manifest, batch_size=11).setup("fit")
    datamodule(tiled.manifest, batch_size=10).setup("fit")


def test_split_without_tumor_patches(tiled, tmp_path):
    copy = copy_tiled(tiled, tmp_path, keep=lambda t: ~((t["split"] == "val") & (t["label"] == 1)))
    dm = datamodule(copy.manifest)
    with pytest.raises(ManifestError, match=r"split 'val' has no tumor patches \(5 normal\)") as err:
        dm.setup("fit")
    assert str(copy.manifest) in str(err.value)
    dm.setup("test")  # the other splits are fine


def test_missing_manifest(tmp_path):
    missing = tmp_path / "tiles" / "manifest.csv"
    with pytest.raises(ManifestError, match="manifest not found") as err:
        datamodule(missing).setup("fit")
    assert str(missing) in str(err.value)


def test_manifest_of_other_tiling_parameters(tiled):
    made = datamodule(tiled.manifest).source.manifest.spec
    grid = {**made["tiling"]["grid"], "min_tissue_fraction": 0.5}
    dm = datamodule(tiled.manifest, spec={**made, "tiling": {**made["tiling"], "grid": grid}})
    message = "tiling.grid.min_tissue_fraction: manifest 0.6 vs config 0.5"
    with pytest.raises(ManifestError, match=message) as err:
        dm.setup("fit")
    assert str(tiled.manifest) in str(err.value)


def test_missing_or_changed_slide(tiled, tmp_path):
    copy = copy_tiled(tiled, tmp_path)
    datamodule(copy.manifest).setup("fit")
    slide = copy.data.slide("normal_002")
    slide.write_bytes(slide.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="slide 'normal_002' changed since tiling") as err:
        datamodule(copy.manifest).setup("fit")
    assert str(copy.manifest) in str(err.value) and str(slide) in str(err.value)
    assert datamodule(copy.manifest, verify_slides=False).source.manifest.table is not None
    slide.unlink()
    with pytest.raises(ManifestError, match="slide 'normal_002' is missing") as err:
        datamodule(copy.manifest).setup("fit")
    assert str(copy.manifest) in str(err.value)


def test_image_folder_source_names_a_missing_split(tmp_path):
    write_png(tmp_path / "normal" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "tumor" / "b.png", np.zeros((8, 8, 3), np.uint8))
    dm = PatchDataModule(ImageFolderSource({"train": str(tmp_path)}), image_size=8, batch_size=2)
    with pytest.raises(ConfigError, match="no 'val' entry"):
        dm.setup("fit")


def test_image_folder_split_without_tumor(tmp_path):
    write_png(tmp_path / "train" / "normal" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "train" / "tumor" / "b.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "val" / "normal" / "a.png", np.zeros((8, 8, 3), np.uint8))
    dm = PatchDataModule(ImageFolderSource({s: str(tmp_path / s) for s in ("train", "val")}), image_size=8,
                         batch_size=2, num_workers=0)
    with pytest.raises(ManifestError, match="split 'val' has no tumor patches") as err:
        dm.setup("fit")
    assert str(tmp_path / "val") in str(err.value)


def test_balanced_sampling_draws_both_classes_about_equally(tmp_path):
    for i in range(6):
        write_png(tmp_path / "train" / "normal" / f"n{i}.png", np.zeros((8, 8, 3), np.uint8))
    for i in range(2):
        write_png(tmp_path / "train" / "tumor" / f"t{i}.png", np.zeros((8, 8, 3), np.uint8))

    def tumor_share(balanced: bool) -> float:
        dm = PatchDataModule(ImageFolderSource({"train": str(tmp_path / "train")}), image_size=8,
                             batch_size=4, num_workers=0, balanced_sampling=balanced)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, EpochSampler) and (sampler.weights is not None) == balanced
        labels = dm.dataset("train").labels
        drawn = []
        for epoch in range(500):
            sampler.set_epoch(epoch)
            drawn += [labels[i] for _, i in sampler]
        assert len(drawn) == 500 * 8
        return float(np.mean(drawn))

    assert tumor_share(True) == pytest.approx(0.5, abs=0.03)
    assert tumor_share(False) == pytest.approx(0.25, abs=1e-9)  # every patch once per epoch


def test_random_dihedral_is_the_d4_group_on_image_and_mask():
    """All 8 flips/rotations occur, and the mask moves exactly as the image does."""
    import albumentations as A
    import numpy as np

    from vistumor.data.augment import RandomDihedral, dihedral

    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    group = {np.rot90(m, k).tobytes() for m in (image, image[:, ::-1]) for k in range(4)}
    assert {dihedral(image, k).tobytes() for k in range(8)} == group
    pipeline = A.Compose([RandomDihedral(p=1.0)])
    pipeline.set_random_seed(0)
    rgb = np.dstack([image] * 3)
    seen = set()
    for _ in range(200):
        out = pipeline(image=rgb, mask=image.copy())
        assert np.array_equal(out["image"][..., 0], out["mask"])
        seen.add(out["mask"].tobytes())
    assert seen == group
