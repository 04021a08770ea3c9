"""What the entry scripts run: plain functions of a composed config, returning results.

``tiling.py`` calls :func:`tile`, ``train.py`` :func:`train`, ``explain.py`` :func:`explain`,
``infer.py`` :func:`infer`;
tests call them directly with a composed, shrunken config. Each lives in its own module and
is imported on first use, so tiling (and every tiling shard of a cluster job) starts
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"tile": "tiling", "train": "training", "explain": "explaining", "infer": "inferring"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["tile", "train", "explain", "infer"]
