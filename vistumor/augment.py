"""Albumentations pipelines built from config, and an H&E stain jitter.

Pipelines work on RGB ``uint8`` patches already resized to the model's input size and
return ``uint8``: normalisation with the backbone's own mean/std happens on the device,
inside the model (:class:`vistumor.classifier.PatchClassifier`), where it is nearly free
and cannot disagree with the backbone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import numpy as np
from hydra.utils import instantiate

# Ruifrok & Johnston (2001) stain matrix, rows = optical-density vectors of H, E, DAB (as skimage).
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


class HEDJitter(A.ImageOnlyTransform):
    """Stain augmentation in HED space (Tellez et al. 2018, "H&E stain augmentation").

    Each stain concentration ``c`` becomes ``c * alpha + beta`` with ``alpha ~ U(1 - sigma,
    1 + sigma)`` and ``beta ~ U(-bias, bias)`` drawn per image and per stain, which mimics
    the slide-to-slide colour variation of staining and scanning.
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.02, p: float = 0.5):
        super().__init__(p=p)
        self.sigma = sigma
        self.bias = bias

    def get_params(self) -> dict:
        rng = self.random_generator
        return {
            "alpha": rng.uniform(1 - self.sigma, 1 + self.sigma, 3).astype(np.float32),
            "beta": rng.uniform(-self.bias, self.bias, 3).astype(np.float32),
        }

    def apply(self, img: np.ndarray, alpha: np.ndarray, beta: np.ndarray, **params) -> np.ndarray:
        return hed_jitter(img, alpha, beta)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sigma", "bias")


def hed_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E, DAB concentrations of an RGB uint8 image."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    hed = od.reshape(-1, 3) @ HED_FROM_RGB
    od = (hed * alpha + beta) @ RGB_FROM_HED
    out = 256.0 * np.exp(-od) - 1.0
    return np.clip(out, 0, 255).round().astype(np.uint8).reshape(rgb.shape)


def build_pipeline(transforms: Sequence | None) -> A.Compose | None:
    """``A.Compose`` of the configured transforms (each a ``_target_`` node); None when empty."""
    if not transforms:
        return None
    built = [instantiate(t) if not isinstance(t, A.BasicTransform) else t for t in transforms]
    return A.Compose(built)


def reseed(pipeline: A.Compose | None, seed: int) -> None:
    """Give ``pipeline`` one shared random stream seeded with ``seed``.

    ``A.Compose.set_random_seed`` would seed every transform with the same number, which
    correlates their draws (horizontal and vertical flips would always coincide); one
    shared generator keeps them independent. Called once per data-loader worker.
    """
    if pipeline is not None:
        pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
