"""PatchCamelyon (PCam): the official ``.h5`` files, read lazily through torchvision's ``PCAM``.

The release (https://github.com/basveeling/pcam) holds, per split ``train``/``valid``/``test``:

* ``camelyonpatch_level_2_split_<split>_x.h5``: dataset ``x``, ``N x 96 x 96 x 3`` ``uint8``;
* ``camelyonpatch_level_2_split_<split>_y.h5``: dataset ``y``, ``N x 1 x 1 x 1``, 1 where the
  centre 32 x 32 px of the patch holds tumor (``TUMOR``), else 0 (``NORMAL``);
* ``camelyonpatch_level_2_split_<split>_meta.csv`` (optional): ``coord_y, coord_x,
  tumor_patch, center_tumor_patch, wsi``: the CAMELYON16 slide of each patch and its place.

torchvision's :class:`~torchvision.datasets.PCAM` knows these names and its split vocabulary
(``val`` reads ``valid``), but looks only in ``<root>/pcam`` and reopens both files for every
item (``bench/bench_pcam.py``: 4.6 ms a patch in shuffled order; 0.7 ms through one handle).
:class:`PCamFiles` keeps torchvision's names and item contract, finds the files in
``<root>/pcam`` or ``<root>``, never downloads, checks them up front (one line naming the
file), and reads images through one handle per process. Only labels (N bytes) and the meta
table are read whole; images are read per item.

Every item carries its place (``slide_id, x0, y0``): with the meta file, the CAMELYON16 slide
name and ``(coord_x, coord_y)`` as the release gives them (the release does not say at which
level); without it the slide is unknown, and each patch is its own unit,
``unknown_<split>_<index>`` at ``(0, 0)``, so intervals over "slides" resample patches (narrower
than a slide bootstrap would be: patches of one slide are correlated). PCam has no masks:
items built with masks carry ``has_mask`` False.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import albumentations as A
import h5py
import numpy as np
import pandas as pd
from PIL import Image
from torchvision.datasets import PCAM

from vistumor.data.patches import PatchItems, PerProcess, resize_patch
from vistumor.errors import ConfigError
from vistumor.tiling.sampling import SPLITS

log = logging.getLogger(__name__)

#: PCam's patch edge in pixels
PATCH = 96
#: split names (torchvision's): the datamodule's train / val / test
#: meta-table columns the reader needs (of the release's coord_y, coord_x, tumor_patch, center_tumor_patch, wsi)
META_COLUMNS = ("coord_x", "coord_y", "wsi")
#: the dataset each file must hold
DATASET = {"images": "x", "targets": "y"}


class PCamFiles(PCAM):
    """torchvision's ``PCAM`` over one split's files in ``root/pcam`` or ``root``, checked up
    front, never downloaded, images read through one ``h5py`` handle per process.

    Items are torchvision's ``(PIL image, target)``; :meth:`image` gives the ``uint8`` array.

    Attributes:
        targets: the split's labels, ``TUMOR`` where the centre 32 x 32 px holds tumor.
    """

    def __init__(self, root: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ConfigError(f"PCam has splits {', '.join(SPLITS)}; got '{split}'", root)
        self.split = split
        self.folder = find_folder(Path(root), split)
        super().__init__(root, split=split, download=False)
        self._base_folder = self.folder
        self.targets = check_files(self.path("images"), self.path("targets"))
        self._pid: int | None = None
        self._file: h5py.File | None = None

    def _check_exists(self) -> bool:  # torchvision looks in root/pcam only
        return all((self.folder / name).is_file() for name, *_ in self._FILES[self._split].values())

    def path(self, kind: str) -> Path:
        """The ``images`` (``x``) or ``targets`` (``y``) file of the split."""
        return self._base_folder / self._FILES[self._split][kind][0]

    @property
    def meta_path(self) -> Path:
        """The split's optional ``*_meta.csv``, beside its ``x`` file."""
        return self.path("images").with_name(self.path("images").name.replace("_x.h5", "_meta.csv"))

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> np.ndarray:
        """Patch ``index`` as a ``(96, 96, 3)`` ``uint8`` array (one slice of ``x`` read)."""
        try:
            if self._pid != os.getpid():  # a forked loader worker opens its own handle
                self._file, self._pid = h5py.File(self.path("images"), "r"), os.getpid()
            return np.asarray(self._file[DATASET["images"]][int(index)])
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"cannot read patch {index} ({err})", self.path("images")) from err

    def __getitem__(self, index: int) -> tuple:
        image, target = Image.fromarray(self.image(index)), int(self.targets[index])
        if self.transform:
            image = self.transform(image)
        if self.target_transform:
            target = self.target_transform(target)
        return image, target

    def __getstate__(self) -> dict:  # pickled into spawned workers: no handle, no module
        state = {k: v for k, v in self.__dict__.items() if k not in ("h5py", "_file")}
        return {**state, "_pid": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, h5py=h5py, _file=None)


