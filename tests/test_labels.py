"""The one label and outcome vocabulary, on numpy, torch and plain lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vistumor.labels import (
    CLASS_NAMES,
    NORMAL,
    TUMOR,
    confusion_counts,
    lacking,
    missing_classes,
    name,
    outcomes,
    predict,
)

LABELS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
CALLS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_constants_and_names():
    assert (NORMAL, TUMOR) == (0, 1)
    assert CLASS_NAMES[TUMOR] == name(TUMOR) == "tumor" and name(NORMAL) == "normal"


def test_predict_is_at_or_above_the_threshold():
    prob = [0.2, 0.5, 0.49999, 0.9]
    assert predict(prob, 0.5).tolist() == [NORMAL, TUMOR, NORMAL, TUMOR]
    assert predict(torch.tensor(prob), 0.5).tolist() == [NORMAL, TUMOR, NORMAL, TUMOR]
    assert predict(torch.tensor(prob), 0.5).dtype == torch.long
    assert predict(np.array(prob), 0.95).tolist() == [NORMAL] * 4


def test_confusion_counts_of_hand_built_calls():
    expected = {"tp": 3, "fp": 1, "tn": 4, "fn": 2}
    assert confusion_counts(LABELS, CALLS) == expected
    counts = confusion_counts(torch.tensor(LABELS), torch.tensor(CALLS))
    assert {k: int(v) for k, v in counts.items()} == expected
    assert all(isinstance(v, torch.Tensor) for v in counts.values())  # no device sync


def test_outcomes_match_the_counts():
    got = outcomes(LABELS, CALLS)
    assert list(got) == ["tp", "tp", "tp", "fp", "fn", "fn", "tn", "tn", "tn", "tn"]
    assert {k: int((got == k).sum()) for k in ("tp", "fp", "tn", "fn")} == confusion_counts(LABELS, CALLS)


@pytest.mark.parametrize(
    ("labels", "missing", "phrase"),
    [([0, 1, 1], [], None), ([0, 0, 0], ["tumor"], "no tumor patches (3 normal)"),
     ([1, 1], ["normal"], "no normal patches (2 tumor)"), ([], ["tumor", "normal"], "no patches at all")],
)
def test_missing_classes_name_the_class(labels, missing, phrase):
    assert missing_classes(labels) == missing
    assert lacking(labels) == phrase
