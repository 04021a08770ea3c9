"""The tiling task: dataset -> per-slide tiles -> status table + manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vistumor import synthetic
from vistumor.config import build, build_parts, plain
from vistumor.errors import ConfigError
from vistumor.runner import RunSettings, counts, counts_line
from vistumor.tiling import catalog
from vistumor.tiling.jobs import TILE_STAGE, TilingChecks, tile_slides
from vistumor.tiling.merge import manifest_spec, merge_manifest, write_status_table
from vistumor.tiling.params import GridParams, LabelParams, TilingParams
from vistumor.tiling.sampling import SamplingParams, SplitParams
from vistumor.tiling.tissue import TissueParams

log = logging.getLogger(__name__)

#: the keys of ``tiling``: where results go, each concern's group, and the seed
KEYS = ("name", "out_dir", "slides_dir", "grid", "tissue", "labels", "sampling", "split", "seed", "run")


# -- data -----------------------------------------------------------------------------------


def ensure_dataset(data: DictConfig) -> Path:
    """The dataset root; the embedded synthetic dataset is generated when missing."""
    if "layout" not in data:  # data=pcam, patch_folder: patches, not slides
        raise ConfigError(f"data={data.get('name')} holds patches, not slides: nothing to tile or to run "
                          f"whole-slide inference on (train on it directly: python train.py data={data.get('name')})")
    root = Path(data.root)
    generate = data.get("generate")
    if generate:
        synthetic.generate_dataset(root, **plain(generate))
    return root


def slide_records(data: DictConfig) -> list[catalog.SlideRecord]:
    root = ensure_dataset(data)
    layout = plain(data.layout)
    return catalog.find_slides(root, layout["slides"], layout.get("annotation_dir"))


# -- parameters -----------------------------------------------------------------------------


def tiling_params(cfg: DictConfig) -> TilingParams:
    """Per-slide tiling parameters: ``tiling.grid``, ``.tissue``, ``.labels`` and the
    dataset's ``mpp`` and annotation groups."""
    t = cfg.tiling
    unknown = sorted(set(t) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in tiling; known: {list(KEYS)}")
    labels = {**plain(t.labels), "annotation_groups": plain(cfg.data.annotation_groups)}
    return TilingParams(
        grid=build(GridParams, plain(t.grid), "tiling.grid"),
        tissue=build(TissueParams, plain(t.tissue), "tiling.tissue"),
        labels=build(LabelParams, labels, "tiling.labels"),
        mpp=cfg.data.get("mpp"),
        mpp_override=cfg.data.get("mpp_override", "missing"),
    )


def slide_results_dir(cfg: DictConfig, params: TilingParams) -> Path:
    """Where this config's per-slide results live: shared by all configs with equal parameters."""
    return Path(cfg.tiling.slides_dir) / params.hash


def sampling_and_split(cfg: DictConfig) -> tuple[SamplingParams, SplitParams]:
    return (build(SamplingParams, plain(cfg.tiling.sampling), "tiling.sampling"),
            build(SplitParams, plain(cfg.tiling.split), "tiling.split"))


def spec(cfg: DictConfig) -> dict:
    """The manifest spec this config asks for (tiling parameters, sampling, split, seed)."""
    return manifest_spec(tiling_params(cfg), *sampling_and_split(cfg), cfg.tiling.seed)


# -- the task -------------------------------------------------------------------------------


def tiling_run_settings(cfg: DictConfig) -> tuple[RunSettings, TilingChecks]:
    """``tiling.run``: the runner's settings and what tiling checks as it goes."""
    settings, checks = build_parts(plain(cfg.tiling.run), "tiling.run", RunSettings, TilingChecks)
    return settings.check_stage(TILE_STAGE, "tiling.run"), checks


def tile(cfg: DictConfig) -> dict:
    """Tile the dataset's slides (this shard's) and, unless sharded, build the manifest.

    Returns:
        ``out_dir``, counts of done / skipped / failed slides, and ``manifest`` when written.
    """
    run, checks = tiling_run_settings(cfg)
    params = tiling_params(cfg)
    sampling, split = sampling_and_split(cfg)
    records = slide_records(cfg.data)
    out_dir = Path(cfg.tiling.out_dir)
    store_dir = slide_results_dir(cfg, params)
    summary: dict[str, Any] = {"out_dir": str(out_dir), "slides_dir": str(store_dir),
                               "slides": len(run.mine(records) if run.works else records)}
    statuses = None
    if run.works:
        log.info("tiling %d slide(s) into %s with %d worker(s)", summary["slides"], store_dir, run.workers)
        statuses = tile_slides(records, params, store_dir, run, checks)
        summary.update(counts(statuses))
        log.info("tiling: %s", counts_line(summary))
        name = "status.csv" if run.num_shards == 1 else f"status.shard{run.shard_index}of{run.num_shards}.csv"
        summary["status_csv"] = str(write_status_table(out_dir, statuses, name))
    if run.merges:
        summary["manifest"] = str(merge_manifest(records, params, sampling, split, cfg.tiling.seed, out_dir,
                                                 statuses, run.strict, store_dir))
        summary["status_csv"] = str(out_dir / "status.csv")
    elif run.num_shards > 1:
        log.info("shard %d/%d done: run tiling.run.stage=merge once every shard has finished",
                 run.shard_index, run.num_shards)
    return summary
