"""The LightningDataModule: train/val/test patch loaders from a manifest or image folders.

With a manifest, it first checks that the manifest was made with the tiling parameters
the config asks for and that every slide is still there unchanged, and that each split it
is about to use holds both classes; errors name the manifest and the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from vistumor.augment import build_pipeline
from vistumor.errors import ConfigError, ManifestError
from vistumor.manifest import Manifest, load_manifest
from vistumor.patches import ImagePatchDataset, PatchDataset, image_samples

log = logging.getLogger(__name__)

_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",)}


class PatchDataModule(L.LightningDataModule):
    """Patches for training and evaluation.

    Args:
        manifest_path: a tiling manifest (``manifest.csv``) ...
        patch_sources: ... or, instead, split -> patch folder or CSV (see
            :func:`vistumor.patches.image_samples`).
        image_size: model input edge; None = set later from the backbone
            (:meth:`use_model_input`).
        batch_size: patches per batch (paper: 32).
        augment: ``{"train": [...], "eval": [...]}`` lists of albumentations ``_target_`` nodes.
        balanced_sampling: draw training batches with equal class probability.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        with_masks: tumor masks in the val/test items (the explanation stage scores them).
        spec: what the manifest must have been made with (tiling, sampling, split, seed).
        verify_slides: check every slide exists and matches its recorded checksum.
        annotation_groups, mpp: as in tiling, for reading masks and slides.
        classes: folder name -> label for patch folders.
        test_split: the split the test stage evaluates (the paper's protocol has no separate
            test split: its 10 % hold-out is ``val``).
    """

    def __init__(
        self,
        manifest_path: str | None = None,
        patch_sources: Mapping[str, str] | None = None,
        image_size: int | None = None,
        batch_size: int = 32,
        augment: Mapping[str, Sequence] | None = None,
        balanced_sampling: bool = False,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        with_masks: bool = True,
        spec: Mapping[str, Any] | None = None,
        verify_slides: bool = True,
        annotation_groups: Mapping[str, str] | None = None,
        mpp: float | None = None,
        classes: Mapping[str, int] | None = None,
        test_split: str = "test",
    ):
        super().__init__()
        if (manifest_path is None) == (patch_sources is None):
            raise ConfigError("give exactly one of data.datamodule.manifest_path or patch_sources")
        self.manifest_path = manifest_path
        self.patch_sources = dict(patch_sources or {})
        self.image_size = image_size
        self.batch_size = batch_size
        self.augment = dict(augment or {})
        self.balanced_sampling = balanced_sampling
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.with_masks = with_masks
        self.spec = spec
        self.verify = verify_slides
        self.annotation_groups = annotation_groups
        self.mpp = mpp
        self.classes = classes
        self.test_split = test_split
        self.manifest: Manifest | None = None
        self.datasets: dict[str, Dataset] = {}

    def use_model_input(self, size: int) -> None:
        """Take the backbone's input size unless one was configured."""
        if self.image_size is None:
            self.image_size = int(size)

    # -- building ---------------------------------------------------------------------------

    def load(self) -> Manifest:
        """Load and check the manifest once."""
        if self.manifest is None:
            manifest = load_manifest(self.manifest_path)
            if self.spec is not None:
                manifest.check_spec(self.spec)
            if self.verify:
                manifest.verify_slides()
            self.manifest = manifest
        return self.manifest

    def setup(self, stage: str | None = None) -> None:
        if self.image_size is None:
            raise ConfigError("data.datamodule.image_size is unset and no model gave one")
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
        """The dataset of one split, checked to hold both classes."""
        transform = build_pipeline(self.augment.get("train" if split == "train" else "eval"))
        if self.manifest_path is not None:
            manifest = self.load()
            table = manifest.split(split)
            where = manifest.path
            dataset = PatchDataset(
                table, self.image_size, transform, manifest.annotations, self.annotation_groups,
                self.mpp, with_masks=self.with_masks and split != "train",
            )
        else:
            if split not in self.patch_sources:
                raise ConfigError(f"data.datamodule.patch_sources has no '{split}' entry")
            where = self.patch_sources[split]
            samples = image_samples(where, self.classes)
            dataset = ImagePatchDataset(samples, self.image_size, transform)
        labels = dataset.labels
        missing = [name for name, v in (("tumor", 1), ("normal", 0)) if not (labels == v).any()]
        if missing:
            raise ManifestError(
                f"split '{split}' has no {' and no '.join(missing)} patches ({len(labels)} in all)", where
            )
        return dataset

    def dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self.build(split)
        return self.datasets[split]

    def image_dataset(self, split: str) -> Dataset:
        """The split's image dataset, even when training runs on cached features."""
        dataset = self.dataset(split)
        return getattr(dataset, "source", dataset)

    # -- loaders ----------------------------------------------------------------------------

    def _loader(self, dataset: Dataset, shuffle: bool, sampler=None) -> DataLoader:
        in_memory = getattr(dataset, "in_memory", False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=0 if in_memory else self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and not in_memory,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        sampler = None
        if self.balanced_sampling:
            labels = np.asarray(dataset.labels)
            weights = 1.0 / np.bincount(labels, minlength=2)[labels]
            sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels))
        return self._loader(dataset, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.test_split), shuffle=False)

