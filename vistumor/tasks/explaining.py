"""The explanation task, as its steps: select -> predict -> maps -> score -> write.

Checkpoints are explained on the same patches (read once per input size): the patches
come from the manifest the first model was trained on (or a patch folder), the figure
shows them by the first model's outcome, and every candidate tumor patch with a known
mask gets localization scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vistumor.config import checkpoint_paths, plain
from vistumor.data.images import ImagePatchDataset, image_samples
from vistumor.data.patches import read_items
from vistumor.data.sources import ManifestSource
from vistumor.errors import ConfigError
from vistumor.explain import localization, report, selection
from vistumor.explain.layers import find_target_layer, network
from vistumor.explain.methods import CAM_METHODS, check_methods, explainer, localization_method
from vistumor.explain.sanity import randomization_check
from vistumor.files import atomic_path, write_json
from vistumor.labels import OUTCOMES, TUMOR
from vistumor.model.checkpoints import load_classifier
from vistumor.model.devices import inference_device
from vistumor.model.inference import tumor_probability

log = logging.getLogger(__name__)


@dataclass
class Patches:
    """The candidate patches: where they are, their labels, and their pixels per input size."""

    places: list[tuple[str, int, int]]
    labels: np.ndarray
    pixels: dict[int, tuple[torch.Tensor, np.ndarray, np.ndarray]]  # size -> images, masks, known


def explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain checkpoints on the same patches; write figure, per-patch CSV and summary.

    Returns:
        The summary (also ``summary.json`` in the run folder).
    """
    methods = check_methods(list(cfg.methods))
    models = load_explained_models(cfg, methods)
    names = report.unique_names([m.hparams.backbone for m in models])
    patches = select(cfg, models)
    probs = {n: tumor_probability(m, patches.pixels[m.input_size][0], cfg.batch_size)
             for n, m in zip(names, models, strict=True)}
    threshold = float(models[0].hparams.threshold)
    shown = choose_shown(cfg.select, patches, probs[names[0]], threshold)
    score_method = next((m for m in methods if m in CAM_METHODS), methods[0])
    maps, tables, summary = {}, [], {"models": {}, "methods": methods, "split": cfg.select.split,
                                     "candidates": len(patches.labels), "shown": len(shown)}
    for name, model, path in zip(names, models, checkpoint_paths(cfg), strict=True):
        # a segmentation model is judged (and shown) by its own mask where the others use a CAM
        own = list(dict.fromkeys(localization_method(model, m) if m in CAM_METHODS else m for m in methods))
        own_score = localization_method(model, score_method)
        maps[name], cams = explanation_maps(cfg, model, patches, shown, own, own_score)
        table = score(cfg, name, patches, probs[name], threshold, cams, model.input_size)
        tables.append(table)
        summary["models"][name] = report.model_summary(str(Path(path)), model.input_size, table,
                                                       own_score)
        if cfg.sanity_check:
            images = patches.pixels[model.input_size][0][shown]
            summary["models"][name]["randomization"] = randomization_check(
                model, images, maps[name], cfg.target_layer, cfg.fast, cfg.batch_size, cfg.seed)
    return write(Path(cfg.paths.output_dir), patches, shown, names, models, maps, probs, threshold,
                 tables, summary, cfg.select.split)


# -- steps ------------------------------------------------------------------------------------


def load_explained_models(cfg: DictConfig, methods: list[str]) -> list:
    """The checkpoints of ``ckpt_path`` (one or a list) on the configured device; a named
    target layer is checked before any patch is read."""
    device = inference_device(cfg.device)
    models = [load_classifier(p, device) for p in checkpoint_paths(cfg)]
    if cfg.target_layer is not None and any(m in CAM_METHODS for m in methods):
        for model in models:
            find_target_layer(network(model), cfg.target_layer)
    return models


def select(cfg: DictConfig, models: list) -> Patches:
    """The candidate patches (by slide, by coordinates, or all of the split; a seeded subset
    of at most ``select.max_patches``), read once per input size, unaugmented, with masks."""
    sel = cfg.select
    datasets = patch_datasets(cfg, models)
    reference = next(iter(datasets.values()))
    n = len(reference.labels)
    if sel.get("coordinates"):
        candidates = np.array(selection.select_by_coordinates(reference.describe, n, plain(sel.coordinates)))
    elif sel.get("slides"):
        candidates = np.array(selection.select_by_slides(reference.describe, n, list(sel.slides)), dtype=int)
    else:
        candidates = np.arange(n)
    candidates = selection.subsample(candidates, sel.max_patches, cfg.seed)
    if not len(candidates):
        raise ConfigError(f"empty selection: no patches in split '{sel.split}' match explain.select")
    return Patches(places=[reference.describe(int(i)) for i in candidates],
                   labels=np.asarray(reference.labels)[candidates],
                   pixels={size: read_items(ds, candidates) for size, ds in datasets.items()})


