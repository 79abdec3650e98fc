"""Evaluation at the images' own resolution, for tiled and whole-image checkpoints alike.

A tiled checkpoint's maps are stitched per image as the daemon stitches them (``TileGrid.stitch``); a
whole-image checkpoint's map is cropped to where the image landed and resized back. Either way the map is
brought to the image's native size and scored against the full-size mask, and the image score is the
maximum of the (stitched or cropped) map, the daemon's score. So the numbers of a tiled bundle and of a
whole-image one compare. Images of several sizes (a locator's crops) keep their own size for the scores
and ``--worst``; only the pixel metrics meet in one frame, the largest height and width
(``stack_in_frame``). ``edge-eval`` uses this for every tiled checkpoint (and with ``--native`` for a
whole-image one).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.capture.preprocess import Preprocess
from edge.capture.tiling import TileGrid
from training.data import DatasetError, MVTecCategory
from training.evaluate import FALSE_ALARM_RATE, predict
from training.graph import InferenceModel
from training.metrics import evaluate_maps, f1_at_threshold, line_operating_points


def read_bgr(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise DatasetError(f"cannot read image {path}: the file is missing, corrupt or not an image")
    return frame


def model_inputs(pre: Preprocess, image_bgr: np.ndarray) -> tuple[TileGrid | None, np.ndarray]:
    """One image's uint8 model inputs: its tiles and their grid, or the whole-image input (grid None)."""
    if pre.tiling is not None:
        return pre.tiles_of(image_bgr, image_bgr.shape[:2])
    return None, pre.frame_to_input(image_bgr)[None]


def to_native(pre: Preprocess, grid: TileGrid | None, maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The model's (N, S, S) maps of one image's inputs -> its map at its own size (float32 HxW): tiles
    stitched as the daemon stitches them, a whole-image map cropped to where the image landed."""
    h, w = hw
    if grid is not None:
        amap = grid.stitch(maps)
    else:
        x, y, cw, ch = pre.content_box(h, w)  # the whole input for a stretched image
        amap = maps[0][y : y + ch, x : x + cw]
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(amap, dtype=np.float32)


def native_map(model: InferenceModel, pre: Preprocess, image_bgr: np.ndarray, batch: int = 8) -> np.ndarray:
    """One image's raw map at its own size (float32 HxW)."""
    grid, inputs = model_inputs(pre, image_bgr)
    _, maps, _ = predict(model, inputs, batch)
    return to_native(pre, grid, maps, image_bgr.shape[:2])


def native_scores_maps(
    model: InferenceModel, pre: Preprocess, images: Sequence[np.ndarray], batch: int = 8
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores as the daemon computes them (the map's maximum) and native-size maps, per image."""
    maps = [native_map(model, pre, image, batch) for image in images]
    return np.array([float(m.max()) for m in maps], np.float32), maps


def metric_frame(shapes: Sequence[tuple[int, ...]], max_side: int | None = None) -> tuple[int, int]:
    """The (height, width) in which maps of several sizes are compared: the largest height and width,
    scaled so the long side is at most ``max_side`` (when given)."""
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    f = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def to_frame(amap: np.ndarray, mask: np.ndarray, frame: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One native map and its mask resized to ``frame``: a defect pixel stays where the resize covers it at
    least a quarter, or wherever it lands when that leaves none (a few-pixel defect never vanishes)."""
    if amap.shape[:2] == frame and mask.shape[:2] == frame:
        return amap.astype(np.float32, copy=False), mask.astype(bool, copy=False)
    size = (frame[1], frame[0])
    small = cv2.resize(amap.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    cover = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return small, (cover >= 0.25 if (cover >= 0.25).any() else cover > 0)


def stack_in_frame(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Native maps and masks as (N, H, W) arrays for the pixel metrics. Images of one size keep it; crops
    of several sizes (an upstream locator's) are compared in one frame, the largest height and width, as a
    whole-image evaluation compares every image at the model's square."""
    frame = metric_frame([m.shape for m in maps])
    pairs = [to_frame(a, m, frame) for a, m in zip(maps, masks, strict=True)]
    return np.stack([a for a, _ in pairs]), np.stack([m for _, m in pairs])


def read_mask(path: Path | None, hw: tuple[int, int]) -> np.ndarray:
    if path is None:
        return np.zeros(hw, bool)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {path}: the file is missing, corrupt or not an image")
    if mask.shape != hw:
        mask = cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 0


class _Frames:
    """Test images read from disk when indexed (BGR): ``--worst`` writes a few of a large split."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_bgr(self.paths[i])


def evaluate_native(
    model: InferenceModel,
    pre: Preprocess,
    data: Path,
    val_files: Sequence[Path] = (),
    batch: int = 8,
    progress: bool = False,
    worst: int = 0,
    worst_dir: Path | None = None,
) -> dict[str, Any]:
    """Image / pixel AUROC, AUPRO (full-size masks) and the line protocol of an MVTec-layout test split.

    Test images of several sizes are compared in one frame (``stack_in_frame``); ``val_files``, the
    held-out good images, set the line's threshold. ``worst``: that many highest-scoring good and
    lowest-scoring defective test images with their native-size maps (``training.worst``)."""
    items = MVTecCategory(Path(data)).test_items()
    scores, maps, masks = [], [], []
    for i, item in enumerate(items):
        image = read_bgr(item.path)
        amap = native_map(model, pre, image, batch)
        scores.append(float(amap.max()))
        maps.append(amap)
        masks.append(read_mask(item.mask_path, image.shape[:2]))
        if progress and (i + 1) % 25 == 0:
            print(f"native evaluation: {i + 1}/{len(items)} images", file=sys.stderr, flush=True)
    labels = np.array([int(item.is_anomalous) for item in items], np.int64)
    s = np.array(scores, np.float32)
    frame_maps, frame_masks = stack_in_frame(maps, masks)
    result = evaluate_maps(labels, s, frame_masks, frame_maps, [item.defect_type for item in items])
    del frame_maps, frame_masks
    val = [Path(p) for p in val_files if Path(p).is_file()]
    if val:
        good, _ = native_scores_maps(model, pre, [read_bgr(p) for p in val], batch)
        threshold = float(np.quantile(good, 1.0 - FALSE_ALARM_RATE))
        result["f1_at_good_threshold"] = {"threshold": threshold, **f1_at_threshold(labels, s, threshold)}
        result["line"] = line_operating_points(good, labels, s)
        if worst:
            from training.worst import write_worst

            paths = [item.path for item in items]
            names = [str(p) for p in paths]
            write_worst(worst_dir, worst, _Frames(paths), maps, s, labels, names, good, bgr_in=True)
            result["worst"] = str(worst_dir)
    elif worst:
        raise DatasetError("--worst needs the checkpoint's held-out good images for its threshold")
    result["resolution"] = "native"
    result["n_test_images"] = len(items)
    return result
