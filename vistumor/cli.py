"""Shared behaviour of the entry scripts: one readable line and exit 2 on a user error."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from vistumor.errors import VisTumorError

log = logging.getLogger("vistumor")

# Offline-friendly defaults; a user's own environment wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task(cfg)``; a :class:`VisTumorError` becomes one logged error line and exit status 2."""
    try:
        result = task(cfg)
    except VisTumorError as err:
        log.error("%s", err)
        sys.exit(2)
    log.info("result: %s", result)
    return result
