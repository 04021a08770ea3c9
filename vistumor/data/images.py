"""Patch images on disk (PCam-style collections): a folder per class or a CSV, with
optional tumor masks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
from PIL import Image

from vistumor.data.patches import PatchItems, PerProcess, resize_patch
from vistumor.errors import ConfigError
from vistumor.labels import CLASSES
from vistumor.wsi.slide import rgba_to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImagePatchDataset(PatchItems):
    """Patch images on disk (PCam-style collections), with optional masks.

    Args:
        samples: rows of ``path, label[, mask_path]``.
        image_size: output edge in pixels (images are resized when they differ).
        with_masks: load the masks (off for training, where only labels are used).
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        image_size: int,
        transform: A.Compose | None = None,
        with_masks: bool = True,
    ):
        self.paths = samples["path"].astype(str).to_numpy()
        self.labels = samples["label"].to_numpy(np.int64)
        masks = samples["mask_path"] if "mask_path" in samples else pd.Series([None] * len(samples))
        self.mask_paths = [m if isinstance(m, str) and m else None for m in masks]
        self.with_masks = with_masks and any(m is not None for m in self.mask_paths)
        self.image_size = int(image_size)
        self.state = PerProcess(transform)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        self.state.check()
        rgb = resize_patch(load_image(self.paths[index], "RGB"), self.image_size)
        mask_path = self.mask_paths[index]
        mask = None
        if mask_path is not None and self.with_masks:
            mask = load_image(mask_path, "L")
            mask = (cv2.resize(mask, (self.image_size,) * 2, interpolation=cv2.INTER_NEAREST) > 0)
            mask = mask.astype(np.uint8)
        return rgb, mask

    def describe(self, index: int) -> tuple[str, int, int]:
        return Path(self.paths[index]).stem, 0, 0


def load_image(path: str, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if mode == "RGB" and ("A" in image.getbands() or "transparency" in image.info):
                array = rgba_to_rgb(np.asarray(image.convert("RGBA")))  # on white, as slides
            else:
                array = np.asarray(image.convert(mode))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read image ({err})", path) from err
    return array


def image_samples(source: str | Path, classes: Mapping[str, int] | None = None) -> pd.DataFrame:
    """``path, label[, mask_path]`` rows from a folder ``<root>/<class>/*.png|jpg|tif`` or a CSV.

    CSV paths are relative to the CSV's folder unless absolute. Folder class names map to
    labels by ``classes`` (default ``normal``: 0, ``tumor``: 1); masks are looked up as
    ``<root>/masks/<class>/<stem>.png`` when that folder exists.
    """
    source = Path(source)
    classes = dict(CLASSES if classes is None else classes)
    if source.is_file():
        return _csv_samples(source)
    if not source.is_dir():
        raise ConfigError("patch folder or CSV not found", source)
    rows = []
    for name, label in classes.items():
        for path in sorted((source / name).glob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                mask = source / "masks" / name / f"{path.stem}.png"
                rows.append({
                    "path": str(path), "label": int(label),
                    "mask_path": str(mask) if mask.is_file() else None,
                })
    if not rows:
        raise ConfigError(f"no images in class folders {sorted(classes)} ({IMAGE_SUFFIXES})", source)
    return pd.DataFrame(rows)


def _csv_samples(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ConfigError(f"patch CSV lacks columns {sorted(missing)} (needs path,label[,mask_path])", path)

    def resolve(p):
        if not isinstance(p, str) or not p:
            return None
        return str(p if Path(p).is_absolute() else path.parent / p)

    table["path"] = table["path"].map(resolve)
    if "mask_path" in table:
        table["mask_path"] = table["mask_path"].map(resolve)
    bad = {v.item() if hasattr(v, "item") else v for v in table["label"].unique()} - set(CLASSES.values())
    if bad:
        found = sorted(bad, key=str)
        known = " or ".join(f"{v} ({k})" for k, v in CLASSES.items())
        raise ConfigError(f"patch CSV labels must be {known}, found {found}", path)
    return table


# -- checks up front ----------------------------------------------------------------------------


def check_images(samples: pd.DataFrame, where: str | Path) -> None:
    """Refuse a collection with a damaged file before training starts (not hours into it).

    Every image and mask is checked by its header and its size: the header must parse, and
    the file must hold what the header promises (PNG: every chunk up to ``IEND`` with its
    CRC; JPEG: the end-of-image marker; TIFF: every strip or tile inside the file; other
    formats: a full decode).
    """
    files = [*samples["path"], *(samples["mask_path"] if "mask_path" in samples else [])]
    damaged = []
    for path in files:
        if isinstance(path, str) and path:
            problem = image_problem(path)
            if problem:
                damaged.append((path, problem))
    if damaged:
        path, problem = damaged[0]
        more = f" (and {len(damaged) - 1} more damaged file(s) under {where})" if len(damaged) > 1 else ""
        raise ConfigError(f"damaged image: {problem}{more}", path)


def image_problem(path: str | Path) -> str | None:
    """Why an image file cannot be read in full, or None when it can."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            kind = image.format
            if kind == "TIFF":
                return _tiff_problem(image, path.stat().st_size)
            if kind in ("PNG", "JPEG"):
                image.verify()  # PNG: chunk CRCs to the end; JPEG: the header
            else:
                image.load()
        if kind == "JPEG" and not _ends_with_eoi(path):
            return "truncated JPEG (no end-of-image marker)"
    except (OSError, SyntaxError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _ends_with_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        tail = f.read().rstrip(b"\0")
    return tail.endswith(b"\xff\xd9")


def _tiff_problem(image: Image.Image, size: int) -> str | None:
    tags = image.tag_v2
    offsets = tags.get(273) or tags.get(324)  # StripOffsets / TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts / TileByteCounts
    if offsets is None or counts is None:
        return "TIFF without strip or tile offsets"
    end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
    return f"truncated TIFF ({size} bytes, its data reach byte {end})" if end > size else None
