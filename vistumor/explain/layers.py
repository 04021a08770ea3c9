"""Which layer a CAM looks at, and how its output reads as a feature map ``(N, C, h, w)``.

A CAM weighs the channels of a grid of patch features. Backbones lay that grid out in
one of three ways, and :class:`CamLayer` records which, so that every CAM (the fast
Grad-CAM/Grad-CAM++ and pytorch-grad-cam through its ``reshape_transform``) reads it
through the one function :meth:`CamLayer.feature_map`:

* ``nchw``: a CNN's feature map ``(N, C, h, w)``;
* ``nhwc``: channels last ``(N, h, w, C)`` (Swin; timm models whose ``output_fmt`` is NHWC);
* ``tokens``: a vision transformer's ``(N, prefix + h*w, C)``: the ``num_prefix_tokens``
  class and register tokens first, then the patch tokens row by row; the grid ``h x w``
  comes from the patch embedding at the input's size (dynamic image sizes included).

The default layer is the last one whose output is the backbone's patch grid at its full
width and on whose patch positions the class score depends (a probe forward and backward
pass decides). For a ViT pooled from its class token that is the last block's ``norm1``:
later patch tokens never reach the class token, their gradient is zero and their CAM empty
(pytorch-grad-cam's vision-transformer tutorial makes the same choice). A layer whose output
is none of the three (``attn.k_norm``: heads x tokens x head width) is refused, never read.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from vistumor.errors import ConfigError
from vistumor.model.inference import device_of, preserved

NCHW, NHWC, TOKENS = "nchw", "nhwc", "tokens"
_PROBE_SEED = 0


def network(model: nn.Module) -> nn.Module:
    """The timm network inside a VisTumor classifier (or the model itself)."""
    return getattr(model, "net", model)


def probe_size(model: nn.Module, default: int = 224) -> int:
    """The input size the model works at: as trained, else the patch embedding's fixed size."""
    size = getattr(model, "input_size", None)
    if size:
        return int(size)
    fixed = getattr(getattr(network(model), "patch_embed", None), "img_size", None)
    return int(fixed[-1]) if fixed else default


def prefix_tokens(net: nn.Module) -> int:
    """Class and register tokens in front of a transformer's patch tokens."""
    return int(getattr(net, "num_prefix_tokens", 0) or 0)


