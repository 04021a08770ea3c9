"""The MIL training task: slides -> bags (frozen trunk, one read pass) -> attention MIL on
slide labels -> test -> (``slides=test``) whole slides: probability, attention heatmaps,
lesions, slide AUC, FROC and the attention's cell scores against the annotations.

``python train.py experiment=mil`` (or any ``model=abmil|clam_sb``) runs it; the training
task hands a config whose model has an ``aggregator`` here (:func:`is_mil_config`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from vistumor.config import plain
from vistumor.data.bags import BagDataModule, BagItem, read_bag, slide_split
from vistumor.errors import ConfigError
from vistumor.files import atomic_path, read_slide_table, write_json
from vistumor.infer.bags import TrunkFeatures, bag_folder, extract_bags, settings_of
from vistumor.labels import CLASSES, parse_label
from vistumor.model import devices
from vistumor.model.checkpoints import read_checkpoint
from vistumor.model.mil import MILClassifier, is_mil
from vistumor.runs import intervals, tracking

log = logging.getLogger(__name__)

#: training callbacks that need patches (images, CAMs): left out of a MIL run
PATCH_CALLBACKS = ("cam", "throughput", "feature_cache")
VOLATILE = ("wall_time_s", "run_dir", "best_ckpt", "predictions", "bags", "slides_run", "split")


def is_mil_config(cfg: DictConfig) -> bool:
    return "aggregator" in (cfg.get("model") or {})


def mil_settings(cfg: DictConfig) -> dict[str, Any]:
    """``data.mil`` with its defaults: where bags go, how they are made, the split."""
    given = plain(cfg.data.get("mil")) or {}
    defaults = {"cache_dir": str(Path(cfg.paths.data_dir) / "bags" / str(cfg.data.name)), "extract": {},
                "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "balanced": True, "labels": None,
                "device": "auto"}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in data.mil; known: {sorted(defaults)}")
    return {**defaults, **given}


def bag_tiling(cfg: DictConfig) -> dict[str, Any]:
    """The bags' patch geometry, as whole-slide inference reads it from a checkpoint."""
    from vistumor.tasks.tiling import tiling_params

    values = tiling_params(cfg).as_dict()
    return {k: values[k] for k in ("grid", "tissue", "labels")}


# -- bags -----------------------------------------------------------------------------------


def slide_table(cfg: DictConfig, settings: dict) -> pd.DataFrame:
    """slide, path, label, annotation of the dataset's slides (the data layout), or of the
    given bags with a ``slide,label`` CSV (``data.mil.labels``)."""
    from vistumor.tasks.tiling import slide_records

    if settings["labels"]:
        rows = read_slide_table(settings["labels"], "label", parse_label, "slide,label")
        return pd.DataFrame([{"slide": s, "path": None, "label": v, "annotation": None} for _, s, v, _ in rows])
    return pd.DataFrame([{"slide": r.slide_id, "path": str(r.path), "label": CLASSES[r.kind],
                          "annotation": str(r.annotation) if r.annotation else None} for r in slide_records(cfg.data)])


def bags_of(cfg: DictConfig, table: pd.DataFrame, tiling: dict, settings: dict) -> tuple[Path, dict]:
    """The bag folder: ``data.bags_dir`` (TRIDENT/CLAM bags, checked) or extracted into the
    cache (``<cache>/<trunk>-<grid hash>``, resumable). Returns it and the trunk facts."""
    given = cfg.data.get("bags_dir")
    if given:
        folder = Path(given)
        missing = [s for s in table["slide"] if not (folder / f"{s}.h5").is_file()]
        if missing:
            raise ConfigError(f"no bag for {len(missing)} slide(s) (first: {missing[:3]}; expected <slide>.h5)", folder)
        return folder, {"trunk": "given", "extracted": None}
    extract = settings_of(settings["extract"])
    trunk = TrunkFeatures(plain(cfg.model.trunk), devices.inference_device(extract.device))
    folder = bag_folder(settings["cache_dir"], trunk, tiling, extract.stride)
    slides = [(s, Path(p)) for s, p in zip(table["slide"], table["path"], strict=True)]
    log.info("bags of %d slides with %s into %s", len(slides), trunk.name, folder)
    records = extract_bags(slides, folder, trunk, tiling, extract, cfg.data.get("mpp"),
                           cfg.data.get("mpp_override", "missing"))
    failed = [r["slide"] for r in records if r["status"] == "failed"]
    if failed:
        raise ConfigError(f"bag extraction failed for {failed} (reasons in status.csv)", folder / "status.csv")
    done = [r for r in records if r["status"] == "done"]
    facts = {"trunk": trunk.name, "weights": trunk.weights, "extracted": len(done)}
    if done:
        facts["bag_patches_per_s"] = round(sum(r["patches"] for r in done) / sum(r["seconds"] for r in done), 2)
    return folder, facts


def bag_items(table: pd.DataFrame, folder: Path, split: dict[str, float], seed: int) -> list[BagItem]:
    """Every slide as a :class:`BagItem` in its split (stratified, seeded: :func:`slide_split`)."""
    splits = slide_split(list(table["slide"]), list(table["label"]), split, seed)

    def path_or_none(value) -> Path | None:
        return Path(value) if isinstance(value, str) and value else None

    return [BagItem(r.slide, folder / f"{r.slide}.h5", int(r.label), splits[r.slide], path_or_none(r.path),
                    path_or_none(r.annotation)) for r in table.itertuples()]


def bags_mpp(items: list[BagItem]) -> float | None:
    values = [read_bag(i.bag).attrs.get("mpp") for i in items if i.split == "train"]
    values = [float(v) for v in values if v]
    return float(np.median(values)) if values else None


