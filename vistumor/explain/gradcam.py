"""Class activation maps: a fast batched Grad-CAM, Grad-CAM++ on top of it, and one adapter
for the other pytorch-grad-cam methods.

The fast path computes the maps batched on the model's device: the target layer's output
is cut from the graph and made a leaf, so the backward pass runs only through the layers
after it (the pooled head), and the weights, the weighted sum, the upsampling and the
scaling stay on the device. It reproduces pytorch-grad-cam's maps (same equations, same
per-image min-max scaling before and after bilinear resizing).
"""

from __future__ import annotations

import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from vistumor.explain.base import ExplanationMethod, scale_maps
from vistumor.explain.layers import resolve_layer

_EPS_AIJ = 1e-6  # pytorch-grad-cam's Grad-CAM++ alpha denominator


class CamMethod(ExplanationMethod):
    """A method over the activations of one target layer (default: the last feature map)."""

    def __init__(self, model: nn.Module, target_layer_name: str | None = None, batch_size: int = 32):
        super().__init__(model, batch_size)
        #: the layer, its layout (NCHW, NHWC, tokens) and how it reads as a feature map
        self.target = resolve_layer(model, target_layer_name)
        self.layer_name, self.layer = self.target.name, self.target.module


class FastGradCAM(CamMethod):
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially averaged gradients."""

    name = "gradcam"
    fast = True

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, C)`` from activations and gradients ``(N, C, h, w)``."""
        return grads.mean(dim=(2, 3))

    def raw(self, images: torch.Tensor, targets: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, classes)`` and unscaled maps ``(N, h, w)`` at the layer's resolution,
        from one forward pass and a backward pass through the layers after the target only.
        Activations and gradients are read as ``(N, C, h, w)`` by the layer's
        :meth:`~vistumor.explain.layers.CamLayer.feature_map` (tokens: prefix dropped)."""
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
        (grads,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), store["act"])
        size = tuple(images.shape[-2:])
        acts = self.target.feature_map(store["act"].detach().float(), size)
        grads = self.target.feature_map(grads.float(), size)
        weights = self.weights(acts, grads)
        return logits.detach(), (weights[:, :, None, None] * acts).sum(dim=1).clamp(min=0)

    def explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        return scale_maps(self.raw(images, targets)[1], tuple(images.shape[-2:]))


class FastGradCAMPlusPlus(FastGradCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): only the channel weights differ from Grad-CAM."""

    name = "gradcam++"

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        # Chattopadhay et al. 2018, eq. 19, with exponential scores (so the second and third
        # derivatives are powers of the first):
        #   alpha_ij^kc = g^2 / (2 g^2 + sum_ab A_ab^k g^3),   w_k^c = sum_ij alpha_ij^kc relu(g)
        g2 = grads * grads
        g3 = g2 * grads
        sum_acts = acts.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_acts * g3 + _EPS_AIJ)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (grads.clamp(min=0) * alpha).sum(dim=(2, 3))


#: pytorch-grad-cam classes by name (the fast path covers gradcam and gradcam++)
LIBRARY_CAMS = {
    "gradcam++": GradCAMPlusPlus,
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


class LibraryCAM(CamMethod):
    """Any pytorch-grad-cam method, through the library (per-image, on its own terms)."""

    def __init__(self, model: nn.Module, name: str, target_layer_name: str | None = None,
                 batch_size: int = 32):
        super().__init__(model, target_layer_name, batch_size)
        self.name = name
        self.cam_class = LIBRARY_CAMS[name]

    def explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        wanted = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        x = images.requires_grad_(True)  # a frozen trunk needs a graph to carry gradients
        reshape = self.target.reshape_transform(tuple(images.shape[-2:]))  # the fast path's own
        with self.cam_class(model=self.model, target_layers=[self.layer], reshape_transform=reshape) as cam:
            maps = cam(input_tensor=x, targets=wanted)
        return torch.from_numpy(maps)
