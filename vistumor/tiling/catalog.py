"""Which slides a dataset holds, what kind they are, and where their annotations are.

The layout is configuration (``data.layout``): CAMELYON16 keeps normal and tumor slides in
``training/normal`` and ``training/tumor`` and the tumor outlines, one file per slide named
after it, in ``training/lesion_annotations``. Files are found and matched by the one rule of
:mod:`vistumor.wsi.catalog` (names ignore case; two files of one name are refused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vistumor.errors import ConfigError
from vistumor.labels import CLASS_NAMES
from vistumor.wsi.catalog import ANNOTATION_SUFFIXES, Annotations, glob_slides

#: slide kinds: a tumor slide has lesions (and must have an annotation), a normal one none
KINDS = CLASS_NAMES


@dataclass(frozen=True)
class SlideRecord:
    """One slide of a dataset.

    Attributes:
        slide_id: file stem, unique within the dataset (ignoring case).
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
    ann_dir = root / annotation_dir if annotation_dir else None
    annotations = Annotations(ann_dir, annotation_suffixes)
    records = [SlideRecord(path.stem, path, kind, annotations.find(path.stem), ann_dir)
               for kind, path in glob_slides(root, globs)]
    if not records:
        patterns = {k: list(v) if not isinstance(v, str) else [v] for k, v in globs.items()}
        raise ConfigError(f"no slides found (looked for {patterns})", root)
    return sorted(records, key=lambda r: r.slide_id)
