"""Training callbacks: learning curves (the paper's Figure 2), throughput, and Grad-CAM++
every validation epoch."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure

from vistumor import localization
from vistumor.cam import Explainer, check_method
from vistumor.explanations import predict
from vistumor.metrics import key, save_figure
from vistumor.patches import read_items
from vistumor.render import Row, grid


class LearningCurves(L.Callback):
    """Per-epoch loss and accuracy of train and val, saved as ``learning_curves.png``.

    Args:
        dirpath: folder of the PNG; default: the trainer's log folder.
    """

    CURVES = ("loss", "acc")

    def __init__(self, dirpath: str | None = None, filename: str = "learning_curves.png"):
        self.dirpath = dirpath
        self.filename = filename
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for stage in ("train", "val"):
            for name in self.CURVES:
                value = metrics.get(key(stage, name))
                if value is not None:
                    row[key(stage, name)] = float(value)
        self.history.append(row)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.history:
            folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
            self.path = plot_curves(self.history, folder / self.filename)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


def plot_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs val, side by side."""
    fig = Figure(figsize=(8, 3.2), dpi=120)
    axes = fig.subplots(1, 2)
    epochs = [row["epoch"] + 1 for row in history]
    for ax, name in zip(axes, LearningCurves.CURVES, strict=True):
        for stage, style in (("train", "-o"), ("val", "--s")):
            values = [row.get(key(stage, name)) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], style, label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "learning curves")
    return save_figure(fig, path)


class Throughput(L.Callback):
    """Training images per second, data loading included (``train/images_per_s``).

    Time runs from the start of each training epoch to its last batch, so validation
    and checkpointing are not counted, while waiting for the loader is. Batches of cached
    features (:mod:`vistumor.features`) are not images and are not counted.
    """

    def __init__(self):
        self.images = 0
        self.seconds = 0.0
        self._last = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None and "image" in batch:
            self.seconds += now - self._last
            self.images += len(batch["label"])
        self._last = now

    @property
    def images_per_s(self) -> float | None:
        """None when no image batch was trained (e.g. all epochs on cached features)."""
        return self.images / self.seconds if self.seconds else None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.images_per_s is not None:
            pl_module.log(key("train", "images_per_s"), self.images_per_s, sync_dist=False)


class CamMonitor(L.Callback):
    """Grad-CAM++ every validation epoch: a grid of fixed patches and localization scores.

    The grid shows a fixed, seeded set of validation patches (tumor ones only partly covered
    by annotation first, where localization is informative, then normal ones): patch,
    map overlay, annotation, captioned with label, prediction and tumor probability; saved
    as ``cam/epoch_NNN.png`` and logged to W&B. Scores (:mod:`vistumor.localization`) over
    up to ``score_patches`` annotated tumor patches are logged as ``val/cam_*`` each epoch
    and ``test/cam_*`` at test.

    Args:
        method: explanation method (:data:`vistumor.cam.METHODS`).
        target_layer: CAM layer; default: the backbone's last feature map.
        n_tumor, n_normal: grid rows of each class.
        score_patches, test_score_patches: tumor patches scored per val epoch / at test.
        threshold: map threshold for IoU/Dice; tolerance: pointing-game slack in pixels.
        every_n_epochs: render and score every n validation epochs.
    """

    def __init__(
        self, method: str = "gradcam++", target_layer: str | None = None, n_tumor: int = 4,
        n_normal: int = 2, score_patches: int = 64, test_score_patches: int = 256,
        threshold: float = 0.5, tolerance: int = 0, every_n_epochs: int = 1, seed: int = 0,
        dirpath: str | None = None, fast: bool = True, batch_size: int = 32,
    ):
        self.method = check_method(method)
        self.target_layer = target_layer
        self.n_tumor, self.n_normal = n_tumor, n_normal
        self.score_patches, self.test_score_patches = score_patches, test_score_patches
        self.threshold, self.tolerance = threshold, tolerance
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.dirpath = dirpath
        self.fast = fast
        self.batch_size = batch_size
        self._cache: dict[str, tuple] = {}
        self._explainer_of: tuple[object, Explainer] | None = None  # (model, its explainer)
        self.paths: list[Path] = []

    # -- selection and loading ----------------------------------------------------------------

    def select(self, dataset, n_tumor: int, n_normal: int) -> list[int]:
        """Seeded patch indices: partly covered tumor patches first, then whole ones, then normal."""
        rng = np.random.default_rng(self.seed)
        labels = np.asarray(dataset.labels)
        tumor = rng.permutation(np.flatnonzero(labels == 1))
        fraction = getattr(dataset, "tumor_fraction", None)
        if fraction is not None:
            tumor = tumor[np.argsort(np.asarray(fraction)[tumor] >= 0.95, kind="stable")]
        normal = rng.permutation(np.flatnonzero(labels == 0))
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
        dataset = trainer.datamodule.image_dataset("val")
        self._score(trainer, pl_module, dataset, "val", self.score_patches)
        if trainer.is_global_zero:
            self._grid(trainer, pl_module, dataset)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        dataset = trainer.datamodule.image_dataset(trainer.datamodule.test_split)
        self._score(trainer, pl_module, dataset, "test", self.test_score_patches)

    def _explainer(self, pl_module) -> Explainer:
        """One explainer per model, reused every epoch (its target layer is found once)."""
        if self._explainer_of is None or self._explainer_of[0] is not pl_module:
            explainer = Explainer(pl_module, self.method, self.target_layer, self.fast, self.batch_size)
            self._explainer_of = (pl_module, explainer)
        return self._explainer_of[1]

    def _score(self, trainer, pl_module, dataset, stage: str, n: int) -> None:
        indices = self.select(dataset, n, 0)
        images, masks, known, _ = self.load(dataset, indices, f"{stage}-score")
        if not len(images):
            return
        cams = self._explainer(pl_module)(images, targets=1).numpy()
        per_patch = localization.batch_scores(cams, masks, known, self.threshold, self.tolerance)
        means = localization.mean_scores(per_patch)
        if means["n"]:
            values = {key(stage, f"cam_{k}"): v for k, v in means.items() if k != "n"}
            pl_module.log_dict(values, sync_dist=False)

    def _grid(self, trainer, pl_module, dataset) -> None:
        indices = self.select(dataset, self.n_tumor, self.n_normal)
        images, masks, known, labels = self.load(dataset, indices, "val-grid")
        if not len(images):
            return
        cams = self._explainer(pl_module)(images, targets=1).numpy()
        probs = predict(pl_module, images, self.batch_size)
        threshold = float(pl_module.hparams.get("threshold", 0.5))
        names = ("normal", "tumor")
        rows = [
            Row(images[i].permute(1, 2, 0).numpy(), masks[i] if known[i] else None,
                f"{names[labels[i]]} -> {names[int(probs[i] >= threshold)]} p={probs[i]:.2f}", [cams[i]])
            for i in range(len(indices))
        ]
        folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / "cam"
        path = grid(rows, [self.method], folder / f"epoch_{trainer.current_epoch:03d}.png",
                    title=f"{pl_module.hparams.get('backbone', '')} epoch {trainer.current_epoch}")
        self.paths.append(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/cam_grid", images=[str(path)], step=trainer.global_step)
