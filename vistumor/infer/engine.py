"""The one pass: per batch of patches, each model's tumor probability and raw Grad-CAM++ map
(or the map of another canvas method: ``infer.cam.method``).

A forward pass through the model, then a backward pass through the head only (the fast
Grad-CAM++ of :mod:`vistumor.explain.gradcam`; attention maps need no backward): no second
pass for the probability. Patches
arrive as ``uint8`` at the reading level and are resized to the model's input on the
device. The maps stay raw (not min-max scaled per patch, which would make normal tissue
as hot as tumor) for the stitcher to weight by probability and blend.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vistumor.explain.methods import canvas_method, check_canvas_method
from vistumor.labels import TUMOR
from vistumor.model.classifier import is_segmenter
from vistumor.wsi.annotations import TumorAnnotation


class Scorer(Protocol):
    """Tumor probability ``(n,)`` and a raw map ``(n, h, w)`` (or None) per patch."""

    def __call__(self, patches: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                 size0: float) -> tuple[np.ndarray, np.ndarray | None]: ...


class ModelScorer:
    """A trained classifier with its fast Grad-CAM++ (or another canvas method).

    Args:
        precision: ``auto`` (bf16 autocast on a bf16-capable CUDA device, else fp32),
            ``bf16`` or ``32``.
        method: the canvas's map (:data:`vistumor.explain.methods.CANVAS_METHODS`).
    """

    def __init__(self, model, device: torch.device, target_layer: str | None = None,
                 precision: str = "auto", cams: bool = True, method: str = "gradcam++"):
        self.model = model.to(device).eval()
        for p in self.model.parameters():  # the scorer owns the model: set once, not per batch
            p.requires_grad_(False)
        self.device = device
        self.size = model.input_size
        #: a segmentation model's maps are its predicted masks, else the canvas method's
        self.kind = "mask" if is_segmenter(model) else "cam"
        self.method = "mask" if self.kind == "mask" else check_canvas_method(method)
        self.cam = canvas_method(self.model, method, target_layer) if cams and self.kind != "mask" else None
        self.maps = cams
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bf16 = precision == "bf16" or (precision == "auto" and bf16)

    def _images(self, patches: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(patches)
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        # an antialiased bilinear resize on the device; the training loader resizes with
        # resize_patch (2x area halvings, then bilinear) on the CPU: close, not bit-equal
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def __call__(self, patches, x0, y0, size0):
        x = self._images(patches)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        if self.kind == "mask":
            return self._segment(x, autocast)
        if self.cam is None:
            with torch.inference_mode(), autocast:
                logits = self.model(x)
            return logits.float().softmax(1)[:, TUMOR].cpu().numpy(), None
        with torch.inference_mode(False), torch.enable_grad(), autocast:  # autograd for the CAM only
            logits, raw = self.cam.raw(x, [TUMOR] * len(x))
        return logits.float().softmax(1)[:, TUMOR].cpu().numpy(), raw.float().cpu().numpy()


    def _segment(self, x: torch.Tensor, autocast) -> tuple[np.ndarray, np.ndarray | None]:
        """A segmentation model's patch probability and its mask at an eighth of the input."""
        with torch.inference_mode(), autocast:
            logits = self.model.mask_logits(x).float()
        prob = self.model.patch_probability(logits).cpu().numpy()
        if not self.maps:
            return prob, None
        masks = F.adaptive_avg_pool2d(logits.sigmoid()[:, None], max(1, self.size // 8))[:, 0]
        return prob, masks.cpu().numpy()


class OracleScorer:
    """A perfect model: probability = the patch's annotated tumor fraction, map = the
    annotation rasterised on a ``cells x cells`` grid. Runs the real grid -> heatmap ->
    lesion -> export path with a known answer (alignment tests, benchmarks)."""

    def __init__(self, annotation: TumorAnnotation, cells: int = 7):
        self.annotation, self.cells = annotation, cells

    def __call__(self, patches, x0, y0, size0):
        prob = self.annotation.tumor_fractions(x0, y0, size0, size0)
        maps = np.stack([self.annotation.rasterize(x, y, size0, size0, out_shape=(self.cells,) * 2)
                         for x, y in zip(x0, y0, strict=True)]).astype(np.float32)
        return prob, maps
