"""Synthetic CAMELYON16-like whole-slide images: the embedded default dataset.

Slides mimic the real files so downstream code runs unchanged on real CAMELYON16:
tiled (256 px) JPEG pyramidal TIFFs whose levels are successive main IFDs (what
OpenSlide's generic-TIFF reader expects), level-0 resolution tags giving
``openslide.mpp-x/y``, and lesion outlines in ASAP XML (groups ``_0``/``_1`` tumor,
``_2`` exclusion) in level-0 pixel coordinates, in the real folder layout::

    <root>/training/normal/normal_001.tif
    <root>/training/tumor/tumor_001.tif
    <root>/training/lesion_annotations/tumor_001.xml

Tissue is rendered in optical-density space (:mod:`.stain`), with per-slide stain vectors
and concentrations so that colour alone does not separate tumor from normal. The rendered
tumor region is exactly the rasterised annotation (lesions minus exclusions).

Modules, in the order the data flows: :mod:`.noise` (noise fields, periodic textures),
:mod:`.tissue` (region maps, phenotype), :mod:`.lesions` (outlines, rasterisation),
:mod:`.nuclei` (sprite banks), :mod:`.cells` (placement), :mod:`.artefacts` (tears, dust),
:mod:`.stain` (stain vectors, OD render), :mod:`.slide` (one slide), :mod:`.writer`
(pyramidal TIFF, ASAP XML), :mod:`.dataset` (the training set and its record), :mod:`.cli`;
:mod:`.stages` sizes lesions in mm for a metastasis category (``categories=True``).
"""

from vistumor.synthetic.cli import main
from vistumor.synthetic.dataset import GENERATOR_VERSION, MANIFEST, generate_dataset
from vistumor.synthetic.lesions import EXCLUSION_GROUP
from vistumor.synthetic.slide import KIND_CODES, generate_slide
from vistumor.synthetic.writer import TILE

__all__ = [
    "EXCLUSION_GROUP",
    "GENERATOR_VERSION",
    "KIND_CODES",
    "MANIFEST",
    "TILE",
    "generate_dataset",
    "generate_slide",
    "main",
]
