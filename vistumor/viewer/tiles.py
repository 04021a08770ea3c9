"""Deep Zoom tiles of a slide, and the tile grid every layer of the viewer shares.

The slide's tiles come from OpenSlide's :class:`~openslide.deepzoom.DeepZoomGenerator`
with ``limit_bounds=False``, so image coordinates are level-0 px: the heatmap layers and the
vector overlays line up with no offset. :class:`DziGeometry` is the same tile grid written
down (a test checks it against the generator), for the layers drawn from saved maps.
Encoded tiles are kept in one :class:`ByteLRU`.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import openslide
from openslide.deepzoom import DeepZoomGenerator

from vistumor.viewer.run import NotFound
from vistumor.wsi.slide import Slide

TILE_SIZE, OVERLAP = 254, 1  # 254 + 2 px overlap = 256: the generator's and OpenSeadragon's default
JPEG_QUALITY = 80
THUMBNAIL_PX = 192


@dataclass(frozen=True)
class DziGeometry:
    """The Deep Zoom pyramid of a ``width x height`` level-0 image.

    Level ``level_count - 1`` is level 0 of the slide; each level below halves it (rounding
    up), down to 1 x 1. A level-``L`` pixel spans ``downsample(L)`` level-0 px, as in
    OpenSeadragon's ``getLevelScale``.
    """

    width: int
    height: int
    tile_size: int = TILE_SIZE
    overlap: int = OVERLAP

    @cached_property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        size, sizes = (self.width, self.height), [(self.width, self.height)]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            sizes.append(size)
        return tuple(reversed(sizes))

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_tiles(self) -> tuple[tuple[int, int], ...]:
        return tuple((math.ceil(w / self.tile_size), math.ceil(h / self.tile_size))
                     for w, h in self.level_dimensions)

    def downsample(self, level: int) -> float:
        """Level-0 px per px of ``level``."""
        return float(2 ** (self.level_count - 1 - level))

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of a tile in ``level`` px, overlap included.

        Raises:
            NotFound: no such level or tile.
        """
        if not 0 <= level < self.level_count:
            raise NotFound(f"no level {level} (levels 0-{self.level_count - 1})")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise NotFound(f"no tile {col}_{row} at level {level} ({cols} x {rows} tiles)")
        width, height = self.level_dimensions[level]
        x, w = self._span(col, cols, width)
        y, h = self._span(row, rows, height)
        return x, y, w, h

    def _span(self, t: int, count: int, size: int) -> tuple[int, int]:
        before = self.overlap if t > 0 else 0
        after = self.overlap if t < count - 1 else 0
        start = t * self.tile_size - before
        return start, min(self.tile_size, size - t * self.tile_size) + before + after

    def dzi(self, fmt: str) -> str:
        """The ``.dzi`` XML (as ``DeepZoomGenerator.get_dzi``) for tiles in ``fmt``."""
        return (f'<Image TileSize="{self.tile_size}" Overlap="{self.overlap}" Format="{fmt}" '
                f'xmlns="http://schemas.microsoft.com/deepzoom/2008">'
                f'<Size Width="{self.width}" Height="{self.height}" /></Image>')


class ByteLRU:
    """A thread-safe least-recently-used cache of encoded tiles, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.size += len(value) - (len(old) if old is not None else 0)
            self._items[key] = value
            while self.size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


class SlideTiles:
    """One slide's Deep Zoom tiles (JPEG) and thumbnail.

    :class:`~vistumor.wsi.slide.Slide` opens and checks the file (its errors name the file);
    the generator gets its own OpenSlide handle, which Slide keeps private. OpenSlide reads
    from many threads at once.
    """

    def __init__(self, name: str, path: Path, cache: ByteLRU, quality: int = JPEG_QUALITY):
        self.name, self.cache, self.quality = name, cache, quality
        self.slide = Slide(path)
        self.generator = DeepZoomGenerator(openslide.OpenSlide(str(path)), TILE_SIZE, OVERLAP,
                                           limit_bounds=False)
        self.geometry = DziGeometry(*self.slide.dimensions)

    def dzi(self) -> str:
        return self.generator.get_dzi("jpeg")

    def tile(self, level: int, col: int, row: int) -> bytes:
        """A JPEG tile; :class:`NotFound` outside the pyramid."""
        self.geometry.tile_box(level, col, row)
        key = ("slide", self.name, level, col, row)
        data = self.cache.get(key)
        if data is None:
            data = encode_jpeg(self.generator.get_tile(level, (col, row)), self.quality)
            self.cache.put(key, data)
        return data

    def thumbnail(self) -> bytes:
        """A small JPEG of the whole slide (about :data:`THUMBNAIL_PX` on its long side)."""
        key = ("thumbnail", self.name)
        data = self.cache.get(key)
        if data is None:
            width, height = self.slide.dimensions
            rgb, _ = self.slide.thumbnail(max(1.0, max(width, height) / THUMBNAIL_PX))
            ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            data = encoded.tobytes()
            self.cache.put(key, data)
        return data


def encode_jpeg(image, quality: int = JPEG_QUALITY) -> bytes:
    """A PIL image as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "jpeg", quality=quality)
    return buffer.getvalue()
