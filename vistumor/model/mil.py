"""Attention MIL on slide labels: one LightningModule for every aggregator of
:mod:`vistumor.model.aggregators`, trained on bags of frozen-trunk patch features.

A batch is one bag (``features (N, D)``, ``label``, ``slide_id``). The slide loss is
cross-entropy on the slide label; CLAM-SB adds its instance loss with weight
``instance_weight`` (``(1 - w) * bag + w * instance``; the paper's ``c1 = 0.7``). Metrics
are the patch classifier's (:class:`~vistumor.model.metrics.StageMetrics`), over slides.

Dropout draws from a generator seeded by ``(seed, epoch, batch)`` before every training
step, so a run resumed from a checkpoint equals one that never stopped.

Checkpoints record the trunk's config (what whole-slide inference embeds patches with),
the tiling (patch geometry) and ``aggregator`` (what marks a MIL checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from vistumor.data.epochs import stream_seed
from vistumor.errors import ConfigError
from vistumor.model.aggregators import CLAMSB, MILOutput, build_aggregator
from vistumor.model.kinds import KIND_KEY, ModelKind, model_kind
from vistumor.model.metrics import SplitSteps, StageMetrics, key
from vistumor.tiling.sampling import SPLITS

KIND = ModelKind.MIL


class MILClassifier(SplitSteps, L.LightningModule):
    """A slide classifier on bags, with per-patch attention.

    Args:
        aggregator: ``abmil`` or ``clam_sb``.
        in_dim: feature width of the bags (set by the training task from the bags).
        trunk: the trunk's model config (``model.trunk``): whole-slide inference rebuilds it.
        tiling: patch geometry of the bags (``grid``, ``tissue``, ``trained_mpp``, ``stride``).
        backbone: the trunk's backbone name (what run names and tables show).
        instance_weight, instance_k: CLAM-SB's instance loss weight and top/bottom k.
        seed: the dropout streams' seed.
        split: the run's ``split.csv`` (slide, label, split, bag, path, annotation): what
            ``infer.py slides=test`` runs a MIL checkpoint on.
        model_kind: recorded in checkpoints (:class:`~vistumor.model.kinds.ModelKind` ``mil``).
    """

    kind = KIND

    def __init__(
        self, aggregator: str = "abmil", in_dim: int = 0, hidden_dim: int = 128, attention_dim: int = 64,
        dropout: float = 0.25, threshold: float = 0.5, instance_weight: float = 0.0, instance_k: int = 8,
        optimizer: Callable | None = None, scheduler: Callable | None = None, trunk: dict | None = None,
        tiling: dict | None = None, backbone: str | None = None, bags: str | None = None, seed: int = 0,
        split: str | None = None, model_kind: str = KIND.value,
    ):
        super().__init__()
        if in_dim <= 0:
            raise ConfigError(f"MIL model needs the bags' feature width (in_dim), got {in_dim}")
        if not 0 <= instance_weight < 1:
            raise ConfigError(f"model.instance_weight must be in [0, 1), got {instance_weight}")
        if backbone is None and trunk:
            backbone = trunk.get("backbone")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams.backbone = backbone or "bags"
        self.hparams[KIND_KEY] = KIND.value
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = build_aggregator(aggregator, in_dim, hidden_dim, attention_dim, dropout)
        self.metrics = torch.nn.ModuleDict({f"{s}_metrics": StageMetrics(s, threshold) for s in SPLITS})
        self.test_outputs: dict[str, list] = {}

    @property
    def num_parameters(self) -> tuple[int, int]:
        total = sum(p.numel() for p in self.parameters())
        return sum(p.numel() for p in self.parameters() if p.requires_grad), total

    def forward(self, features: torch.Tensor) -> MILOutput:
        return self.net(features.float())

    def slide_probability(self, out: MILOutput) -> torch.Tensor:
        return out.logits.float().softmax(-1)[1]

    def loss(self, out: MILOutput, label: torch.Tensor) -> torch.Tensor:
        bag = F.cross_entropy(out.logits[None], label.view(1).long())
        w = self.hparams.instance_weight
        if w and isinstance(self.net, CLAMSB):
            return (1 - w) * bag + w * self.net.instance_loss(out, int(label), self.hparams.instance_k)
        return bag

    # -- steps ------------------------------------------------------------------------------

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self(batch["features"])
        label = batch["label"]
        loss = self.loss(out, label)
        prob = self.slide_probability(out).detach()
        self.metrics[f"{stage}_metrics"].update(prob.view(1), label.view(1))
        self.log(key(stage, "loss"), loss, on_step=False, on_epoch=True, batch_size=1, prog_bar=stage != "test")
        if stage == "test":
            self.test_outputs["slide_id"].append(batch["slide_id"])
            self.test_outputs["prob"].append(float(prob))
            self.test_outputs["label"].append(int(label))
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # dropout as a pure function of (seed, epoch, step): a resumed run draws the same masks
        torch.manual_seed(stream_seed(self.hparams.seed, self.current_epoch, batch_idx))

    def _log_metrics(self, stage: str) -> None:
        metric = self.metrics[f"{stage}_metrics"]
        if not metric.confusion.update_count:
            return
        self.log_dict(metric.compute(), prog_bar=stage == "val", on_step=False, on_epoch=True, batch_size=1)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = {"slide_id": [], "prob": [], "label": []}

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=5e-4, weight_decay=1e-4))
        optimizer = factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "monitor": key("val", "loss"), "interval": "epoch"}}


def is_mil(hparams: dict) -> bool:
    """Whether a checkpoint's hyper-parameters are a MIL model's (its recorded kind)."""
    return model_kind(hparams) == KIND


def load_mil(path: str | Path, device: str | torch.device = "cpu") -> MILClassifier:
    """A trained :class:`MILClassifier` in eval mode from its checkpoint (read safely)."""
    from vistumor.model.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    if not is_mil(hparams):
        raise ConfigError(f"a {model_kind(hparams).value} checkpoint, not a MIL model's", path)
    try:
        model = MILClassifier(**{k: v for k, v in hparams.items() if k != KIND_KEY})
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise ConfigError(f"MIL checkpoint does not load ({str(err).splitlines()[0]})", path) from err
    return model.to(device).eval()
