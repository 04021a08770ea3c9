"""Explanation maps: Grad-CAM++ and friends (pytorch-grad-cam), saliency, and a fast path.

:class:`Explainer` takes ``uint8`` image batches and returns one map per image in ``[0, 1]``
at the image size, for the tumor class by default. It works on a frozen trunk, inside or
outside Lightning's inference mode, and leaves the model exactly as it found it (module
train/eval modes, ``requires_grad`` flags, ``.grad`` buffers; no hooks left behind).

The fast path (``fast=True``, Grad-CAM and Grad-CAM++) computes the maps batched on the
model's device: the target layer's output is cut from the graph and made a leaf, so the
backward pass runs only through the layers after it, and the weights, the weighted sum,
the upsampling and the normalisation stay on the device. It reproduces pytorch-grad-cam's
maps (same equations, same per-image min-max scaling before and after bilinear resizing).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from vistumor.errors import ConfigError

#: CAM methods by name (pytorch-grad-cam classes).
CAM_METHODS = {
    "gradcam++": GradCAMPlusPlus,
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}
#: Gradient saliency maps (Simonyan et al. 2014; SmoothGrad, Smilkov et al. 2017).
SALIENCY_METHODS = ("saliency", "smoothgrad")
METHODS = (*CAM_METHODS, *SALIENCY_METHODS)
FAST_METHODS = ("gradcam++", "gradcam")
_EPS_SCALE = 1e-7  # pytorch-grad-cam's scale_cam_image
_EPS_AIJ = 1e-6  # pytorch-grad-cam's Grad-CAM++ alpha denominator


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method '{method}'; known: {', '.join(METHODS)}")
    return method


# -- target layer ------------------------------------------------------------------------------


def find_target_layer(model: nn.Module, name: str | None = None, image_size: int = 64) -> str:
    """The module whose output is the last spatial feature map (default CAM target layer).

    A probe forward pass records every module's output in the order they finish; the last
    one with a 4-D output larger than 1x1 (pooling gives 1x1) is the last feature stage, whatever the
    architecture calls it (``layer4``, ``bn2``, ``features``...). With ``name``, checks it exists.
    """
    names = dict(model.named_modules())
    if name is not None:
        if name not in names or name == "":
            close = difflib.get_close_matches(name, [n for n in names if n], n=5)
            raise ConfigError(
                f"target layer '{name}' does not exist in {type(model).__name__}"
                + (f"; close: {', '.join(close)}" if close else "")
            )
        return name
    finished: list[tuple[str, torch.Size]] = []
    handles = [
        module.register_forward_hook(
            lambda m, i, o, n=n: finished.append((n, o.shape)) if isinstance(o, torch.Tensor) else None
        )
        for n, module in model.named_modules() if n
    ]
    try:
        with preserved(model), torch.no_grad():
            model.eval()
            probe = torch.zeros(1, 3, image_size, image_size, device=_device(model))
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    spatial = [n for n, shape in finished if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not spatial:
        raise ConfigError(
            f"{type(model).__name__} has no spatial feature map for CAMs; set explain.target_layer"
        )
    return spatial[-1]


# -- model state ---------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore train/eval modes, ``requires_grad`` flags and ``.grad`` of ``model`` on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: (p.requires_grad, p.grad) for p in model.parameters()}
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, (flag, grad) in flags.items():
            param.requires_grad_(flag)
            param.grad = grad


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def scale_maps(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-map min-max scaling to ``[0, 1]``, optionally resized (bilinear) and re-scaled,
    exactly as pytorch-grad-cam's ``scale_cam_image`` + ``aggregate_multi_layers``."""
    def minmax(x):
        x = x - x.amin(dim=(-2, -1), keepdim=True)
        return x / (_EPS_SCALE + x.amax(dim=(-2, -1), keepdim=True))

    maps = minmax(maps)
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        maps = minmax(maps.clamp(min=0))
    return maps


# -- the explainer -------------------------------------------------------------------------------


