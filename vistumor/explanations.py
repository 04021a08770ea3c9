"""Explanations on demand: load checkpoints, pick patches, draw maps, score them.

Several checkpoints are explained on the same patches, so architectures can be compared
side by side (the paper's Figures 3-5: patch | Grad-CAM++ | saliency | ground truth, one
column block per model). Patches are chosen by the first model's outcome (true/false
positives/negatives, most confident first) or given by slide and coordinates. Every
scored patch gets its predictions and localization scores in a CSV; a JSON summarises.
An optional model-randomisation check (Adebayo et al. 2018) compares each model's maps
with those of the same architecture with re-initialised weights.
"""

from __future__ import annotations

import copy
import logging
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from vistumor import localization
from vistumor.cam import Explainer, check_method, preserved
from vistumor.classifier import PatchClassifier
from vistumor.errors import ConfigError
from vistumor.render import Row, grid

log = logging.getLogger(__name__)

CATEGORIES = ("tp", "fn", "fp", "tn")


# -- checkpoints -------------------------------------------------------------------------------


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> PatchClassifier:
    """A trained :class:`PatchClassifier` from a Lightning checkpoint, loaded with
    ``weights_only=True`` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"not a loadable VisTumor checkpoint ({first})", path) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "backbone" not in hparams or "state_dict" not in ckpt:
        raise ConfigError("not a VisTumor checkpoint (no backbone hyper-parameters / state_dict)", path)
    kwargs = {k: v for k, v in hparams.items() if k not in ("pretrained", "weights_path")}
    try:
        model = PatchClassifier(**kwargs, pretrained=False, weights_path=None)
    except TypeError as err:  # another module's hyper-parameters
        raise ConfigError(f"not a VisTumor checkpoint ({err})", path) from err
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"checkpoint weights do not fit {hparams['backbone']} ({err})", path) from err
    model.checkpoint_path = str(path)
    return model.to(device).eval()


def randomized(model: PatchClassifier, seed: int = 0) -> PatchClassifier:
    """The same architecture with every layer re-initialised (cascading randomisation's end).

    Initialised on the CPU from ``seed`` (the same weights on any device), without touching
    the caller's random state.
    """
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if module is not clone and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return clone.to(model.device).eval()


# -- selection -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Predictions of one model over the candidate patches."""

    name: str
    prob: np.ndarray
    pred: np.ndarray


def categories(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``tp``/``fn``/``fp``/``tn`` per patch (tumor is positive)."""
    out = np.empty(len(labels), dtype=object)
    out[(labels == 1) & (pred == 1)] = "tp"
    out[(labels == 1) & (pred == 0)] = "fn"
    out[(labels == 0) & (pred == 1)] = "fp"
    out[(labels == 0) & (pred == 0)] = "tn"
    return out


def select_by_outcome(
    labels: np.ndarray, prob: np.ndarray, threshold: float, kinds: Sequence[str], per_kind: int
) -> list[int]:
    """Up to ``per_kind`` patches of each outcome in ``kinds``, most confident first."""
    unknown = set(kinds) - set(CATEGORIES)
    if unknown:
        raise ConfigError(f"select.kinds has unknown outcomes {sorted(unknown)}; known: {CATEGORIES}")
    pred = (prob >= threshold).astype(int)
    cats = categories(labels, pred)
    confidence = np.where(pred == 1, prob, 1 - prob)  # in the call made (any threshold)
    chosen = []
    for kind in kinds:
        index = np.flatnonzero(cats == kind)
        chosen += [int(i) for i in index[np.argsort(-confidence[index], kind="stable")][:per_kind]]
    return chosen


def select_by_coordinates(describe, n: int, wanted: Sequence[Sequence]) -> list[int]:
    """Patches whose ``(slide_id, x0, y0)`` is listed (``x0``/``y0`` may be omitted)."""
    places = [describe(i) for i in range(n)]
    chosen = []
    for item in wanted:
        item = list(item)
        hits = [i for i, (s, x, y) in enumerate(places)
                if s == str(item[0]) and (len(item) < 3 or (x == int(item[1]) and y == int(item[2])))]
        if not hits:
            raise ConfigError(f"no patch at {item} in the selected split")
        chosen += hits
    return chosen


# -- maps and scores ------------------------------------------------------------------------------


def predict(model: PatchClassifier, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Tumor probabilities of ``uint8`` images, in eval mode (the model's modes are restored)."""
    out = []
    with preserved(model), torch.inference_mode():
        model.eval()
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(model.device)
            out.append(model(batch).float().softmax(1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def explain_maps(
    model: PatchClassifier, images: torch.Tensor, methods: Sequence[str], target_layer: str | None,
    fast: bool, batch_size: int,
) -> dict[str, np.ndarray]:
    """Maps for the tumor class, one array ``(N, H, W)`` per method."""
    return {
        m: Explainer(model, m, target_layer, fast=fast, batch_size=batch_size)(images, targets=1).numpy()
        for m in methods
    }


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Spearman rank correlation between paired maps (Adebayo et al. 2018)."""
    values = []
    for x, y in zip(a, b, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant maps: correlation undefined
            rho = spearmanr(x.ravel(), y.ravel()).statistic
        if np.isfinite(rho):
            values.append(rho)
    return float(np.mean(values)) if values else float("nan")


def check_methods(methods: Sequence[str]) -> list[str]:
    if not methods:
        raise ConfigError("explain.methods is empty")
    return [check_method(m) for m in methods]


def figure(
    path: Path, images: torch.Tensor, masks: np.ndarray, known: np.ndarray, labels: np.ndarray,
    models: Sequence[str], maps: dict[str, dict[str, np.ndarray]], probs: dict[str, np.ndarray],
    cats: np.ndarray, threshold: float, title: str,
) -> Path:
    """Patch | for each model: its maps | ground truth, one row per patch."""
    names = ("normal", "tumor")
    titles = [f"{m}\n{method}" for m in models for method in maps[m]]
    rows = []
    for i in range(len(images)):
        row_maps, captions = [], []
        for m in models:
            p = probs[m][i]
            for method in maps[m]:
                row_maps.append(fit(maps[m][method][i], images.shape[-2:]))
                captions.append(f"{names[int(p >= threshold)]} p={p:.2f}")
        rows.append(Row(images[i].permute(1, 2, 0).numpy(), masks[i] if known[i] else None,
                        f"{names[labels[i]]} ({cats[i]})", row_maps, captions))
    return grid(rows, titles, path, title=title)


def fit(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A map resized (bilinear) to ``size`` = (height, width): models of other input sizes
    are drawn over the same patch pixels."""
    if tuple(cam.shape) == tuple(size):
        return cam
    return np.clip(cv2.resize(cam.astype(np.float32), (int(size[1]), int(size[0]))), 0, 1)


def score_table(
    model_name: str, describe, indices: Sequence[int], labels: np.ndarray, prob: np.ndarray,
    threshold: float, cams: np.ndarray | None, masks: np.ndarray, known: np.ndarray,
    cam_threshold: float, tolerance: int,
) -> pd.DataFrame:
    """One row per patch: where it is, label, probability, outcome, localization scores."""
    pred = (prob >= threshold).astype(int)
    rows = []
    per_patch = (
        localization.batch_scores(cams, masks, known & (labels == 1), cam_threshold, tolerance)
        if cams is not None else [None] * len(indices)
    )
    for j, i in enumerate(indices):
        slide_id, x0, y0 = describe(i)
        row = {"model": model_name, "slide_id": slide_id, "x0": x0, "y0": y0,
               "label": int(labels[j]), "prob": round(float(prob[j]), 6), "pred": int(pred[j]),
               "outcome": categories(labels[j : j + 1], pred[j : j + 1])[0]}
        for name in localization.NAMES:
            row[f"cam_{name}"] = per_patch[j][name] if per_patch[j] else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