# -- the task -------------------------------------------------------------------------------


def train_mil(cfg: DictConfig) -> dict[str, Any]:
    """Bags -> fit -> test (-> whole slides); returns the run's metrics (also ``metrics.json``)."""
    from vistumor.tasks.training import build_trainer, seed

    start = time.perf_counter()
    if cfg.get("ckpt_path"):
        check_resumable(cfg.ckpt_path, cfg.model.aggregator)
    settings = mil_settings(cfg)
    seed(cfg)
    out = Path(cfg.paths.output_dir)
    table = slide_table(cfg, settings)
    tiling = bag_tiling(cfg)
    folder, facts = bags_of(cfg, table, tiling, settings)
    items = bag_items(table, folder, settings["split"], int(cfg.get("seed") or 0))
    write_split(out / "split.csv", items)
    dm = BagDataModule(items, int(cfg.get("seed") or 0), bool(settings["balanced"]))
    for stage, wanted in (("fit", cfg.get("train", True)), ("test", cfg.get("test", True))):
        if wanted:
            dm.setup(stage)
    tiling["trained_mpp"] = bags_mpp(items)
    model = build_mil_model(cfg, dm.dim, tiling if facts["extracted"] is not None else None, folder)
    callbacks = [c for name, c in (cfg.get("callbacks") or {}).items()
                 if c is not None and "_target_" in c and name not in PATCH_CALLBACKS]
    from hydra.utils import instantiate

    loggers = tracking.build_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, [instantiate(c, _convert_="all") for c in callbacks], loggers)
    trainable, total = model.num_parameters
    result: dict[str, Any] = {"model": f"{cfg.model.aggregator}/{model.hparams.backbone}", "kind": "mil",
                              "aggregator": cfg.model.aggregator, "weights": facts.get("weights", "given"),
                              "params_trainable": trainable, "params_total": total, "run_dir": str(out),
                              "bags": str(folder), "split": str(out / "split.csv"),
                              **{k: v for k, v in facts.items() if k not in ("weights",)}}
    try:
        result.update(fit_and_test_bags(cfg, trainer, model, dm, out))
        if cfg.get("slides") and result.get("best_ckpt"):
            from vistumor.tasks.mil_slides import mil_whole_slides

            result.update(mil_whole_slides(cfg, result["best_ckpt"], items, str(cfg.slides)))
    finally:
        tracking.finish(loggers)
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    write_json(out / "metrics.json", result)
    return result


def build_mil_model(cfg: DictConfig, dim: int, tiling: dict | None, folder: Path) -> MILClassifier:
    """The configured aggregator on ``dim``-wide bags; records the trunk config (not built:
    its ``_target_`` stays a value) and tiling of extracted bags (None for given bags, whose
    trunk is not ours to rebuild), and the bag folder."""
    from hydra.utils import instantiate

    values = {k: v for k, v in plain(cfg.model).items() if k not in ("_target_", "trunk", "optimizer", "scheduler")}
    factories = {k: instantiate(cfg.model[k]) if cfg.model.get(k) else None for k in ("optimizer", "scheduler")}
    trunk = plain(cfg.model.trunk) if tiling is not None and "trunk" in cfg.model else None
    try:
        return MILClassifier(**values, **factories, in_dim=dim, trunk=trunk, tiling=tiling, bags=str(folder),
                             seed=int(cfg.get("seed") or 0), split=str(Path(cfg.paths.output_dir) / "split.csv"))
    except TypeError as err:
        raise ConfigError(f"model: {err}") from err


def check_resumable(path: str, aggregator: str) -> None:
    hparams = read_checkpoint(path)["hyper_parameters"]
    if not is_mil(hparams):
        raise ConfigError("not a MIL checkpoint: cannot resume a MIL run from it", path)
    if hparams["aggregator"] != aggregator:
        raise ConfigError(f"checkpoint of aggregator '{hparams['aggregator']}' cannot resume model "
                          f"'{aggregator}'", path)


def fit_and_test_bags(cfg: DictConfig, trainer, model: MILClassifier, dm: BagDataModule, out: Path) -> dict:
    result: dict[str, Any] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        result.update(_floats(trainer.callback_metrics, ("train/", "val/")))
        ckpt = trainer.checkpoint_callback
        result["best_ckpt"] = (ckpt.best_model_path or ckpt.last_model_path or None) if ckpt else None
    if cfg.get("test", True):
        ckpt = result.get("best_ckpt") or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        trainer.test(model, datamodule=dm, ckpt_path=ckpt or None)
        result.update(_floats(trainer.callback_metrics, ("test/",)))
        result.update(write_predictions(model, out))
    return result


def write_predictions(model: MILClassifier, out: Path) -> dict[str, Any]:
    """``predictions.csv`` (one row per test slide; the columns a patch run's has, so the
    comparison table's intervals over slides read it) and the metrics' 95 % intervals."""
    rows = model.test_outputs
    if not rows.get("prob"):
        return {}
    table = pd.DataFrame({"slide_id": rows["slide_id"], "prob": rows["prob"], "label": rows["label"],
                          "x0": 0, "y0": 0})
    with atomic_path(out / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    cis = intervals.patch_intervals(intervals.slides_of(table), model.hparams.threshold)
    return {"predictions": str(out / "predictions.csv"), **cis}


def write_split(path: Path, items: list[BagItem]) -> Path:
    table = pd.DataFrame([{"slide": i.slide_id, "label": i.label, "split": i.split, "bag": str(i.bag),
                           "path": str(i.slide_path or ""), "annotation": str(i.annotation or "")} for i in items])
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def _floats(metrics, prefix: tuple[str, ...]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items() if k.startswith(prefix)}
