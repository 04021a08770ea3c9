"""What the entry scripts run: plain functions of a composed config, returning their results.

``tiling.py`` calls :func:`tile`; tests call it directly with a composed, shrunken config.
Configuration is turned into typed parameter objects here, once, with unknown keys refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vistumor import catalog, devices, explanations, localization, metrics, synthetic, tracking
from vistumor.callbacks import Throughput
from vistumor.cam import CAM_METHODS, Explainer
from vistumor.classifier import PatchClassifier
from vistumor.datamodule import PatchDataModule
from vistumor.errors import ConfigError
from vistumor.explanations import CATEGORIES
from vistumor.files import atomic_path, write_json
from vistumor.patches import ImagePatchDataset, image_samples
from vistumor.sampling import SamplingParams, SplitParams
from vistumor.slide_jobs import TilingParams, run_slides
from vistumor.tiling import merge, write_status_table
from vistumor.tissue import TissueParams

log = logging.getLogger(__name__)

_TILING_RUN_KEYS = {
    "out_dir", "sampling", "split", "seed", "workers", "shard_index", "num_shards", "stage",
    "strict", "progress",
}


def build(cls, values: Mapping[str, Any], where: str):
    """``cls(**values)`` for a dataclass, naming the config path of any unknown key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(names)}")
    return cls(**values)


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# -- data -----------------------------------------------------------------------------------


def ensure_dataset(data: DictConfig) -> Path:
    """The dataset root; the embedded synthetic dataset is generated when missing."""
    root = Path(data.root)
    generate = data.get("generate")
    if generate:
        synthetic.generate_dataset(root, **_plain(generate))
    return root


def slide_records(data: DictConfig) -> list[catalog.SlideRecord]:
    root = ensure_dataset(data)
    layout = _plain(data.layout)
    return catalog.find_slides(root, layout["slides"], layout.get("annotation_dir"))


# -- tiling ---------------------------------------------------------------------------------


def tiling_params(cfg: DictConfig) -> TilingParams:
    """Per-slide tiling parameters from ``cfg.tiling`` and the dataset's ``mpp`` and groups."""
    values = {k: v for k, v in _plain(cfg.tiling).items() if k not in _TILING_RUN_KEYS}
    values["tissue"] = build(TissueParams, values.get("tissue", {}), "tiling.tissue")
    values["mpp"] = cfg.data.get("mpp")
    values["annotation_groups"] = _plain(cfg.data.annotation_groups)
    return build(TilingParams, values, "tiling")


def tile(cfg: DictConfig) -> dict:
    """Tile the dataset's slides (this shard's) and, unless sharded, build the manifest.

    Returns:
        ``out_dir``, counts of done / skipped / failed slides, and ``manifest`` when written.
    """
    t = cfg.tiling
    params = tiling_params(cfg)
    sampling = build(SamplingParams, _plain(t.sampling), "tiling.sampling")
    split = build(SplitParams, _plain(t.split), "tiling.split")
    records = slide_records(cfg.data)
    mine = catalog.shard(records, t.shard_index, t.num_shards)
    out_dir = Path(t.out_dir)
    summary: dict[str, Any] = {"out_dir": str(out_dir), "slides": len(mine)}
    statuses = None
    if t.stage not in ("all", "tile", "merge"):
        raise ConfigError(f"tiling.stage must be all, tile or merge, got {t.stage!r}")
    if t.stage in ("all", "tile"):
        log.info("tiling %d slide(s) into %s with %d worker(s)", len(mine), out_dir, t.workers)
        statuses = run_slides(mine, params, out_dir, workers=t.workers, progress=t.progress)
        for name in ("done", "skipped", "failed"):
            summary[name] = sum(s["status"] == name for s in statuses)
        name = "status.csv" if t.num_shards == 1 else f"status.shard{t.shard_index}of{t.num_shards}.csv"
        summary["status_csv"] = str(write_status_table(out_dir, statuses, name))
    if t.stage == "merge" or (t.stage == "all" and t.num_shards == 1):
        summary["manifest"] = str(
            merge(records, params, sampling, split, t.seed, out_dir, statuses, t.strict)
        )
        summary["status_csv"] = str(out_dir / "status.csv")
    elif t.num_shards > 1:
        log.info("shard %d/%d done: run tiling.stage=merge once every shard has finished",
                 t.shard_index, t.num_shards)
    return summary