def patch_datasets(cfg: DictConfig, models: list) -> dict[int, Any]:
    """One unaugmented dataset with masks per input size, over the same patches: a patch
    folder (``select.patch_source``) or a manifest split, never re-tiled."""
    sizes = sorted({m.input_size for m in models})
    source = cfg.select.get("patch_source")
    if source:
        samples = image_samples(source)
        return {size: ImagePatchDataset(samples, size) for size in sizes}
    path = (cfg.select.get("manifest") or models[0].hparams.get("manifest_path")
            or cfg.data.datamodule.source.get("manifest_path"))
    if not path and "manifest_path" not in cfg.data.datamodule.source:  # e.g. data=pcam: its own files
        source = instantiate(cfg.data.datamodule.source, _convert_="all")
        return {size: source.dataset(cfg.select.split, size, None, with_masks=True) for size in sizes}
    if not path:
        raise ConfigError("no manifest to explain on: set select.manifest or select.patch_source")
    manifest = ManifestSource(path, annotation_groups=plain(cfg.data.annotation_groups))
    if manifest.manifest.split(cfg.select.split).empty:
        raise ConfigError(f"empty selection: split '{cfg.select.split}' has no patches", path)
    return {size: manifest.dataset(cfg.select.split, size, None, with_masks=True) for size in sizes}


def choose_shown(sel: DictConfig, patches: Patches, prob: np.ndarray, threshold: float) -> list[int]:
    """The patches the figure shows: by the first model's outcome, most confident first, or
    (for slide or coordinate selections) the selection itself."""
    if sel.get("coordinates") or sel.get("slides"):
        shown = list(range(len(patches.labels)))[: sel.per_kind * len(OUTCOMES)]
    else:
        shown = selection.select_by_outcome(patches.labels, prob, threshold, list(sel.kinds), sel.per_kind)
    if not shown:
        raise ConfigError(f"empty selection: no {list(sel.kinds)} patches among "
                          f"{len(patches.labels)} candidates")
    return shown


def explanation_maps(
    cfg: DictConfig, model, patches: Patches, shown: list[int], methods: list[str], score_method: str,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Each method's maps of the shown patches, and the scoring method's maps of every
    scorable patch (annotated tumor; None when there is none). The scoring method runs once
    over the shown and scorable patches together."""
    images, _, known = patches.pixels[model.input_size]
    scored = selection.tumor_indices(patches.labels, known)
    if not len(scored):
        log.warning("no annotated tumor patches to score: localization scores skipped")
    need = np.union1d(np.asarray(shown, dtype=int), scored)
    row = {int(i): j for j, i in enumerate(need)}
    run = {m: explainer(model, m, cfg.target_layer, cfg.fast, cfg.batch_size) for m in methods}
    score_maps = run[score_method](images[need], TUMOR).numpy()
    maps = {m: score_maps[[row[i] for i in shown]] if m == score_method
            else run[m](images[shown], TUMOR).numpy() for m in methods}
    cams = None
    if len(scored):
        cams = np.zeros((len(patches.labels), *images.shape[-2:]), np.float32)
        cams[scored] = score_maps[[row[int(i)] for i in scored]]
    return maps, cams


def score(cfg: DictConfig, name: str, patches: Patches, prob: np.ndarray, threshold: float,
          cams: np.ndarray | None, size: int) -> pd.DataFrame:
    """The per-patch table of one model: outcome and localization scores."""
    _, masks, known = patches.pixels[size]
    per_patch: list = [None] * len(patches.labels)
    if cams is not None:
        usable = known & (patches.labels == TUMOR)
        per_patch = localization.batch_scores(cams, masks, usable, cfg.scores.cam_threshold,
                                              cfg.scores.tolerance)
    return report.score_table(name, patches.places, patches.labels, prob, threshold, per_patch)


def write(out_dir: Path, patches: Patches, shown: list[int], names: list[str], models: list,
          maps: dict, probs: dict, threshold: float, tables: list[pd.DataFrame], summary: dict,
          split: str) -> dict[str, Any]:
    """``explanations.png``, ``scores.csv`` and ``summary.json``; returns the summary."""
    images, masks, known = patches.pixels[models[0].input_size]
    fig = report.figure(out_dir / "explanations.png", images[shown], masks[shown], known[shown],
                        patches.labels[shown], names, maps, {n: p[shown] for n, p in probs.items()},
                        threshold, title=f"split {split}: {', '.join(names)}")
    with atomic_path(out_dir / "scores.csv") as tmp:
        pd.concat(tables, ignore_index=True).to_csv(tmp, index=False)
    summary.update(figure=str(fig), scores=str(out_dir / "scores.csv"))
    write_json(out_dir / "summary.json", summary)
    log.info("explanations written to %s (explanations.png, scores.csv, summary.json)", out_dir)
    return summary
