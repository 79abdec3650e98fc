"""From the model's raw outputs to a verdict a line can act on: score, mask, regions, all in camera pixels.

The model sees a resized crop (the ROI) of the camera frame; SCADA and HMIs think in camera pixels. So the
binary mask and the region boxes are mapped back through the ROI offset and the resize scale here, once,
and every consumer gets the same numbers. With a letterboxed input the map is first cropped to where the
ROI landed (``Preprocess.content_box``) and the score is the maximum of that crop: padding never scores,
and the verdict and the mask still come from the same pixels.

A tiled bundle (:mod:`edge.capture.tiling`) hands over one map per tile instead: they are stitched here into
one map of the ROI at the tiling's scale (overlaps blended), the score is that map's maximum, and the same
mapping back to camera pixels follows; the verdict also says which tiles saw a value above the threshold.
Stitching runs in the publish thread, beside the next batch's inference.

Normalisation comes from the manifest and is applied to the score and to every map pixel alike, so one
threshold (normalised units) serves both the image verdict and the pixel mask.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import TileGrid
from edge.trust.manifest import ScoreNormalization

Box = Tuple[int, int, int, int]  # x, y, w, h


@dataclass(frozen=True)
class Region:
    """One connected defect region in camera-frame pixels."""

    bbox: Box
    area: int  # camera pixels
    peak: float  # highest normalised map value inside the region

    def to_json(self) -> dict:
        return {"bbox": list(self.bbox), "area": self.area, "peak": round(self.peak, 4)}


@dataclass(frozen=True)
class TileHit:
    """One tile of a tiled bundle whose part of the stitched map rose above the threshold."""

    index: int  # row-major in the grid
    bbox: Box  # camera pixels
    peak: float  # highest normalised map value inside the tile

    def to_json(self) -> dict:
        return {"index": self.index, "bbox": list(self.bbox), "peak": round(self.peak, 4)}


@dataclass
class Verdict:
    """Everything postprocess decides about one frame."""

    score: float
    raw_score: float
    threshold: float
    anomalous: bool
    defect_area: float  # fraction of the inspected area (ROI or whole frame) inside kept regions
    regions: List[Region]
    regions_total: int  # kept regions before the max_regions cut
    # at model resolution (a tiled bundle: the stitched map's, the ROI at the tiling's scale)
    mask_model: np.ndarray = field(repr=False)  # uint8 {0,255}, small regions removed
    norm_map: np.ndarray = field(repr=False)  # float32 normalised map
    roi: Box = (0, 0, 0, 0)  # the inspected area in camera pixels (clipped to the frame)
    frame_hw: Tuple[int, int] = (0, 0)
    grid: Optional[TileGrid] = field(default=None, repr=False)  # a tiled bundle's grid over the ROI
    tiles_fired: List[TileHit] = field(default_factory=list)  # tiles with a map value above the threshold

    def tiles_json(self) -> Optional[dict]:
        """The result's ``tiles`` document (None for a whole-image bundle)."""
        if self.grid is None:
            return None
        return {
            "grid": [self.grid.rows, self.grid.cols],
            "size": self.grid.tiling.tile,
            "overlap": self.grid.tiling.overlap,
            "scale": self.grid.tiling.scale,
            "fired": [t.to_json() for t in self.tiles_fired],
        }

    def frame_mask(self) -> np.ndarray:
        """The binary mask at camera-frame size (zeros outside the ROI), uint8 {0,255}."""
        return _paste(self.mask_model, self.roi, self.frame_hw, cv2.INTER_NEAREST)


