"""Patch datasets read straight from the slides of a manifest (image folders:
:mod:`vistumor.data.images`).

Every item is a dict ``image, label, slide_id, x0, y0`` and, in datasets built with masks
(validation and test; not training, which never reads them), ``mask, has_mask``:

* ``image``: ``uint8`` tensor ``(3, S, S)`` (normalised later, on the device, by the model);
* ``mask``: ``uint8`` tensor ``(S, S)``, 1 where the pathologists annotated tumor,
  transformed together with the image; ``has_mask`` says whether it is ground truth
  (annotated slides and normal slides) or unknown (a tumor slide without annotation, an
  image without a mask file).

Slides are opened lazily, once per worker process, and read at the manifest's level and
size, then resized to ``S`` before augmentation (augmenting 224 px is ~5x cheaper than 512).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from vistumor.data.augment import reseed
from vistumor.data.epochs import unpack
from vistumor.errors import SlideError, VisTumorError
from vistumor.wsi.annotations import TumorAnnotation, read_annotations
from vistumor.wsi.slide import Slide


class PerProcess:
    """Slide handles, annotations and augmentation seeds that belong to one process.

    After a fork (a data-loader worker) the parent's OpenSlide handles must not be reused,
    and each worker needs its own random stream: both are renewed when the pid changes.
    """

    def __init__(self, transform: A.Compose | None):
        self.transform = transform
        self.pid = None
        self.slides: dict[str, Slide] = {}
        self.annotations: dict[str, TumorAnnotation] = {}

    def check(self) -> None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.slides, self.annotations = {}, {}
            reseed(self.transform, torch.initial_seed() % 2**32)

    def __getstate__(self):  # pickled into spawned workers: without open handles
        return {"transform": self.transform, "pid": None, "slides": {}, "annotations": {}}


class PatchItems(Dataset):
    """Shared item logic: ``read`` gives pixels and mask, ``describe`` the rest."""

    labels: np.ndarray
    state: PerProcess
    with_masks: bool

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def describe(self, index: int) -> tuple[str, int, int]:
        """``(slide_id, x0, y0)`` of an item."""
        raise NotImplementedError

    def item(self, index: int, seed: int | None = None) -> dict:
        """The item, augmented with a fixed ``seed`` when given (one augmentation variant)."""
        rgb, mask = self.read(index)
        if seed is not None:
            reseed(self.state.transform, seed)
        slide_id, x0, y0 = self.describe(index)
        return to_item(rgb, mask, self.state.transform, int(self.labels[index]), slide_id, x0, y0,
                       self.with_masks)

    def __getitem__(self, key) -> dict:
        """The item of ``index``, or of ``(stream, index)`` augmented from that stream
        (:mod:`vistumor.data.epochs`). A patch that cannot be read comes back as a marker
        ``{"bad": reason, slide_id, x0, y0}`` for the datamodule to act on
        (``data.on_bad_patch``), never as a crash inside a loader worker."""
        index, seed = unpack(key)
        try:
            return self.item(index, seed)
        except VisTumorError as err:
            slide_id, x0, y0 = self.describe(index)
            return {"bad": str(err), "slide_id": slide_id, "x0": x0, "y0": y0}


class PatchDataset(PatchItems):
    """Patches listed in a manifest table, read from their slides.

    Args:
        table: manifest rows (``slide_path, slide_id, kind, x0, y0, level, read_size,
            size0, label``).
        image_size: output edge ``S`` in pixels.
        transform: augmentation applied to image and mask together.
        annotations: slide_id -> annotation file, for tumor masks.
        annotation_groups: group mapping for those files.
        with_masks: rasterise tumor masks (off for training, where only labels are used).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        image_size: int,
        transform: A.Compose | None = None,
        annotations: Mapping[str, str] | None = None,
        annotation_groups: Mapping[str, str] | None = None,
        with_masks: bool = True,
    ):
        self.image_size = int(image_size)
        self.with_masks = with_masks
        self.slide_path = table["slide_path"].astype(str).to_numpy()
        self.slide_id = table["slide_id"].astype(str).to_numpy()
        self.kind = table["kind"].astype(str).to_numpy()
        self.x0 = table["x0"].to_numpy(np.int64)
        self.y0 = table["y0"].to_numpy(np.int64)
        self.level = table["level"].to_numpy(np.int64)
        self.read_size = table["read_size"].to_numpy(np.int64)
        self.size0 = table["size0"].to_numpy(np.float64)
        self.labels = table["label"].to_numpy(np.int64)
        self.tumor_fraction = table["tumor_fraction"].to_numpy(np.float64)
        self.annotation_files = {k: v for k, v in (annotations or {}).items() if v}
        self.annotation_groups = dict(annotation_groups) if annotation_groups else None
        self.state = PerProcess(transform)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The RGB patch at output size and its tumor mask (None when unknown), unaugmented."""
        self.state.check()
        path = self.slide_path[index]
        slide = self.state.slides.get(path)
        if slide is None:
            slide = self.state.slides[path] = Slide(path)  # read by level: no µm/px needed
        size = self.read_size[index]
        try:
            rgb = slide.read_region(self.x0[index], self.y0[index], self.level[index], size, size)
        except SlideError:
            del self.state.slides[path]  # an OpenSlide error is sticky: the next read reopens
            slide.close()
            raise
        return resize_patch(rgb, self.image_size), self._mask(index)

    def _mask(self, index: int) -> np.ndarray | None:
        if not self.with_masks:
            return None
        slide_id = self.slide_id[index]
        file = self.annotation_files.get(slide_id)
        if file is None:
            return None if self.kind[index] == "tumor" else np.zeros((self.image_size,) * 2, np.uint8)
        annotation = self.state.annotations.get(slide_id)
        if annotation is None:
            annotation = self.state.annotations[slide_id] = read_annotations(
                file, self.annotation_groups
            )
        s0 = self.size0[index]
        mask = annotation.rasterize(
            self.x0[index], self.y0[index], s0, s0, out_shape=(self.image_size, self.image_size)
        )
        return mask.astype(np.uint8)

    def describe(self, index: int) -> tuple[str, int, int]:
        return self.slide_id[index], int(self.x0[index]), int(self.y0[index])


def to_item(
    rgb: np.ndarray, mask: np.ndarray | None, transform: A.Compose | None, label: int,
    slide_id: str, x0: int, y0: int, with_mask: bool = True,
) -> dict:
    """Augment image (and mask) together and pack the dataset item."""
    item = {"label": label, "slide_id": slide_id, "x0": x0, "y0": y0}
    if not with_mask:
        rgb = rgb if transform is None else transform(image=rgb)["image"]
        return {"image": to_chw(rgb), **item}
    has_mask = mask is not None
    if mask is None:
        mask = np.zeros(rgb.shape[:2], np.uint8)
    if transform is not None:
        out = transform(image=rgb, mask=mask)
        rgb, mask = out["image"], out["mask"]
    return {"image": to_chw(rgb), **item, "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "has_mask": has_mask}


def to_chw(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> contiguous ``(3, H, W)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def resize_patch(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize a square patch to ``size``: exact 2x area halvings, then one bilinear step.

    Within 1 grey level (mean) of ``INTER_AREA``, ~7x faster for
    512 -> 224: OpenCV's area filter is slow for non-integer factors and fast for 2x.
    """
    while rgb.shape[0] >= 2 * size:
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if rgb.shape[0] != size or rgb.shape[1] != size:
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    return rgb


def read_items(dataset: PatchItems, indices) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Unaugmented ``uint8`` images ``(N, 3, S, S)``, boolean masks ``(N, S, S)`` and whether
    each mask is known, for ``indices`` of a patch dataset."""
    images, masks, known = [], [], []
    for i in indices:
        rgb, mask = dataset.read(int(i))
        images.append(to_chw(rgb))
        masks.append(np.zeros(rgb.shape[:2], bool) if mask is None else mask.astype(bool))
        known.append(mask is not None)
    if not images:
        size = dataset.image_size
        empty = torch.empty(0, 3, size, size, dtype=torch.uint8)
        return empty, np.zeros((0, size, size), bool), np.zeros(0, bool)
    return torch.stack(images), np.array(masks), np.array(known)