# -- training -------------------------------------------------------------------------------


def ensure_manifest(cfg: DictConfig) -> Path:
    """The manifest the config asks for; tiled first when missing and ``data.tile_if_missing``."""
    path = Path(cfg.data.datamodule.manifest_path)
    if cfg.data.get("tile_if_missing") and not _manifest_current(path, tiling_params(cfg).hash):
        log.info("no current manifest at %s: tiling first", path)
        tile(cfg)
    return path


def _manifest_current(path: Path, tiling_hash: str) -> bool:
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("tiling_hash") == tiling_hash
    except json.JSONDecodeError:
        return False


def build_datamodule(cfg: DictConfig, input_size: int) -> PatchDataModule:
    """The configured datamodule, told what the manifest must match and the model's input size."""
    node = cfg.data.datamodule
    extra: dict[str, Any] = {"augment": _plain(cfg.get("augment")) or {}}
    if node.get("manifest_path"):
        ensure_manifest(cfg)
        params = tiling_params(cfg)
        extra.update(
            tiling_hash=params.hash, tiling=params.as_dict(),
            annotation_groups=_plain(cfg.data.annotation_groups), mpp=cfg.data.get("mpp"),
        )
    dm = instantiate(node, **extra, _convert_="all")
    dm.use_model_input(input_size)
    return dm


