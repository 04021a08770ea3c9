"""Heatmap layers: PNG tiles with transparency, drawn from the saved float maps.

A layer has the slide's Deep Zoom geometry (:class:`~vistumor.viewer.tiles.DziGeometry`
of the slide's level-0 size), so OpenSeadragon stacks it on the slide exactly. Each tile
pixel takes the map cell under its centre (nearest cell: the map's own resolution, no
smoothing), is scaled by the layer's ``vmax`` and coloured through a matplotlib colormap;
NaN (no tissue) and low values are transparent, so the slide shows through. The maps are
memory-mapped (``np.load(mmap_mode="r")``): a tile reads only the rows it covers. Maps and
tiles are kept for the server's lifetime: restart it after rerunning a slide into the run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps

from vistumor.explain.methods import CANVAS_TITLES
from vistumor.infer.heatmap import COLORMAP
from vistumor.viewer.run import LAYERS, NotFound, RunFolder
from vistumor.viewer.tiles import ByteLRU, DziGeometry

#: colormap per layer: the probability as in the run's figures, the CAM as is usual for CAMs
COLORMAPS = {"probability": COLORMAP, "cam": "turbo"}
TITLES = {"probability": "tumor probability", "cam": "Grad-CAM++ (probability-weighted)"}
#: a segmentation model's ``cams/`` holds its stitched mask (sidecar ``value`` says so)
MASK_TITLE = "segmentation mask (tumor probability)"
#: a MIL model's ``heatmaps/`` holds its attention, normalised per slide (vistumor.infer.attention)
ATTENTION_TITLE = "MIL attention (slide maximum = 1)"
#: below ``FLOOR`` (of vmax) a value is transparent; opacity rises to full over ``FADE`` above it
FLOOR, FADE = 0.05, 0.25
PNG_LEVEL = 1  # zlib level: fast; these tiles are mostly flat colour and compress well anyway


def lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 RGB of a matplotlib colormap."""
    return (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def colour(values: np.ndarray, vmax: float, table: np.ndarray) -> np.ndarray:
    """RGBA ``(h, w, 4)`` uint8 of ``values / vmax`` (clipped to [0, 1]) through ``table``;
    alpha 0 where NaN or below :data:`FLOOR`, 255 from ``FLOOR + FADE`` up."""
    level = np.clip(np.nan_to_num(values / vmax if vmax > 0 else values, nan=-1.0), -1.0, 1.0)
    rgba = np.empty((*values.shape, 4), np.uint8)
    rgba[..., :3] = table[np.round(np.clip(level, 0, 1) * 255).astype(np.intp)]
    alpha = np.clip((level - FLOOR) / FADE, 0, 1)
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return rgba


def colour_stops(cmap: str, n: int = 11) -> list[str]:
    """``n`` evenly spaced colours of a colormap as ``#rrggbb``, for the colour bar."""
    table = lut(cmap)
    return ["#{:02x}{:02x}{:02x}".format(*table[round(i * 255 / (n - 1))]) for i in range(n)]


def encode_png(rgba: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA),
                            [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


@dataclass(frozen=True)
class MapGrid:
    """Where a saved map lies: level-0 origin and level-0 px per map value."""

    x0: float
    y0: float
    cell_px: float

    @classmethod
    def of(cls, sidecar: dict[str, Any]) -> MapGrid:
        x0, y0 = sidecar.get("origin_level0") or (0, 0)
        return cls(float(x0), float(y0), float(sidecar["cell_size_px"]))


def sample(values: np.ndarray, grid: MapGrid, dzi: DziGeometry, level: int, col: int, row: int) -> np.ndarray:
    """The map value under each pixel centre of a tile (NaN off the map)."""
    x, y, w, h = dzi.tile_box(level, col, row)
    ds = dzi.downsample(level)
    cols = np.floor(((x + np.arange(w) + 0.5) * ds - grid.x0) / grid.cell_px).astype(np.int64)
    rows = np.floor(((y + np.arange(h) + 0.5) * ds - grid.y0) / grid.cell_px).astype(np.int64)
    in_c = (cols >= 0) & (cols < values.shape[1])
    in_r = (rows >= 0) & (rows < values.shape[0])
    out = np.full((h, w), np.nan, np.float32)
    if in_c.any() and in_r.any():
        # read each needed row and column once from the memory map, then spread them out
        u_rows, r_inv = np.unique(rows[in_r], return_inverse=True)
        u_cols, c_inv = np.unique(cols[in_c], return_inverse=True)
        block = np.asarray(values[np.ix_(u_rows, u_cols)], np.float32)
        out[np.ix_(in_r, in_c)] = block[np.ix_(r_inv, c_inv)]
    return out


@dataclass
class HeatLayer:
    """One map of one slide and model, ready to draw."""

    values: np.ndarray
    grid: MapGrid
    vmax: float
    cmap: str
    cell_um: float | None = None
    title: str = ""



def cam_title(sidecar: dict[str, Any]) -> str:
    """The CAM layer's title by the method its canvas recorded (runs before it: Grad-CAM++)."""
    return f"{CANVAS_TITLES.get(str(sidecar.get('method', 'gradcam++')), 'CAM')} (probability-weighted)"

class HeatTiles:
    """Heatmap tiles of a run: maps opened once, tiles encoded once (LRU)."""

    def __init__(self, run: RunFolder, cache: ByteLRU):
        self.run, self.cache = run, cache
        self._layers: dict[tuple[str, str, str], HeatLayer] = {}
        self._blank: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    def layer(self, model: str, layer: str, slide: str) -> HeatLayer:
        key = (model, layer, slide)
        with self._lock:
            found = self._layers.get(key)
        if found is None:
            path, sidecar = self.run.layer_files(model, layer, slide)
            value = str(sidecar.get("value", ""))
            title = MASK_TITLE if "segmentation" in value else ATTENTION_TITLE if "attention" in value \
                else cam_title(sidecar) if layer == "cam" else TITLES[layer]
            found = HeatLayer(np.load(path, mmap_mode="r"), MapGrid.of(sidecar), self.vmax(layer, sidecar, model),
                              COLORMAPS[layer], sidecar.get("cell_size_um"), title)
            if found.values.ndim != 2:
                raise NotFound(f"{path.name}: not a 2-D map")
            with self._lock:
                self._layers[key] = found
        return found

    def vmax(self, layer: str, sidecar: dict[str, Any], model: str) -> float:
        """What the colour scale's top means: probability 1; the CAM's slide maximum
        (``cam.normalize=slide``), the run's (``run``), or raw values (``none``: 1)."""
        normalize = (self.run.settings.get("cam") or {}).get("normalize", "slide")
        if layer == "probability" or normalize == "none":
            return 1.0
        if normalize == "run":
            return _positive(sidecar.get("run_scale")) or _positive(self.run_scale(model)) or 1.0
        return _positive(sidecar.get("scale")) or 1.0

    def run_scale(self, model: str) -> float:
        """The largest slide ``scale`` of a model's CAMs, for a run whose merge did not record
        ``run_scale`` (run with ``cam.normalize=slide``, viewed with ``run``)."""
        scales = []
        for slide in self.run.slides:
            try:
                scales.append(_positive(self.run.layer_files(model, "cam", slide)[1].get("scale")) or 0.0)
            except NotFound:
                continue
        return max(scales, default=0.0)

    def tile(self, model: str, layer: str, slide: str, dzi: DziGeometry, level: int, col: int, row: int) -> bytes:
        """A PNG tile of a layer; :class:`NotFound` for unknown names or tiles."""
        if layer not in LAYERS:
            raise NotFound(f"no layer {layer!r}")
        dzi.tile_box(level, col, row)
        key = ("heat", model, layer, slide, level, col, row)
        data = self.cache.get(key)
        if data is None:
            heat = self.layer(model, layer, slide)
            values = sample(heat.values, heat.grid, dzi, level, col, row)
            rgba = colour(values, heat.vmax, _table(heat.cmap))
            data = self._encode(rgba)
            self.cache.put(key, data)
        return data

    def _encode(self, rgba: np.ndarray) -> bytes:
        if rgba[..., 3].any():
            return encode_png(rgba)
        size = rgba.shape[:2]
        if size not in self._blank:
            self._blank[size] = encode_png(np.zeros((*size, 4), np.uint8))
        return self._blank[size]


def _positive(value: Any) -> float | None:
    """A usable scale: a finite number above 0, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


_TABLES: dict[str, np.ndarray] = {}


def _table(cmap: str) -> np.ndarray:
    if cmap not in _TABLES:
        _TABLES[cmap] = lut(cmap)
    return _TABLES[cmap]


def describe(heat: HeatTiles, model: str, slide: str) -> dict[str, dict[str, Any]]:
    """Per layer: whether it exists, its colour scale and title (for the page's colour bars)."""
    out = {}
    for layer in LAYERS:
        try:
            found = heat.layer(model, layer, slide)
        except NotFound:
            out[layer] = {"available": False, "title": TITLES[layer]}
            continue
        out[layer] = {"available": True, "title": found.title, "vmin": 0.0, "vmax": found.vmax,
                      "colormap": found.cmap, "stops": colour_stops(found.cmap),
                      "floor": FLOOR, "cell_um": found.cell_um}
    return out
