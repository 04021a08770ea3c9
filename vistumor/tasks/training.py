"""The training task: manifest -> datamodule + model -> fit, test, figures, metrics.json."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vistumor.config import plain
from vistumor.data.datamodule import PatchDataModule
from vistumor.errors import BadPatchError, ConfigError, VisTumorError
from vistumor.evaluate.camelyon16.auc import youden_threshold
from vistumor.files import atomic_path, write_json
from vistumor.labels import confusion_counts, predict
from vistumor.model import devices, metrics
from vistumor.model.checkpoints import check_compatible
from vistumor.model.classifier import PatchClassifier, is_segmenter
from vistumor.model.kinds import model_kind
from vistumor.model.metrics import key
from vistumor.runs import figures, tracking
from vistumor.runs.callbacks import Throughput
from vistumor.tasks import tiling as tiling_task
from vistumor.tiling import manifest

log = logging.getLogger(__name__)


# -- training -------------------------------------------------------------------------------


def ensure_manifest(cfg: DictConfig, path: str | Path, spec: Mapping[str, Any]) -> Path:
    """The manifest the config asks for (``spec``); tiled first when missing or made with
    another spec and ``data.tile_if_missing`` (per-slide results are reused: usually only
    the cheap merge reruns)."""
    path = Path(path)
    if cfg.data.get("tile_if_missing") and not manifest.is_current(path, spec):
        log.info("no current manifest at %s: tiling first", path)
        tiling_task.tile(cfg)
    return path


def build_datamodule(cfg: DictConfig, image_size: int, train_masks: bool = False) -> PatchDataModule:
    """The configured datamodule at the model's input size; a manifest source is told the
    spec its manifest must match (and the manifest is made first when it may be)."""
    node = cfg.data.datamodule
    source_node = node.source
    extra: dict[str, Any] = {}
    if "manifest_path" in source_node:
        spec = tiling_task.spec(cfg)
        ensure_manifest(cfg, source_node.manifest_path, spec)
        extra = {"spec": spec, "annotation_groups": plain(cfg.data.annotation_groups)}
    source = instantiate_node(source_node, **extra, _convert_="all")
    return instantiate_node(node, source=source, image_size=image_size,
                            augment=plain(cfg.get("augment")) or {}, seed=cfg.get("seed") or 0,
                            on_bad_patch=cfg.data.get("on_bad_patch", "fail"), train_masks=train_masks,
                            _convert_="all")


def instantiate_node(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a user error of the target through as itself
    (Hydra wraps it in an ``InstantiationException``, which the entry scripts would show as
    a traceback instead of one line)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, VisTumorError):
            raise cause from cause.__cause__
        raise


def seed(cfg: DictConfig) -> None:
    """Seed every generator (and the loader workers) from ``cfg.seed``, when set."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)


def build_model(cfg: DictConfig) -> PatchClassifier:
    """The configured classifier; its checkpoints record the manifest it is trained on and
    that manifest's tiling (patch size, level or µm/px, tissue mask), so later stages see
    patches at the scale the model was trained on."""
    manifest_path = manifest_path_of(cfg)
    tiling = None
    if manifest_path:
        spec = tiling_task.spec(cfg)
        ensure_manifest(cfg, manifest_path, spec)
        tiling = {**spec["tiling"], "trained_mpp": trained_mpp(manifest_path)}
    return instantiate_node(cfg.model, manifest_path=manifest_path, tiling=tiling, _convert_="all")


def trained_mpp(manifest_path: str | Path) -> float | None:
    """The µm per level-0 px of the manifest's training slides (their median; None when
    unknown): whole-slide inference reads other scanners' slides at this scale."""
    path = Path(manifest_path)
    if not path.is_file():
        return None
    slides = manifest.slides_in(manifest.read_meta(path), "train").values()
    values = [s["mpp"] for s in slides if s.get("mpp")]
    return float(np.median(values)) if values else None


def manifest_path_of(cfg: DictConfig) -> str | None:
    return cfg.data.datamodule.source.get("manifest_path")


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    node = OmegaConf.merge(cfg.trainer, {"precision": devices.precision(cfg.trainer)})
    accelerator = devices.accelerator(node.get("accelerator"))
    return instantiate_node(node, accelerator=accelerator, callbacks=callbacks, logger=loggers or False,
                            _convert_="all")


