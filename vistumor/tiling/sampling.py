"""Balanced, seeded sampling of labelled tiles and the train/val/test split.

The split is by **slide** by default: every patch of a slide lands in the same split, and
each split holds tumor and normal slides, so test accuracy measures generalisation to
unseen slides. The paper's random patch split (90/10) stays available as ``mode=patch``,
an explicit choice, because it lets patches of one slide straddle train and test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vistumor.errors import ManifestError
from vistumor.labels import CLASS_NAMES, NORMAL, TUMOR, lacking

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SamplingParams:
    """How many tiles, of which classes, from which slides (config ``tiling.sampling``).

    Attributes:
        target_total: patches in the manifest over all splits (paper ~20,000); None = all
            that balancing allows.
        tumor_share: share of tumor patches in each split (0.5 = balanced, as the paper).
        max_patches_per_slide: at most this many patches (both classes) from any one slide.
        normal_from_tumor_slides: also take normal patches from tumor-free tissue of tumor slides.
    """

    target_total: int | None = 20000
    tumor_share: float = 0.5
    max_patches_per_slide: int | None = None
    normal_from_tumor_slides: bool = True


@dataclass(frozen=True)
class SplitParams:
    """How patches are divided (config ``tiling.split``).

    Attributes:
        mode: ``slide`` (default; no slide straddles two splits) or ``patch`` (the paper's
            random patch split).
        fractions: split name -> share of slides (``slide``) or patches (``patch``).
    """

    mode: str = "slide"
    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15}
    )


def sample_manifest(
    tiles: pd.DataFrame, sampling: SamplingParams, split: SplitParams, seed: int
) -> pd.DataFrame:
    """Choose and split patches.

    Args:
        tiles: candidate tiles of all slides, with at least ``slide_id``, ``kind`` (of the
            slide) and ``label`` (``TUMOR``, ``NORMAL`` or ambiguous).
    Returns:
        The chosen rows with a ``split`` column, sorted by split, slide, y0, x0.
    """
    _check(sampling, split)
    rng = np.random.default_rng(seed)
    candidates = _candidates(tiles, sampling, rng)
    fractions = {k: float(v) for k, v in split.fractions.items() if float(v) > 0}
    if split.mode == "slide":
        kinds = tiles.groupby("slide_id")["kind"].first()
        assignment = split_slides(kinds, fractions, rng)
        candidates = candidates.assign(split=candidates["slide_id"].map(assignment))
        _require_both_classes(candidates, fractions, split.mode)  # names the class that is missing
        targets = _targets(sampling, fractions)
        parts = [
            _balance(group, targets[name], sampling.tumor_share, rng).assign(split=name)
            for name in fractions
            for group in [candidates[candidates["split"] == name]]
        ]
        chosen = pd.concat(parts, ignore_index=True)
    else:
        _require_classes(candidates["label"], "the dataset", split.mode)
        chosen = _balance(candidates, sampling.target_total, sampling.tumor_share, rng)
        chosen = chosen.assign(split=split_patches(chosen["label"].to_numpy(), fractions, rng))
    _require_both_classes(chosen, fractions, split.mode)
    order = {name: i for i, name in enumerate(SPLITS)}
    return (
        chosen.assign(_order=chosen["split"].map(lambda s: order.get(s, len(order))))
        .sort_values(["_order", "slide_id", "y0", "x0"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def split_slides(kinds: pd.Series, fractions: Mapping[str, float], rng) -> dict[str, str]:
    """Assign slides to splits, separately per slide kind, each split getting at least one.

    Args:
        kinds: slide_id -> kind (``tumor``/``normal``).
    """
    assignment: dict[str, str] = {}
    for kind in sorted(kinds.unique()):
        ids = np.array(sorted(kinds.index[kinds == kind]))
        counts = allocate(len(ids), fractions)
        if counts is None:
            raise ManifestError(
                f"{len(ids)} {kind} slide(s) cannot fill {len(fractions)} splits "
                f"{dict(fractions)} by slide: add slides or set tiling.split.mode=patch"
            )
        ids = ids[rng.permutation(len(ids))]
        start = 0
        for name, n in counts.items():
            assignment.update({slide: name for slide in ids[start : start + n]})
            start += n
    return assignment


def allocate(n: int, fractions: Mapping[str, float]) -> dict[str, int] | None:
    """Split ``n`` items by ``fractions`` (largest remainder), at least one per split; None if impossible."""
    if n < len(fractions):
        return None
    total = sum(fractions.values())
    exact = {k: n * v / total for k, v in fractions.items()}
    counts = {k: max(1, int(np.floor(v))) for k, v in exact.items()}
    while sum(counts.values()) > n:  # the minimum of one overshot: take from the largest
        biggest = max((k for k in counts if counts[k] > 1), key=lambda k: counts[k] - exact[k])
        counts[biggest] -= 1
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def split_patches(labels: np.ndarray, fractions: Mapping[str, float], rng) -> np.ndarray:
    """Random patch split, stratified by label (the paper's protocol)."""
    out = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        index = index[rng.permutation(len(index))]
        counts = allocate(len(index), fractions) or {next(iter(fractions)): len(index)}
        start = 0
        for name, n in counts.items():
            out[index[start : start + n]] = name
            start += n
    return out


def _candidates(tiles: pd.DataFrame, sampling: SamplingParams, rng) -> pd.DataFrame:
    usable = tiles["label"].isin([TUMOR, NORMAL])
    if not sampling.normal_from_tumor_slides:
        usable &= ~((tiles["kind"] == CLASS_NAMES[TUMOR]) & (tiles["label"] == NORMAL))
    candidates = tiles[usable]
    cap = sampling.max_patches_per_slide
    if cap is not None:
        keep = [
            group.index[rng.permutation(len(group))[:cap]] for _, group in candidates.groupby("slide_id")
        ]
        candidates = candidates.loc[np.sort(np.concatenate(keep))] if keep else candidates
    return candidates


def _targets(sampling: SamplingParams, fractions: Mapping[str, float]) -> dict[str, int | None]:
    """Patches per split: ``target_total`` divided by largest remainder, so they sum to it."""
    if sampling.target_total is None:
        return dict.fromkeys(fractions)
    return allocate(sampling.target_total, fractions) or dict.fromkeys(fractions, 0)


def _balance(tiles: pd.DataFrame, target: int | None, tumor_share: float, rng) -> pd.DataFrame:
    """At most ``target`` rows, ``tumor_share`` of them tumor, drawn uniformly per class."""
    tumor = tiles[tiles["label"] == TUMOR]
    normal = tiles[tiles["label"] == NORMAL]
    total = min(
        np.inf if target is None else target,
        len(tumor) / tumor_share if tumor_share > 0 else np.inf,
        len(normal) / (1 - tumor_share) if tumor_share < 1 else np.inf,
    )
    if not np.isfinite(total):
        total = len(tumor) + len(normal)
    total = int(np.floor(total + 1e-9))  # e.g. 3 / (1 - 0.7) = 9.999999999999998 is 10
    n_tumor = min(len(tumor), int(round(total * tumor_share)))
    n_normal = min(len(normal), total - n_tumor)  # rounding both could overshoot the target
    pick = [
        frame.iloc[np.sort(rng.choice(len(frame), n, replace=False))]
        for frame, n in ((tumor, n_tumor), (normal, n_normal))
    ]
    return pd.concat(pick)


def _require_both_classes(chosen: pd.DataFrame, fractions: Mapping[str, float], mode: str) -> None:
    for name in fractions:
        _require_classes(chosen.loc[chosen["split"] == name, "label"], f"split '{name}'", mode)


def _require_classes(labels: pd.Series, where: str, mode: str) -> None:
    problem = lacking(labels)
    if problem:
        raise ManifestError(
            f"{where} has {problem} (split by {mode}); add slides, change "
            "tiling.split.fractions, or lower tiling.labels.min_tumor_fraction"
        )


def _check(sampling: SamplingParams, split: SplitParams) -> None:
    if split.mode not in ("slide", "patch"):
        raise ManifestError(f"tiling.split.mode must be 'slide' or 'patch', got {split.mode!r}")
    if not 0 < sampling.tumor_share < 1:
        raise ManifestError(f"tiling.sampling.tumor_share must be in (0, 1), got {sampling.tumor_share}")
    unknown = set(split.fractions) - set(SPLITS)
    if unknown:
        raise ManifestError(f"tiling.split.fractions has unknown splits {sorted(unknown)}; known: {SPLITS}")
    if any(float(v) < 0 for v in split.fractions.values()) or sum(split.fractions.values()) <= 0:
        raise ManifestError(f"tiling.split.fractions must be >= 0 and not all 0: {dict(split.fractions)}")
