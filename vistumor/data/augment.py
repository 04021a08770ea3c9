"""Albumentations pipelines built from config, and an H&E stain jitter.

Pipelines work on RGB ``uint8`` patches already resized to the model's input size and
return ``uint8``: normalisation with the backbone's own mean/std happens on the device,
inside the model (:class:`vistumor.model.classifier.PatchClassifier`), where it is nearly free
and cannot disagree with the backbone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from hydra.utils import instantiate

# Ruifrok & Johnston (2001) stain matrix, rows = optical-density vectors of H, E, DAB (as skimage).
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


class RandomDihedral(A.DualTransform):
    """One of the 8 flips/rotations of the square (the dihedral group D4), uniformly.

    Tissue has no orientation, so all eight are equally plausible. Same distribution as
    ``albumentations.D4`` but through ``cv2.flip``/``cv2.rotate`` (~10x faster than numpy's
    ``rot90`` + copy), applied to image and mask alike.
    """

    # element k: rotate k % 4 quarter turns clockwise, then flip horizontally when k >= 4
    _ROTATIONS = (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)

    def __init__(self, p: float = 1.0):
        super().__init__(p=p)

    def get_params(self) -> dict:
        return {"element": int(self.random_generator.integers(8))}

    def apply(self, img: np.ndarray, element: int = 0, **params) -> np.ndarray:
        return dihedral(img, element)

    def apply_to_mask(self, mask: np.ndarray, element: int = 0, **params) -> np.ndarray:
        return dihedral(mask, element)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def dihedral(image: np.ndarray, element: int) -> np.ndarray:
    """Element ``0..7`` of D4 applied to an image: ``element % 4`` clockwise quarter turns,
    then a horizontal flip for ``element >= 4``."""
    rotation = RandomDihedral._ROTATIONS[element % 4]
    out = image if rotation is None else cv2.rotate(image, rotation)
    return cv2.flip(out, 1) if element >= 4 else np.ascontiguousarray(out)


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


# optical density of each uint8 value: OD = -ln((I + 1) / 256)
_OD_LUT = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


def hed_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E, DAB concentrations of an RGB uint8 image.

    In optical density the whole jitter is one affine map, ``OD' = OD @ M + b`` with
    ``M = HED_FROM_RGB @ diag(alpha) @ RGB_FROM_HED`` and ``b = beta @ RGB_FROM_HED``, so it
    runs as a lookup table, one ``cv2.transform`` and one ``cv2.exp`` (~10x numpy's speed).
    """
    matrix = HED_FROM_RGB @ np.diag(alpha.astype(np.float32)) @ RGB_FROM_HED
    offset = beta.astype(np.float32) @ RGB_FROM_HED
    od = cv2.LUT(rgb, _OD_LUT)  # float32 table: OpenCV keeps the table's depth
    affine = np.hstack([matrix.T, offset[:, None]]).astype(np.float32)
    od = cv2.transform(od, affine)
    out = cv2.exp(-od) * 256.0 - 1.0
    return np.clip(out, 0, 255).round().astype(np.uint8)


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
