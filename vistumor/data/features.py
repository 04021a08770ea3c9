"""Reuse frozen-trunk features across epochs.

With a frozen trunk (the paper's setup) a patch's features only change when its pixels do.
:class:`FeatureCache` computes them once, for a fixed number of augmentation ``variants``
per patch (variant 0: the patch as evaluated; variants 1..K-1: fixed random augmentations,
seeded by patch and variant), at the start of training; each epoch then draws one variant
per patch and trains the head on features alone, skipping slide reads, augmentation and
the trunk. Same model, same optimiser; epochs 2..N become nearly free.

Features are kept in float16 by default (``dtype``): half the memory of float32 (a ViT-g's
1,536 features x 4 variants x 100,000 patches: 1.2 GB instead of 2.5 GB), served to the head
as float32. float16 keeps 11 significant bits (relative error <= 2**-11 = 4.9e-4), far below
what moves a linear head; ``dtype: float32`` keeps them exact. The trunk pass runs under the
trainer's precision (bf16 autocast on a bf16 GPU, ``trainer.precision=auto``), ``batch_size``
images at a time (``callbacks.feature_cache.batch_size``; default the data batch size): a
frozen trunk under inference mode holds no activations for backward, so it takes several
times the training batch.
"""

from __future__ import annotations

import contextlib
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
            "features": self.features[index, self.variant[index]].float(),
            "label": int(self.labels[index]),
            "slide_id": slide_id, "x0": x0, "y0": y0,
        }


DTYPES = {"float16": torch.float16, "float32": torch.float32}


@torch.no_grad()
def extract(
    module, dataset, variants: int, batch_size: int, num_workers: int, seed: int = 0,
    dtype: torch.dtype = torch.float16, precision=contextlib.nullcontext,
) -> torch.Tensor:
    """Trunk features of every patch for ``variants`` augmentation variants: ``(N, K, F)`` in
    ``dtype``, ``batch_size`` images per trunk pass, each under the ``precision`` context."""
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
            with precision():
                features = module.features(images.flatten(0, 1).to(module.device))
            features = features.float().to(dtype).cpu()  # rounded once, from float32
            chunks.append(features.view(images.shape[0], variants, -1))
    finally:
        module.train(was_training)
    return torch.cat(chunks)


class FeatureCache(L.Callback):
    """Serve cached trunk features instead of images to the train/val loaders.

    Args:
        variants: augmentation variants cached per training patch (1 = no augmentation).
        seed: seed of the fixed augmentation variants.
        dtype: ``float16`` (half the memory) or ``float32``.
        batch_size: images per trunk pass while caching (None: the data batch size).
    """

    def __init__(self, variants: int = 4, seed: int = 0, dtype: str = "float16", batch_size: int | None = None):
        if variants < 1:
            raise ConfigError(f"feature_cache.variants must be >= 1, got {variants}")
        if dtype not in DTYPES:
            raise ConfigError(f"feature_cache.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"feature_cache.batch_size must be >= 1 or null, got {batch_size}")
        self.variants = variants
        self.seed = seed
        self.dtype = DTYPES[dtype]
        self.batch_size = batch_size

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if getattr(trainer.datamodule, "train_masks", False):  # the model learns masks: a segmenter
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
            features = extract(pl_module, dataset, variants, self.batch_size or dm.batch_size, dm.num_workers,
                               self.seed, self.dtype, trainer.precision_plugin.forward_context)
            dm.serve(split, FeatureDataset(features, dataset, self.seed))
        log.info("feature cache: %d variant(s) of %d train + %d val patches in %.1f s (%s, %.1f MB)",
                 self.variants, len(dm.dataset("train")), len(dm.dataset("val")),
                 time.perf_counter() - start, str(self.dtype).removeprefix("torch."),
                 sum(dm.served[s].features.nbytes for s in ("train", "val")) / 1e6)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        dataset = trainer.datamodule.served.get("train")
        if isinstance(dataset, FeatureDataset):
            dataset.set_epoch(trainer.current_epoch)
