"""Explanation methods by name: the registry every stage goes through.

``explainer(model, "gradcam++")`` gives a callable mapping ``uint8`` images to maps in
``[0, 1]``; ``fast=False`` sends Grad-CAM and Grad-CAM++ through pytorch-grad-cam instead.
``canvas_method`` gives the batched methods whose raw patch-grid maps the whole-slide
canvas stitches.
"""

from __future__ import annotations

from torch import nn

from vistumor.errors import ConfigError
from vistumor.explain.attention import AttentionMap, AttentionRollout
from vistumor.explain.base import ExplanationMethod
from vistumor.explain.gradcam import LIBRARY_CAMS, FastGradCAM, FastGradCAMPlusPlus, LibraryCAM
from vistumor.explain.mask import PredictedMask
from vistumor.explain.saliency import Saliency, SmoothGrad
from vistumor.model.classifier import is_segmenter

#: methods computed on our own fast path
FAST = {cls.name: cls for cls in (FastGradCAMPlusPlus, FastGradCAM)}
#: CAM methods (a target layer): ours where fast, else pytorch-grad-cam's
CAM_METHODS = tuple(LIBRARY_CAMS)
SALIENCY = {cls.name: cls for cls in (Saliency, SmoothGrad)}
#: a vision transformer's own attention (no target layer, no gradient)
ATTENTION = {cls.name: cls for cls in (AttentionMap, AttentionRollout)}
#: a segmentation model's own predicted mask
MASK = PredictedMask.name
METHODS = (*CAM_METHODS, *SALIENCY, *ATTENTION, MASK)
#: methods with raw maps on the patch grid from one batched pass (the whole-slide canvas)
CANVAS_METHODS = (*FAST, *ATTENTION)
#: how figures and the viewer title a canvas made by each method
CANVAS_TITLES = {"gradcam++": "Grad-CAM++", "gradcam": "Grad-CAM", "attention": "class-token attention",
                 "rollout": "attention rollout"}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method '{method}'; known: {', '.join(METHODS)}")
    return method


def check_canvas_method(method: str) -> str:
    if method not in CANVAS_METHODS:
        raise ConfigError(f"infer.cam.method must be one of {', '.join(CANVAS_METHODS)}, got {method!r}")
    return method


def check_methods(methods) -> list[str]:
    if not methods:
        raise ConfigError("explain.methods is empty")
    return [check_method(m) for m in methods]


def localization_method(model: nn.Module, method: str) -> str:
    """The map a model's localization is judged by: its own mask for a segmentation model,
    else ``method``."""
    return MASK if is_segmenter(model) else method


def explainer(
    model: nn.Module, method: str = "gradcam++", target_layer: str | None = None, fast: bool = True,
    batch_size: int = 32, smooth_samples: int = 16, smooth_noise: float = 0.1,
) -> ExplanationMethod:
    """An explanation method for ``model``.

    Args:
        method: one of :data:`METHODS` (default Grad-CAM++).
        target_layer: module name for CAMs; default: the last spatial feature map.
        fast: batched on-device Grad-CAM/Grad-CAM++ instead of pytorch-grad-cam.
        smooth_samples, smooth_noise: SmoothGrad's samples and noise (share of 0-255).
    """
    check_method(method)
    if method == MASK:
        return PredictedMask(model, batch_size)
    if method in ATTENTION:
        return ATTENTION[method](model, batch_size)
    if method in SALIENCY:
        options = {"samples": smooth_samples, "noise": smooth_noise} if method == "smoothgrad" else {}
        return SALIENCY[method](model, batch_size, **options)
    if fast and method in FAST:
        return FAST[method](model, target_layer, batch_size)
    return LibraryCAM(model, method, target_layer, batch_size)


def canvas_method(model: nn.Module, method: str = "gradcam++", target_layer: str | None = None):
    """The batched method whose raw maps ``raw(images, targets) -> (logits, maps)`` the
    whole-slide canvas stitches (one of :data:`CANVAS_METHODS`)."""
    check_canvas_method(method)
    return ATTENTION[method](model) if method in ATTENTION else FAST[method](model, target_layer)
