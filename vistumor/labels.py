"""The one label and outcome vocabulary, shared by every stage.

A patch (or a slide) is ``NORMAL`` or ``TUMOR``; tiling also knows ``AMBIGUOUS`` tiles
(some annotated tumor, less than the threshold), which never reach a model. Tumor is the
positive class. A probability becomes a call only through :func:`predict`, and a call
meets its label only through :func:`outcomes` / :func:`confusion_counts`: nowhere else
writes ``prob >= threshold`` or compares labels with literal numbers.

Works on numpy arrays and torch tensors alike (only comparisons and boolean logic).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

NORMAL, TUMOR, AMBIGUOUS = 0, 1, -1
#: class name by label: ``CLASS_NAMES[TUMOR] == "tumor"``
CLASS_NAMES = ("normal", "tumor")
#: label by class name (patch folders, slide kinds)
CLASSES = {name: label for label, name in enumerate(CLASS_NAMES)}
#: outcome names, in the order reports list them
OUTCOMES = ("tp", "fn", "fp", "tn")
#: label spellings of a slide table: ours, 1/0, and the official reference.csv's Tumor/Normal
LABEL_SPELLINGS = {**CLASSES, "1": TUMOR, "0": NORMAL}


def parse_label(value: object) -> int | None:
    """``TUMOR``/``NORMAL`` of ``tumor``/``normal``/``1``/``0``/``Tumor``/``Normal``; None otherwise."""
    return LABEL_SPELLINGS.get(str(value).strip().lower())


def predict(prob: Any, threshold: float) -> Any:
    """Tumor calls of probabilities: ``TUMOR`` where ``prob >= threshold``, else ``NORMAL``.

    Returns an integer array (numpy) or a long tensor (torch), shaped as ``prob``.
    """
    called = _array(prob) >= threshold
    return called.long() if _is_torch(called) else called.astype(np.int64)


def is_tumor(labels: Any) -> Any:
    """Boolean mask of ``TUMOR`` labels (or calls)."""
    return labels == TUMOR


def outcomes(labels: Any, pred: Any) -> np.ndarray:
    """``tp``/``fn``/``fp``/``tn`` per item (tumor is positive), as a numpy string array."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    truth, call = is_tumor(labels), is_tumor(pred)
    out = np.empty(labels.shape, dtype=object)
    out[truth & call] = "tp"
    out[truth & ~call] = "fn"
    out[~truth & call] = "fp"
    out[~truth & ~call] = "tn"
    return out


def confusion_counts(labels: Any, pred: Any) -> dict[str, Any]:
    """``tp, fp, tn, fn`` of calls against labels: ints for numpy input, 0-d tensors for
    torch input (no device sync in a training step)."""
    truth, call = is_tumor(_array(labels)), is_tumor(_array(pred))
    masks = {"tp": call & truth, "fp": call & ~truth, "tn": ~call & ~truth, "fn": ~call & truth}
    return {k: _count(m) for k, m in masks.items()}


def _is_torch(values: Any) -> bool:
    return type(values).__module__.startswith("torch")  # no torch import: tiling stays torch-free


def _array(values: Any) -> Any:
    """A torch tensor as it is, anything else (lists, pandas) as a numpy array."""
    return values if _is_torch(values) else np.asarray(values)


def _count(mask: Any) -> Any:
    total = mask.sum()
    return total if _is_torch(total) else int(total)


def name(label: int) -> str:
    """``"normal"`` or ``"tumor"``."""
    return CLASS_NAMES[int(label)]


def missing_classes(labels: Iterable[int]) -> list[str]:
    """Names of the classes (tumor first) that ``labels`` lacks: ``[]`` when both are present."""
    present = set(np.asarray(labels).ravel().tolist())
    return [n for n, v in (("tumor", TUMOR), ("normal", NORMAL)) if v not in present]


def lacking(labels: Iterable[int]) -> str | None:
    """A readable phrase for the classes ``labels`` lacks, or None when both are there.

    ``no tumor patches (12 normal)``: says which class is missing and what is there.
    """
    labels = np.asarray(labels).ravel()
    missing = missing_classes(labels)
    if not missing:
        return None
    if len(missing) == 2:
        return "no patches at all"
    present = "normal" if missing == ["tumor"] else "tumor"
    return f"no {missing[0]} patches ({len(labels)} {present})"
