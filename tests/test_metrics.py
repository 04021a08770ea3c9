"""Metrics on hand-built confusion matrices and probability lists, and their figures."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vistumor.model.metrics import METRIC_NAMES, ConfusionRates, StageMetrics, key, rates
from vistumor.runs.figures import confusion_figure, roc_figure

#: tumor probabilities and labels: at threshold 0.5, tp = 2 (0.9, and exactly 0.5 counts as
#: tumor), fn = 1 (0.2), fp = 1 (0.7), tn = 2 (0.1, 0.49)
PROBS = torch.tensor([0.9, 0.5, 0.2, 0.7, 0.1, 0.49])
LABELS = torch.tensor([1, 1, 1, 0, 0, 0])


def test_rates_of_a_hand_built_confusion_matrix():
    got = rates(tp=3, fp=1, tn=4, fn=2)
    expected = {
        "acc": 7 / 10, "fpr": 1 / 5, "fnr": 2 / 5, "recall": 3 / 5, "specificity": 4 / 5,
        "precision": 3 / 4, "f1": 2 / 3,  # 2 * 3/4 * 3/5 / (3/4 + 3/5) = 2 * 3 / (2 * 3 + 1 + 2)
    }
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert set(got) == set(METRIC_NAMES) - {"auroc"}


def test_empty_denominators_give_zero():
    assert rates(0, 0, 0, 0) == dict.fromkeys(rates(0, 0, 0, 0), 0.0)
    only_negatives = rates(tp=0, fp=0, tn=5, fn=0)
    assert only_negatives["acc"] == 1.0 and only_negatives["specificity"] == 1.0
    assert only_negatives["recall"] == only_negatives["precision"] == only_negatives["f1"] == 0.0
    assert only_negatives["fnr"] == only_negatives["fpr"] == 0.0


def test_confusion_counts_at_the_threshold():
    metric = ConfusionRates(threshold=0.5)
    metric.update(PROBS[:3], LABELS[:3])  # two batches sum
    metric.update(PROBS[3:], LABELS[3:])
    counts = {n: int(getattr(metric, n)) for n in ("tp", "fp", "tn", "fn")}
    assert counts == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values == pytest.approx(rates(2, 1, 2, 1))
    assert values["acc"] == pytest.approx(4 / 6)


def test_a_higher_threshold_moves_the_boundary_patch():
    metric = ConfusionRates(threshold=0.6)
    metric.update(PROBS, LABELS)
    assert (int(metric.tp), int(metric.fn), int(metric.fp), int(metric.tn)) == (1, 2, 1, 2)


def test_stage_metrics_keys_and_values():
    metrics = StageMetrics("val")
    metrics.update(PROBS, LABELS)
    values = metrics.compute()
    assert list(values) == [f"val/{n}" for n in METRIC_NAMES] == [key("val", n) for n in METRIC_NAMES]
    assert float(values["val/recall"]) == pytest.approx(2 / 3)
    assert float(values["val/fpr"]) == pytest.approx(1 / 3)
    # AUROC: of the 9 (tumor, normal) pairs the tumor patch scores higher in 6
    # (0.9 in 3; 0.5 over 0.1 and 0.49; 0.2 over 0.1), so 6 / 9
    assert float(values["val/auroc"]) == pytest.approx(6 / 9)
    metrics.reset()
    metrics.update(torch.tensor([0.9]), torch.tensor([1]))
    metrics.update(torch.tensor([0.1]), torch.tensor([0]))
    assert float(metrics.compute()["val/acc"]) == 1.0


def test_auroc_of_a_tiny_hand_example():
    metrics = StageMetrics("test")
    # positives 0.35, 0.8; negatives 0.1, 0.4: 3 of the 4 pairs ordered right
    metrics.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert float(metrics.compute()["test/auroc"]) == pytest.approx(0.75)


def test_figures_are_written(tmp_path):
    confusion = confusion_figure(tp=3, fp=1, tn=4, fn=2, path=tmp_path / "out" / "cm.png", title="x")
    roc = roc_figure(PROBS, LABELS, tmp_path / "roc.png")
    for path in (confusion, roc):
        assert path.is_file()
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cm.png", "out", "roc.png"]  # no temp files
