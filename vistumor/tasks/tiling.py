"""The tiling task: dataset -> per-slide tiles -> status table + manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vistumor import catalog, synthetic
from vistumor.errors import ConfigError
from vistumor.sampling import SamplingParams, SplitParams
from vistumor.slide_jobs import TilingParams, run_slides
from vistumor.tasks.config import build, plain
from vistumor.tiling import manifest_spec, merge, write_status_table
from vistumor.tissue import TissueParams

log = logging.getLogger(__name__)

_TILING_RUN_KEYS = {
    "name", "out_dir", "slides_dir", "sampling", "split", "seed", "workers", "shard_index",
    "num_shards", "stage", "strict", "progress",
}


# -- data -----------------------------------------------------------------------------------


def ensure_dataset(data: DictConfig) -> Path:
    """The dataset root; the embedded synthetic dataset is generated when missing."""
    root = Path(data.root)
    generate = data.get("generate")
    if generate:
        synthetic.generate_dataset(root, **plain(generate))
    return root


def slide_records(data: DictConfig) -> list[catalog.SlideRecord]:
    root = ensure_dataset(data)
    layout = plain(data.layout)
    return catalog.find_slides(root, layout["slides"], layout.get("annotation_dir"))


# -- tiling ---------------------------------------------------------------------------------


def tiling_params(cfg: DictConfig) -> TilingParams:
    """Per-slide tiling parameters from ``cfg.tiling`` and the dataset's ``mpp`` and groups."""
    values = {k: v for k, v in plain(cfg.tiling).items() if k not in _TILING_RUN_KEYS}
    values["tissue"] = build(TissueParams, values.get("tissue", {}), "tiling.tissue")
    values["mpp"] = cfg.data.get("mpp")
    values["annotation_groups"] = plain(cfg.data.annotation_groups)
    return build(TilingParams, values, "tiling")


def slide_results_dir(cfg: DictConfig, params: TilingParams) -> Path:
    """Where this config's per-slide results live: shared by all configs with equal parameters."""
    return Path(cfg.tiling.slides_dir) / params.hash


def sampling_and_split(cfg: DictConfig) -> tuple[SamplingParams, SplitParams]:
    return (build(SamplingParams, plain(cfg.tiling.sampling), "tiling.sampling"),
            build(SplitParams, plain(cfg.tiling.split), "tiling.split"))


def spec(cfg: DictConfig) -> dict:
    """The manifest spec this config asks for (tiling parameters, sampling, split, seed)."""
    return manifest_spec(tiling_params(cfg), *sampling_and_split(cfg), cfg.tiling.seed)


def tile(cfg: DictConfig) -> dict:
    """Tile the dataset's slides (this shard's) and, unless sharded, build the manifest.

    Returns:
        ``out_dir``, counts of done / skipped / failed slides, and ``manifest`` when written.
    """
    t = cfg.tiling
    if t.stage not in ("all", "tile", "merge"):
        raise ConfigError(f"tiling.stage must be all, tile or merge, got {t.stage!r}")
    params = tiling_params(cfg)
    sampling, split = sampling_and_split(cfg)
    records = slide_records(cfg.data)
    mine = catalog.shard(records, t.shard_index, t.num_shards)
    out_dir = Path(t.out_dir)
    store_dir = slide_results_dir(cfg, params)
    summary: dict[str, Any] = {"out_dir": str(out_dir), "slides_dir": str(store_dir), "slides": len(mine)}
    statuses = None
    if t.stage in ("all", "tile"):
        log.info("tiling %d slide(s) into %s with %d worker(s)", len(mine), store_dir, t.workers)
        statuses = run_slides(mine, params, store_dir, workers=t.workers, progress=t.progress)
        for name in ("done", "skipped", "failed"):
            summary[name] = sum(s["status"] == name for s in statuses)
        name = "status.csv" if t.num_shards == 1 else f"status.shard{t.shard_index}of{t.num_shards}.csv"
        summary["status_csv"] = str(write_status_table(out_dir, statuses, name))
    if t.stage == "merge" or (t.stage == "all" and t.num_shards == 1):
        summary["manifest"] = str(
            merge(records, params, sampling, split, t.seed, out_dir, statuses, t.strict, store_dir)
        )
        summary["status_csv"] = str(out_dir / "status.csv")
    elif t.num_shards > 1:
        log.info("shard %d/%d done: run tiling.stage=merge once every shard has finished",
                 t.shard_index, t.num_shards)
    return summary
