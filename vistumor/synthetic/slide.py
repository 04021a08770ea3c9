"""One synthetic slide, start to finish: tissue, lesions, nuclei, stain, artefacts, files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vistumor.errors import ConfigError
from vistumor.files import atomic_path
from vistumor.synthetic.artefacts import add_debris
from vistumor.synthetic.cells import populate
from vistumor.synthetic.lesions import place_lesions, rasterise
from vistumor.synthetic.stages import CYCLE, place_category_lesions
from vistumor.synthetic.stain import Stain, compose
from vistumor.synthetic.tissue import Style, region_maps
from vistumor.synthetic.writer import annotation_xml, write_tiff

KIND_CODES = {"normal": 0, "tumor": 1}
_REF_MPP = 0.25  # cell and lesion sizes are in level-0 pixels at this resolution
_MIN_SIZE = {"normal": 512, "tumor": 1024}  # a tumor slide needs room for two separate lesions


def check_args(path: str | Path, kind: str, size: int, mpp: float) -> None:
    """Raise :class:`ConfigError` naming ``path`` unless a ``kind`` slide can be drawn at this size."""
    if kind not in KIND_CODES:
        raise ConfigError(f"kind must be one of {sorted(KIND_CODES)}, got {kind!r}", path)
    if size < _MIN_SIZE[kind] or mpp <= 0:
        raise ConfigError(
            f"a {kind} slide needs size >= {_MIN_SIZE[kind]} and mpp > 0, got size={size}, mpp={mpp}", path
        )


def generate_slide(
    path: str | Path,
    kind: str,
    size: int = 6144,
    mpp: float = 0.25,
    seed: int | Sequence[int] = 0,
    annotation_path: str | Path | None = None,
    with_exclusion: bool = False,
    category: str | None = None,
) -> dict:
    """Render one synthetic slide (and its ASAP XML for a tumor slide).

    Args:
        path: output ``.tif``; written atomically.
        kind: ``"normal"`` or ``"tumor"``.
        size: level-0 width and height in pixels.
        mpp: level-0 microns per pixel; cells keep their physical size.
        seed: anything ``np.random.default_rng`` accepts; the file depends only on it
            and on the other arguments.
        annotation_path: where to write the lesion XML (tumor slides only).
        with_exclusion: add a ``_2`` exclusion polygon inside the largest lesion.
        category: a tumor slide's metastasis category, ``itc``, ``micro`` or ``macro``: lesions
            sized in mm so that the largest falls in it (:mod:`.stages`); None (default): sized
            as fractions of the slide side.

    Returns:
        Metadata: level sizes, tissue fraction, tumor area and every outline with its
        group, role (large / medium / micro / exclusion; with a category: itc / micro /
        macro / exclusion), bbox and level-0 coordinates; and the category when given.

    Raises:
        ConfigError: an unknown kind or category, a slide too small for its kind, or lesion
            files or a category asked of a normal slide.
    """
    check_args(path, kind, size, mpp)
    if kind == "normal" and (annotation_path is not None or with_exclusion or category is not None):
        raise ConfigError("normal slides have no lesions, hence no annotation, exclusion or category", path)
    if category is not None and category not in CYCLE:
        raise ConfigError(f"category must be one of {list(CYCLE)}, got {category!r}", path)
    rng = np.random.default_rng(seed)  # every draw below comes from it, in this order
    zoom = _REF_MPP / mpp
    stain, style = Stain.sample(rng), Style.sample(rng)
    maps = region_maps(rng, size, zoom, style)
    if kind == "normal":
        outlines = []
    elif category is None:
        outlines = place_lesions(rng, maps.signed_dist, size, zoom, with_exclusion)
    else:
        outlines = place_category_lesions(rng, maps.signed_dist, size, mpp, category, with_exclusion)
    labels = rasterise(outlines, size)
    canvas = populate(rng, maps, labels, outlines, zoom, style)
    image, tissue_fraction = compose(rng, maps, labels, canvas, stain, style, zoom)
    del canvas
    add_debris(rng, image, zoom)
    levels = write_tiff(Path(path), image, mpp, stain.jpeg_quality)
    if annotation_path is not None:
        with atomic_path(Path(annotation_path)) as tmp:
            tmp.write_text(annotation_xml(outlines), encoding="utf-8")
    return {
        "kind": kind,
        "size": size,
        "mpp": mpp,
        "levels": levels,
        "tissue_fraction": round(tissue_fraction, 4),
        "tumor_area_px": int(np.count_nonzero(labels)),
        "outlines": [o.to_dict() for o in outlines],
        **({"category": category} if category is not None else {}),
    }