def token_grid(net: nn.Module, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of a transformer at an input of ``image_hw`` px."""
    embed = net.patch_embed
    if hasattr(embed, "dynamic_feat_size"):
        return tuple(int(v) for v in embed.dynamic_feat_size(tuple(int(s) for s in image_hw)))
    return tuple(int(v) for v in embed.grid_size)


def family(net: nn.Module) -> str:
    """The layout of a backbone's patch grid: tokens (ViT-like), NHWC (Swin) or NCHW."""
    if "NHWC" in str(getattr(net, "output_fmt", "")).upper():
        return NHWC
    embed = getattr(net, "patch_embed", None)
    if embed is not None and hasattr(net, "num_prefix_tokens") and hasattr(embed, "grid_size"):
        return TOKENS
    return NCHW


@dataclass(frozen=True)
class CamLayer:
    """A CAM target layer, resolved once: its name, module, layout and token geometry."""

    name: str
    module: nn.Module
    layout: str
    prefix: int = 0
    net: nn.Module | None = None  # tokens: the network whose patch embedding gives the grid

    def feature_map(self, output: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """The layer's output (or its gradient) for an input of ``image_hw`` px as ``(N, C, h, w)``."""
        if self.layout == NCHW and output.ndim == 4:
            return output
        if self.layout == NHWC and output.ndim == 4:
            return output.permute(0, 3, 1, 2)
        if self.layout == TOKENS and output.ndim == 3:
            h, w = token_grid(self.net, image_hw)
            if output.shape[1] == self.prefix + h * w:
                return output[:, self.prefix :].reshape(output.shape[0], h, w, -1).permute(0, 3, 1, 2)
        raise ConfigError(unreadable(self.name, output.shape, self.expected(image_hw)))

    def reshape_transform(self, image_hw: tuple[int, int]):
        """:meth:`feature_map` as pytorch-grad-cam's ``reshape_transform`` (None for NCHW)."""
        return None if self.layout == NCHW else partial(self.feature_map, image_hw=tuple(image_hw))

    def expected(self, image_hw: tuple[int, int]) -> str:
        if self.layout == TOKENS:
            h, w = token_grid(self.net, image_hw)
            return f"tokens (N, {self.prefix}+{h}x{w}, C)"
        return "(N, C, h, w)" if self.layout == NCHW else "channels-last (N, h, w, C)"


def unreadable(name: str, shape, expected: str) -> str:
    return (f"target layer '{name}' outputs {tuple(shape)}, which is not a patch feature grid "
            f"(expected {expected}); name another layer, or none for the default")


def layout_of(net: nn.Module, shape: torch.Size, batch: int, image_hw: tuple[int, int]) -> str | None:
    """How an output of ``shape`` reads as the patch grid of ``net`` (None: it does not)."""
    if not shape or shape[0] != batch:
        return None
    kind = family(net)
    if kind == TOKENS:
        h, w = token_grid(net, image_hw)
        if len(shape) == 3 and shape[1] == prefix_tokens(net) + h * w:
            return TOKENS
        if len(shape) == 4 and tuple(shape[2:]) == (h, w):
            return NCHW  # the patch embedding's convolution
        if len(shape) == 4 and tuple(shape[1:3]) == (h, w):
            return NHWC  # the patch embedding of a dynamic-size model
        return None
    if len(shape) != 4:
        return None
    if kind == NHWC and shape[1] == shape[2] > 1:
        return NHWC
    if kind == NHWC:
        return NCHW if shape[2] == shape[3] > 1 else None
    return NCHW if shape[-1] * shape[-2] > 1 else None


@dataclass(eq=False)
class _Seen:
    """A module's output in the probe: its shape, its layout, and (transformers) whether the
    score depends on its patch tokens."""

    name: str
    shape: torch.Size
    layout: str | None
    live: bool = True


def probe(model: nn.Module, size: int) -> list[_Seen]:
    """Every module of the network in the order its output is complete, with the layout its
    output reads in. A transformer also gets a backward pass of a fixed random mix of the
    logits: a token output is ``live`` when that mix depends on its patch tokens."""
    net, image_hw = network(model), (size, size)
    prefix = prefix_tokens(net)
    backward = family(net) == TOKENS  # a CNN's or Swin's last grid always reaches the pooled head
    seen: list[_Seen] = []
    tokens: list[tuple[_Seen, torch.Tensor]] = []

    def record(name, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return None
        seen.append(_Seen(name, output.shape, layout_of(net, output.shape, 1, image_hw)))
        if not (backward and seen[-1].layout == TOKENS):
            return None
        tokens.append((seen[-1], output))
        return output.clone()  # later in-place ops leave ours alone

    handles = [m.register_forward_hook(partial(record, n)) for n, m in net.named_modules() if n]
    gen = torch.Generator().manual_seed(_PROBE_SEED)
    try:
        with preserved(model), torch.inference_mode(False), torch.set_grad_enabled(backward):
            # made here: a tensor made under Lightning's inference_mode cannot require grad
            images = (torch.rand(1, 3, size, size, generator=gen) * 255).to(device_of(model))
            model.eval()
            logits = model(images.requires_grad_(backward))
            tokens = [(s, out) for s, out in tokens if out.requires_grad]
            if tokens:
                mix = (logits.float() * torch.randn(logits.shape[1:], generator=gen).to(logits.device)).sum()
                grads = torch.autograd.grad(mix, [out for _, out in tokens], allow_unused=True)
                for (s, _), grad in zip(tokens, grads, strict=True):
                    s.live = grad is not None and bool(grad[:, prefix:].ne(0).any())
    finally:
        for handle in handles:
            handle.remove()
    return seen


def default_layer(seen: list[_Seen], net: nn.Module) -> _Seen:
    """The last output in the backbone's own layout (at its full width for NHWC and tokens)
    that the score depends on; the last such output when none does (a head of zeros)."""
    kind = family(net)
    grids = [s for s in seen if s.layout == kind]
    if not grids:
        raise ConfigError(f"{type(net).__name__} has no spatial feature map for CAMs; set explain.target_layer")
    if kind != NCHW:  # the residual stream's width: not qkv's 3C, nor the MLP's hidden width
        grids = [s for s in grids if s.shape[-1] == grids[-1].shape[-1]]
    live = [s for s in grids if s.live]
    return (live or grids)[-1]


def resolve_layer(model: nn.Module, name: str | None = None, image_size: int | None = None) -> CamLayer:
    """The CAM layer of ``model``: the default (see the module docstring) or ``name``,
    checked to exist and to output a patch grid."""
    net = network(model)
    modules = dict(net.named_modules())
    if name is not None and (name not in modules or name == ""):
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
        raise ConfigError(f"target layer '{name}' does not exist in {type(net).__name__}"
                          + (f"; close: {', '.join(close)}" if close else ""))
    size = image_size or probe_size(model)
    seen = probe(model, size)
    if name is None:
        chosen = default_layer(seen, net)
    else:
        chosen = next((s for s in reversed(seen) if s.name == name), None)
        if chosen is None:
            raise ConfigError(f"target layer '{name}' never runs in {type(net).__name__}'s forward pass")
        if chosen.layout is None:
            kind = family(net)
            hint = CamLayer(name, modules[name], kind, prefix_tokens(net), net).expected((size, size))
            raise ConfigError(unreadable(name, chosen.shape, hint))
    return CamLayer(chosen.name, modules[chosen.name], chosen.layout, prefix_tokens(net), net)


def find_target_layer(model: nn.Module, name: str | None = None, image_size: int | None = None) -> str:
    """The name of the CAM layer of ``model`` (see :func:`resolve_layer`)."""
    return resolve_layer(model, name, image_size).name

