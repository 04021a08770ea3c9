"""A MIL checkpoint over whole slides: the infer run (slides.csv, attention heatmaps,
lesions, detections, slide AUC and FROC) and the attention's cell scores on annotated slides."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from vistumor.data.bags import BagItem
from vistumor.errors import ConfigError
from vistumor.infer.attention import MILScorer
from vistumor.infer.cell_scores import run_cell_scores
from vistumor.infer.inputs import SlideInput
from vistumor.infer.params import InferParams
from vistumor.infer.slide_run import ModelRun
from vistumor.labels import TUMOR
from vistumor.model import devices
from vistumor.model.checkpoints import read_checkpoint
from vistumor.model.mil import is_mil, load_mil

log = logging.getLogger(__name__)


def load_with_mil(paths: list[str], device, out: Path, params: InferParams, load_models) -> list[ModelRun]:
    """The checkpoints of an infer run when some are MIL models: those as :func:`mil_model_run`,
    the others by ``load_models`` (the patch models' loader); names made unique."""
    from vistumor.explain.report import unique_names

    runs = [mil_model_run(p, device, out) if is_mil(read_checkpoint(p)["hyper_parameters"])
            else load_models([p], device, out, params)[0] for p in paths]
    names = [n.replace("#", "-") for n in unique_names([r.name for r in runs])]
    return [replace(r, name=n, folder=out / "models" / n) for r, n in zip(runs, names, strict=True)]


def split_inputs(split_csv: str | Path | None, split: str) -> list[SlideInput]:
    """The slides of split ``split`` of a MIL run's ``split.csv`` (the checkpoint records it)."""
    if not split_csv or not Path(split_csv).is_file():
        raise ConfigError(f"slides={split} needs the MIL run's split.csv ({split_csv}); give slide files")
    table = pd.read_csv(split_csv, dtype={"slide": str}, keep_default_na=False)
    chosen = table[table["split"] == split]
    if chosen.empty or not all(chosen["path"]):
        raise ConfigError(f"no slide files in split '{split}'", split_csv)
    return [SlideInput(r.slide, Path(r.path), int(r.label), Path(r.annotation) if r.annotation else None)
            for r in chosen.itertuples()]


def mil_model_run(path: str | Path, device, out: Path, name: str | None = None) -> ModelRun:
    """A MIL checkpoint as a model of a whole-slide run (its patch geometry from the checkpoint)."""
    model = load_mil(path, device)
    tiling = dict(model.hparams.tiling or {})
    if not tiling.get("grid"):
        raise ConfigError("MIL checkpoint records no tiling (trained on given bags?): cannot read slides", path)
    if not model.hparams.trunk:
        raise ConfigError("MIL checkpoint records no trunk config: cannot embed patches", path)
    scorer = MILScorer(model, device)
    name = name or f"{model.hparams.aggregator}-{model.hparams.backbone}"
    return ModelRun(name, scorer, str(path), tiling, scorer.size, out / "models" / name, model.hparams.get("split"))


def held_out_inputs(items: list[BagItem], split: str) -> list[SlideInput]:
    chosen = [SlideInput(i.slide_id, i.slide_path, i.label, i.annotation) for i in items
              if (split == "all" or i.split == split) and i.slide_path]
    if not chosen:
        raise ConfigError(f"slides={split}: no slide files of that split (bags given without slides?)")
    return chosen


def mil_whole_slides(cfg: DictConfig, ckpt: str, items: list[BagItem], split: str) -> dict[str, Any]:
    """The checkpoint over split ``split``'s slides in ``<run>/slides``: what the comparison
    table reads (slide AUC, FROC) and the attention heatmap's cell scores (``test/heatmap_cell_*``)."""
    from vistumor.tasks.inferring import run_models

    out = Path(cfg.paths.output_dir) / "slides"
    params = InferParams(mpp=cfg.data.get("mpp"), mpp_override=cfg.data.get("mpp_override", "missing"))
    run = mil_model_run(ckpt, devices.inference_device("auto"), out)
    inputs = held_out_inputs(items, split)
    summary = run_models([run], inputs, params, out)
    evaluation = summary.get("evaluation", {}).get(run.name, {})
    if "skipped" in evaluation:
        log.warning("%s: slide evaluation skipped: %s", run.name, evaluation["skipped"])
    annotated = [(s.slide_id, s.annotation) for s in inputs if s.label == TUMOR and s.annotation]
    cells = run_cell_scores(run.folder, annotated, "heatmaps", run.annotation_groups)
    log.info("attention vs annotation over %d tumor slides: %s", len(annotated), cells)
    return {"slides_run": str(out), **{k: v for k, v in evaluation.items() if k.startswith("test/")}, **cells}
