"""Which slides a dataset holds, what kind they are, and where their annotations are.

The layout is configuration (``data.layout``): CAMELYON16 keeps normal and tumor slides in
``training/normal`` and ``training/tumor`` and the tumor outlines, one file per slide named
after it, in ``training/lesion_annotations``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vistumor.errors import ConfigError
from vistumor.labels import CLASS_NAMES

#: slide kinds: a tumor slide has lesions (and must have an annotation), a normal one none
KINDS = CLASS_NAMES
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")


@dataclass(frozen=True)
class SlideRecord:
    """One slide of a dataset.

    Attributes:
        slide_id: file stem, unique within the dataset.
        kind: ``tumor`` (has lesions, must have an annotation) or ``normal``.
        annotation: the annotation file, or None when there is none.
        annotation_dir: where the annotation was looked for (for messages).
    """

    slide_id: str
    path: Path
    kind: str
    annotation: Path | None
    annotation_dir: Path | None = None


def find_slides(
    root: str | Path,
    globs: Mapping[str, Sequence[str]],
    annotation_dir: str | None,
    annotation_suffixes: Sequence[str] = ANNOTATION_SUFFIXES,
) -> list[SlideRecord]:
    """List the slides under ``root``, sorted by id.

    Args:
        globs: kind -> glob patterns relative to ``root``,
            e.g. ``{"normal": ["training/normal/*.tif"], "tumor": ["training/tumor/*.tif"]}``.
        annotation_dir: folder (relative to ``root``) holding ``<slide_id><suffix>`` files.
    """
    root = Path(root)
    unknown = set(globs) - set(KINDS)
    if unknown:
        raise ConfigError(f"data.layout.slides has unknown kinds {sorted(unknown)}; known: {KINDS}")
    if not root.is_dir():
        raise ConfigError("data folder not found", root)
    ann_dir = root / annotation_dir if annotation_dir else None
    records: dict[str, SlideRecord] = {}
    for kind, patterns in globs.items():
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            for path in sorted(root.glob(pattern)):
                if not path.is_file() or path.name.startswith("."):
                    continue
                slide_id = path.stem
                if slide_id in records:
                    raise ConfigError(
                        f"slide id '{slide_id}' is used twice: {records[slide_id].path} and {path}"
                    )
                annotation = _annotation_for(ann_dir, slide_id, annotation_suffixes)
                records[slide_id] = SlideRecord(slide_id, path, kind, annotation, ann_dir)
    if not records:
        patterns = {k: list(v) if not isinstance(v, str) else [v] for k, v in globs.items()}
        raise ConfigError(f"no slides found (looked for {patterns})", root)
    return [records[k] for k in sorted(records)]


def _annotation_for(folder: Path | None, slide_id: str, suffixes: Sequence[str]) -> Path | None:
    if folder is None:
        return None
    for suffix in suffixes:
        candidate = folder / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def shard(records: Sequence[SlideRecord], index: int, count: int) -> list[SlideRecord]:
    """The slides of shard ``index`` of ``count`` (round-robin over the sorted list)."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard_index={index} must be in [0, num_shards={count})")
    return list(records[index::count])
