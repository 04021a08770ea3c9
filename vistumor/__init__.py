"""VisTumor: explainable tumor detection on lymph-node whole-slide images.

The pipeline flows one way, one subpackage per stage::

    wsi (slides, annotations) -> tiling (tissue, grid, labels, manifest) -> data (patches,
    datamodule) -> model (backbones, classifier, metrics) -> explain (Grad-CAM++, saliency,
    localization) -> infer (whole-slide heatmaps, lesions) -> evaluate (slide AUC, lesion
    FROC) -> viewer

with ``labels`` (the label vocabulary), ``errors`` and ``files`` shared by all, ``runs``
(loggers, callbacks, comparison table) and ``tasks`` (what the entry scripts run) on top.
"""

import os

# Albumentations asks PyPI for a newer version when imported, unless this is set first; every
# code path (entry scripts, tests, notebooks importing vistumor.data) goes through here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
