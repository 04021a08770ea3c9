"""Whole-slide inference settings, nested as ``conf/infer.yaml`` (each group a dataclass)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from vistumor.errors import ConfigError
from vistumor.wsi.slide import check_mpp_override

SCORES = ("max", "topk")
CAM_NORMALIZE = ("slide", "run", "none")


@dataclass(frozen=True)
class GridSettings:
    """stride: patch spacing in px at the patch's resolution (None: half a patch);
    min_tissue_fraction: None = as the checkpoint was trained."""

    stride: int | None = None
    min_tissue_fraction: float | None = None


@dataclass(frozen=True)
class ReadSettings:
    """level: ``auto`` (coarsest level at least as fine as the model input) or a level;
    block: patches per block edge read in one region; threads: decoding threads."""

    level: int | str = "auto"
    block: int = 16
    threads: int = 2


@dataclass(frozen=True)
class CamSettings:
    """px_per_cell: canvas px per CAM cell; normalize: ``slide`` (each slide's maximum),
    ``run`` (one scale for every slide of the run) or ``none`` (raw values); method: the
    canvas's map (``gradcam++``, ``gradcam``, ``attention``, ``rollout``)."""

    enabled: bool = True
    target_layer: str | None = None
    px_per_cell: int = 4
    normalize: str = "slide"
    method: str = "gradcam++"


LESION_SOURCES = ("heatmap", "mask")


@dataclass(frozen=True)
class LesionSettings:
    """threshold: of the map lesions come from; source: ``heatmap`` (patch probabilities) or
    ``mask`` (a segmentation model's stitched mask; other models keep the heatmap)."""

    threshold: float = 0.5
    min_cells: int = 1
    source: str = "heatmap"


@dataclass(frozen=True)
class DetectionSettings:
    """Non-maximum suppression: points at least ``radius_um`` apart (``radius_px`` when the
    slide has no µm/px), down to ``min_prob``."""

    radius_um: float = 150.0
    radius_px: float = 600.0
    min_prob: float = 0.1


@dataclass(frozen=True)
class ScoreSettings:
    method: str = "max"
    k: int = 10


@dataclass(frozen=True)
class InferParams:
    """Everything that decides a slide's outputs (runner settings live in ``infer.run``)."""

    grid: GridSettings = field(default_factory=GridSettings)
    read: ReadSettings = field(default_factory=ReadSettings)
    cam: CamSettings = field(default_factory=CamSettings)
    lesions: LesionSettings = field(default_factory=LesionSettings)
    detections: DetectionSettings = field(default_factory=DetectionSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    batch_size: int = 64
    precision: str = "auto"
    mpp: float | None = None
    mpp_override: str = "missing"

    def __post_init__(self):
        if self.score.method not in SCORES:
            raise ConfigError(f"infer.score.method must be one of {SCORES}, got {self.score.method!r}")
        if self.cam.normalize not in CAM_NORMALIZE:
            raise ConfigError(f"infer.cam.normalize must be one of {CAM_NORMALIZE}, "
                              f"got {self.cam.normalize!r}")
        if self.lesions.source not in LESION_SOURCES:
            raise ConfigError(f"infer.lesions.source must be one of {LESION_SOURCES}, got {self.lesions.source!r}")
        check_mpp_override(self.mpp_override)
        if self.read.level != "auto" and not isinstance(self.read.level, int):
            raise ConfigError(f"infer.read.level must be auto or a level number, got {self.read.level!r}")

    @property
    def hash(self) -> str:
        """What a slide's outputs depend on (threads and batch size do not change them)."""
        values = asdict(self)
        values["read"].pop("threads")
        values.pop("batch_size")
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
