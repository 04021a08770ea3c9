"""MIL aggregators: a bag of patch features ``(N, D)`` -> slide logits and per-patch attention.

* :class:`ABMIL`: gated attention MIL (Ilse, Tomczak & Welling 2018, "Attention-based Deep
  Multiple Instance Learning", eqs. 8-9).
* :class:`CLAMSB`: CLAM single-branch (Lu et al. 2021, "Data-efficient and weakly supervised
  computational pathology on whole-slide images"): the same gated attention plus instance
  classifiers trained on the top-k / bottom-k attended patches (the clustering loss).

Both return raw attention scores ``a_k`` (before the softmax over the bag): a patch's score
depends on that patch only, so whole-slide inference can compute it batch by batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vistumor.errors import ConfigError
from vistumor.labels import NORMAL, TUMOR


class MILOutput(NamedTuple):
    logits: torch.Tensor  # (2,) slide logits
    scores: torch.Tensor  # (N,) raw attention scores a_k
    attention: torch.Tensor  # (N,) softmax over the bag
    instances: torch.Tensor  # (N, hidden) patch embeddings h_k


class GatedAttention(nn.Module):
    """``a_k = w^T (tanh(V h_k) * sigm(U h_k))`` (Ilse et al. 2018, eq. 9); the softmax over
    the bag's ``a_k`` weights the patches (eq. 8)."""

    def __init__(self, dim: int, attention_dim: int, dropout: float = 0.0):
        super().__init__()
        self.V = nn.Linear(dim, attention_dim)
        self.U = nn.Linear(dim, attention_dim)
        self.w = nn.Linear(attention_dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(self.drop(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))).squeeze(-1)


class ABMIL(nn.Module):
    """Patch features -> ``fc`` (ReLU, dropout) -> gated attention pooling -> 2 slide logits.

    ``z = sum_k a_k h_k`` with ``a = softmax(w^T (tanh(V h) * sigm(U h)))`` (eqs. 8-9).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128, attention_dim: int = 64, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, 2)

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embeddings ``h`` and raw attention scores ``a`` (no softmax: per patch)."""
        h = self.fc(features)
        return h, self.attention(h)

    def pool(self, h: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slide logits from the softmax-weighted mean of ``h`` (eq. 8), and the weights."""
        attention = torch.softmax(scores, dim=0)
        return self.classifier(attention @ h), attention

    def forward(self, features: torch.Tensor) -> MILOutput:
        h, scores = self.scores(features)
        logits, attention = self.pool(h, scores)
        return MILOutput(logits, scores, attention, h)


class CLAMSB(ABMIL):
    """CLAM-SB: :class:`ABMIL` plus one 2-way instance classifier per class.

    The instance (clustering) loss of a bag of class ``c`` (Lu et al. 2021, CLAM-SB with
    ``subtyping=False``): classifier ``c`` learns to call the ``k`` most-attended patches
    positive and the ``k`` least-attended negative; the other class's classifier is not
    trained. Cross-entropy replaces the paper's smooth top-1 SVM (CLAM offers both; CE
    needs no extra package and has the same minimiser on separable pseudo-labels).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128, attention_dim: int = 64, dropout: float = 0.25):
        super().__init__(in_dim, hidden_dim, attention_dim, dropout)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden_dim, 2) for _ in (NORMAL, TUMOR)])

    def instance_loss(self, out: MILOutput, label: int, k: int) -> torch.Tensor:
        """Cross-entropy of classifier ``label`` on the top-k (target 1) and bottom-k (target 0)
        patches by attention; ``k`` is capped at half the bag."""
        k = max(1, min(k, len(out.scores) // 2))
        top = torch.topk(out.scores, k).indices
        bottom = torch.topk(-out.scores, k).indices
        chosen = out.instances[torch.cat([top, bottom])]
        targets = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(chosen.device)
        return F.cross_entropy(self.instance_classifiers[int(label)](chosen), targets)


#: ``model.aggregator`` -> class
AGGREGATORS = {"abmil": ABMIL, "clam_sb": CLAMSB}


def build_aggregator(name: str, in_dim: int, hidden_dim: int, attention_dim: int, dropout: float) -> ABMIL:
    if name not in AGGREGATORS:
        raise ConfigError(f"model.aggregator={name!r} is not a MIL aggregator; known: {sorted(AGGREGATORS)}")
    return AGGREGATORS[name](in_dim, hidden_dim, attention_dim, dropout)
