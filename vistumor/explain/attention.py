"""A vision transformer's own attention as an explanation: the last layer's class-token
attention, and attention rollout through every layer.

Both read the attention probabilities ``softmax(q k^T * scale)`` of timm's
:class:`timm.layers.Attention` from one batched forward pass (no backward): hooks on each
layer's ``q_norm`` and ``k_norm`` see ``q`` and ``k`` after the optional QK normalisation,
so the probabilities are those the layer uses, fused (``scaled_dot_product_attention``) or
not. The row read is the class token's; a model without one (average pooled) is read by
the mean of its patch-token rows, the tokens its head averages. Only the patch-token
columns count (class and register tokens dropped), reshaped to the patch grid. The maps
do not depend on the target class: attention is class-agnostic.
"""

from __future__ import annotations

import torch
from timm.layers import Attention
from torch import nn

from vistumor.errors import ConfigError
from vistumor.explain.base import ExplanationMethod, scale_maps
from vistumor.explain.layers import network, prefix_tokens, token_grid


def model_name(model: nn.Module) -> str:
    """The backbone's name (a VisTumor classifier's ``hparams.backbone``), else its class."""
    hparams = getattr(model, "hparams", None)
    return str(getattr(hparams, "backbone", None) or type(network(model)).__name__)


def attention_layers(model: nn.Module, method: str) -> list[nn.Module]:
    """The global self-attention layers of ``model`` in forward order; refused when none."""
    layers = [m for m in network(model).modules() if isinstance(m, Attention)]
    if not layers:
        raise ConfigError(f"explanation method '{method}' needs a vision transformer (timm Attention "
                          f"over its patch tokens); {model_name(model)} has none")
    return layers


class AttentionMap(ExplanationMethod):
    """The last layer's attention from the class token to the patch tokens, averaged over heads."""

    name = "attention"
    fast = True

    def __init__(self, model: nn.Module, batch_size: int = 32):
        super().__init__(model, batch_size)
        self.net = network(model)
        self.layers = attention_layers(model, self.name)
        self.prefix = prefix_tokens(self.net)
        self.class_token = getattr(self.net, "cls_token", None) is not None

    def hooked(self) -> list[nn.Module]:
        """The layers whose attention is read."""
        return self.layers[-1:]

    def combine(self, total: torch.Tensor | None, attn: torch.Tensor) -> torch.Tensor:
        """Fold one layer's head-averaged attention ``(N, T, T)`` into the running result."""
        return attn

    def raw(self, images: torch.Tensor, targets: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, classes)`` and unscaled maps ``(N, h, w)`` on the patch grid, from one
        forward pass."""
        state: dict[str, torch.Tensor | None] = {"total": None}

        def keep_q(module, inputs, output):
            state["q"] = output

        def attend(layer, module, inputs, k):
            q = state.pop("q")
            attn = (q.float() @ k.float().transpose(-2, -1) * layer.scale).softmax(dim=-1)
            state["total"] = self.combine(state["total"], attn.mean(dim=1))

        handles = []
        for layer in self.hooked():
            handles.append(layer.q_norm.register_forward_hook(keep_q))
            handles.append(layer.k_norm.register_forward_hook(
                lambda m, i, o, layer=layer: attend(layer, m, i, o)))
        try:
            with torch.no_grad():
                logits = self.model(images)
        finally:
            for handle in handles:
                handle.remove()
        if state["total"] is None:
            raise ConfigError(f"{model_name(self.model)}: its attention layers never ran")
        return logits.detach(), self.to_grid(state["total"], tuple(images.shape[-2:]))

    def to_grid(self, total: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """The query row's weights on the patch tokens, as the patch grid ``(N, h, w)``."""
        h, w = token_grid(self.net, image_hw)
        if total.shape[-1] != self.prefix + h * w:
            raise ConfigError(f"{model_name(self.model)}: attention over {total.shape[-1]} tokens is not "
                              f"{self.prefix} prefix + {h}x{w} patch tokens")
        rows = total[:, 0] if self.class_token else total[:, self.prefix :].mean(dim=1)
        return rows[:, self.prefix :].reshape(-1, h, w)

    def explain(self, images: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
        return scale_maps(self.raw(images, targets)[1], tuple(images.shape[-2:]))


class AttentionRollout(AttentionMap):
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers",
    section 3): per layer the head-averaged attention plus the identity (the residual
    connection), rows renormalised, ``A~_l = (A_l + I) / rowsum``; multiplied through the
    layers, ``R = A~_L ... A~_2 A~_1``."""

    name = "rollout"

    def hooked(self) -> list[nn.Module]:
        return self.layers

    def combine(self, total: torch.Tensor | None, attn: torch.Tensor) -> torch.Tensor:
        return rollout_step(total, attn)


def rollout_step(total: torch.Tensor | None, attn: torch.Tensor) -> torch.Tensor:
    """One layer of attention rollout: ``(A + I) / rowsum`` times the rollout so far."""
    attn = attn + torch.eye(attn.shape[-1], device=attn.device, dtype=attn.dtype)
    attn = attn / attn.sum(dim=-1, keepdim=True)
    return attn if total is None else attn @ total
