"""Grad-CAM++ every validation epoch: a grid of fixed patches and localization scores."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np

from vistumor.data.patches import read_items
from vistumor.explain import localization
from vistumor.explain.base import ExplanationMethod
from vistumor.explain.methods import check_method, explainer, localization_method
from vistumor.explain.render import Row, grid
from vistumor.labels import NORMAL, TUMOR, name, predict
from vistumor.model.inference import tumor_probability
from vistumor.model.metrics import key


class CamMonitor(L.Callback):
    """Grad-CAM++ every validation epoch: a grid of fixed patches and localization scores.

    The grid shows a fixed, seeded set of validation patches (tumor ones only partly covered
    by annotation first, where localization is informative, then normal ones): patch,
    map overlay, annotation, captioned with label, prediction and tumor probability; saved
    as ``cam/epoch_NNN.png`` and logged to W&B. Scores (:mod:`vistumor.explain.localization`) over
    up to ``score_patches`` annotated tumor patches are logged as ``val/cam_*`` each epoch
    and ``test/cam_*`` at test.

    Args:
        method: explanation method (:data:`vistumor.explain.methods.METHODS`).
        target_layer: CAM layer; default: the backbone's last feature map.
        n_tumor, n_normal: grid rows of each class.
        score_patches, test_score_patches: tumor patches scored per val epoch / at test.
        cam_threshold: map threshold for IoU/Dice; tolerance: pointing-game slack in pixels.
        every_n_epochs: render and score every n validation epochs.
    """

    def __init__(
        self, method: str = "gradcam++", target_layer: str | None = None, n_tumor: int = 4,
        n_normal: int = 2, score_patches: int = 64, test_score_patches: int = 256,
        cam_threshold: float = 0.5, tolerance: int = 0, every_n_epochs: int = 1, seed: int = 0,
        dirpath: str | None = None, fast: bool = True, batch_size: int = 32,
    ):
        self.method = check_method(method)
        self.target_layer = target_layer
        self.n_tumor, self.n_normal = n_tumor, n_normal
        self.score_patches, self.test_score_patches = score_patches, test_score_patches
        self.cam_threshold, self.tolerance = cam_threshold, tolerance
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.dirpath = dirpath
        self.fast = fast
        self.batch_size = batch_size
        self._cache: dict[str, tuple] = {}
        self._explainer_of: tuple[object, ExplanationMethod] | None = None  # (model, its explainer)
        self.paths: list[Path] = []

    # -- selection and loading ----------------------------------------------------------------

    def select(self, dataset, n_tumor: int, n_normal: int) -> list[int]:
        """Seeded patch indices: partly covered tumor patches first, then whole ones, then normal."""
        rng = np.random.default_rng(self.seed)
        labels = np.asarray(dataset.labels)
        tumor = rng.permutation(np.flatnonzero(labels == TUMOR))
        fraction = getattr(dataset, "tumor_fraction", None)
        if fraction is not None:
            tumor = tumor[np.argsort(np.asarray(fraction)[tumor] >= 0.95, kind="stable")]
        normal = rng.permutation(np.flatnonzero(labels == NORMAL))
        return [int(i) for i in (*tumor[:n_tumor], *normal[:n_normal])]

    def load(self, dataset, indices: list[int], key_: str) -> tuple:
        """Unaugmented pixels and masks of ``indices``, read once and kept."""
        if key_ not in self._cache:
            labels = np.asarray(dataset.labels)[indices]
            self._cache[key_] = (*read_items(dataset, indices), labels)
        return self._cache[key_]

    # -- hooks ------------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dataset = trainer.datamodule.dataset("val")
        self._score(trainer, pl_module, dataset, "val", self.score_patches)
        if trainer.is_global_zero:
            self._grid(trainer, pl_module, dataset)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        dataset = trainer.datamodule.dataset(trainer.datamodule.test_split)
        self._score(trainer, pl_module, dataset, "test", self.test_score_patches)

    def _explainer(self, pl_module) -> ExplanationMethod:
        """One explainer per model, reused every epoch (its target layer is found once)."""
        if self._explainer_of is None or self._explainer_of[0] is not pl_module:
            name = localization_method(pl_module, self.method)
            method = explainer(pl_module, name, self.target_layer, self.fast, self.batch_size)
            self._explainer_of = (pl_module, method)
        return self._explainer_of[1]

    def _score(self, trainer, pl_module, dataset, stage: str, n: int) -> None:
        indices = self.select(dataset, n, 0)
        images, masks, known, _ = self.load(dataset, indices, f"{stage}-score")
        if not len(images):
            return
        cams = self._explainer(pl_module)(images, TUMOR).numpy()
        per_patch = localization.batch_scores(cams, masks, known, self.cam_threshold, self.tolerance)
        means = localization.mean_scores(per_patch)
        if means["n"]:
            values = {key(stage, f"cam_{k}"): v for k, v in means.items() if k != "n"}
            pl_module.log_dict(values, sync_dist=False)

    def _grid(self, trainer, pl_module, dataset) -> None:
        indices = self.select(dataset, self.n_tumor, self.n_normal)
        images, masks, known, labels = self.load(dataset, indices, "val-grid")
        if not len(images):
            return
        cams = self._explainer(pl_module)(images, TUMOR).numpy()
        probs = tumor_probability(pl_module, images, self.batch_size)
        calls = predict(probs, float(pl_module.hparams.get("threshold", 0.5)))
        rows = [
            Row(images[i].permute(1, 2, 0).numpy(), masks[i] if known[i] else None,
                f"{name(labels[i])} -> {name(calls[i])} p={probs[i]:.2f}", [cams[i]])
            for i in range(len(indices))
        ]
        folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / "cam"
        shown = localization_method(pl_module, self.method)
        path = grid(rows, [shown], folder / f"epoch_{trainer.current_epoch:03d}.png",
                    title=f"{pl_module.hparams.get('backbone', '')} epoch {trainer.current_epoch}")
        self.paths.append(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/cam_grid", images=[str(path)], step=trainer.global_step)
