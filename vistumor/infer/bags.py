"""Bags: every tissue patch of a slide through a frozen trunk, in one read pass, to ``<slide>.h5``.

The grid and the reader are whole-slide inference's (:func:`~vistumor.infer.geometry.plan_grid`,
:class:`~vistumor.infer.reader.PatchStream`): a bag holds exactly the patches, read at exactly
the level and resized exactly as, a MIL checkpoint's whole-slide inference later embeds them.
Bags are kept under ``<cache>/<trunk>-<grid hash>/`` (the hash covers the trunk config, the
tiling, the stride and the input size), so another trunk or grid never reuses a stale bag,
and each slide is skipped on a rerun when its bag exists with the same hash and slide
checksum: the shared per-slide runner (:mod:`vistumor.runner`: locks, ``status/<slide>.json``
done / failed: why, leftovers of killed runs); ``status.csv`` lists them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vistumor.data.bags import FEATURE_DTYPE, read_bag, write_bag
from vistumor.errors import ConfigError, VisTumorError
from vistumor.files import atomic_path, fingerprint
from vistumor.infer.geometry import SlideGrid, plan_grid
from vistumor.infer.reader import PatchStream
from vistumor.infer.slide_run import grid_pixels
from vistumor.runner import RunSettings, SlideJob, counts, counts_line, run_slides
from vistumor.wsi.slide import Slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BagSettings:
    """How bags are made (``data.mil.extract``); only ``stride`` changes what a bag holds.

    Attributes:
        stride: patch spacing at the patch's resolution; None = half a patch (as infer.py).
        batch_size, block, threads: the reader's batch, block edge and decoding threads.
        device: where the trunk runs (auto | cpu | cuda[:N] | mps).
    """

    stride: int | None = None
    batch_size: int = 64
    block: int = 16
    threads: int = 2
    device: str = "auto"


class TrunkFeatures:
    """A frozen trunk as a patch embedder: ``uint8`` patches ``(n, h, w, 3)`` at any read
    size -> features ``(n, D)`` float32. Built from a model config (``model.trunk``: any
    ``conf/model`` entry whose target has ``features(images)`` and ``input_size``). Built under
    a fixed seed: a trunk without pretrained weights embeds at inference as it did for the bags."""

    def __init__(self, trunk_cfg: Mapping[str, Any], device: torch.device | str = "cpu"):
        from hydra.utils import instantiate

        self.config = dict(trunk_cfg)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # a random-init trunk (tests) is the same every time
            torch.manual_seed(0)
            self.model = instantiate(self.config, _convert_="all").to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = str(self.config.get("backbone", type(self.model).__name__))
        self.input_size = int(self.model.input_size)
        self.weights = str(getattr(self.model, "weights_source", ""))

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.input_size:  # as whole-slide inference resizes (engine.ModelScorer)
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return self.model.features(x).float().cpu().numpy().astype(FEATURE_DTYPE)


def grid_hash(trunk_cfg: Mapping[str, Any], tiling: Mapping[str, Any], stride: int | None, input_size: int) -> str:
    """What a bag's contents depend on, hashed: trunk config, tiling, stride, input size."""
    keys = {"trunk": {k: v for k, v in trunk_cfg.items() if k not in ("optimizer", "scheduler", "threshold")},
            "grid": tiling.get("grid"), "tissue": tiling.get("tissue"), "trained_mpp": tiling.get("trained_mpp"),
            "stride": stride, "input_size": input_size}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def bag_folder(cache: str | Path, trunk: TrunkFeatures, tiling: Mapping[str, Any], stride: int | None) -> Path:
    """``<cache>/<trunk>-<grid hash>``: one folder per trunk and grid."""
    return Path(cache) / f"{trunk.name}-{grid_hash(trunk.config, tiling, stride, trunk.input_size)}"


def bag_attrs(grid: SlideGrid, tiling: Mapping[str, Any], trunk: TrunkFeatures, slide_id: str,
              digest: str, checksum: str | None, stride: int | None) -> dict[str, Any]:
    """A bag's attributes: CLAM's ``patch_size``/``patch_level``, level-0 sizes, scale, trunk, hash."""
    g = tiling.get("grid") or {}
    return {"patch_size_level0": float(grid.size0), "patch_size": int(g.get("patch_size", round(grid.size0))),
            "patch_level": int(g.get("level", 0)), "stride_level0": float(grid.stride0),
            "mpp": grid.mpp, "read_level": grid.read_level, "trunk": trunk.name, "trunk_weights": trunk.weights,
            "input_size": trunk.input_size, "grid_hash": digest, "slide": slide_id, "slide_checksum": checksum,
            "feature_dtype": np.dtype(FEATURE_DTYPE).name, "stride": -1 if stride is None else int(stride),
            "tiling": json.dumps(dict(tiling), sort_keys=True, default=str)}


