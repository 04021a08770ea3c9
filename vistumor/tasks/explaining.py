"""The explanation task: checkpoints + patches -> figure, per-patch scores, summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from vistumor import explanations, localization, metrics
from vistumor.cam import CAM_METHODS, Explainer, find_target_layer
from vistumor.errors import ConfigError
from vistumor.explanations import CATEGORIES
from vistumor.files import atomic_path, write_json
from vistumor.manifest import Manifest, load_manifest
from vistumor.patches import ImagePatchDataset, PatchDataset, image_samples, read_items
from vistumor.tasks.config import plain

log = logging.getLogger(__name__)


def _manifest(cfg: DictConfig, model) -> Manifest:
    """The manifest to explain on: ``select.manifest``, else the one the (first) model was
    trained on, else the data config's. Loaded and checked once; never tiled here."""
    path = (cfg.select.get("manifest") or model.hparams.get("manifest_path")
            or cfg.data.datamodule.get("manifest_path"))
    if not path:
        raise ConfigError("no manifest to explain on: set select.manifest or select.patch_source")
    manifest = load_manifest(path)
    manifest.verify_slides()
    return manifest


def _datasets(cfg: DictConfig, models: list, split: str) -> dict[int, Any]:
    """One unaugmented dataset per input size, with masks, over the same patches."""
    sizes = sorted({m.input_size for m in models})
    source = cfg.select.get("patch_source")
    if source:
        samples = image_samples(source)
        return {size: ImagePatchDataset(samples, size) for size in sizes}
    manifest = _manifest(cfg, models[0])
    table = manifest.split(split)
    if table.empty:
        raise ConfigError(f"empty selection: split '{split}' has no patches", manifest.path)
    groups = plain(cfg.data.annotation_groups)
    return {size: PatchDataset(table, size, None, manifest.annotations, groups, cfg.data.get("mpp"))
            for size in sizes}


def explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain checkpoints on the same patches; write figure, per-patch CSV and summary.

    Returns:
        The summary (also ``summary.json`` in the run folder).
    """
    given = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    ckpts = [given] if isinstance(given, str) else list(given or [])
    if not ckpts:
        raise ConfigError("give ckpt_path=<checkpoint> (or a list to compare models)")
    methods = explanations.check_methods(list(cfg.methods))
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else (
        "cpu" if cfg.device == "auto" else cfg.device)
    models = [explanations.load_classifier(p, device) for p in ckpts]
    if cfg.target_layer is not None and any(m in CAM_METHODS for m in methods):
        for model in models:  # before any patch is read
            find_target_layer(model.net, cfg.target_layer)
    names = _unique([m.hparams.backbone for m in models])
    sel, out_dir = cfg.select, Path(cfg.paths.output_dir)
    datasets = _datasets(cfg, models, sel.split)
    reference = datasets[models[0].input_size]
    candidates = np.arange(len(reference.labels))
    if sel.get("coordinates"):
        candidates = np.array(explanations.select_by_coordinates(
            reference.describe, len(candidates), plain(sel.coordinates)))
    elif sel.get("slides"):
        wanted = {str(s) for s in sel.slides}
        candidates = np.array([i for i in candidates if reference.describe(i)[0] in wanted])
    if len(candidates) > sel.max_patches:
        rng = np.random.default_rng(cfg.seed)
        candidates = np.sort(rng.choice(candidates, sel.max_patches, replace=False))
    if not len(candidates):
        raise ConfigError(f"empty selection: no patches in split '{sel.split}' match explain.select")
    labels = np.asarray(reference.labels)[candidates]
    pixels = {size: read_items(ds, candidates) for size, ds in datasets.items()}
    probs = {n: explanations.predict(m, pixels[m.input_size][0]) for n, m in zip(names, models, strict=True)}
    threshold = float(models[0].hparams.threshold)
    if sel.get("coordinates") or sel.get("slides"):
        shown = list(range(len(candidates)))[: sel.per_kind * len(CATEGORIES)]
    else:
        shown = explanations.select_by_outcome(labels, probs[names[0]], threshold, list(sel.kinds),
                                               sel.per_kind)
    if not shown:
        raise ConfigError(f"empty selection: no {list(sel.kinds)} patches among {len(candidates)} candidates")
    score_method = next((m for m in methods if m in CAM_METHODS), methods[0])
    tables, maps, summary = [], {}, {"models": {}, "methods": methods, "split": sel.split,
                                       "candidates": int(len(candidates)), "shown": len(shown)}
    for name, model in zip(names, models, strict=True):
        images, masks, known = pixels[model.input_size]
        explainers = {m: Explainer(model, m, cfg.target_layer, fast=cfg.fast, batch_size=cfg.batch_size)
                      for m in methods}
        scored = np.flatnonzero((labels == 1) & known)
        if not len(scored):
            log.warning("no annotated tumor patches to score: localization scores skipped")
        # the scoring method's maps once, for the shown and the scored patches together
        need = np.union1d(np.asarray(shown, dtype=int), scored)
        row = {int(i): j for j, i in enumerate(need)}
        score_maps = explainers[score_method](images[need], targets=1).numpy()
        maps[name] = {
            m: score_maps[[row[i] for i in shown]] if m == score_method
            else explainers[m](images[shown], targets=1).numpy()
            for m in methods
        }
        cams = None
        if len(scored):
            cams = np.zeros((len(candidates), *images.shape[-2:]), np.float32)
            cams[scored] = score_maps[[row[int(i)] for i in scored]]
        table = explanations.score_table(name, reference.describe, candidates, labels, probs[name],
                                         threshold, cams, masks, known, cfg.scores.threshold,
                                         cfg.scores.tolerance)
        tables.append(table)
        summary["models"][name] = _model_summary(model, table, score_method)
        if cfg.sanity_check:
            summary["models"][name]["randomization"] = _sanity(cfg, model, images[shown], methods,
                                                                maps[name])
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
    scored = table.dropna(subset=[f"cam_{name}" for name in localization.NAMES], how="all")
    summary["scored_patches"] = int(len(scored))
    for name in localization.NAMES:
        values = scored[f"cam_{name}"].dropna()
        summary[f"cam_{name}"] = round(float(values.mean()), 6) if len(values) else None
    return summary


def _sanity(cfg, model, images, methods, maps) -> dict[str, float | None]:
    """Model-randomisation check: rank correlation of trained vs randomised maps (None where
    every map is flat and the correlation undefined: ``summary.json`` stays strict JSON)."""
    random_model = explanations.randomized(model, cfg.seed)
    random_maps = explanations.explain_maps(random_model, images, methods, cfg.target_layer,
                                            cfg.fast, cfg.batch_size)
    similarity = {m: explanations.rank_similarity(maps[m], random_maps[m]) for m in methods}
    return {m: round(v, 4) if np.isfinite(v) else None for m, v in similarity.items()}