def build_model(cfg: DictConfig) -> PatchClassifier:
    return instantiate(cfg.model, _convert_="all")


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    node = OmegaConf.merge(cfg.trainer, {"precision": devices.precision(cfg.trainer)})
    accelerator = devices.accelerator(node.get("accelerator"))
    return instantiate(node, accelerator=accelerator, callbacks=callbacks, logger=loggers or False,
                       _convert_="all")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test a patch classifier as configured; returns the run's metrics.

    Writes into the run folder (``paths.output_dir``): checkpoints, CSV/W&B logs,
    ``learning_curves.png``, and at test ``confusion_matrix.png``, ``roc.png``,
    ``predictions.csv`` and ``metrics.json`` (what the sweep's comparison table reads).
    """
    start = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    model = build_model(cfg)
    dm = build_datamodule(cfg, model.input_size)
    model.hparams.image_size = dm.image_size  # checkpoints remember the trained input size
    callbacks = [instantiate(c, _convert_="all") for c in (cfg.get("callbacks") or {}).values()
                 if c is not None and "_target_" in c]
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    loggers = tracking.build_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    trainable, total = model.num_parameters
    for logger in loggers:
        logger.log_hyperparams({**_plain(_without_hydra(cfg)), "params_trainable": trainable,
                                "params_total": total})
    log.info("%s: %s trainable of %s parameters", cfg.model.backbone, f"{trainable:,}", f"{total:,}")
    result: dict[str, Any] = {"model": cfg.model.backbone, "params_trainable": trainable,
                              "params_total": total, "run_dir": str(cfg.paths.output_dir)}
    try:
        if cfg.get("train", True):
            trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
            result.update(_floats(trainer.callback_metrics, prefix=("train/", "val/")))
            result["best_ckpt"] = _best_checkpoint(trainer)
        if cfg.get("test", True):
            ckpt = result.get("best_ckpt") or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
            trainer.test(model, datamodule=dm, ckpt_path=ckpt or None, weights_only=False)
            result.update(_floats(trainer.callback_metrics, prefix=("test/",)))
            if trainer.is_global_zero:
                result.update(write_test_outputs(model, Path(cfg.paths.output_dir)))
    finally:
        tracking.finish(loggers)
    if throughput is not None:
        result["images_per_s"] = round(throughput.images_per_s, 2)
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_global_zero:
        write_json(Path(cfg.paths.output_dir) / "metrics.json", result)
    return result


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is None:
        return None
    return ckpt.best_model_path or ckpt.last_model_path or None


def _floats(metrics: Mapping, prefix: tuple[str, ...]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items() if k.startswith(prefix)}


def write_test_outputs(model: PatchClassifier, folder: Path) -> dict[str, str]:
    """Predictions CSV, confusion-matrix and ROC figures of the last test run."""
    out = model.gathered_test_outputs()
    if not out["prob"]:
        return {}
    table = pd.DataFrame(out)
    table["pred"] = (table["prob"] >= model.hparams.threshold).astype(int)
    with atomic_path(folder / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    pred, label = table["pred"].to_numpy(), table["label"].to_numpy()
    counts = {
        "tp": int(((pred == 1) & (label == 1)).sum()), "fp": int(((pred == 1) & (label == 0)).sum()),
        "tn": int(((pred == 0) & (label == 0)).sum()), "fn": int(((pred == 0) & (label == 1)).sum()),
    }
    name = model.hparams.backbone
    confusion = metrics.confusion_figure(**counts, path=folder / "confusion_matrix.png", title=name)
    roc = metrics.roc_figure(torch.tensor(table["prob"].to_numpy()), torch.tensor(label),
                             folder / "roc.png", title=name)
    return {"predictions": str(folder / "predictions.csv"), "confusion_matrix": str(confusion),
            "roc": str(roc), **{f"test_{k}": v for k, v in counts.items()}}


# -- explanations ------------------------------------------------------------------------------


def _explain_dataset(cfg: DictConfig, image_size: int, split: str):
    source = cfg.select.get("patch_source")
    if source:
        return ImagePatchDataset(image_samples(source), image_size)
    dm = build_datamodule(cfg, image_size)
    dm.image_size = image_size
    dm.augment = {}
    return dm.build(split)


def _read(dataset, indices: Sequence[int]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    images, masks, known = [], [], []
    for i in indices:
        rgb, mask = dataset.read(i)
        images.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))))
        masks.append(np.zeros(rgb.shape[:2], bool) if mask is None else mask.astype(bool))
        known.append(mask is not None)
    return torch.stack(images), np.array(masks), np.array(known)


def explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain checkpoints on the same patches; write figure, per-patch CSV and summary.

    Returns:
        The summary (also ``summary.json`` in the run folder).
    """
    ckpts = [cfg.ckpt_path] if isinstance(cfg.ckpt_path, str) else list(cfg.ckpt_path or [])
    if not ckpts:
        raise ConfigError("give ckpt_path=<checkpoint> (or a list to compare models)")
    methods = explanations.check_methods(list(cfg.methods))
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else (
        "cpu" if cfg.device == "auto" else cfg.device)
    models = [explanations.load_classifier(p, device) for p in ckpts]
    names = _unique([m.hparams.backbone for m in models])
    sel, out_dir = cfg.select, Path(cfg.paths.output_dir)
    datasets = {m.input_size: _explain_dataset(cfg, m.input_size, sel.split) for m in models}
    reference = datasets[models[0].input_size]
    candidates = np.arange(len(reference.labels))
    if sel.get("coordinates"):
        candidates = np.array(explanations.select_by_coordinates(
            reference.describe, len(candidates), _plain(sel.coordinates)))
    elif sel.get("slides"):
        wanted = {str(s) for s in sel.slides}
        candidates = np.array([i for i in candidates if reference.describe(i)[0] in wanted])
    if len(candidates) > sel.max_patches:
        rng = np.random.default_rng(cfg.seed)
        candidates = np.sort(rng.choice(candidates, sel.max_patches, replace=False))
    if not len(candidates):
        raise ConfigError(f"empty selection: no patches in split '{sel.split}' match explain.select")
    labels = np.asarray(reference.labels)[candidates]
    pixels = {size: _read(ds, candidates) for size, ds in datasets.items()}
    probs = {n: explanations.predict(m, pixels[m.input_size][0]) for n, m in zip(names, models, strict=True)}
    threshold = float(models[0].hparams.threshold)
    if sel.get("coordinates") or sel.get("slides"):
        shown = list(range(len(candidates)))[: sel.per_kind * len(CATEGORIES)]
    else:
        shown = explanations.select_by_outcome(labels, probs[names[0]], threshold, list(sel.kinds), sel.per_kind)
    if not shown:
        raise ConfigError(f"empty selection: no {list(sel.kinds)} patches among {len(candidates)} candidates")
    score_method = next((m for m in methods if m in CAM_METHODS), methods[0])
    tables, maps, summary = [], {}, {"models": {}, "methods": methods, "split": sel.split,
                                       "candidates": int(len(candidates)), "shown": len(shown)}
    for name, model in zip(names, models, strict=True):
        images, masks, known = pixels[model.input_size]
        maps[name] = explanations.explain_maps(model, images[shown], methods, cfg.target_layer,
                                               cfg.fast, cfg.batch_size)
        scored = np.flatnonzero((labels == 1) & known)
        if not len(scored):
            log.warning("no annotated tumor patches to score: localization scores skipped")
        cams = None
        if len(scored):
            cams = np.zeros((len(candidates), *images.shape[-2:]), np.float32)
            cams[scored] = Explainer(model, score_method, cfg.target_layer, fast=cfg.fast,
                                     batch_size=cfg.batch_size)(images[scored], targets=1).numpy()
        table = explanations.score_table(name, reference.describe, candidates, labels, probs[name],
                                         threshold, cams, masks, known, cfg.scores.threshold,
                                         cfg.scores.tolerance)
        tables.append(table)
        summary["models"][name] = _model_summary(model, table, score_method)
        if cfg.sanity_check:
            summary["models"][name]["randomization"] = _sanity(cfg, model, images[shown], methods,
                                                                maps[name], out_dir, name)
    first_images, first_masks, first_known = pixels[models[0].input_size]
    cats = explanations.categories(labels, (probs[names[0]] >= threshold).astype(int))
    fig = explanations.figure(out_dir / "explanations.png", first_images[shown], first_masks[shown],
                              first_known[shown], labels[shown], names,
                              maps, {n: p[shown] for n, p in probs.items()}, cats[shown], threshold,
                              title=f"split {sel.split}: {', '.join(names)}")
    with atomic_path(out_dir / "scores.csv") as tmp:
        pd.concat(tables, ignore_index=True).to_csv(tmp, index=False)
    summary.update(figure=str(fig), scores=str(out_dir / "scores.csv"))
    write_json(out_dir / "summary.json", summary)
    log.info("explanations written to %s (explanations.png, scores.csv, summary.json)", out_dir)
    return summary


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _model_summary(model, table: pd.DataFrame, score_method: str) -> dict[str, Any]:
    counts = table["outcome"].value_counts().to_dict()
    tp, fp, tn, fn = (counts.get(k, 0) for k in ("tp", "fp", "tn", "fn"))
    summary = {"checkpoint": model.checkpoint_path, "image_size": model.input_size,
               **{k: round(v, 6) for k, v in metrics.rates(tp, fp, tn, fn).items()},
               "outcomes": {k: int(v) for k, v in counts.items()}, "score_method": score_method}
    scored = table.dropna(subset=["cam_pointing"])
    summary["scored_patches"] = int(len(scored))
    for name in localization.NAMES:
        values = scored[f"cam_{name}"].dropna()
        summary[f"cam_{name}"] = round(float(values.mean()), 6) if len(values) else None
    return summary


def _sanity(cfg, model, images, methods, maps, out_dir: Path, name: str) -> dict[str, float]:
    """Model-randomisation check: rank correlation of trained vs randomised maps."""
    random_model = explanations.randomized(model, cfg.seed)
    random_maps = explanations.explain_maps(random_model, images, methods, cfg.target_layer,
                                            cfg.fast, cfg.batch_size)
    return {m: round(explanations.rank_similarity(maps[m], random_maps[m]), 4) for m in methods}
