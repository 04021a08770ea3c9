"""Where a datamodule's patches come from: a tiling manifest, folders of patch images, or
the PatchCamelyon files.

A source turns a split name into a dataset; the datamodule adds loaders around it. Both
kinds are built from config with ``_target_`` (``data.datamodule.source``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import albumentations as A
from torch.utils.data import Dataset

from vistumor.data.images import ImagePatchDataset, check_images, image_samples
from vistumor.data.patches import PatchDataset
from vistumor.data.pcam import PCamDataset, PCamFiles, labels_file
from vistumor.errors import ConfigError
from vistumor.tiling.manifest import Manifest, load_manifest


class PatchSource:
    """A split name -> a patch dataset of ``image, label, slide_id, x0, y0[, mask, has_mask]``."""

    #: the manifest the patches come from (recorded in checkpoints), when there is one
    manifest_path: str | None = None
    #: whether the source can give tumor masks at all (a segmentation model learns from them)
    has_masks: bool = True

    def dataset(self, split: str, image_size: int, transform: A.Compose | None, with_masks: bool) -> Dataset:
        raise NotImplementedError

    def where(self, split: str) -> str:
        """What a message about this split names (a file or folder)."""
        raise NotImplementedError


class ManifestSource(PatchSource):
    """Patches listed in a tiling manifest, read from their slides.

    Args:
        manifest_path: ``manifest.csv`` of a tiling run.
        spec: what the manifest must have been made with (tiling, sampling, split, seed);
            None = whatever it was made with.
        verify_slides: check every slide and annotation exists unchanged since tiling.
        annotation_groups: as in tiling, for reading masks (patches are read by level).
    """

    def __init__(
        self, manifest_path: str, spec: Mapping[str, Any] | None = None, verify_slides: bool = True,
        annotation_groups: Mapping[str, str] | None = None,
    ):
        self.manifest_path = str(manifest_path)
        self.spec = spec
        self.verify = verify_slides
        self.annotation_groups = annotation_groups
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        """The manifest, loaded and checked once."""
        if self._manifest is None:
            manifest = load_manifest(self.manifest_path)
            if self.spec is not None:
                manifest.check_spec(self.spec)
            if self.verify:
                manifest.verify_slides()
            self._manifest = manifest
        return self._manifest

    def dataset(self, split: str, image_size: int, transform: A.Compose | None, with_masks: bool) -> Dataset:
        manifest = self.manifest
        return PatchDataset(manifest.split(split), image_size, transform, manifest.annotations,
                            self.annotation_groups, with_masks=with_masks)

    def where(self, split: str) -> str:
        return self.manifest_path


class ImageFolderSource(PatchSource):
    """Patch images per split: a folder ``<dir>/<class>/*.png`` or a CSV ``path,label[,mask_path]``.

    Args:
        splits: split name -> folder or CSV.
        classes: folder name -> label (default ``normal``: 0, ``tumor``: 1).
    """

    def __init__(self, splits: Mapping[str, str], classes: Mapping[str, int] | None = None):
        self.splits = dict(splits)
        self.classes = dict(classes) if classes else None

    def dataset(self, split: str, image_size: int, transform: A.Compose | None, with_masks: bool) -> Dataset:
        samples = image_samples(self.where(split), self.classes)
        check_images(samples, self.where(split))  # every file's header and size, up front
        return ImagePatchDataset(samples, image_size, transform, with_masks)

    def where(self, split: str) -> str:
        if split not in self.splits:
            raise ConfigError(f"data.datamodule.source.splits has no '{split}' entry")
        return str(self.splits[split])


class PCamSource(PatchSource):
    """The official PatchCamelyon files (:mod:`vistumor.data.pcam`) in ``root`` or ``root/pcam``:
    split ``train``, ``val`` (the ``valid`` files) or ``test``; no slides, no masks.

    Args:
        root: the folder holding ``camelyonpatch_level_2_split_*_{x,y}.h5`` (and ``*_meta.csv``).
    """

    has_masks = False

    def __init__(self, root: str):
        self.root = str(root)

    def dataset(self, split: str, image_size: int, transform: A.Compose | None, with_masks: bool) -> Dataset:
        return PCamDataset(PCamFiles(self.root, split), image_size, transform, with_masks)

    def where(self, split: str) -> str:
        """The split's labels file (the one a class check is about)."""
        return str(labels_file(self.root, split))
