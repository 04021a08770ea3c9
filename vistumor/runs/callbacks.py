"""Training callbacks: learning curves (the paper's Figure 2) and throughput.

(Grad-CAM++ every validation epoch is :class:`vistumor.explain.monitor.CamMonitor`.)
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from vistumor.model.metrics import key
from vistumor.runs.figures import plot_curves


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
            self.path = plot_curves(self.history, folder / self.filename, self.CURVES)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class Throughput(L.Callback):
    """Training images per second, data loading included (``train/images_per_s``).

    Time runs from the start of each training epoch to its last batch, so validation
    and checkpointing are not counted, while waiting for the loader is. Batches of cached
    features (:mod:`vistumor.data.features`) are not images and are not counted.
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


class RunCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` whose ranking survives a resume into a new run folder.

    A resumed run gets a new folder (Hydra's run dir), and Lightning then forgets the best
    score so far: the first epoch after the resume always becomes "best", and the resumed
    run tests another checkpoint than a run that never stopped. Here the scores and paths
    are kept (the best file stays where it was saved), and files outside this run's folder
    are never deleted.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self.dirpath and Path(filepath).resolve().parent == Path(self.dirpath).resolve():
            super()._remove_checkpoint(trainer, filepath)