def extract_bag(slide_path: str | Path, out: str | Path, trunk: TrunkFeatures, tiling: Mapping[str, Any],
                settings: BagSettings = BagSettings(), slide_id: str | None = None, mpp: float | None = None,
                mpp_override: str = "missing", checksum: str | None = None) -> dict[str, Any]:
    """One slide's bag at ``out`` (atomically); returns its facts (patches, decode ratio, time)."""
    slide_path = Path(slide_path)
    start = time.perf_counter()
    with Slide(slide_path, mpp, mpp_override) as slide:
        grid = plan_grid(slide, tiling, trunk.input_size, settings.stride, None, "auto")
    if not len(grid):
        raise VisTumorError("no tissue patch on the slide: no bag", slide_path)
    features = np.empty((len(grid), 0), FEATURE_DTYPE)
    stream = PatchStream(slide_path, grid, settings.batch_size, settings.block, settings.threads)
    for indices, patches in stream:
        batch = trunk(patches)
        if features.shape[1] != batch.shape[1]:
            features = np.empty((len(grid), batch.shape[1]), FEATURE_DTYPE)
        features[indices] = batch
    coords = np.stack([np.round(grid.x0), np.round(grid.y0)], 1).astype(np.int64)
    digest = grid_hash(trunk.config, tiling, settings.stride, trunk.input_size)
    write_bag(out, features, coords, bag_attrs(grid, tiling, trunk, slide_id or slide_path.stem, digest, checksum,
                                               settings.stride))
    seconds = time.perf_counter() - start
    decoded, covered = stream.decoded, grid_pixels(grid)
    return {"patches": len(grid), "dim": int(features.shape[1]), "decoded_px": decoded, "grid_px": covered,
            "decode_ratio": round(decoded / covered, 4) if covered else None, "seconds": round(seconds, 3),
            "patches_per_s": round(len(grid) / seconds, 2) if seconds else None}


@dataclass(frozen=True)
class BagSlide:
    """A slide to make a bag of."""

    slide_id: str
    path: Path


class BagJob(SlideJob[BagSlide]):
    """One slide's bag, run by the shared per-slide runner (:mod:`vistumor.runner`): current
    when its record holds this grid hash and the slide's checksum and the ``.h5`` exists."""

    desc = "bags"

    def __init__(self, folder: Path, trunk: TrunkFeatures, tiling: Mapping[str, Any], settings: BagSettings,
                 mpp: float | None = None, mpp_override: str = "missing"):
        self.folder, self.trunk, self.tiling, self.settings = folder, trunk, tiling, settings
        self.mpp, self.mpp_override = mpp, mpp_override
        self.digest = grid_hash(trunk.config, tiling, settings.stride, trunk.input_size)

    def key(self, item: BagSlide) -> dict[str, Any]:
        return {"grid_hash": self.digest, "slide_checksum": fingerprint(item.path, "fast")}

    def run(self, item: BagSlide) -> dict[str, Any]:
        out = self.outputs(item)[0]
        return {"bag": str(out), **extract_bag(item.path, out, self.trunk, self.tiling, self.settings, item.slide_id,
                                               self.mpp, self.mpp_override, self.key(item)["slide_checksum"])}

    def outputs(self, item: BagSlide) -> list[Path]:
        return [self.folder / f"{item.slide_id}.h5"]

    def current(self, previous: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
        """The bag itself records what made it (its attributes), so a done bag is current when
        they match ``key``, whatever else the record holds."""
        try:
            attrs = read_bag(previous.get("bag") or "").attrs
        except ConfigError:
            return False
        return all(attrs.get(k) == v for k, v in key.items())


def extract_bags(slides: Sequence[tuple[str, Path]], folder: str | Path, trunk: TrunkFeatures,
                 tiling: Mapping[str, Any], settings: BagSettings = BagSettings(), mpp: float | None = None,
                 mpp_override: str = "missing", progress: bool = False) -> list[dict[str, Any]]:
    """Every slide's bag under ``folder`` (``<slide>.h5``) through the shared runner: a slide
    whose bag exists with this grid hash and slide checksum is skipped; a slide that fails
    is recorded with its reason and the others go on. Writes ``status.csv``; returns the records."""
    folder = Path(folder)
    items = [BagSlide(slide_id, Path(path)) for slide_id, path in slides]
    records = run_slides(items, BagJob(folder, trunk, tiling, settings, mpp, mpp_override),
                         RunSettings(progress=progress), folder)
    with atomic_path(folder / "status.csv") as tmp:
        pd.DataFrame(records).drop(columns=["dim"], errors="ignore").to_csv(tmp, index=False)
    log.info("bags in %s: %s", folder, counts_line(counts(records)))
    return records


def settings_of(values: Mapping[str, Any] | None) -> BagSettings:
    from vistumor.config import build

    return build(BagSettings, dict(values or {}), "data.mil.extract")
