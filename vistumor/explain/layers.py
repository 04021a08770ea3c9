"""Which layer a CAM looks at: the last spatial feature map, whatever the architecture."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from vistumor.errors import ConfigError
from vistumor.model.inference import device_of, preserved


def network(model: nn.Module) -> nn.Module:
    """The timm network inside a VisTumor classifier (or the model itself)."""
    return getattr(model, "net", model)


def probe_size(model: nn.Module) -> int:
    """The input size the model works at (as trained), so the chosen layer is the last one
    that is still spatial at that size."""
    size = getattr(model, "input_size", None)
    return int(size) if size else 224


def find_target_layer(model: nn.Module, name: str | None = None, image_size: int = 64) -> str:
    """The module whose output is the last spatial feature map (default CAM target layer).

    A probe forward pass records every module's output in the order they finish; the last
    one with a 4-D output larger than 1x1 (pooling gives 1x1) is the last feature stage,
    whatever the architecture calls it (``layer4``, ``bn2``, ``features``...). With
    ``name``, checks it exists.
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
            model(torch.zeros(1, 3, image_size, image_size, device=device_of(model)))
    finally:
        for handle in handles:
            handle.remove()
    spatial = [n for n, shape in finished if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not spatial:
        raise ConfigError(
            f"{type(model).__name__} has no spatial feature map for CAMs; set explain.target_layer"
        )
    return spatial[-1]


def target_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the CAM layer of ``model`` (found, or checked when named)."""
    net = network(model)
    name = find_target_layer(net, name, probe_size(model))
    return name, dict(net.named_modules())[name]
