"""Which slides to run on: a split of the checkpoint's manifest, every slide of a data
config, or a folder or list of slide files in any format OpenSlide reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vistumor.errors import ConfigError
from vistumor.files import read_slide_table
from vistumor.labels import CLASSES, parse_label
from vistumor.tiling.catalog import ANNOTATION_SUFFIXES
from vistumor.tiling.manifest import read_meta, slides_in
from vistumor.wsi.slide import SLIDE_SUFFIXES

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SlideInput:
    """One slide to run on, with what is known about it.

    Attributes:
        label: ``TUMOR``/``NORMAL`` when known (manifest kind, data layout, reference CSV).
        annotation: its lesion annotation, when there is one.
    """

    slide_id: str
    path: Path
    label: int | None = None
    annotation: Path | None = None


def from_manifest(manifest_path: str | Path, split: str) -> list[SlideInput]:
    """The slides of a manifest split (the checkpoint's own test slides, typically)."""
    out = [SlideInput(slide_id, Path(info["path"]), CLASSES.get(info.get("kind")),
                      Path(info["annotation"]) if info.get("annotation") else None)
           for slide_id, info in sorted(slides_in(read_meta(manifest_path), split).items())]
    if not out:
        raise ConfigError(f"the manifest has no slide in split '{split}'", manifest_path)
    return out


def from_layout(root: str | Path, layout: Mapping) -> list[SlideInput]:
    """Every slide a data layout lists (``layout.slides``: kind -> globs; kinds other than
    normal/tumor are unlabelled unless ``layout.reference`` names a ``slide,label`` CSV)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("data folder not found", root)
    ann_dir = root / layout["annotation_dir"] if layout.get("annotation_dir") else None
    found: dict[str, SlideInput] = {}
    for kind, patterns in (layout.get("slides") or {}).items():
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            for path in sorted(root.glob(pattern)):
                if path.is_file() and not path.name.startswith("."):
                    other = found.get(path.stem)
                    if other is not None and other.path != path:
                        raise ConfigError(f"{other.path} and {path} are both slide '{path.stem}'", root)
                    annotation = _annotation(ann_dir, path.stem)
                    found[path.stem] = SlideInput(path.stem, path, CLASSES.get(kind), annotation)
    reference = layout.get("reference")
    slides = sorted(found.values(), key=lambda s: s.slide_id)
    return with_reference(slides, root / reference) if reference else slides


def from_files(paths: Sequence[str | Path], annotations: str | Path | None = None) -> list[SlideInput]:
    """Slide files, or folders searched for them (:data:`SLIDE_SUFFIXES`)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError("slide file or folder not found", path)
    if not files:
        raise ConfigError(f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in {[str(p) for p in paths]}")
    ann_dir = Path(annotations) if annotations else None
    return [SlideInput(p.stem, p, None, _annotation(ann_dir, p.stem)) for p in files]


def with_reference(slides: list[SlideInput], reference: str | Path) -> list[SlideInput]:
    """Labels from a CSV with ``slide,label`` (``tumor``/``normal``, ``Tumor``/``Normal`` or 1/0;
    header optional; slide names, with or without their file suffix, matched case-insensitively)."""
    rows = read_slide_table(reference, "label", parse_label, "a slide and a label (tumor/normal/1/0)")
    labels = {Path(slide).stem.lower(): label for _, slide, label, _ in rows}
    return [SlideInput(s.slide_id, s.path, labels.get(s.slide_id.lower(), s.label), s.annotation)
            for s in slides]


def _annotation(folder: Path | None, slide_id: str) -> Path | None:
    if folder is None:
        return None
    for suffix in ANNOTATION_SUFFIXES:
        for name in (slide_id, slide_id.lower(), slide_id.capitalize()):
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None
