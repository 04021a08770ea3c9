"""Shared behaviour of the entry scripts: one readable line and exit 2 on a user error
(:func:`vistumor.errors.user_error`, the error path of every command line)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from vistumor.errors import VisTumorError, user_error

log = logging.getLogger("vistumor")

# Offline-friendly defaults (NO_ALBUMENTATIONS_UPDATE) are set in vistumor/__init__.py, which every
# import of the package runs first.

#: exit status of a slide-by-slide task (tiling, infer) in which some slide failed
SLIDES_FAILED = 1

#: config keys that moved, old path -> new path (a stale override gets one line naming the new one)
MOVED = {
    "tiling.patch_size": "tiling.grid.patch_size",
    "tiling.stride": "tiling.grid.stride",
    "tiling.level": "tiling.grid.level",
    "tiling.target_mpp": "tiling.grid.target_mpp",
    "tiling.min_tissue_fraction": "tiling.grid.min_tissue_fraction",
    "tiling.min_tumor_fraction": "tiling.labels.min_tumor_fraction",
    "tiling.checksum": "tiling.run.checksum",
    "tiling.workers": "tiling.run.workers",
    "tiling.shard_index": "tiling.run.shard_index",
    "tiling.num_shards": "tiling.run.num_shards",
    "tiling.stage": "tiling.run.stage",
    "tiling.strict": "tiling.run.strict",
    "tiling.progress": "tiling.run.progress",
    "data.datamodule.image_size": "model.image_size",
    "data.datamodule.manifest_path": "data.datamodule.source.manifest_path",
    "data.datamodule.patch_sources": "data.datamodule.source.splits",
    "data.datamodule.verify_slides": "data.datamodule.source.verify_slides",
    "callbacks.cam.threshold": "callbacks.cam.cam_threshold",
    "scores.threshold": "scores.cam_threshold",
}


def moved_key(overrides: Sequence[str]) -> str | None:
    """The first override that names a moved key, as one line naming its new path."""
    for override in overrides:
        key = override.lstrip("~+").split("=", 1)[0]
        if key in MOVED:
            return f"{key} moved to {MOVED[key]}: use {override.replace(key, MOVED[key], 1)}"
    return None


def check_overrides(argv: Sequence[str] | None = None) -> None:
    """Exit 2 with one line when a command-line override names a moved key (before Hydra,
    whose own message would not say where the key went)."""
    problem = moved_key(list(sys.argv[1:] if argv is None else argv))
    if problem:
        sys.exit(user_error(problem))


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task(cfg)``; a :class:`VisTumorError` becomes one logged error line and exit status 2,
    a summary counting ``failed`` slides exit status 1 (after every other slide was run)."""
    try:
        result = task(cfg)
    except VisTumorError as err:
        sys.exit(user_error(err, log))
    log.info("result: %s", result)
    if isinstance(result, dict) and result.get("failed"):  # a slide-by-slide task: the others' results stand
        log.error("%d slide(s) failed (reasons in status.csv): exit status %d", result["failed"], SLIDES_FAILED)
        sys.exit(SLIDES_FAILED)
    return result
