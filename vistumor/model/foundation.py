"""Pathology foundation models as timm ViTs: the card's architecture, statistics and embedding.

A foundation model's config (``conf/model/uni.yaml`` ...) names the run (``backbone: uni``)
and describes its trunk in ``model.trunk``:

* ``architecture`` + ``kwargs``: the timm architecture and the keyword arguments its model
  card passes to ``timm.create_model`` (patch size, depth, width, heads, MLP type, register
  tokens, LayerScale init values, input size). The architecture is built from these alone,
  so it builds offline (random weights, labelled) exactly as it does with hub weights.
* ``hub``: the Hugging Face repository of the weights (``hf-hub:MahmoodLab/UNI``), fetched by
  timm's hub loader (a token for gated repositories: ``huggingface-cli login`` or
  ``HF_TOKEN``) and loaded into that architecture with every trunk tensor checked.
* ``mean``/``std``: the card's normalisation, laid over timm's ``pretrained_cfg`` so that
  ``resolve_model_data_config`` answers them like any other backbone's statistics.

``model.pooling`` is the embedding rule, for any ViT: ``token`` (the class token), ``avg``
(the mean of the patch tokens) or ``cls_mean`` (Virchow2: the class token concatenated with
the mean of the patch tokens, class and register tokens excluded; twice the width). The head
reads that embedding in training, in the feature cache and on whole slides, since all of them
go through ``forward_head``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import timm.layers
import torch
from torch import nn

from vistumor.errors import ConfigError

POOLINGS = ("token", "avg", "cls_mean")
HUB_PREFIXES = ("hf-hub:", "hf_hub:")
#: kwargs VisTumor sets itself (the 2-class head and the pooling)
_RESERVED = ("num_classes", "global_pool", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay")


@dataclass(frozen=True)
class Trunk:
    """A timm architecture as a model card describes it (``model.trunk``)."""

    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any] | None) -> Trunk | None:
        """The trunk described by ``model.trunk`` (None when it is null)."""
        if not options:
            return None
        unknown = set(options) - {"architecture", "kwargs", "hub", "mean", "std"}
        if unknown:
            raise ConfigError(f"model.trunk: unknown key(s) {sorted(unknown)}; "
                              "known: architecture, kwargs, hub, mean, std")
        if not options.get("architecture"):
            raise ConfigError("model.trunk.architecture is required (a timm model name)")
        kwargs = dict(options.get("kwargs") or {})
        reserved = sorted(set(kwargs) & set(_RESERVED))
        if reserved:
            raise ConfigError(f"model.trunk.kwargs.{reserved[0]} is set by VisTumor "
                              "(the 2-class head; the embedding is model.pooling): remove it")
        mean, std = options.get("mean"), options.get("std")
        for key, value in (("mean", mean), ("std", std)):
            if value is not None and len(value) != 3:
                raise ConfigError(f"model.trunk.{key} must have 3 values (RGB), got {list(value)}")
        return cls(options["architecture"], kwargs, repo_of(options.get("hub")),
                   tuple(float(v) for v in mean) if mean is not None else None,
                   tuple(float(v) for v in std) if std is not None else None)

    def timm_kwargs(self) -> dict[str, Any]:
        """The card's kwargs with named layers resolved (``mlp_layer: SwiGLUPacked`` -> the
        class in ``timm.layers``; activations stay names: timm resolves ``silu`` itself)."""
        kwargs = dict(self.kwargs)
        if isinstance(kwargs.get("mlp_layer"), str):
            name = kwargs["mlp_layer"]
            layer = getattr(timm.layers, name, None)
            made = layer.func if isinstance(layer, functools.partial) else layer  # SwiGLUPacked: a partial
            if not (isinstance(made, type) and issubclass(made, nn.Module)):
                raise ConfigError(f"model.trunk.kwargs.mlp_layer: '{name}' is not a layer in timm.layers "
                                  "(e.g. Mlp, SwiGLUPacked, GluMlp)")
            kwargs["mlp_layer"] = layer
        return kwargs

    def overlay(self) -> dict[str, Any]:
        """``pretrained_cfg`` fields of the card: its statistics and input size."""
        overlay: dict[str, Any] = {}
        if self.mean is not None:
            overlay["mean"] = self.mean
        if self.std is not None:
            overlay["std"] = self.std
        size = self.kwargs.get("img_size")
        if isinstance(size, int):
            overlay["input_size"] = (3, size, size)
        return overlay


def repo_of(hub: str | None) -> str | None:
    """``hf-hub:MahmoodLab/UNI`` (or ``MahmoodLab/UNI``) -> ``MahmoodLab/UNI``."""
    if not hub:
        return None
    for prefix in HUB_PREFIXES:
        if hub.startswith(prefix):
            hub = hub[len(prefix):]
    if hub.count("/") != 1 or not all(hub.split("/")):
        raise ConfigError(f"model.trunk.hub must be 'hf-hub:<owner>/<repo>', got {hub!r}")
    return hub


# -- access to gated repositories ------------------------------------------------------------


def access_problem(err: BaseException) -> str | None:
    """``GatedRepoError: 403`` when ``err`` (or its cause) is the hub refusing access (a gated
    repository without accepted terms, no token, or a token without access), else None."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    seen = err
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(seen, GatedRepoError) or (isinstance(seen, HfHubHTTPError) and status in (401, 403)):
            return f"{type(seen).__name__}{f': {status}' if status else ''}"
        seen = seen.__cause__ or seen.__context__
    return None


def access_message(name: str, repo: str, problem: str) -> str:
    """One line: which repository refused, and how to get access."""
    return (f"backbone '{name}': no access to the gated Hugging Face repo {repo} ({problem}). Accept its "
            f"terms on https://huggingface.co/{repo} with your account, then `huggingface-cli login` (or set "
            "HF_TOKEN); or point model.weights_path at a local copy of the weights")


# -- the embedding rule ----------------------------------------------------------------------


class ClassMeanPool(nn.Module):
    """``concat(class token, mean of the patch tokens)``: Virchow2's embedding.

    The prefix (class + register tokens) is left out of the mean; gradients reach every patch
    token, so Grad-CAM-style maps see the patch grid.
    """

    def __init__(self, num_prefix_tokens: int):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, prefix + patches, D) -> (N, 2D)
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)


def pooling_kwargs(pooling: str | None) -> dict[str, Any]:
    """``timm.create_model`` kwargs of an embedding rule (``cls_mean`` is fitted afterwards)."""
    if pooling is None:
        return {}
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling must be one of {POOLINGS} or null, got {pooling!r}")
    return {} if pooling == "cls_mean" else {"global_pool": pooling}


def apply_pooling(model: nn.Module, pooling: str | None, num_classes: int) -> None:
    """Fit ``cls_mean`` onto a timm ViT: the pooling in timm's own hook (``attn_pool``, fed
    every token) and a head as wide as the embedding."""
    if pooling != "cls_mean":
        return
    if getattr(model, "cls_token", None) is None or not hasattr(model, "attn_pool"):
        raise ConfigError(f"model.pooling=cls_mean needs a timm ViT with a class token, "
                          f"not {type(model).__name__}")
    width = 2 * model.embed_dim
    model.attn_pool = ClassMeanPool(model.num_prefix_tokens)
    model.pool_include_prefix = True
    model.head_hidden_size = width
    old = model.get_classifier()
    model.head = nn.Linear(width, num_classes, device=old.weight.device, dtype=old.weight.dtype)
