"""Errors that reach the user as one readable line naming the file and the problem."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

#: exit status of a command that refuses its input (argparse's own status for a bad flag)
USER_ERROR_STATUS = 2


class VisTumorError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class SlideError(VisTumorError):
    """A slide cannot be opened or read (not a slide, truncated, too small, no tissue...)."""


class AnnotationError(VisTumorError):
    """An annotation file is missing, malformed, hostile or uses an unmapped group."""


class ManifestError(VisTumorError):
    """A manifest is missing, stale, or does not match the configuration asking for it."""


class ConfigError(VisTumorError):
    """A configuration value is invalid (unknown model, impossible split, ...)."""


class BadPatchError(VisTumorError):
    """A patch's pixels cannot be read during training (``data.on_bad_patch=fail``)."""


def user_error(err: BaseException | str, log: logging.Logger | None = None) -> int:
    """Say a refused input in one line and return :data:`USER_ERROR_STATUS`: the one error path
    of every command line (``return user_error(err)`` from an argparse ``main``).

    The line is ``error: <err>`` on stderr, or ``log.error`` where logging carries it (a Hydra
    task, whose log file keeps it too).
    """
    if log is not None:
        log.error("%s", err)
    else:
        print(f"error: {err}", file=sys.stderr)
    return USER_ERROR_STATUS
