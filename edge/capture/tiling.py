"""Native-scale tiles: the grid over a frame or a region, cutting it, and stitching per-tile maps back.

A 10-pixel scratch on a 2448x2048 frame resized to 256x256 becomes one pixel. A tiled bundle instead scales
the region once by ``scale`` (1.0: the camera's own pixels) and cuts it into ``tile`` x ``tile`` squares, the
model's input size, overlapping by ``overlap`` pixels; the model learned good parts at that same scale from
tiles of the good images (``edge-train --tile``).

The grid never pads beyond the image: along each axis tiles start every ``tile - overlap`` pixels and the
last one is moved back to end on the image's edge (so it may overlap its neighbour more). Only an image
smaller than one tile along an axis is padded (by reflection), and the map of the padding is dropped.

Stitching is a weighted mean: each tile's map is weighted by a window that falls off linearly over the
overlap towards the tile's edges (never to zero), so a pixel seen by two tiles takes more from the tile where
it lies further from the border, where the model saw more context around it. A map that is the same in
every tile comes back exactly, whatever the weights.

numpy and OpenCV only; used by the daemon, by training (tiles are the training samples) and by evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

Box = Tuple[int, int, int, int]  # x, y, width, height

TILE_MIN, TILE_MAX = 16, 8192
SCALE_MIN, SCALE_MAX = 1.0 / 64.0, 4.0
EDGE_WEIGHT = 0.05  # the window's weight at a tile's very edge, relative to its centre


@dataclass(frozen=True)
class Tiling:
    """How a frame region becomes tiles: ``tile`` px squares (the model input) at ``scale``, overlapping
    by ``overlap`` px (scaled pixels)."""

    tile: int
    overlap: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not TILE_MIN <= self.tile <= TILE_MAX:
            raise ValueError(f"tile size must be in [{TILE_MIN}, {TILE_MAX}] pixels, got {self.tile}")
        if not 0 <= self.overlap <= self.tile // 2:
            raise ValueError(
                f"tile overlap must be in [0, tile/2 = {self.tile // 2}] pixels, got {self.overlap}"
            )
        if not (math.isfinite(self.scale) and SCALE_MIN <= self.scale <= SCALE_MAX):
            raise ValueError(f"scale must be in [{SCALE_MIN:g}, {SCALE_MAX:g}], got {self.scale}")

    def to_dict(self) -> Dict[str, Any]:
        return {"tile": self.tile, "overlap": self.overlap, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> Optional[Tiling]:
        if not data:
            return None
        return cls(tile=int(data["tile"]), overlap=int(data.get("overlap", 0)), scale=float(data["scale"]))

    def scaled_hw(self, h: int, w: int) -> Tuple[int, int]:
        """An h x w region's size after scaling (at least one pixel each way)."""
        return max(1, int(round(h * self.scale))), max(1, int(round(w * self.scale)))

    def grid(self, h: int, w: int) -> TileGrid:
        """The tile grid over an h x w region (camera pixels)."""
        sh, sw = self.scaled_hw(h, w)
        return TileGrid(
            tiling=self,
            region_hw=(h, w),
            scaled_hw=(sh, sw),
            ys=axis_starts(sh, self.tile, self.overlap),
            xs=axis_starts(sw, self.tile, self.overlap),
        )


def axis_starts(n: int, tile: int, overlap: int) -> Tuple[int, ...]:
    """Tile starts along one axis of n pixels: every tile - overlap, the last ending on the edge."""
    if n <= tile:
        return (0,)
    stride = tile - overlap
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return tuple(starts)


