"""Whole-slide inference settings, nested as ``conf/infer.yaml`` (each group a dataclass).

Every value is checked when the settings are built, before a checkpoint or a slide is read:
a bad one is one :class:`~vistumor.errors.ConfigError` line naming the key and the value
(``infer.lesions.threshold must be a number in (0, 1], got nan``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from vistumor.errors import ConfigError
from vistumor.wsi.slide import check_mpp_override

SCORES = ("max", "topk")
CAM_NORMALIZE = ("slide", "run", "none")
PRECISIONS = ("auto", "bf16", "32")


def _refuse(key: str, expected: str, value: Any) -> None:
    raise ConfigError(f"infer.{key} must be {expected}, got {value!r}")


def check_whole(key: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an integer ``>= minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _refuse(key, f"a whole number >= {minimum}" + (" or null" if optional else ""), value)


def check_number(key: str, value: Any, low: float = 0.0, high: float = math.inf, low_open: bool = True,
                 optional: bool = False) -> None:
    """``value`` is a finite number above ``low`` (or from ``low`` unless ``low_open``), at most ``high``."""
    if optional and value is None:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if number and (value > low if low_open else value >= low) and value <= high:
        return
    if math.isfinite(high):
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    else:
        expected = f"a number {'>' if low_open else '>='} {low:g}"
    _refuse(key, expected + (" or null" if optional else ""), value)


def check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _refuse(key, f"one of {choices}", value)


def check_flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _refuse(key, "true or false", value)


@dataclass(frozen=True)
class GridSettings:
    """stride: patch spacing in px at the patch's resolution (None: half a patch);
    min_tissue_fraction: None = as the checkpoint was trained."""

    stride: int | None = None
    min_tissue_fraction: float | None = None

    def __post_init__(self):
        check_whole("grid.stride", self.stride, optional=True)
        check_number("grid.min_tissue_fraction", self.min_tissue_fraction, 0.0, 1.0, low_open=False, optional=True)


@dataclass(frozen=True)
class ReadSettings:
    """level: ``auto`` (coarsest level at least as fine as the model input) or a level;
    block: patches per block edge read in one region; threads: decoding threads;
    upsample: read a slide scanned coarser than the model's scale at level 0, upsampled
    (refused by default)."""

    level: int | str = "auto"
    block: int = 16
    threads: int = 2
    upsample: bool = False

    def __post_init__(self):
        if self.level != "auto" and (isinstance(self.level, bool) or not isinstance(self.level, int)
                                     or self.level < 0):
            _refuse("read.level", "auto or a level number >= 0", self.level)
        check_whole("read.block", self.block)
        check_whole("read.threads", self.threads)
        check_flag("read.upsample", self.upsample)


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

    def __post_init__(self):
        check_flag("cam.enabled", self.enabled)
        check_whole("cam.px_per_cell", self.px_per_cell)
        check_choice("cam.normalize", self.normalize, CAM_NORMALIZE)


LESION_SOURCES = ("heatmap", "mask")


@dataclass(frozen=True)
class LesionSettings:
    """threshold: of the map lesions come from; source: ``heatmap`` (patch probabilities) or
    ``mask`` (a segmentation model's stitched mask; other models keep the heatmap)."""

    threshold: float = 0.5
    min_cells: int = 1
    source: str = "heatmap"

    def __post_init__(self):
        check_number("lesions.threshold", self.threshold, 0.0, 1.0)
        check_whole("lesions.min_cells", self.min_cells)
        check_choice("lesions.source", self.source, LESION_SOURCES)


@dataclass(frozen=True)
class DetectionSettings:
    """Non-maximum suppression: points at least ``radius_um`` apart (``radius_px`` when the
    slide has no µm/px), down to ``min_prob``."""

    radius_um: float = 150.0
    radius_px: float = 600.0
    min_prob: float = 0.1

    def __post_init__(self):
        check_number("detections.radius_um", self.radius_um)
        check_number("detections.radius_px", self.radius_px)
        check_number("detections.min_prob", self.min_prob, 0.0, 1.0, low_open=False)


@dataclass(frozen=True)
class ScoreSettings:
    method: str = "max"
    k: int = 10

    def __post_init__(self):
        check_choice("score.method", self.method, SCORES)
        check_whole("score.k", self.k)


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
        check_whole("batch_size", self.batch_size)
        check_choice("precision", self.precision, PRECISIONS)
        check_mpp_override(self.mpp_override)

    @property
    def hash(self) -> str:
        """What a slide's outputs depend on (threads and batch size do not change them)."""
        values = asdict(self)
        values["read"].pop("threads")
        values.pop("batch_size")
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