def train(
    cfg: DictConfig, model: PatchClassifier | None = None, dm: PatchDataModule | None = None,
) -> dict[str, Any]:
    """Fit and test a patch classifier as configured; returns the run's metrics.

    Writes into the run folder (``paths.output_dir``): checkpoints, CSV/W&B logs,
    ``learning_curves.png``, and at test ``confusion_matrix.png``, ``roc.png``,
    ``predictions.csv`` and ``metrics.json`` (what the sweep's comparison table reads).

    Args:
        model, dm: built already (by :func:`build_model` / :func:`build_datamodule`, e.g. to
            inspect them after the run); default: built from ``cfg``.
    """
    start = time.perf_counter()
    if cfg.get("slides") and not manifest_path_of(cfg):  # refused before hours of training, not after
        raise ConfigError(f"slides={cfg.slides}: whole-slide inference needs slides, and data={cfg.data.name} "
                          "holds patches only (no manifest); drop slides=")
    if cfg.get("ckpt_path"):  # a bad checkpoint fails before anything is built or written
        check_compatible(cfg.ckpt_path, cfg.model.backbone, resume=cfg.get("train", True))
    seed(cfg)
    model = model or build_model(cfg)
    dm = dm or build_datamodule(cfg, model.input_size, train_masks=is_segmenter(model))
    for stage, wanted in (("fit", cfg.get("train", True)), ("test", cfg.get("test", True))):
        if wanted:  # bad data fails here, before a logger writes anything into the run folder
            dm.setup(stage)
    callbacks = [instantiate_node(c, _convert_="all") for c in (cfg.get("callbacks") or {}).values()
                 if c is not None and "_target_" in c]
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    loggers = tracking.build_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    trainable, total = model.num_parameters
    for logger in loggers:
        logger.log_hyperparams({**plain(_without_hydra(cfg)), "params_trainable": trainable,
                                "params_total": total})
    log.info("%s: %s trainable of %s parameters", cfg.model.backbone, f"{trainable:,}", f"{total:,}")
    result: dict[str, Any] = {"model": cfg.model.backbone, "kind": model_kind(model).value,
                              "weights": model.weights_source, "params_trainable": trainable,
                              "params_total": total, "run_dir": str(cfg.paths.output_dir)}
    try:
        result.update(fit_and_test(cfg, trainer, model, dm))
        if cfg.get("slides") and result.get("best_ckpt") and trainer.is_global_zero:
            result.update(whole_slides(cfg, result["best_ckpt"], model.hparams.get("manifest_path")))
            for logger in loggers:
                logger.log_metrics({k: v for k, v in result.items() if k in SLIDE_METRICS}, step=trainer.global_step)
    finally:
        tracking.finish(loggers)
    if throughput is not None and throughput.images_per_s is not None:
        result["images_per_s"] = round(throughput.images_per_s, 2)
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_global_zero:
        write_json(Path(cfg.paths.output_dir) / "metrics.json", result)
    return result


def fit_and_test(cfg: DictConfig, trainer: L.Trainer, model: PatchClassifier, dm: PatchDataModule) -> dict:
    """``trainer.fit`` then ``trainer.test`` on the best checkpoint; an unreadable patch
    (``data.on_bad_patch=fail``) stops the run after saving ``last.ckpt`` to resume from."""
    result: dict[str, Any] = {}
    out = Path(cfg.paths.output_dir)
    try:
        if cfg.get("train", True):
            try:
                trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
            except BadPatchError:
                # a resume that failed before its state was restored (on_fit_start: the feature
                # cache) would overwrite a good last.ckpt with step 0: keep the checkpoint instead
                if not cfg.get("ckpt_path") or trainer.global_step > 0:
                    save_last(trainer, out)
                raise
            result.update(_floats(trainer.callback_metrics, prefix=("train/", "val/")))
            result["best_ckpt"] = _best_checkpoint(trainer)
        if cfg.get("test", True):
            ckpt = result.get("best_ckpt") or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
            threshold = operating_point(trainer, model, dm, ckpt)
            trainer.test(model, datamodule=dm, ckpt_path=ckpt or None)  # weights_only: plain hparams
            result.update(_floats(trainer.callback_metrics, prefix=("test/",)))
            if trainer.is_global_zero:
                result.update(write_test_outputs(model, out, threshold))
    finally:
        if dm.bad_patches and trainer.is_global_zero:
            result["bad_patches"] = str(write_bad_patches(dm.bad_patches, out))
    return result


SLIDE_METRICS = ("test/slide_auc", "test/froc")