@dataclass(frozen=True)
class TileGrid:
    """The tiles over one region: row-major, tile ``i`` at row ``i // cols``, column ``i % cols``."""

    tiling: Tiling
    region_hw: Tuple[int, int]  # camera pixels
    scaled_hw: Tuple[int, int]  # the region after scaling: the stitched map's size
    ys: Tuple[int, ...]
    xs: Tuple[int, ...]

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def boxes(self) -> List[Box]:
        """Each tile's box in scaled pixels, clipped to the region (only a region smaller than a tile
        clips)."""
        t = self.tiling.tile
        sh, sw = self.scaled_hw
        return [(x, y, min(t, sw - x), min(t, sh - y)) for y in self.ys for x in self.xs]

    def camera_boxes(self, offset: Tuple[int, int] = (0, 0)) -> List[Box]:
        """Each tile's box in camera pixels (``offset``: the region's top-left in the frame)."""
        h, w = self.region_hw
        sh, sw = self.scaled_hw
        fy, fx = h / sh, w / sw
        out = []
        for x, y, bw, bh in self.boxes():
            x0, y0 = int(math.floor(x * fx)), int(math.floor(y * fy))
            x1, y1 = min(w, int(math.ceil((x + bw) * fx))), min(h, int(math.ceil((y + bh) * fy)))
            out.append((offset[0] + x0, offset[1] + y0, x1 - x0, y1 - y0))
        return out

    def scale_region(self, region: np.ndarray) -> np.ndarray:
        """The region (camera pixels, any size near ``region_hw``) resized to ``scaled_hw``.

        A region decoded at a reduced JPEG scale arrives smaller than ``region_hw``; it is resized the same
        way. Shrinking uses INTER_AREA (anti-aliased, as training's tiles were cut), enlarging INTER_LINEAR.
        """
        sh, sw = self.scaled_hw
        h, w = region.shape[:2]
        if (h, w) == (sh, sw):
            return region
        interp = cv2.INTER_AREA if h > sh or w > sw else cv2.INTER_LINEAR
        return cv2.resize(region, (sw, sh), interpolation=interp)

    def cut(self, scaled: np.ndarray) -> np.ndarray:
        """(N, tile, tile, ...) tiles of an image already at ``scaled_hw`` (``scale_region``).

        A tile that would reach past a region smaller than one tile is filled by reflection."""
        if scaled.shape[:2] != self.scaled_hw:
            raise ValueError(f"expected an image of {self.scaled_hw}, got {scaled.shape[:2]}")
        t = self.tiling.tile
        sh, sw = self.scaled_hw
        if sh < t or sw < t:
            pad = [(0, max(0, t - sh)), (0, max(0, t - sw))] + [(0, 0)] * (scaled.ndim - 2)
            scaled = np.pad(scaled, pad, mode="symmetric")
        return np.stack([scaled[y : y + t, x : x + t] for y in self.ys for x in self.xs])

    def stitch(self, maps: np.ndarray) -> np.ndarray:
        """Per-tile maps (N, tile, tile) -> one float32 map at ``scaled_hw``, overlaps blended."""
        t = self.tiling.tile
        if maps.shape != (len(self), t, t):
            raise ValueError(f"expected {len(self)} maps of {t}x{t}, got {maps.shape}")
        sh, sw = self.scaled_hw
        if len(self) == 1:
            return np.ascontiguousarray(maps[0, :sh, :sw], dtype=np.float32)
        acc = np.zeros((max(sh, t), max(sw, t)), np.float32)
        total = np.zeros_like(acc)
        win = window(t, self.tiling.overlap)
        i = 0
        for y in self.ys:
            for x in self.xs:
                acc[y : y + t, x : x + t] += maps[i] * win
                total[y : y + t, x : x + t] += win
                i += 1
        out = acc[:sh, :sw]
        out /= total[:sh, :sw]
        return out

    def tile_peaks(self, stitched: np.ndarray) -> np.ndarray:
        """The stitched map's maximum inside each tile: which tiles saw the highest values."""
        return np.array([stitched[y : y + h, x : x + w].max() for x, y, w, h in self.boxes()], np.float32)


_WINDOWS: Dict[Tuple[int, int], np.ndarray] = {}


def window(tile: int, overlap: int) -> np.ndarray:
    """The (tile, tile) blending weights: 1 inside, falling linearly to EDGE_WEIGHT over ``overlap`` pixels
    at every edge (all ones without overlap). Cached: a daemon uses one or two sizes."""
    key = (tile, overlap)
    if key not in _WINDOWS:
        ramp = np.ones(tile, np.float32)
        if overlap > 0:
            d = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float32)  # distance to edge
            ramp = np.clip((d + 0.5) / overlap, EDGE_WEIGHT, 1.0).astype(np.float32)
        _WINDOWS[key] = np.outer(ramp, ramp)
    return _WINDOWS[key]
