"""Everything that decides one slide's tiles, nested as the config is (``tiling.grid``,
``tiling.tissue``, ``tiling.labels``), with one hash over all of it.

Runner settings (workers, shards, stage, checksum mode, ...) live in ``tiling.run`` and
never reach these classes, so they cannot change a hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from vistumor.tiling.tissue import TissueParams
from vistumor.wsi.annotations import DEFAULT_GROUPS
from vistumor.wsi.slide import check_mpp_override


@dataclass(frozen=True)
class GridParams:
    """Where patches are and how they are read (config ``tiling.grid``).

    Attributes:
        patch_size: patch edge in pixels at the read resolution (paper: 512).
        stride: distance between patches in the same pixels; None = ``patch_size``.
        level: pyramid level to read (used when ``target_mpp`` is None).
        target_mpp: read at this many microns per pixel instead of a fixed level.
        min_tissue_fraction: keep patches with at least this much tissue (paper: 0.6).
    """

    patch_size: int = 512
    stride: int | None = None
    level: int = 0
    target_mpp: float | None = None
    min_tissue_fraction: float = 0.6


@dataclass(frozen=True)
class LabelParams:
    """How annotations become patch labels (config ``tiling.labels`` + ``data.annotation_groups``).

    Attributes:
        min_tumor_fraction: tumor label from this much annotated tumor (paper: 0.05); normal
            when none; ambiguous (excluded) in between.
        annotation_groups: annotation group -> role (tumor / exclude / ignore).
    """

    min_tumor_fraction: float = 0.05
    annotation_groups: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_GROUPS))


@dataclass(frozen=True)
class TilingParams:
    """Per-slide tiling parameters.

    Attributes:
        mpp, mpp_override: microns per level-0 pixel for slides that do not record it, and
            whether it also replaces recorded values (``data.mpp``, ``data.mpp_override``).
    """

    grid: GridParams = field(default_factory=GridParams)
    tissue: TissueParams = field(default_factory=TissueParams)
    labels: LabelParams = field(default_factory=LabelParams)
    mpp: float | None = None
    mpp_override: str = "missing"

    def __post_init__(self):
        check_mpp_override(self.mpp_override)

    def as_dict(self) -> dict[str, Any]:
        """Plain nested values, floats as floats (YAML's ``32`` and ``32.0`` must hash alike)."""
        d = _floats_as_floats(self)
        d["labels"]["annotation_groups"] = dict(sorted(dict(self.labels.annotation_groups).items()))
        return d

    @property
    def hash(self) -> str:
        """Hash of what decides the tiles."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _floats_as_floats(obj) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            value = _floats_as_floats(value)
        elif "float" in str(f.type) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out
