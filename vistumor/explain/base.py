"""What every explanation method shares: batching, the model left as found, scaling.

A method takes ``uint8`` image batches ``(N, 3, H, W)`` and returns one map per image in
``[0, 1]`` at the image size, for the tumor class by default. It works on a frozen trunk,
inside or outside Lightning's inference mode, and leaves the model exactly as it found it
(module modes, ``requires_grad`` flags, ``.grad`` buffers; no hooks left behind).
Subclasses override :meth:`ExplanationMethod.explain` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vistumor.labels import TUMOR
from vistumor.model.inference import device_of, preserved

_EPS_SCALE = 1e-7  # pytorch-grad-cam's scale_cam_image


def scale_maps(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-map min-max scaling to ``[0, 1]``, optionally resized (bilinear) and re-scaled,
    exactly as pytorch-grad-cam's ``scale_cam_image`` + ``aggregate_multi_layers``.

    Right for a patch figure; wrong for stitching a slide (every patch's peak becomes 1),
    where the whole-slide stage uses the raw maps instead.
    """
    def minmax(x):
        x = x - x.amin(dim=(-2, -1), keepdim=True)
        return x / (_EPS_SCALE + x.amax(dim=(-2, -1), keepdim=True))

    maps = minmax(maps)
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        maps = minmax(maps.clamp(min=0))
    return maps


class ExplanationMethod:
    """Maps of a classifier, batched on its device.

    Args:
        model: a module mapping ``uint8``/0-255 images ``(N, 3, H, W)`` to logits (e.g.
            :class:`vistumor.model.classifier.PatchClassifier`).
        batch_size: images per pass.
    """

    name = ""
    fast = False  # batched on-device computation (no library round trip)

    def __init__(self, model: nn.Module, batch_size: int = 32):
        self.model = model
        self.batch_size = batch_size

    def explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        """Maps ``(n, H, W)`` in ``[0, 1]`` of one float batch already on the device."""
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, targets: int | Sequence[int] | None = TUMOR, on_device: bool = False
    ) -> torch.Tensor:
        """Maps ``(N, H, W)`` in ``[0, 1]`` for the class(es) ``targets``, on the CPU.

        Args:
            targets: class index for all images, one per image, or None for the predicted class.
            on_device: keep the maps on the model's device (for GPU pipelines: no copy back).
        """
        chunks = []
        device = device_of(self.model)
        with gradients(self.model):
            for start in range(0, len(images), self.batch_size):
                # a float copy on the device: never the caller's tensor (it will require grad)
                batch = images[start : start + self.batch_size].to(device, torch.float32, copy=True)
                maps = self.explain(batch, batch_targets(targets, start, len(batch))).detach().float()
                chunks.append(maps if on_device else to_cpu(maps))
        if device.type == "cuda" and not on_device:
            torch.cuda.current_stream(device).synchronize()  # the pinned copies have landed
        return torch.cat(chunks) if chunks else torch.empty(0, *images.shape[-2:])


@contextlib.contextmanager
def gradients(model: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on (even inside inference mode), gradients reaching
    activations and inputs but no parameter; everything restored on exit."""
    with preserved(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield


def to_cpu(maps: torch.Tensor) -> torch.Tensor:
    """Copy to the CPU; from CUDA through pinned memory, asynchronously (a pageable copy of
    a 128 x 224 x 224 batch costs more than the whole Grad-CAM++ computation)."""
    if maps.device.type != "cuda":
        return maps.cpu()
    out = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
    return out.copy_(maps, non_blocking=True)


def batch_targets(targets, start: int, n: int) -> list[int] | None:
    """The class index of each image of a batch (None: each image's predicted class)."""
    if targets is None:
        return None
    if isinstance(targets, int):
        return [targets] * n
    return [int(t) for t in list(targets)[start : start + n]]