class Explainer:
    """Explanation maps of a classifier.

    Args:
        model: a module mapping ``uint8``/0-255 images ``(N, 3, H, W)`` to logits (e.g.
            :class:`vistumor.classifier.PatchClassifier`).
        method: one of :data:`METHODS` (default Grad-CAM++).
        target_layer: module name for CAMs; default: the last spatial feature map.
        fast: batched on-device Grad-CAM/Grad-CAM++ instead of pytorch-grad-cam.
        batch_size: images per pass.
        smooth_samples, smooth_noise: SmoothGrad samples and noise (share of the 0-255 range).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "gradcam++",
        target_layer: str | None = None,
        fast: bool = True,
        batch_size: int = 32,
        smooth_samples: int = 16,
        smooth_noise: float = 0.1,
    ):
        self.model = model
        self.method = check_method(method)
        self.fast = fast and method in FAST_METHODS
        self.batch_size = batch_size
        self.smooth_samples = smooth_samples
        self.smooth_noise = smooth_noise
        self.layer_name = None
        if method in CAM_METHODS:
            size = _probe_size(model)
            self.layer_name = find_target_layer(_net(model), target_layer, size)
            self.layer = dict(_net(model).named_modules())[self.layer_name]

    def __call__(
        self, images: torch.Tensor, targets: int | Sequence[int] | None = 1, on_device: bool = False
    ) -> torch.Tensor:
        """Maps ``(N, H, W)`` in ``[0, 1]`` for the class(es) ``targets``, on the CPU.

        Args:
            targets: class index for all images, one per image, or None for the predicted class.
            on_device: keep the maps on the model's device (for GPU pipelines: no copy back).
        """
        chunks = []
        device = _device(self.model)
        with preserved(self.model), torch.inference_mode(False), torch.enable_grad():
            self.model.eval()
            for p in self.model.parameters():  # gradients flow to the input/activations only
                p.requires_grad_(False)
            for start in range(0, len(images), self.batch_size):
                # a float copy on the device: never the caller's tensor (it will require grad)
                batch = images[start : start + self.batch_size].to(device, torch.float32, copy=True)
                chunk_targets = _targets(targets, start, len(batch))
                maps = self._explain(batch, chunk_targets).detach().float()
                chunks.append(maps if on_device else _to_cpu(maps))
        if device.type == "cuda" and not on_device:
            torch.cuda.current_stream(device).synchronize()  # the pinned copies have landed
        return torch.cat(chunks) if chunks else torch.empty(0, *images.shape[-2:])

    def _explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        if self.method in SALIENCY_METHODS:
            return self._saliency(images, targets)
        if self.fast:
            return self._fast_cam(images, targets)
        cls = CAM_METHODS[self.method]
        wanted = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        x = images.requires_grad_(True)  # a frozen trunk needs a graph to carry gradients
        with cls(model=self.model, target_layers=[self.layer]) as cam:
            maps = cam(input_tensor=x, targets=wanted)
        return torch.from_numpy(maps)

    def _fast_cam(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def cut(module, inputs, output):
            store["act"] = output.detach().requires_grad_(True)
            return store["act"].clone()  # a clone: later in-place ops must not touch the leaf

        handle = self.layer.register_forward_hook(cut)
        try:
            logits = self.model(images)
        finally:
            handle.remove()
        chosen = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=logits.device)
        score = logits.gather(1, chosen[:, None]).sum()
        (grads,) = torch.autograd.grad(score, store["act"])
        acts = store["act"].detach().float()
        grads = grads.float()
        if self.method == "gradcam":
            weights = grads.mean(dim=(2, 3))
        else:  # Grad-CAM++, Chattopadhay et al. 2018, eq. 19 (closed form with exp scores)
            g2 = grads * grads
            g3 = g2 * grads
            sum_acts = acts.sum(dim=(2, 3), keepdim=True)
            aij = g2 / (2 * g2 + sum_acts * g3 + _EPS_AIJ)
            aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
            weights = (grads.clamp(min=0) * aij).sum(dim=(2, 3))
        maps = (weights[:, :, None, None] * acts).sum(dim=1).clamp(min=0)
        return scale_maps(maps, tuple(images.shape[-2:]))

    def _saliency(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        samples = self.smooth_samples if self.method == "smoothgrad" else 1
        total = torch.zeros(images.shape[0], *images.shape[-2:], device=images.device)
        chosen = None if targets is None else torch.as_tensor(targets, device=images.device)
        for i in range(samples):
            x = images
            if self.method == "smoothgrad":
                gen = torch.Generator(device=images.device).manual_seed(i)
                noise = torch.randn(images.shape, generator=gen, device=images.device)
                x = images + noise * self.smooth_noise * 255.0
            x = x.detach().requires_grad_(True)
            logits = self.model(x)
            if chosen is None:
                chosen = logits.argmax(1)
            (grad,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), x)
            total += grad.abs().amax(dim=1)
        return scale_maps(total / samples)


def _to_cpu(maps: torch.Tensor) -> torch.Tensor:
    """Copy to the CPU; from CUDA through pinned memory, asynchronously (a pageable copy of
    a 128 x 224 x 224 batch costs more than the whole Grad-CAM++ computation)."""
    if maps.device.type != "cuda":
        return maps.cpu()
    out = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
    return out.copy_(maps, non_blocking=True)


def _targets(targets, start: int, n: int) -> list[int] | None:
    if targets is None:
        return None
    if isinstance(targets, int):
        return [targets] * n
    return [int(t) for t in list(targets)[start : start + n]]


def _net(model: nn.Module) -> nn.Module:
    """The timm network inside a VisTumor classifier (or the model itself)."""
    return getattr(model, "net", model)


def _probe_size(model: nn.Module) -> int:
    """The input size the model works at (as trained), so the chosen layer is the last one
    that is still spatial at that size."""
    size = getattr(model, "input_size", None)
    return int(size) if size else 224
