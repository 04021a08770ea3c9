"""The whole-slide task: checkpoints + slides -> per-slide heatmaps, lesions, detections,
scores and figures -> status table, slide tables, evaluation."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vistumor.config import build, checkpoint_paths, plain
from vistumor.errors import ConfigError
from vistumor.explain.report import unique_names
from vistumor.files import write_json
from vistumor.infer import inputs
from vistumor.infer.batch import INFER_STAGE, infer_slides, merge_tables
from vistumor.infer.engine import ModelScorer
from vistumor.infer.params import (
    CamSettings,
    DetectionSettings,
    GridSettings,
    InferParams,
    LesionSettings,
    ReadSettings,
    ScoreSettings,
)
from vistumor.infer.slide_run import ModelRun
from vistumor.labels import name
from vistumor.model.checkpoints import load_classifier, read_checkpoint
from vistumor.model.devices import inference_device
from vistumor.model.mil import is_mil
from vistumor.runner import RunSettings, counts, counts_line
from vistumor.tasks.slide_evaluation import evaluate_run
from vistumor.tasks.tiling import ensure_dataset
from vistumor.tiling.manifest import read_meta
from vistumor.tiling.sampling import SPLITS

log = logging.getLogger(__name__)

#: the keys of infer's ``run`` (of :class:`~vistumor.runner.RunSettings`)
RUN_KEYS = ("shard_index", "num_shards", "stage", "progress")


def infer_run_settings(cfg: DictConfig) -> RunSettings:
    """``run``: the runner's settings a whole-slide run takes (one slide at a time: the pass
    itself is parallel, so no ``workers``; no ``strict``: the tables always list every slide)."""
    values = plain(cfg.run)
    unknown = sorted(set(values) - set(RUN_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in run; known: {list(RUN_KEYS)}")
    return build(RunSettings, values, "run").check_stage(INFER_STAGE, "run")


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Run the checkpoints over the slides; returns a summary (also ``run.json``)."""
    params = infer_params(cfg)
    run = infer_run_settings(cfg)
    out = Path(cfg.paths.output_dir)
    models = load_models(checkpoint_paths(cfg), inference_device(cfg.device), out, params)
    items = slide_inputs(cfg, models)
    mode = cfg.evaluate.mode if cfg.evaluate.enabled else None
    return run_models(models, items, params, out, run, mode, cfg.evaluate.get("patients"))


def run_models(models: list[ModelRun], items: list[inputs.SlideInput], params: InferParams, out: Path,
               run: RunSettings | None = None, evaluate_mode: str | None = "official",
               patients: str | None = None) -> dict[str, Any]:
    """The slides of this shard through every model, then (unsharded) the tables and the
    evaluation; also what training runs on its test slides after testing."""
    run = run or RunSettings()
    write_json(out / "run.json", run_description(models, items, params))
    summary: dict[str, Any] = {"run_dir": str(out), "slides": len(run.mine(items) if run.works else items),
                               "models": [m.name for m in models]}
    records = None
    if run.works:
        records = infer_slides(items, models, params, out, run)
        summary.update(counts(records))
        log.info("whole slides: %s", counts_line(summary))
    if run.merges:
        tables = merge_tables(items, models, out, records, run_scale=params.cam.normalize == "run")
        summary["tables"] = {k: str(v) for k, v in tables.items()}
        if evaluate_mode:
            summary["evaluation"] = evaluate_run(items, models, out, evaluate_mode, patients=patients)
    log.info("whole-slide outputs in %s", out)
    return summary


def infer_params(cfg: DictConfig) -> InferParams:
    groups = {name: build(cls, plain(cfg[name]), name) for name, cls in (
        ("grid", GridSettings), ("read", ReadSettings), ("cam", CamSettings), ("lesions", LesionSettings),
        ("detections", DetectionSettings), ("score", ScoreSettings))}
    return InferParams(**groups, batch_size=int(cfg.batch_size), precision=str(cfg.precision),
                       mpp=cfg.data.get("mpp"), mpp_override=cfg.data.get("mpp_override", "missing"))


def load_models(paths: list[str], device, out: Path, params: InferParams) -> list[ModelRun]:
    """Every checkpoint, checked and loaded before any slide is read, with its patch geometry."""
    if any(is_mil(read_checkpoint(p)["hyper_parameters"]) for p in paths):  # slide-label models
        from vistumor.tasks.mil_slides import load_with_mil
        return load_with_mil(paths, device, out, params, load_models)
    loaded = [load_classifier(p, device) for p in paths]
    names = [n.replace("#", "-") for n in unique_names([m.hparams.backbone for m in loaded])]
    return [ModelRun(name, ModelScorer(model, device, params.cam.target_layer, params.precision,
                                       cams=params.cam.enabled, method=params.cam.method),
                     str(Path(path)), tiling_of(model, path), model.input_size, out / "models" / name,
                     model.hparams.get("manifest_path"))
            for name, model, path in zip(names, loaded, paths, strict=True)]


def tiling_of(model, path: str | Path | None = None) -> dict:
    """The patch geometry a checkpoint was trained at: recorded in it, else in its manifest."""
    tiling = model.hparams.get("tiling")
    if tiling:
        return dict(tiling)
    manifest = model.hparams.get("manifest_path")
    if manifest and Path(manifest).is_file():
        return dict(read_meta(manifest)["tiling"])
    raise ConfigError("checkpoint records no tiling (patch size, level, tissue mask) and its manifest "
                      f"is not at hand ({manifest}); train it from a manifest", path)


def slide_inputs(cfg: DictConfig, models: list[ModelRun]) -> list[inputs.SlideInput]:
    """The slides ``cfg.slides`` names (see ``conf/infer.yaml``)."""
    given = plain(cfg.slides)
    if isinstance(given, list):
        items = inputs.from_files(given, cfg.get("annotations"))
    elif given in SPLITS and models[0].kind == "attention":  # a MIL checkpoint's split.csv
        from vistumor.tasks.mil_slides import split_inputs
        items = split_inputs(models[0].manifest, given)
    elif given in SPLITS:
        if not models[0].manifest:
            raise ConfigError(f"slides={given} needs a checkpoint trained from a manifest; give slide files",
                              models[0].checkpoint)
        items = inputs.from_manifest(models[0].manifest, given)
    elif given == "all":
        items = inputs.from_layout(ensure_dataset(cfg.data), plain(cfg.data.layout))
    else:
        items = inputs.from_files([given], cfg.get("annotations"))
    if cfg.get("reference"):
        items = inputs.with_reference(items, cfg.reference)
    if not items:
        raise ConfigError(f"no slides to run on (slides={given!r})")
    return items


def run_description(models: list[ModelRun], items, params: InferParams) -> dict:
    """``run.json``: what the viewer and later stages read about this run."""
    return {
        "models": [{"name": m.name, "checkpoint": m.checkpoint, "input_size": m.input_size,
                    "tiling": m.tiling, "folder": str(m.folder)} for m in models],
        "slides": [{"slide": s.slide_id, "path": str(s.path),
                    "label": None if s.label is None else name(s.label),
                    "annotation": str(s.annotation) if s.annotation else None} for s in items],
        "settings": asdict(params), "settings_hash": params.hash,
    }
