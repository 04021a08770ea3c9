"""Model-randomisation check (Adebayo et al. 2018): do the maps depend on the weights?"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr

from vistumor.explain.methods import explainer
from vistumor.labels import TUMOR


def randomized(model, seed: int = 0):
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


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Spearman rank correlation between paired maps."""
    values = []
    for x, y in zip(a, b, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant maps: correlation undefined
            rho = spearmanr(x.ravel(), y.ravel()).statistic
        if np.isfinite(rho):
            values.append(rho)
    return float(np.mean(values)) if values else float("nan")


def randomization_check(
    model, images: torch.Tensor, maps: dict[str, np.ndarray], target_layer: str | None, fast: bool,
    batch_size: int, seed: int,
) -> dict[str, float | None]:
    """Rank correlation of each method's trained maps with the randomised model's (None
    where every map is flat and the correlation undefined: JSON stays strict)."""
    random_model = randomized(model, seed)
    out = {}
    for method, trained in maps.items():
        random_maps = explainer(random_model, method, target_layer, fast, batch_size)(images, TUMOR).numpy()
        value = rank_similarity(trained, random_maps)
        out[method] = round(value, 4) if np.isfinite(value) else None
    return out
