"""Which slides to run on: a split of the checkpoint's manifest, every slide of a data
config, or a folder or list of slide files in any format OpenSlide reads. Slides and their
annotations are found by the catalog's one rule (:mod:`vistumor.wsi.catalog`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vistumor.errors import ConfigError
from vistumor.files import read_slide_table
from vistumor.labels import CLASSES, parse_label
from vistumor.tiling.manifest import read_meta, slides_in
from vistumor.wsi.catalog import Annotations, glob_slides, slide_files


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
    found = glob_slides(root, layout.get("slides") or {})
    annotations = Annotations(root / layout["annotation_dir"] if layout.get("annotation_dir") else None)
    slides = sorted((SlideInput(p.stem, p, CLASSES.get(kind), annotations.find(p.stem)) for kind, p in found),
                    key=lambda s: s.slide_id)
    reference = layout.get("reference")
    return with_reference(slides, root / reference) if reference else slides


def from_files(paths: Sequence[str | Path], annotations: str | Path | None = None) -> list[SlideInput]:
    """Slide files, or folders searched for them (:func:`vistumor.wsi.catalog.slide_files`);
    two files of one slide name (``a.tif`` and ``a.TIF``) are refused before any is run."""
    found = Annotations(annotations)
    return [SlideInput(p.stem, p, None, found.find(p.stem)) for p in slide_files(paths)]


def with_reference(slides: list[SlideInput], reference: str | Path) -> list[SlideInput]:
    """Labels from a CSV with ``slide,label`` (``tumor``/``normal``, ``Tumor``/``Normal`` or 1/0;
    header optional; slide names, with or without their file suffix, matched case-insensitively)."""
    rows = read_slide_table(reference, "label", parse_label, "a slide and a label (tumor/normal/1/0)")
    labels = {Path(slide).stem.lower(): label for _, slide, label, _ in rows}
    return [SlideInput(s.slide_id, s.path, labels.get(s.slide_id.lower(), s.label), s.annotation)
            for s in slides]
