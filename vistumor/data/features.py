"""Reuse frozen-trunk features across epochs.

With a frozen trunk (the paper's setup) a patch's features only change when its pixels do.
:class:`FeatureCache` computes them once, for a fixed number of augmentation ``variants``
per patch (variant 0: the patch as evaluated; variants 1..K-1: fixed random augmentations,
seeded by patch and variant), at the start of training; each epoch then draws one variant
per patch and trains the head on features alone, skipping slide reads, augmentation and
the trunk. Same model, same optimiser; epochs 2..N become nearly free.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vistumor.data.augment import reseed
from vistumor.data.epochs import unpack
from vistumor.errors import BadPatchError, ConfigError, VisTumorError

log = logging.getLogger(__name__)


class _Variants(Dataset):
    """Each patch read once, as ``variants`` images ``(K, 3, S, S)``: the patch as it is
    (variant 0), then fixed augmentations seeded by patch and variant."""

    def __init__(self, dataset, variants: int, seed: int):
        self.dataset, self.variants, self.seed = dataset, variants, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        """The variants and ``""``, or blank images and the reason the patch cannot be read."""
        try:
            rgb, _ = self.dataset.read(index)
        except VisTumorError as err:
            size = self.dataset.image_size
            return torch.zeros(self.variants, 3, size, size, dtype=torch.uint8), str(err)
        transform = self.dataset.state.transform
        images = [rgb]
        for variant in range(1, self.variants):
            reseed(transform, ((self.seed * 1_000_003 + variant) * 10_000_019 + index) % 2**32)
            images.append(rgb if transform is None else transform(image=rgb)["image"])
        return torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))), ""


class FeatureDataset(Dataset):
    """Precomputed features ``(N, K, F)`` of an image dataset's patches; each epoch picks
    one variant per patch."""

    in_memory = True  # served from the main process: no loader workers needed

    def __init__(self, features: torch.Tensor, dataset, seed: int = 0):
        self.features = features
        self.labels = np.asarray(dataset.labels)
        self.describe = dataset.describe
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's variant of every patch (seeded by seed and epoch)."""
        rng = np.random.default_rng((self.seed, epoch))
        self.variant = rng.integers(self.features.shape[1], size=len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> dict:
        index, _ = unpack(key)  # the variant drawn for this epoch is the augmentation
        slide_id, x0, y0 = self.describe(index)
        return {
            "features": self.features[index, self.variant[index]],
            "label": int(self.labels[index]),
            "slide_id": slide_id, "x0": x0, "y0": y0,
        }


@torch.no_grad()
def extract(
    module, dataset, variants: int, batch_size: int, num_workers: int, seed: int = 0
) -> torch.Tensor:
    """Trunk features of every patch for ``variants`` augmentation variants: ``(N, K, F)``."""
    was_training = module.training
    module.eval()
    loader = DataLoader(_Variants(dataset, variants, seed), batch_size=max(1, batch_size // variants),
                        num_workers=num_workers, shuffle=False)
    chunks = []
    try:
        for images, problems in loader:  # (B, K, 3, S, S)
            bad = [p for p in problems if p]
            if bad:  # a cache with a hole would train on made-up features
                raise BadPatchError(f"{bad[0]} (while caching trunk features)")
            features = module.features(images.flatten(0, 1).to(module.device)).float().cpu()
            chunks.append(features.view(images.shape[0], variants, -1))
    finally:
        module.train(was_training)
    return torch.cat(chunks)


class FeatureCache(L.Callback):
    """Serve cached trunk features instead of images to the train/val loaders.

    Args:
        variants: augmentation variants cached per training patch (1 = no augmentation).
        seed: seed of the fixed augmentation variants.
    """

    def __init__(self, variants: int = 4, seed: int = 0):
        if variants < 1:
            raise ConfigError(f"feature_cache.variants must be >= 1, got {variants}")
        self.variants = variants
        self.seed = seed

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if getattr(pl_module, "needs_masks", False):
            raise ConfigError("the feature cache holds pooled trunk features; a segmentation model trains its "
                              "decoder on feature maps: drop callbacks=feature_cache")
        if not pl_module.head_only:
            raise ConfigError("the feature cache needs a frozen trunk (model.freeze=trunk)")
        if pl_module.hparams.get("drop_rate"):  # timm's dropout sits in forward_head, not here
            raise ConfigError("the feature cache trains the classifier alone: set model.drop_rate=0")
        dm = trainer.datamodule
        start = time.perf_counter()
        for split, variants in (("train", self.variants), ("val", 1)):
            dataset = dm.dataset(split)
            features = extract(pl_module, dataset, variants, dm.batch_size, dm.num_workers, self.seed)
            dm.serve(split, FeatureDataset(features, dataset, self.seed))
        log.info("feature cache: %d variant(s) of %d train + %d val patches in %.1f s",
                 self.variants, len(dm.dataset("train")), len(dm.dataset("val")),
                 time.perf_counter() - start)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        dataset = trainer.datamodule.served.get("train")
        if isinstance(dataset, FeatureDataset):
            dataset.set_epoch(trainer.current_epoch)