def find_folder(root: Path, split: str) -> Path:
    """``root/pcam`` (torchvision's layout) or ``root`` itself: where the split's files are."""
    names = [name for name, *_ in PCAM._FILES[split].values()]
    for folder in (root / "pcam", root):
        if (folder / names[0]).is_file():
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise ConfigError(f"not found: PCam split '{split}' needs it beside {names[0]}", folder / missing[0])
            return folder
    raise ConfigError(f"PCam split '{split}': {names[0]} not found here or in its pcam/ folder "
                      "(the official files, gunzipped; they are never downloaded)", root)


def labels_file(root: str | Path, split: str) -> Path:
    """The ``y`` file of a split (where it is found, else where torchvision would look)."""
    name = PCAM._FILES[split]["targets"][0]
    root = Path(root)
    return next((f / name for f in (root / "pcam", root) if (f / name).is_file()), root / "pcam" / name)


# -- checks up front ------------------------------------------------------------------------------


def check_files(x_path: Path, y_path: Path) -> np.ndarray:
    """The split's labels, after checking both files hold what the release holds: ``x``
    ``N x 96 x 96 x 3`` ``uint8`` and ``y`` ``N x 1 x 1 x 1`` of 0/1 (only ``y`` is read)."""
    with _open(x_path) as f:
        x = _dataset(f, "x", x_path)
        if x.ndim != 4 or x.shape[1:] != (PATCH, PATCH, 3):
            raise ConfigError(f"dataset 'x' has shape {x.shape}, expected (N, {PATCH}, {PATCH}, 3)", x_path)
        if x.dtype != np.uint8:
            raise ConfigError(f"dataset 'x' holds {x.dtype}, expected uint8", x_path)
        n = x.shape[0]
    with _open(y_path) as f:
        y = _dataset(f, "y", y_path)
        if y.ndim != 4 or y.shape[1:] != (1, 1, 1):
            raise ConfigError(f"dataset 'y' has shape {y.shape}, expected (N, 1, 1, 1)", y_path)
        if y.shape[0] != n:
            raise ConfigError(f"{y.shape[0]} labels for the {n} patches of {x_path.name}", y_path)
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
            raise ConfigError(f"dataset 'y' holds {y.dtype}, expected integer labels 0/1", y_path)
        labels = _read(y, y_path).reshape(-1).astype(np.int64)
    if n == 0:
        raise ConfigError("dataset 'x' holds no patches", x_path)
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise ConfigError(f"dataset 'y' holds labels {bad[:5]}, expected 0 (normal) or 1 (tumor)", y_path)
    return labels


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ConfigError(f"not a readable HDF5 file, truncated or damaged ({err})", path) from err


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        found = sorted(f.keys())
        raise ConfigError(f"no dataset '{name}' (found {found}); the release's x files hold 'x', "
                          "its y files 'y'", path)
    return node


def _read(dataset: h5py.Dataset, path: Path) -> np.ndarray:
    try:
        return dataset[()]
    except OSError as err:
        raise ConfigError(f"cannot read dataset '{dataset.name}' ({err})", path) from err


