"""Errors that reach the user as one readable line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


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
