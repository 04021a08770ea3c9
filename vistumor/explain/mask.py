"""The predicted mask of a segmentation model as its explanation map.

A segmentation model (:class:`vistumor.model.segmenter.PatchSegmenter`) says where the tumor
is directly; its per-pixel probability is judged with exactly the localization scores of the
CAMs (pointing, energy, IoU, Dice, pixel AUROC), on the same patches.
"""

from __future__ import annotations

import torch

from vistumor.errors import ConfigError
from vistumor.explain.base import ExplanationMethod
from vistumor.model.classifier import is_segmenter


class PredictedMask(ExplanationMethod):
    """Per-pixel tumor probability in ``[0, 1]`` at the image size (no scaling: 1 means tumor)."""

    name = "mask"
    fast = True

    def __init__(self, model, batch_size: int = 32):
        if not is_segmenter(model):
            raise ConfigError("explanation method 'mask' needs a segmentation model (model=seg_lite0, ...)")
        super().__init__(model, batch_size)

    def explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        with torch.no_grad():
            return self.model.segment(images)
