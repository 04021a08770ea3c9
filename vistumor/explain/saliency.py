"""Gradient saliency (Simonyan et al. 2014) and SmoothGrad (Smilkov et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from vistumor.explain.base import ExplanationMethod, scale_maps


class Saliency(ExplanationMethod):
    """Largest absolute input gradient over the colour channels."""

    name = "saliency"
    fast = True
    samples = 1

    def inputs(self, images: torch.Tensor, i: int) -> torch.Tensor:
        """The ``i``-th input whose gradient is averaged."""
        return images

    def explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        total = torch.zeros(images.shape[0], *images.shape[-2:], device=images.device)
        chosen = None if targets is None else torch.as_tensor(targets, device=images.device)
        for i in range(self.samples):
            x = self.inputs(images, i).detach().requires_grad_(True)
            logits = self.model(x)
            if chosen is None:
                chosen = logits.argmax(1)
            (grad,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), x)
            total += grad.abs().amax(dim=1)
        return scale_maps(total / self.samples)


class SmoothGrad(Saliency):
    """Saliency averaged over ``samples`` noisy copies (noise: share of the 0-255 range),
    each drawn from its own seed, so a map does not depend on the caller's random state."""

    name = "smoothgrad"

    def __init__(self, model: nn.Module, batch_size: int = 32, samples: int = 16, noise: float = 0.1):
        super().__init__(model, batch_size)
        self.samples, self.noise = samples, noise

    def inputs(self, images: torch.Tensor, i: int) -> torch.Tensor:
        gen = torch.Generator(device=images.device).manual_seed(i)
        noise = torch.randn(images.shape, generator=gen, device=images.device)
        return images + noise * self.noise * 255.0