def clip_roi(roi: Optional[Box], frame_hw: Tuple[int, int]) -> Optional[Box]:
    """The ROI clipped to the frame; the whole frame when ``roi`` is None; None if nothing is left."""
    fh, fw = frame_hw
    if roi is None:
        return (0, 0, fw, fh)
    x, y, w, h = roi
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(fw, x + w), min(fh, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def _paste(model_img: np.ndarray, roi: Box, frame_hw: Tuple[int, int], interp: int) -> np.ndarray:
    x, y, w, h = roi
    out = np.zeros(frame_hw + model_img.shape[2:], model_img.dtype)
    out[y : y + h, x : x + w] = cv2.resize(model_img, (w, h), interpolation=interp)
    return out


class Postprocessor:
    """Raw (score, map) of one frame -> :class:`Verdict`. Stateless; safe to share between cameras."""

    def __init__(
        self,
        normalization: ScoreNormalization,
        min_region_area: int = 16,
        max_regions: int = 32,
        pre: Optional[Preprocess] = None,
    ) -> None:
        self.pre = pre
        self.offset = float(normalization.offset)
        self.scale = float(normalization.scale)
        self.min_region_area = int(min_region_area)
        self.max_regions = int(max_regions)

    def __call__(
        self, raw_score: float, raw_map: np.ndarray, threshold: float, frame_hw: Tuple[int, int], roi: Box
    ) -> Verdict:
        grid = None
        if self.pre is not None and self.pre.tiling is not None:  # one map per tile: stitch them
            grid = self.pre.tiling.grid(roi[3], roi[2])
            raw_map = grid.stitch(np.asarray(raw_map, np.float32))
            raw_score = float(raw_map.max())
        elif self.pre is not None and self.pre.resize != "stretch":
            x, y, w, h = self.pre.content_box(roi[3], roi[2])
            raw_map = np.asarray(raw_map)[y : y + h, x : x + w]
            raw_score = float(raw_map.max())
        score = (float(raw_score) - self.offset) / self.scale
        norm_map = ((np.asarray(raw_map, np.float32) - self.offset) / self.scale).astype(
            np.float32, copy=False
        )
        binary = (norm_map > threshold).astype(np.uint8)
        mh, mw = norm_map.shape
        sx, sy = roi[2] / mw, roi[3] / mh  # model pixel -> camera pixels
        regions, regions_total, kept = self._regions(binary, norm_map, roi, sx, sy)
        mask = (kept * 255).astype(np.uint8)
        defect_area = float(np.count_nonzero(kept)) / float(mh * mw)
        return Verdict(
            score=score,
            raw_score=float(raw_score),
            threshold=float(threshold),
            anomalous=bool(math.isfinite(score) and score > threshold),
            defect_area=defect_area,
            regions=regions,
            regions_total=regions_total,
            mask_model=mask,
            norm_map=norm_map,
            roi=roi,
            frame_hw=frame_hw,
            grid=grid,
            tiles_fired=[] if grid is None else _fired(grid, norm_map, threshold, roi),
        )

    def _regions(
        self, binary: np.ndarray, norm_map: np.ndarray, roi: Box, sx: float, sy: float
    ) -> Tuple[List[Region], int, np.ndarray]:
        """The kept regions, largest first and at most max_regions, with their peak; how many were kept; the
        mask with the regions under min_region_area removed.

        Most frames of a good line have no pixel above the threshold, so they skip labelling altogether.
        Labelling uses Grana's block-based algorithm; a region's peak is searched inside its own box, and
        only for the regions reported (benchmarks/README.md, "Design measurements").
        """
        if not binary.any():
            return [], 0, binary
        n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            binary, 8, cv2.CV_32S, cv2.CCL_GRANA
        )
        areas = np.rint(stats[:, cv2.CC_STAT_AREA].astype(np.float64) * sx * sy).astype(np.int64)  # camera px
        kept = np.flatnonzero(areas[1:] >= self.min_region_area) + 1  # label 0 is the background
        kept = kept[np.argsort(-areas[kept], kind="stable")]  # largest first; equal areas in label order
        regions: List[Region] = []
        for i in kept[: self.max_regions]:
            x, y, w, h = (int(v) for v in stats[i, :4])
            box = labels[y : y + h, x : x + w] == i
            x0 = roi[0] + int(math.floor(x * sx))
            y0 = roi[1] + int(math.floor(y * sy))
            x1 = roi[0] + int(math.ceil((x + w) * sx))
            y1 = roi[1] + int(math.ceil((y + h) * sy))
            peak = float(norm_map[y : y + h, x : x + w][box].max())
            regions.append(Region(bbox=(x0, y0, x1 - x0, y1 - y0), area=int(areas[i]), peak=peak))
        if len(kept) == n - 1:  # the usual case: no region under min_region_area, the mask stays as it is
            return regions, len(kept), binary
        keep = np.zeros(n, bool)
        keep[kept] = True
        return regions, len(kept), keep[labels].astype(np.uint8)


