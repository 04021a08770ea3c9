"""Attention MIL, known answers: gated attention computed by hand for fixed weights (Ilse et
al. 2018, eq. 9), attention that finds the one instance carrying the signal after training,
CLAM-SB's instance loss by hand, the registry, the stratified slide split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vistumor.data.bags import slide_split
from vistumor.errors import ConfigError
from vistumor.model.aggregators import ABMIL, AGGREGATORS, CLAMSB, build_aggregator
from vistumor.model.mil import MILClassifier
from vistumor.stats import rank_auc


def fixed_abmil(cls=ABMIL) -> ABMIL:
    """D=2 -> hidden 2 (fc = identity), attention width 1: V = [1, 0], U = [0, 1], w = 2."""
    net = cls(in_dim=2, hidden_dim=2, attention_dim=1, dropout=0.0)
    with torch.no_grad():
        net.fc[0].weight.copy_(torch.eye(2))
        net.fc[0].bias.zero_()
        net.attention.V.weight.copy_(torch.tensor([[1.0, 0.0]]))
        net.attention.V.bias.zero_()
        net.attention.U.weight.copy_(torch.tensor([[0.0, 1.0]]))
        net.attention.U.bias.zero_()
        net.attention.w.weight.fill_(2.0)
        net.attention.w.bias.zero_()
        net.classifier.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        net.classifier.bias.zero_()
    return net.eval()


def test_gated_attention_equals_the_hand_computed_equation():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    with torch.no_grad():
        out = fixed_abmil()(h)
    # a_k = 2 * tanh(h_k1) * sigmoid(h_k2)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    a = [2 * math.tanh(1) * sig(0), 2 * math.tanh(0) * sig(1), 2 * math.tanh(2) * sig(2)]
    np.testing.assert_allclose(out.scores.numpy(), a, rtol=1e-6)
    soft = np.exp(a) / np.exp(a).sum()
    np.testing.assert_allclose(out.attention.numpy(), soft, rtol=1e-6)
    z = soft @ h.numpy()  # eq. 8: attention-weighted mean of the embeddings
    np.testing.assert_allclose(out.logits.numpy(), [0.0, z.sum()], rtol=1e-6)


def test_clam_instance_loss_is_cross_entropy_on_top_and_bottom_attended():
    net = fixed_abmil(CLAMSB)
    with torch.no_grad():
        for clf in net.instance_classifiers:
            clf.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))  # logit_1 = h_1
            clf.bias.zero_()
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, 0.0]])
    with torch.no_grad():
        out = net(h)
    order = np.argsort(-out.scores.numpy())  # top attended first
    top, bottom = int(order[0]), int(order[-1])  # k = 1
    x = h.numpy()

    def ce(logit1: float, target: int) -> float:  # 2-way CE with logits (0, logit1)
        p1 = 1 / (1 + math.exp(-logit1))
        return -math.log(p1 if target else 1 - p1)

    expected = (ce(x[top, 0], 1) + ce(x[bottom, 0], 0)) / 2
    assert net.instance_loss(out, 1, k=1).item() == pytest.approx(expected, rel=1e-6)
    # k is capped at half the bag: k=10 on 4 instances uses the top 2 and the bottom 2
    two = [int(i) for i in order[:2]], [int(i) for i in order[-2:]]
    expected2 = (sum(ce(x[i, 0], 1) for i in two[0]) + sum(ce(x[i, 0], 0) for i in two[1])) / 4
    assert net.instance_loss(out, 0, k=10).item() == pytest.approx(expected2, rel=1e-6)


def test_clam_loss_mixes_bag_and_instance_loss_by_weight():
    model = MILClassifier("clam_sb", in_dim=2, hidden_dim=2, attention_dim=1, dropout=0.0, instance_weight=0.3,
                          instance_k=1)
    model.net = fixed_abmil(CLAMSB)
    h, label = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]), torch.tensor(1)
    out = model(h)
    bag = torch.nn.functional.cross_entropy(out.logits[None], label.view(1)).item()
    inst = model.net.instance_loss(out, 1, 1).item()
    assert model.loss(out, label).item() == pytest.approx(0.7 * bag + 0.3 * inst, rel=1e-6)


def signal_bags(n_bags: int = 80, size: int = 12, dim: int = 4, seed: int = 0):
    """Bags of noise; a positive bag has one instance with +6 on feature 0 (the key instance)."""
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n_bags):
        x = rng.normal(0, 1, (size, dim)).astype(np.float32)
        label, key = i % 2, int(rng.integers(size))
        if label:
            x[key, 0] += 6.0
        bags.append((torch.from_numpy(x), torch.tensor(label), key))
    return bags


def test_abmil_attention_concentrates_on_the_instance_carrying_the_signal():
    torch.manual_seed(0)
    model = MILClassifier("abmil", in_dim=4, hidden_dim=16, attention_dim=8, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=1e-3)
    for _ in range(10):
        for x, label, _ in signal_bags():
            opt.zero_grad()
            model.loss(model(x), label).backward()
            opt.step()
    model.eval()
    test = signal_bags(40, seed=1)
    with torch.no_grad():
        outs = [(model(x), label, key) for x, label, key in test]  # 20 positive, 20 negative
    probs = np.array([float(model.slide_probability(o)) for o, _, _ in outs])
    labels = np.array([int(lab) for _, lab, _ in outs])
    assert rank_auc(labels == 1, probs) > 0.9  # slide AUC on held-out bags
    on_key = [float(o.attention[key]) for o, lab, key in outs if lab == 1]
    assert np.mean(on_key) > 0.5  # uniform would be 1/12
    assert all(int(torch.argmax(o.attention)) == key for o, lab, key in outs if lab == 1)


def test_registry_and_bad_values():
    assert set(AGGREGATORS) == {"abmil", "clam_sb"}
    with pytest.raises(ConfigError, match="model.aggregator='transmil' is not a MIL aggregator"):
        build_aggregator("transmil", 4, 4, 4, 0.0)
    with pytest.raises(ConfigError, match="in_dim"):
        MILClassifier("abmil", in_dim=0)
    with pytest.raises(ConfigError, match="instance_weight"):
        MILClassifier("clam_sb", in_dim=4, instance_weight=1.5)


def test_split_is_by_slide_stratified_and_seeded():
    ids = [f"s{i:02d}" for i in range(20)]
    labels = [i % 2 for i in range(20)]
    split = slide_split(ids, labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert split == slide_split(ids, labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    for name, count in (("test", 2), ("val", 2), ("train", 6)):
        for label in (0, 1):
            assert sum(split[s] == name and lab == label for s, lab in zip(ids, labels, strict=True)) == count
    assert split != slide_split(ids, labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=4)
    with pytest.raises(ConfigError, match="unknown split"):
        slide_split(ids, labels, {"tran": 1.0}, 0)


def test_a_mil_checkpoint_records_its_kind_and_loads_only_as_mil(tmp_path):
    import lightning as L

    from vistumor.model.checkpoints import load_model, read_checkpoint
    from vistumor.model.kinds import ModelKind, model_kind
    from vistumor.model.mil import load_mil

    model = MILClassifier("clam_sb", in_dim=4, hidden_dim=8, attention_dim=4, instance_weight=0.3)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "mil.ckpt")
    ckpt = read_checkpoint(tmp_path / "mil.ckpt")
    assert model_kind(ckpt) is ModelKind.MIL and model_kind(model) is ModelKind.MIL
    loaded = load_mil(tmp_path / "mil.ckpt")
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits)
    with pytest.raises(ConfigError, match="mil.ckpt: a mil checkpoint"):
        load_model(tmp_path / "mil.ckpt")  # the patch models' loader refuses it in one line
