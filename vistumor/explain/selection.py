"""Which patches to explain: by the model's outcome, or by slide and coordinates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vistumor.errors import ConfigError
from vistumor.labels import OUTCOMES, TUMOR, outcomes, predict


def select_by_outcome(
    labels: np.ndarray, prob: np.ndarray, threshold: float, kinds: Sequence[str], per_kind: int
) -> list[int]:
    """Up to ``per_kind`` patches of each outcome in ``kinds``, most confident first."""
    unknown = set(kinds) - set(OUTCOMES)
    if unknown:
        raise ConfigError(f"select.kinds has unknown outcomes {sorted(unknown)}; known: {OUTCOMES}")
    pred = predict(prob, threshold)
    cats = outcomes(labels, pred)
    confidence = np.where(pred == TUMOR, prob, 1 - prob)  # in the call made (any threshold)
    chosen = []
    for kind in kinds:
        index = np.flatnonzero(cats == kind)
        chosen += [int(i) for i in index[np.argsort(-confidence[index], kind="stable")][:per_kind]]
    return chosen


def select_by_coordinates(describe: Callable[[int], tuple], n: int, wanted: Sequence[Sequence]) -> list[int]:
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


def select_by_slides(describe: Callable[[int], tuple], n: int, slides: Sequence[str]) -> list[int]:
    """Patches of the listed slides."""
    wanted = {str(s) for s in slides}
    return [i for i in range(n) if describe(i)[0] in wanted]


def subsample(candidates: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` candidates: a seeded subset, in their original order."""
    if len(candidates) <= limit:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, limit, replace=False))


def tumor_indices(labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Positions of tumor patches whose masks are known (the ones localization scores)."""
    return np.flatnonzero((np.asarray(labels) == TUMOR) & np.asarray(known))
