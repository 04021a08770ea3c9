"""A MIL checkpoint in the one pass: slide probability and attention heatmap of each slide.

:class:`MILScorer` is a :class:`~vistumor.infer.engine.Scorer`: per batch it embeds the
patches with the checkpoint's frozen trunk (:class:`~vistumor.infer.bags.TrunkFeatures`,
as bag extraction did) and returns each patch's raw attention score (a patch's score
depends on that patch alone). The slide's probability needs every patch, so the features
are kept (``N x D``, small) and pooled once the pass is over (:meth:`MILScorer.take`).

Outputs (:func:`write_attention_outputs`), beside a classifier's and with the same sidecar
geometry: ``heatmaps/<slide>.npy`` is the attention normalised per slide (cell value = mean
softmax attention of the patches covering the cell, divided by the slide's largest cell:
``[0, 1]``), ``attention/<slide>.npy`` the raw mean softmax attention (sums over patches to
1). Lesions and FROC detections come from the *evidence* map, slide probability x
normalised attention: peaks of attention on a slide the model calls tumor, low everywhere
on one it calls normal. The slide score is the MIL slide probability.
"""

from __future__ import annotations

import numpy as np
import torch

from vistumor.errors import VisTumorError
from vistumor.infer.bags import TrunkFeatures
from vistumor.infer.detections import nms_points, write_detections
from vistumor.infer.geometry import SlideGrid
from vistumor.infer.heatmap import ProbabilityMap, geometry, heatmap_figure, save_map
from vistumor.infer.lesions import find_lesions, write_lesions
from vistumor.model.mil import MILClassifier

SCORER_KIND = "attention"


class MILScorer:
    """A MIL checkpoint as a scorer: raw attention per patch now, the slide at :meth:`take`."""

    kind = SCORER_KIND

    def __init__(self, model: MILClassifier, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        self.trunk = TrunkFeatures(model.hparams.trunk, device)
        self.size = self.trunk.input_size
        self.reset()

    def reset(self) -> None:
        self._indices: list[np.ndarray] = []
        self._features: list[np.ndarray] = []

    def __call__(self, patches, x0, y0, size0):
        features = self.trunk(patches)
        self._features.append(features)
        self._indices.append(np.arange(len(features)) + sum(len(f) for f in self._features[:-1]))
        with torch.inference_mode():
            _, scores = self.model.net.scores(torch.from_numpy(features).to(self.device))
        return scores.float().cpu().numpy(), None

    @torch.inference_mode()
    def take(self, n: int) -> tuple[float, np.ndarray]:
        """The slide probability and per-patch softmax attention of the ``n`` patches seen
        since the last take (in pass order); resets."""
        features = np.concatenate(self._features) if self._features else np.zeros((0, 0), np.float32)
        self.reset()
        if len(features) != n:
            raise VisTumorError(f"MIL scorer saw {len(features)} patches of a {n}-patch grid")
        out = self.model(torch.from_numpy(features).to(self.device))
        return float(self.model.slide_probability(out)), out.attention.float().cpu().numpy()


def attention_maps(grid: SlideGrid, attention: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw per-cell attention (mean over the covering patches; NaN off tissue) and the same
    divided by its largest cell."""
    cells = ProbabilityMap(grid)
    cells.add(np.arange(len(grid)), attention)
    raw = cells.result()
    peak = np.nanmax(raw) if np.isfinite(raw).any() else 0.0
    return raw, (raw / peak if peak > 0 else np.zeros_like(raw)).astype(np.float32)


def write_attention_outputs(item, grid: SlideGrid, m, pmap, canvas, params, annotation, checksum=None) -> dict:
    """Heatmaps (normalised and raw attention, png), lesions, detections and figure of a MIL
    model; the facts :func:`~vistumor.infer.slide_run.write_outputs` returns for a classifier."""
    from vistumor.infer.figures import summary_figure
    from vistumor.infer.slide_run import figure_thumbnail

    prob, attention = m.scorer.take(len(grid))
    raw, normalised = attention_maps(grid, attention)
    evidence = prob * normalised
    base = {"slide": item.slide_id, "slide_path": str(item.path), "slide_checksum": checksum, "model": m.name,
            "checkpoint": m.checkpoint, "input_size": m.input_size, "stride": params.grid.stride,
            **geometry(grid), "slide_probability": prob}
    save_map(m.path("heatmaps", item.slide_id, ".npy"), normalised, {
        **base, "value": "MIL attention, normalised per slide: mean softmax attention of the patches "
                         "covering the cell / the slide's largest cell; NaN: no tissue patch"})
    save_map(m.path("attention", item.slide_id, ".npy"), raw, {
        **base, "value": "MIL attention, raw: mean softmax attention of the patches covering the cell"})
    picture, picture_ds = figure_thumbnail(grid)
    heatmap_figure(m.path("heatmaps", item.slide_id, ".png"), picture, picture_ds, normalised, grid.stride0,
                   f"{item.slide_id}: {m.name} (slide p={prob:.3f})", label="attention / slide max")
    lesions = find_lesions(evidence, grid.stride0, params.lesions.threshold, grid.mpp, params.lesions.min_cells)
    write_lesions(m.folder / "lesions", item.slide_id, lesions)
    d = params.detections
    points = nms_points(evidence, grid.stride0, d.radius_um / grid.mpp if grid.mpp else d.radius_px, d.min_prob)
    write_detections(m.path("detections", item.slide_id, ".csv"), points)
    summary_figure(m.path("figures", item.slide_id, ".png"), picture, picture_ds, evidence, grid.stride0,
                   None, 1.0, 0.0, annotation, lesions, f"{item.slide_id}: {m.name} (attention x slide p)")
    return {"score": prob, "lesions": len(lesions), "detections": len(points), "cam_scale": 0.0, "map": False,
            "lesion_source": "attention", "largest_lesion_mm2": lesions[0].area_mm2 if lesions else 0.0}
