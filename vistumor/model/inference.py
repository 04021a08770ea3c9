"""Running a trained classifier outside the training loop, leaving it as it was found.

Both the training callbacks (the per-epoch CAM grid) and the explanation and whole-slide
stages predict through :func:`tumor_probability`; explanation methods borrow
:func:`preserved` to restore the model after their gradient passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


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


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def tumor_probability(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Tumor probabilities of ``uint8`` images ``(N, 3, S, S)`` in eval mode (modes restored)."""
    out = []
    device = device_of(model)
    with preserved(model), torch.inference_mode():
        model.eval()
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            out.append(model(batch).float().softmax(1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
