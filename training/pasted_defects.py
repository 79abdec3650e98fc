"""Defects pasted onto held-out good images: a check of a trained model that needs no defect samples.

A new product line has good parts and no labelled defects. Pasting defects onto the good images that
training held out gives image and pixel AUROC with exact masks, the same way on any category, so a model
or a recipe can be compared without looking at a real test set (the MVTec one included: that is how
choices stay untuned to it). The kinds follow CutPaste (Li et al., CVPR 2021) plus the usual blob:

- ``patch``: a rectangle (2-8 % of the image) from another place of another good image;
- ``scar``: a thin rotated strip of the same;
- ``blob``: an ellipse in the complement of the image's mean colour.

A paste that barely changes the pixels under it (background onto background) is drawn again, so an image
is never labelled defective while looking unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edge.capture.preprocess import Preprocess
from training.checkpoint import load_checkpoint
from training.data import load_images
from training.evaluate import predict
from training.graph import InferenceModel
from training.metrics import evaluate_maps, line_operating_points
from training.native_eval import read_bgr, stack_in_frame
from training.small_defects import drawn_set, most_visible, small_each, with_defects
from training.uneven_defects import uneven_each
from training.worst import write_worst

KINDS = ("patch", "scar", "blob")
DEFECT_SETS = ("cutpaste", "small", "uneven")
SET_NAMES = {"cutpaste": "pasted defects", "small": "small defects drawn", "uneven": "uneven defects drawn"}
# the sets drawn at each image's own size (then resized like a camera frame unless scored natively)
DRAWN = {"small": small_each, "uneven": uneven_each}


def _shape_mask(kind: str, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Where the defect goes: a filled rectangle, thin rotated strip or ellipse, uint8 {0, 1}."""
    h, w = hw
    mask = np.zeros(hw, np.uint8)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    if kind == "patch":
        area = rng.uniform(0.02, 0.08) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        bw, bh = math.sqrt(area * aspect), math.sqrt(area / aspect)
        angle = 0.0
    elif kind == "scar":
        bw, bh = rng.uniform(0.1, 0.25) * w, max(2.0, rng.uniform(0.01, 0.03) * w)
        angle = rng.uniform(-45.0, 45.0)
    elif kind == "blob":
        axes = (max(2, int(rng.uniform(0.04, 0.1) * w)), max(2, int(rng.uniform(0.04, 0.1) * h)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        return mask
    else:
        raise ValueError(f"unknown pasted defect kind {kind!r}; use one of {', '.join(KINDS)}")
    corners = cv2.boxPoints(((cx, cy), (bw, bh), angle))
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return mask


def paste_defect(
    image: np.ndarray, donor: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8 with one ``kind`` defect; returns (defective image, bool mask)."""
    h, w = image.shape[:2]
    blob_colour = (255 - image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)  # the same on every try

    def draw() -> tuple[np.ndarray, np.ndarray]:
        mask = _shape_mask(kind, (h, w), rng).astype(bool)
        if kind == "blob":
            content = np.broadcast_to(blob_colour, image.shape)
        else:  # the donor moved so that another of its places lands under the mask
            shift = np.float32([[1, 0, rng.uniform(-0.5, 0.5) * w], [0, 1, rng.uniform(-0.5, 0.5) * h]])
            content = cv2.warpAffine(donor, shift, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        out = image.copy()
        out[mask] = content[mask]
        return out, mask

    return most_visible(image, draw, f"a pasted {kind}")


def paste_each(
    good: Sequence[np.ndarray], per_image: int = 3, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """The good images (label 0, empty masks) followed by ``per_image`` pasted copies of each (label 1),
    kinds in turn and donors drawn from the other images; each image keeps its own size: images, bool
    masks, labels, types."""

    def draw(i: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        others = [k for k in range(len(good)) if k != i] or [i]
        return paste_defect(good[i], good[int(rng.choice(others))], kind, rng)

    return with_defects(good, per_image, seed, KINDS, draw)


def pasted_set(
    good: np.ndarray, per_image: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``paste_each`` for images of one size, stacked: images (N, H, W, 3), masks (N, H, W), labels, types."""
    images, masks, labels, types = paste_each(list(good), per_image, seed)
    return np.stack(images), np.stack(masks), labels, types


def defect_set(
    defects: str,
    paths: Sequence[Path],
    pre: Preprocess,
    per_image: int = 3,
    seed: int = 0,
    good: Any = None,
    native: bool = False,
) -> tuple[Any, Any, np.ndarray, list[str]]:
    """The good images at ``paths`` followed by defective copies, as ``pasted_set``: ``cutpaste`` (the kinds
    above, drawn on ``good``, the images at model size, loaded when not given), ``small``
    (``training.small_defects``) or ``uneven`` (``training.uneven_defects``), both drawn at each file's own
    size (``small_defects.drawn_set``). ``native``: ``good`` (when given) holds the images at their own
    size, the defects are drawn on them and stay at that size (no resize); images and masks are then
    lists, since crops may differ in size."""
    if defects not in DEFECT_SETS:
        raise ValueError(f"unknown defect set {defects!r}; use one of {', '.join(DEFECT_SETS)}")
    if native:  # on the frames already read (``good``) when given
        frames = list(good) if good is not None else [read_bgr(Path(p)) for p in paths]
        return DRAWN.get(defects, paste_each)(frames, per_image, seed)
    if defects in DRAWN:
        return drawn_set(paths, pre, per_image, seed, DRAWN[defects])
    return pasted_set(load_images(paths, pre) if good is None else good, per_image, seed)


def score_pasted(
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    good: np.ndarray,
    per_image: int = 3,
    seed: int = 0,
    worst: int = 0,
    worst_dir: Path | None = None,
) -> dict[str, Any]:
    """Metrics (as ``evaluate_maps``) of ``predict`` (uint8 images -> scores, maps) on the pasted set."""
    return score_set(predict, pasted_set(good, per_image, seed), per_image, seed, worst, worst_dir)


def score_set(
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    labelled: tuple[np.ndarray, np.ndarray, np.ndarray, list[str]],
    per_image: int,
    seed: int,
    worst: int = 0,
    worst_dir: Path | None = None,
    bgr_in: bool = False,
) -> dict[str, Any]:
    """Metrics of ``predict`` on a set of good images followed by ``per_image`` defective copies of each
    (``pasted_set`` or ``small_defects.drawn_set``).

    ``line``: the line protocol with the threshold from the good (held-out) images of the set itself.
    ``worst``: write that many worst good and pasted images to ``worst_dir`` (``training.worst``)."""
    images, masks, labels, types = labelled
    n_good = int((labels == 0).sum())
    scores, maps = predict(images)
    frame_maps, frame_masks = stack_in_frame(maps, masks) if isinstance(maps, list) else (maps, masks)
    result = evaluate_maps(labels, scores, frame_masks, frame_maps, types)  # native maps stay for --worst
    result["line"] = line_operating_points(scores[labels == 0], labels, scores)
    if worst:
        names = [
            f"held-out good #{i}"
            if i < n_good
            else f"{types[i]} pasted on held-out good #{(i - n_good) // per_image}"
            for i in range(len(images))
        ]
        write_worst(worst_dir, worst, images, maps, scores, labels, names, scores[labels == 0], bgr_in=bgr_in)
        result["worst"] = str(worst_dir)
    result.update({"n_good": n_good, "n_pasted": int(labels.sum()), "per_image": per_image, "seed": seed})
    return result


def evaluate_pasted(
    checkpoint: Path,
    per_image: int = 3,
    seed: int = 0,
    batch: int = 8,
    threads: int | None = None,
    progress: bool = False,
    worst: int = 0,
    worst_dir: Path | None = None,
    defects: str = "cutpaste",
    native: bool = False,
) -> dict[str, Any]:
    """``score_pasted`` on the good images the checkpoint's training held out (its ``val_files``);
    ``defects="small"`` / ``"uneven"``: small structural defects / large faint ones drawn at each file's own
    size instead (``training.small_defects``, ``training.uneven_defects``). ``native`` (always for a tiled
    checkpoint): the defects drawn on the images at their own size, maps brought back to it
    (``training.native_eval``), so a tiled checkpoint and a whole-image one compare."""
    if defects not in DEFECT_SETS:
        raise ValueError(f"unknown defect set {defects!r}; use one of {', '.join(DEFECT_SETS)}")
    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    val = [Path(p) for p in ckpt.data.get("val_files", [])]
    if not val:
        raise ValueError(
            f"{checkpoint} records no held-out good images (trained with --val-fraction 0?); "
            "pasted defects need images training has not seen"
        )
    missing = [str(p) for p in val if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} held-out images of {checkpoint} are gone, e.g. {missing[0]}")
    model = InferenceModel(ckpt.model, ckpt.preprocess).eval()
    rate: list[float] = []
    native = native or ckpt.preprocess.tiling is not None
    if native:  # drawn on the images at their own size; tiled checkpoints score them in tiles
        good, run = _native_run(model, ckpt.preprocess, val, batch, rate)
    else:
        good = load_images(val, ckpt.preprocess)

        def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scores, maps, img_s = predict(
                model, images, batch, progress="pasted-defect set" if progress else None
            )
            rate.append(img_s)
            return scores, maps

    labelled = defect_set(defects, val, ckpt.preprocess, per_image, seed, good, native)
    result = score_set(run, labelled, per_image, seed, worst, worst_dir, bgr_in=native)  # native: BGR
    result.update(
        {
            "defects": defects,
            "model": ckpt.kind,
            "checkpoint": str(checkpoint),
            "category": f"{SET_NAMES[defects]} on {len(good)} held-out good images",
            "n_test_images": int(len(good) * (1 + per_image)),
            "throughput_img_s": rate[0],
            "batch": batch,
            "resolution": "native" if native else "model",
            "threads": torch.get_num_threads(),
            "train_seconds": ckpt.train_state.get("train_seconds"),
            "epochs": ckpt.train_state.get("epoch"),
        }
    )
    return result


def _native_run(model: InferenceModel, pre: Any, val: list[Path], batch: int, rate: list[float]) -> tuple:
    """The held-out good images at their own size (BGR) and a predict that brings each map back to it
    (stitched from tiles for a tiled checkpoint)."""
    import time

    from training.native_eval import native_scores_maps

    images = [read_bgr(p) for p in val]

    def run(batch_images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        started = time.perf_counter()
        scores, maps = native_scores_maps(model, pre, batch_images, batch)
        rate.append(len(batch_images) / (time.perf_counter() - started))
        return scores, maps

    return images, run