def whole_slides(cfg: DictConfig, ckpt: str, manifest_path: str | None) -> dict[str, Any]:
    """The tested checkpoint over the slides of split ``cfg.slides`` (``<run>/slides``): heatmaps,
    lesions, and the slide AUC and lesion FROC with their CIs (what the comparison table shows)."""
    from vistumor.infer.inputs import from_manifest
    from vistumor.infer.params import InferParams
    from vistumor.tasks.inferring import load_models, run_models

    if not manifest_path:
        raise ConfigError("slides=<split> needs a manifest-trained model (not a patch folder)")
    out = Path(cfg.paths.output_dir) / "slides"
    params = InferParams(mpp=cfg.data.get("mpp"), mpp_override=cfg.data.get("mpp_override", "missing"))
    models = load_models([ckpt], devices.inference_device("auto"), out, params)
    summary = run_models(models, from_manifest(manifest_path, cfg.slides), params, out)
    evaluation = summary.get("evaluation", {}).get(models[0].name, {})
    return {"slides_run": str(out), **{k: v for k, v in evaluation.items() if k.startswith("test/")}}


def operating_point(trainer: L.Trainer, model: PatchClassifier, dm: PatchDataModule, ckpt: str | None) -> float | None:
    """Youden's threshold on the validation patches of the checkpoint tested (None without a
    validation split, e.g. the paper's protocol that tests on it, and under DDP, where each
    rank predicts only its share)."""
    if dm.test_split == "val" or trainer.world_size > 1:
        return None
    try:
        loader = dm.val_dataloader()
    except VisTumorError:
        return None
    batches = [b for b in trainer.predict(model, dataloaders=loader, ckpt_path=ckpt or None) or [] if b]
    if not batches:
        return None
    probs = torch.cat([b["prob"] for b in batches]).numpy()
    labels = torch.cat([b["label"] for b in batches]).numpy()
    return youden_threshold(labels, probs)


def save_last(trainer: L.Trainer, out: Path) -> Path:
    """Save the run's state as its ``last.ckpt`` (where the last-checkpoint callback keeps it)."""
    folder = next((Path(c.dirpath) for c in trainer.checkpoint_callbacks
                   if getattr(c, "filename", None) == "last" and c.dirpath), out / "checkpoints")
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    log.info("saved %s: resume with ckpt_path=%s once the data is fixed", path, path)
    return path


def write_bad_patches(bad: list[dict], out: Path) -> Path:
    """``bad_patches.csv``: the patches ``data.on_bad_patch=skip`` left out, and why."""
    table = (pd.DataFrame(bad, columns=["slide_id", "x0", "y0", "reason"])
             .groupby(["slide_id", "x0", "y0"], sort=False)
             .agg(reason=("reason", "first"), times=("reason", "size")).reset_index())
    with atomic_path(out / "bad_patches.csv") as tmp:
        table.to_csv(tmp, index=False)
    log.warning("%d unreadable patch(es) skipped: see %s", len(table), out / "bad_patches.csv")
    return out / "bad_patches.csv"


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is None:
        return None
    return ckpt.best_model_path or ckpt.last_model_path or None


def _floats(metrics: Mapping, prefix: tuple[str, ...]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items() if k.startswith(prefix)}


def write_test_outputs(model: PatchClassifier, folder: Path, threshold: float | None = None) -> dict[str, Any]:
    """Predictions CSV, confusion-matrix and ROC figures of the last test run; with an
    operating point chosen on validation (``threshold``), the test FPR/FNR there too."""
    out = model.test_outputs
    if not out["prob"]:
        return {}
    table = pd.DataFrame(out)
    table["pred"] = predict(table["prob"].to_numpy(), model.hparams.threshold)
    with atomic_path(folder / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    label = table["label"].to_numpy()
    counts = confusion_counts(label, table["pred"].to_numpy())
    name = model.hparams.backbone
    confusion = figures.confusion_figure(**counts, path=folder / "confusion_matrix.png", title=name)
    roc = figures.roc_figure(torch.tensor(table["prob"].to_numpy()), torch.tensor(label),
                             folder / "roc.png", title=name)
    result = {"predictions": str(folder / "predictions.csv"), "confusion_matrix": str(confusion),
              "roc": str(roc), **{f"test_{k}": v for k, v in counts.items()}}
    if threshold is not None:  # the operating point chosen on validation, applied to test
        at_op = metrics.rates(**confusion_counts(label, predict(table["prob"].to_numpy(), threshold)))
        result.update({"val/operating_threshold": round(threshold, 6),
                       key("test", "fpr_op"): round(at_op["fpr"], 6), key("test", "fnr_op"): round(at_op["fnr"], 6)})
    return result
