"""The comparison table: intervals over slides, the paired test against the best run, the
operating point chosen on validation, and slide-level results joined from whole-slide runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vistumor.errors import ConfigError
from vistumor.evaluate.camelyon16.auc import youden_threshold
from vistumor.runs import intervals
from vistumor.runs.compare import collect, to_markdown


def test_youden_threshold_hand_computed():
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.4, 0.6, 0.35, 0.7, 0.9]
    # thresholds: 0.35 -> TPR 1, FPR 2/3 (J 1/3); 0.6 -> TPR 2/3, FPR 1/3 (J 1/3); 0.7 -> TPR 2/3, FPR 0 (J 2/3)
    assert youden_threshold(labels, probs) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.3])


def test_patch_intervals_resample_slides_not_patches(tmp_path):
    # two slides: every patch of slide a right, every patch of slide b wrong
    rows = [("a", 1, 0.9)] * 5 + [("a", 0, 0.1)] * 5 + [("b", 1, 0.2)] * 5 + [("b", 0, 0.8)] * 5
    path = tmp_path / "predictions.csv"
    pd.DataFrame(rows, columns=["slide_id", "label", "prob"]).to_csv(path, index=False)
    ci = intervals.patch_intervals(path, n=400)
    low, high = ci["test/acc_ci95"]
    assert low == 0.0 and high == 1.0  # a resample is {a, a}, {a, b} or {b, b}: 1, 0.5 or 0


def test_paired_difference_hand_made():
    first = {f"s{i}": (i % 2, 0.9 if i % 2 else 0.1) for i in range(10)}  # perfect ranking
    second = {f"s{i}": (i % 2, 0.5) for i in range(10)}  # no ranking at all
    diff = intervals.paired_difference(first, second, intervals.slide_auc_statistic, n=300)
    assert diff["difference"] == pytest.approx(0.5) and diff["slides"] == 10
    assert diff["low"] == pytest.approx(0.5) and diff["p"] == 0.0
    same = intervals.paired_difference(first, first, intervals.slide_auc_statistic, n=300)
    assert same["difference"] == 0.0 and same["p"] == 1.0
    assert intervals.paired_difference({"a": (1, 0.5)}, {"a": (1, 0.5)}, intervals.slide_auc_statistic) is None


def write_run(folder, name: str, probs_by_slide: dict, auc: float | None = None):
    """A finished training run (metrics.json, predictions.csv), with a whole-slide evaluation."""
    run = folder / name
    (run / "checkpoints").mkdir(parents=True)
    rows = [(s, label, p) for s, items in probs_by_slide.items() for label, p in items]
    predictions = pd.DataFrame(rows, columns=["slide_id", "label", "prob"])
    predictions.to_csv(run / "predictions.csv", index=False)
    labels, probs = predictions["label"].to_numpy(), predictions["prob"].to_numpy()
    acc = float(((probs >= 0.5) == labels).mean())
    (run / "metrics.json").write_text(json.dumps({"model": name, "test/acc": acc, "test/auroc": 0.9,
                                                  "run_dir": str(run)}))
    if auc is not None:
        infer = folder / f"infer_{name}"
        model_dir = infer / "models" / name
        (model_dir / "evaluation").mkdir(parents=True)
        (infer / "run.json").write_text(json.dumps({"models": [
            {"name": name, "checkpoint": str(run / "checkpoints" / "last.ckpt")}]}))
        (model_dir / "evaluation" / "evaluation.json").write_text(json.dumps(
            {"auc": auc, "auc_ci95": [auc - 0.1, auc], "froc": 0.5, "froc_ci95": [0.4, 0.6]}))
        slides = pd.DataFrame({"slide": list(probs_by_slide), "status": "done",
                               "label": ["tumor" if i % 2 else "normal" for i in range(len(probs_by_slide))],
                               "score": [0.9 if i % 2 else 0.1 for i in range(len(probs_by_slide))]})
        slides.to_csv(model_dir / "slides.csv", index=False)
    return run


def test_the_table_joins_slide_results_and_compares_with_the_best(tmp_path):
    good = {f"s{i}": [(1, 0.9), (0, 0.1)] for i in range(6)}
    write_run(tmp_path, "a_good", good, auc=1.0)
    write_run(tmp_path, "b_also", good, auc=0.9)
    table = collect(tmp_path)
    assert list(table["model"]) == ["a_good", "b_also"]
    assert table["slide AUC"].tolist() == [1.0, 0.9] and table["FROC 95% CI"].iloc[0] == [0.4, 0.6]
    assert table["accuracy 95% CI"].iloc[0] == [1.0, 1.0]
    assert table["vs best (paired, slides)"].tolist()[0].startswith("best slide AUC")
    # the same slide scores: no difference, p = 1
    assert table["vs best (paired, slides)"].tolist()[1] == "slide AUC +0.000 [+0.000, +0.000], p=1"
    markdown = to_markdown(table)
    assert "| 1.000 [0.900, 1.000] |" in markdown and "95% CI" not in markdown
    assert np.isfinite(table["accuracy"]).all()
