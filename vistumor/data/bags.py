"""Slide bags on disk in the CLAM/TRIDENT layout, and the bag dataset and datamodule.

A bag is one ``<slide>.h5`` file, as CLAM's ``extract_features_fp.py`` and TRIDENT write it:

* dataset ``features``: ``N x D`` float32, one row per tissue patch (frozen-trunk embedding);
* dataset ``coords``: ``N x 2`` int64, each patch's level-0 top-left ``(x0, y0)``;
* attributes: ``patch_size_level0`` (patch edge in level-0 px), CLAM's ``patch_size`` and
  ``patch_level``, and, when VisTumor wrote it, ``mpp``, ``trunk``, ``grid_hash``, ``slide``.

Bags made elsewhere (``data.bags_dir``) are checked by :func:`read_bag` before training:
a missing dataset, a row count that differs between ``features`` and ``coords``, or the
wrong dimensions is one :class:`~vistumor.errors.ConfigError` line naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from vistumor.data.epochs import EpochSampler, unpack
from vistumor.errors import ConfigError, ManifestError
from vistumor.files import atomic_path
from vistumor.labels import lacking, name
from vistumor.tiling.sampling import SPLITS, split_slides

FEATURES, COORDS = "features", "coords"
FEATURE_DTYPE = np.float32  # CLAM and TRIDENT write float32; so do we


@dataclass
class Bag:
    """One slide's patch features, their level-0 corners and the file's attributes."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)


def write_bag(path: str | Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write ``path`` atomically (a present file is complete); returns it."""
    import h5py

    path = Path(path)
    check_shapes(path, np.asarray(features), np.asarray(coords))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(FEATURES, data=np.asarray(features, FEATURE_DTYPE))
        f.create_dataset(COORDS, data=np.asarray(coords, np.int64))
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = v
    return path


def read_bag(path: str | Path, dim: int | None = None) -> Bag:
    """A bag file, checked: both datasets, 2-D, equal row counts, ``coords`` of width 2,
    ``features`` of width ``dim`` when given. Float16 features come back as float32."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ConfigError("bag file not found", path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (FEATURES, COORDS) if k not in f]
            if missing:
                raise ConfigError(f"not a CLAM/TRIDENT bag: no dataset {missing[0]!r} (has {sorted(f)})", path)
            features, coords = f[FEATURES][()], f[COORDS][()]
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as err:
        raise ConfigError(f"not a readable HDF5 bag ({str(err).splitlines()[0]})", path) from err
    check_shapes(path, features, coords, dim)
    return Bag(np.asarray(features, np.float32), np.asarray(coords, np.int64), attrs)


def check_shapes(path: Path, features: np.ndarray, coords: np.ndarray, dim: int | None = None) -> None:
    """One line naming ``path`` when the datasets do not make a bag."""
    if features.ndim != 2:
        raise ConfigError(f"bag dataset 'features' must be N x D, got shape {features.shape}", path)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ConfigError(f"bag dataset 'coords' must be N x 2 (level-0 x0, y0), got shape {coords.shape}", path)
    if len(features) != len(coords):
        raise ConfigError(f"bag has {len(features)} feature rows but {len(coords)} coords", path)
    if not len(features):
        raise ConfigError("bag is empty (no tissue patch)", path)
    if dim is not None and features.shape[1] != dim:
        raise ConfigError(f"bag features are {features.shape[1]}-dimensional, the other bags {dim}", path)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


# -- the slides of a bag set -----------------------------------------------------------------


@dataclass(frozen=True)
class BagItem:
    """One slide of a bag set: its bag file, slide label, split and (optional) slide files."""

    slide_id: str
    bag: Path
    label: int
    split: str = "train"
    slide_path: Path | None = None
    annotation: Path | None = None


def slide_split(slide_ids: Sequence[str], labels: Sequence[int], fractions: dict[str, float],
                seed: int) -> dict[str, str]:
    """Slide -> split, stratified by label and seeded: tiling's by-slide split
    (:func:`vistumor.tiling.sampling.split_slides`: each class's slides shuffled, cut by
    ``fractions`` by largest remainder, at least one slide of each class in every split)."""
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ConfigError(f"data.mil.split: unknown split(s) {unknown}; known: {list(SPLITS)}")
    kinds = pd.Series({s: name(label) for s, label in zip(slide_ids, labels, strict=True)})
    try:
        return split_slides(kinds, {k: v for k, v in fractions.items() if v}, np.random.default_rng(seed))
    except ManifestError as err:
        raise ConfigError(f"data.mil.split: {str(err).split(': add slides')[0]}: add slides") from err


class BagDataset(Dataset):
    """Bags of one split, held in memory after the first read (bags are small: N x D floats)."""

    def __init__(self, items: Sequence[BagItem], dim: int | None = None):
        self.items = list(items)
        self.dim = dim
        self._cache: dict[int, Bag] = {}

    def __len__(self) -> int:
        return len(self.items)

    def bag(self, index: int) -> Bag:
        if index not in self._cache:
            self._cache[index] = read_bag(self.items[index].bag, self.dim)
        return self._cache[index]

    def __getitem__(self, key) -> dict[str, Any]:
        index, _ = unpack(key)
        item, bag = self.items[index], self.bag(index)
        return {"features": torch.from_numpy(bag.features), "coords": torch.from_numpy(bag.coords),
                "label": torch.tensor(item.label), "slide_id": item.slide_id}


def one_bag(batch: list[dict]) -> dict:
    """Collate: bags differ in length, so a batch is one bag."""
    return batch[0]


class BagDataModule(L.LightningDataModule):
    """Slide bags split by slide; training order a pure function of ``(seed, epoch)``
    (:class:`~vistumor.data.epochs.EpochSampler`), class-balanced when ``balanced``, so a
    resumed run sees the bags an uninterrupted one would."""

    def __init__(self, items: Sequence[BagItem], seed: int = 0, balanced: bool = True, num_workers: int = 0):
        super().__init__()
        self.items, self.seed, self.balanced, self.num_workers = list(items), int(seed), balanced, num_workers
        self.dim = read_bag(self.items[0].bag).features.shape[1] if self.items else None
        self.datasets = {s: BagDataset([i for i in self.items if i.split == s], self.dim) for s in SPLITS}

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in needed:
            labels = [i.label for i in self.datasets[split].items]
            missing = lacking(labels)
            if missing:
                raise ConfigError(f"MIL split '{split}' has {len(labels)} slide(s): {missing}")

    def _loader(self, split: str, sampler=None) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=1, sampler=sampler, shuffle=False,
                          num_workers=self.num_workers, collate_fn=one_bag)

    def train_dataloader(self) -> DataLoader:
        data = self.datasets["train"]
        weights = None
        if self.balanced:
            labels = np.array([i.label for i in data.items])
            weights = (1.0 / np.bincount(labels, minlength=2)[labels]).tolist()
        return self._loader("train", EpochSampler(data, self.seed, weights))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