# -- where each patch comes from ------------------------------------------------------------------


def read_pcam_meta(path: Path, labels: np.ndarray) -> pd.DataFrame:
    """``slide_id, x0, y0`` per patch from the release's meta table, checked against the labels
    (its ``center_tumor_patch`` is the label, when the column is there)."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ConfigError(f"cannot read the meta table ({err})", path) from err
    missing = [c for c in META_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"meta table lacks columns {missing} (the release's: coord_y, coord_x, "
                          "tumor_patch, center_tumor_patch, wsi)", path)
    if len(table) != len(labels):
        raise ConfigError(f"meta table has {len(table)} rows for {len(labels)} patches", path)
    coords = table[["coord_x", "coord_y"]].apply(pd.to_numeric, errors="coerce")
    slides = table["wsi"].fillna("").astype(str).str.strip()
    broken = np.flatnonzero((coords.isna().any(axis=1) | (slides == "")).to_numpy())
    if len(broken):
        raise ConfigError(f"meta table row {broken[0]} lacks a slide (wsi) or integer coord_x/coord_y", path)
    if "center_tumor_patch" in table:
        _check_agrees(table["center_tumor_patch"], labels, path)
    return pd.DataFrame({"slide_id": slides.to_numpy(),
                         "x0": coords["coord_x"].to_numpy(np.int64), "y0": coords["coord_y"].to_numpy(np.int64)})


def _check_agrees(column: pd.Series, labels: np.ndarray, path: Path) -> None:
    centre = column.astype(str).str.strip().str.lower().map({"true": 1, "false": 0, "1": 1, "0": 0})
    differ = np.flatnonzero(centre.isna().to_numpy() | (centre.fillna(-1).to_numpy() != labels))
    if len(differ):
        i = differ[0]
        raise ConfigError(f"meta table's center_tumor_patch disagrees with the y labels at {len(differ)} "
                          f"row(s) (first: row {i}, {column.iloc[i]!r} vs label {labels[i]}): not this split's meta?",
                          path)


def unknown_places(split: str, n: int) -> pd.DataFrame:
    """Without a meta table: each patch its own unit ``unknown_<split>_<index>`` at ``(0, 0)``."""
    return pd.DataFrame({"slide_id": [f"unknown_{split}_{i:06d}" for i in range(n)],
                         "x0": np.zeros(n, np.int64), "y0": np.zeros(n, np.int64)})


def places(files: PCamFiles) -> pd.DataFrame:
    """``slide_id, x0, y0`` of every patch of a split: from its meta table, or unknown."""
    if files.meta_path.is_file():
        return read_pcam_meta(files.meta_path, files.targets)
    log.warning("%s not found: slide ids unknown (unknown_%s_<index>), intervals resample patches",
                files.meta_path, files.split)
    return unknown_places(files.split, len(files))


# -- the patch dataset ----------------------------------------------------------------------------


class PCamDataset(PatchItems):
    """PCam patches as items ``image, label, slide_id, x0, y0[, mask, has_mask]``.

    Args:
        files: the split's files.
        image_size: output edge in pixels (96 px patches are resized when it differs).
        transform: augmentation (as for every patch source).
        with_masks: items carry ``mask, has_mask``; PCam has no masks, so ``has_mask`` is False.
    """

    def __init__(self, files: PCamFiles, image_size: int, transform: A.Compose | None = None,
                 with_masks: bool = True):
        self.files = files
        self.labels = files.targets
        where = places(files)
        self.slide_id = where["slide_id"].to_numpy()
        self.x0, self.y0 = where["x0"].to_numpy(), where["y0"].to_numpy()
        self.image_size = int(image_size)
        self.with_masks = with_masks
        self.state = PerProcess(transform)

    def read(self, index: int) -> tuple[np.ndarray, None]:
        self.state.check()
        return resize_patch(self.files.image(index), self.image_size), None

    def describe(self, index: int) -> tuple[str, int, int]:
        return str(self.slide_id[index]), int(self.x0[index]), int(self.y0[index])
