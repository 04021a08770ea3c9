"""The LightningDataModule: train/val/test patch loaders around one patch source.

The source (:mod:`vistumor.data.sources`) turns a split into a dataset and checks what it
reads (a manifest's spec, slides and annotations); the datamodule adds augmentation,
the class check, sampling and loaders. What a loader serves can be swapped for another
dataset over the same patches (:meth:`PatchDataModule.serve`, used by the feature cache),
while :meth:`PatchDataModule.dataset` keeps giving the image dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vistumor.data.augment import build_pipeline
from vistumor.data.epochs import EpochSampler
from vistumor.data.sources import PatchSource
from vistumor.errors import BadPatchError, ConfigError, ManifestError
from vistumor.labels import lacking

log = logging.getLogger(__name__)

BAD_PATCH_POLICIES = ("fail", "skip")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",)}


class PatchDataModule(L.LightningDataModule):
    """Patches for training and evaluation.

    Args:
        source: where the patches come from (a manifest or image folders).
        image_size: model input edge (the model's ``image_size``, fixed when it is built).
        batch_size: patches per batch (paper: 32).
        augment: ``{"train": [...], "eval": [...]}`` lists of albumentations ``_target_`` nodes.
        balanced_sampling: draw training batches with equal class probability.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        with_masks: tumor masks in the val/test items (the explanation stage scores them).
        test_split: the split the test stage evaluates (the paper's protocol has no separate
            test split: its 10 % hold-out is ``val``).
        seed: training order and augmentation are functions of ``(seed, epoch, patch)``
            (:mod:`vistumor.data.epochs`): a resumed run equals an uninterrupted one.
        on_bad_patch: a patch that cannot be read: ``fail`` (stop with one line naming the
            slide and region) or ``skip`` (leave it out, recorded in :attr:`bad_patches`).
        train_masks: tumor masks in the training items too (a segmentation model learns them).
    """

    def __init__(
        self,
        source: PatchSource,
        image_size: int,
        batch_size: int = 32,
        augment: Mapping[str, Sequence] | None = None,
        balanced_sampling: bool = False,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        with_masks: bool = True,
        test_split: str = "test",
        seed: int = 0,
        on_bad_patch: str = "fail",
        train_masks: bool = False,
    ):
        super().__init__()
        if on_bad_patch not in BAD_PATCH_POLICIES:
            raise ConfigError(f"data.on_bad_patch must be one of {BAD_PATCH_POLICIES}, got {on_bad_patch!r}")
        self.source = source
        self.image_size = int(image_size)
        self.batch_size = batch_size
        self.augment = dict(augment or {})
        self.balanced_sampling = balanced_sampling
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.with_masks = with_masks
        self.test_split = test_split
        self.seed = seed
        self.on_bad_patch = on_bad_patch
        self.train_masks = train_masks
        #: patches left out under ``on_bad_patch=skip``: slide_id, x0, y0, reason
        self.bad_patches: list[dict] = []
        self.datasets: dict[str, Dataset] = {}
        self.served: dict[str, Dataset] = {}

    @property
    def manifest_path(self) -> str | None:
        return self.source.manifest_path

    # -- datasets ---------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        splits = {**_STAGE_SPLITS, "test": (self.test_split,), "predict": (self.test_split,)}
        for split in splits.get(stage or "fit", ("train", "val", self.test_split)):
            self.dataset(split)
        if stage in (None, "fit"):
            n = len(self.datasets["train"])
            if self.batch_size > n:
                raise ConfigError(
                    f"data.datamodule.batch_size={self.batch_size} is larger than the "
                    f"{n} training patches"
                )

    def build(self, split: str) -> Dataset:
        """The image dataset of one split, checked to hold both classes."""
        if split == "train" and self.train_masks and not self.source.has_masks:
            raise ConfigError(f"a segmentation model learns from tumor masks, and {type(self.source).__name__} "
                              "has none: train a classifier on it", self.source.where(split))
        transform = build_pipeline(self.augment.get("train" if split == "train" else "eval"))
        dataset = self.source.dataset(split, self.image_size, transform,
                                      with_masks=self.with_masks and (split != "train" or self.train_masks))
        problem = lacking(dataset.labels)
        if problem:
            raise ManifestError(f"split '{split}' has {problem}", self.source.where(split))
        return dataset

    def dataset(self, split: str) -> Dataset:
        """The split's image dataset (built once)."""
        if split not in self.datasets:
            self.datasets[split] = self.build(split)
        return self.datasets[split]

    def serve(self, split: str, dataset: Dataset) -> None:
        """Let the split's loader serve ``dataset`` (e.g. cached features of the same patches)."""
        self.served[split] = dataset

    def _served(self, split: str) -> Dataset:
        return self.served.get(split) or self.dataset(split)

    # -- loaders ----------------------------------------------------------------------------

    def _loader(self, dataset: Dataset, sampler=None) -> DataLoader:
        in_memory = getattr(dataset, "in_memory", False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=0 if in_memory else self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and not in_memory,
            drop_last=False,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._served("train")
        weights = None
        if self.balanced_sampling:
            labels = np.asarray(dataset.labels)
            weights = 1.0 / np.bincount(labels, minlength=2)[labels]
        return self._loader(dataset, EpochSampler(dataset, self.seed, weights))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._served("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._served(self.test_split))

    # -- patches that cannot be read ----------------------------------------------------------

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Act on the batch's unreadable patches (``on_bad_patch``) before it reaches the model."""
        bad = batch.pop("bad", [])
        if bad and self.on_bad_patch == "fail":
            first = bad[0]
            raise BadPatchError(
                f"cannot read the patch of slide '{first['slide_id']}' at level-0 (x0, y0)="
                f"({first['x0']}, {first['y0']}): {first['reason']} (data.on_bad_patch=skip leaves "
                "such patches out and records them in bad_patches.csv)"
            )
        for item in bad:
            log.warning("skipping unreadable patch of '%s' at (%s, %s): %s", item["slide_id"], item["x0"],
                        item["y0"], item["reason"])
        self.bad_patches.extend(bad)
        return batch


def collate(items: list[dict]) -> dict:
    """Batch the readable items; unreadable ones (``{"bad": reason, ...}``) go to ``batch["bad"]``."""
    good = [i for i in items if "bad" not in i]
    batch = default_collate(good) if good else {}
    batch["bad"] = [{"slide_id": i["slide_id"], "x0": i["x0"], "y0": i["y0"], "reason": i["bad"]}
                    for i in items if "bad" in i]
    return batch