def _fired(grid: TileGrid, norm_map: np.ndarray, threshold: float, roi: Box) -> List[TileHit]:
    """The tiles whose part of the stitched map exceeds the threshold; a good frame costs one max."""
    if not float(norm_map.max()) > threshold:
        return []
    peaks = grid.tile_peaks(norm_map)
    boxes = grid.camera_boxes((roi[0], roi[1]))
    return [TileHit(int(i), boxes[i], float(peaks[i])) for i in np.flatnonzero(peaks > threshold)]


def encode_mask_png(verdict: Verdict) -> bytes:
    """The camera-frame binary mask as a 1-bit greyscale PNG (decoders expanding to 8 bits give 0 / 255).

    The mask is packed at model resolution and only its rows are repeated to camera size: nearest-neighbour
    scaling is separable, so each camera row is a copy of one model row. That skips building and bit-packing
    the full camera-size mask, which made up most of the publish stage's CPU on anomalous frames. PNG's own
    format is small and fixed (signature, IHDR, one IDAT, IEND); OpenCV's and Pillow's writers take each
    row through their generic pixel pipeline instead, at 4-6x the time for the same bytes.
    """
    return png_1bit(_packed_frame_rows(verdict.mask_model, verdict.roi, verdict.frame_hw), verdict.frame_hw)


def _packed_frame_rows(mask_model: np.ndarray, roi: Box, frame_hw: Tuple[int, int]) -> np.ndarray:
    """``Verdict.frame_mask() > 0``, bit-packed per row (numpy.packbits order), built from the model rows."""
    x, y, w, h = roi
    fh, fw = frame_hw
    sh = mask_model.shape[0]
    rows = np.zeros((sh, fw), np.uint8)
    rows[:, x : x + w] = cv2.resize(mask_model, (w, sh), interpolation=cv2.INTER_NEAREST)
    packed = np.packbits(rows > 0, axis=1)
    # the same source row for every camera row as cv2.resize(..., INTER_NEAREST) picks
    index = cv2.resize(np.arange(sh, dtype=np.float32)[:, None], (1, h), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((fh, packed.shape[1]), np.uint8)
    out[y : y + h] = packed[index[:, 0].astype(np.intp)]
    return out


def png_1bit(packed_rows: np.ndarray, hw: Tuple[int, int]) -> bytes:
    """A 1-bit greyscale PNG from bit-packed rows (zlib level 1: masks are mostly zeros, level 1 is
    enough)."""
    h, w = hw
    scanlines = np.zeros((h, packed_rows.shape[1] + 1), np.uint8)  # filter byte 0 ("None") on every row
    scanlines[:, 1:] = packed_rows
    header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def heatmap_overlay(frame_bgr: np.ndarray, verdict: Verdict) -> np.ndarray:
    """The frame with the normalised map blended over the ROI in a JET colour scale centred on the threshold.

    Blue is well below the threshold, green/yellow around it, red well above; the span is one threshold
    either side (at least 1 normalised unit) so the picture does not change meaning when the threshold moves.
    """
    t = verdict.threshold
    span = max(abs(t), 1.0)
    level = np.clip((verdict.norm_map - (t - span)) / (2 * span), 0.0, 1.0)
    colours = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = frame_bgr.copy()
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    x, y, w, h = verdict.roi
    resized = cv2.resize(colours, (w, h), interpolation=cv2.INTER_LINEAR)
    out[y : y + h, x : x + w] = cv2.addWeighted(out[y : y + h, x : x + w], 0.5, resized, 0.5, 0.0)
    return out


def encode_heatmap_jpeg(frame_bgr: np.ndarray, verdict: Verdict, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", heatmap_overlay(frame_bgr, verdict), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode the heatmap as JPEG")
    return buf.tobytes()
