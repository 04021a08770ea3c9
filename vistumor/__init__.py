"""VisTumor: explainable tumor detection on lymph-node whole-slide images.

The pipeline flows one way, one module per stage::

    slide -> annotations -> tissue -> tiles -> sampling -> manifest (tiling)
    -> patches -> augment -> datamodule -> classifier -> metrics (training)
    -> cam -> localization -> callbacks / explain (explanations)
"""

__version__ = "0.1.0"
