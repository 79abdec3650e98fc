"""Small structural defects drawn at the image's own resolution: a visible stand-in for real ones.

The CutPaste kinds (``training.pasted_defects``) cover 2-8 % of the image, so a setting chosen on them
favours defects that are large at model resolution (a mean over many hot patches wins there). Real defects on
structured parts are often a few pixels at the camera's resolution: a nick bitten out of an edge or a spur
added to it, a bridge across a gap or a break across a line, a pin hole in a flat area (DeepPCB's open,
short, mouse bite, spur, spurious copper and pin hole are all of this kind). They are drawn where they
would be, at the image's own size, and the image then goes through the model's resize like a camera frame,
so a defect a few pixels wide stays a few pixels wide before the resize shrinks it:

- ``nick``: a disc (radius 0.8-2 % of the short side) on an edge, in the colour from across the edge;
- ``bridge``: a stroke (3-8 % long, 0.6-1.5 % wide) from one side of an edge across the other, in the
  first side's colour;
- ``speck``: a disc (radius 0.6-1.5 %) in a flat area, in the complement of its colour.

Edges are the strongest 5 % of the grey gradient; the colour "from across" is read 1.5 radii along the
gradient. A draw that barely changes the pixels (a stroke along an edge) is drawn again, as in
``pasted_defects``. The sizes were set from the data's documentation (DeepPCB: traces ~60 px wide at
640 px, defects a few to tens of pixels), not from any test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge.capture.preprocess import Preprocess
from training.native_eval import read_bgr

SMALL_KINDS = ("nick", "bridge", "speck")
EDGE_QUANTILE = 0.95
MIN_CHANGE = 20.0  # mean |difference| (grey levels) under the mask, as pasted_defects
TRIES = 20


def _gradient(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    smooth = cv2.GaussianBlur(grey, (0, 0), 1.5)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return gx, gy, np.hypot(gx, gy)


def _colour_at(image: np.ndarray, x: float, y: float) -> np.ndarray:
    h, w = image.shape[:2]
    return image[int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))]


def _draw(
    image: np.ndarray, kind: str, rng: np.random.Generator, grads: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One try: (defective copy, uint8 {0, 1} mask)."""
    h, w = image.shape[:2]
    short = min(h, w)
    gx, gy, mag = grads
    mask = np.zeros((h, w), np.uint8)
    edge = mag >= max(np.quantile(mag, EDGE_QUANTILE), 1e-6)
    flat = ~edge
    pool = edge if kind != "speck" else flat
    ys, xs = np.nonzero(pool) if pool.any() else np.nonzero(np.ones((h, w), bool))
    k = int(rng.integers(len(xs)))
    px, py = float(xs[k]), float(ys[k])
    norm = float(mag[ys[k], xs[k]])
    # unit gradient (towards brighter); a random direction where there is none (a flat area)
    if norm > 1e-6:
        ux, uy = float(gx[ys[k], xs[k]]) / norm, float(gy[ys[k], xs[k]]) / norm
    else:
        a = rng.uniform(0, 2 * math.pi)
        ux, uy = math.cos(a), math.sin(a)
    side = 1.0 if rng.random() < 0.5 else -1.0  # +1: the bright side's colour goes into the dark one
    if kind == "nick":
        r = max(1.0, rng.uniform(0.008, 0.02) * short)
        colour = _colour_at(image, px + side * 1.5 * r * ux, py + side * 1.5 * r * uy)
        centre = (int(round(px - side * 0.5 * r * ux)), int(round(py - side * 0.5 * r * uy)))
        cv2.circle(mask, centre, int(round(r)), 1, -1)
    elif kind == "bridge":
        length = rng.uniform(0.03, 0.08) * short
        width = max(1, int(round(rng.uniform(0.006, 0.015) * short)))
        colour = _colour_at(image, px + side * 1.5 * width * ux, py + side * 1.5 * width * uy)
        turn = rng.uniform(-math.pi / 6, math.pi / 6)  # across the edge, give or take 30 degrees
        dx = -side * (ux * math.cos(turn) - uy * math.sin(turn))
        dy = -side * (ux * math.sin(turn) + uy * math.cos(turn))
        start = (px + side * width * ux, py + side * width * uy)
        end = (start[0] + length * dx, start[1] + length * dy)
        cv2.line(mask, tuple(int(round(v)) for v in start), tuple(int(round(v)) for v in end), 1, width)
    elif kind == "speck":
        r = max(1.0, rng.uniform(0.006, 0.015) * short)
        colour = (255 - _colour_at(image, px, py).astype(np.int32)).astype(np.uint8)
        cv2.circle(mask, (int(round(px)), int(round(py))), int(round(r)), 1, -1)
    else:
        raise ValueError(f"unknown small defect kind {kind!r}; use one of {', '.join(SMALL_KINDS)}")
    out = image.copy()
    out[mask.astype(bool)] = colour
    return out, mask


def draw_small_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8 at its own size with one ``kind`` defect; returns (image, bool mask).

    The try that changes the pixels under it most is kept when none reaches ``MIN_CHANGE``."""
    if kind not in SMALL_KINDS:
        raise ValueError(f"unknown small defect kind {kind!r}; use one of {', '.join(SMALL_KINDS)}")
    grads = _gradient(image.astype(np.float32).mean(axis=2))
    return most_visible(image, lambda: _draw(image, kind, rng, grads), f"a {kind} defect")


def most_visible(
    image: np.ndarray,
    draw: Callable[[], tuple[np.ndarray, np.ndarray]],
    what: str,
    min_change: float = MIN_CHANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``TRIES`` draws of (defective copy, mask): the first whose pixels under the mask differ from
    ``image`` by ``min_change`` grey levels on average, else the most different one. A defect that barely
    changes what it covers (background onto background) would be labelled defective while looking good."""
    grey = image.astype(np.float32).mean(axis=2)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(TRIES):
        out, mask = draw()
        sel = mask.astype(bool)
        if not sel.any():
            continue
        change = float(np.abs(out.astype(np.float32).mean(axis=2) - grey)[sel].mean())
        if best is None or change > best[0]:
            best = (change, out, sel)
        if change >= min_change:
            break
    if best is None:
        raise ValueError(f"image of size {image.shape[1]}x{image.shape[0]} is too small for {what}")
    return best[1], best[2]


def with_defects(
    frames: Sequence[np.ndarray],
    per_image: int,
    seed: int,
    kinds: Sequence[str],
    draw: Callable[[int, str, np.random.Generator], tuple[np.ndarray, np.ndarray]],
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """The good frames (label 0, empty masks) followed by ``per_image`` copies of each with one defect
    (label 1, ``kinds`` in turn), ``draw(index, kind, rng)`` giving each (image, bool mask): images, masks,
    labels, types. The defect sets (pasted and small) share it, so both replay from ``seed`` alike."""
    if len(frames) == 0 or per_image < 1:
        raise ValueError(
            f"need at least one good image and per_image >= 1, got {len(frames)} and {per_image}"
        )
    rng = np.random.default_rng(seed)
    images, masks = list(frames), [np.zeros(f.shape[:2], bool) for f in frames]
    types = ["good"] * len(frames)
    for i in range(len(frames)):
        for j in range(per_image):
            kind = kinds[(i * per_image + j) % len(kinds)]
            defective, mask = draw(i, kind, rng)
            images.append(defective)
            masks.append(mask)
            types.append(kind)
    labels = np.array([int(t != "good") for t in types], dtype=np.int64)
    return images, masks, labels, types


def small_each(
    frames: Sequence[np.ndarray], per_image: int = 3, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """The good frames followed by ``per_image`` copies of each with a small defect, everything at each
    frame's own size (``with_defects``; as ``pasted_defects.paste_each``)."""
    return with_defects(
        frames, per_image, seed, SMALL_KINDS, lambda i, kind, rng: draw_small_defect(frames[i], kind, rng)
    )


Each = Callable[
    [Sequence[np.ndarray], int, int], tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]
]


def drawn_set(
    paths: Sequence[Path], pre: Preprocess, per_image: int = 3, seed: int = 0, each: Each = small_each
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``each`` (``small_each``, or another set drawn at the image's own size) on the files at ``paths``,
    each image then resized by ``pre`` as the daemon resizes a frame: images (N, H, W, 3), bool masks
    (N, H, W), labels, types (as ``pasted_set``).

    A mask pixel is defective where the defect covers at least a quarter of it after the resize (any
    coverage, for a defect smaller than that)."""
    if not paths:
        raise ValueError(f"need at least one good image and per_image >= 1, got 0 and {per_image}")
    images, masks, labels, types = each([read_bgr(Path(p)) for p in paths], per_image, seed)
    covers = [pre.fit(m.astype(np.uint8) * 255, cv2.INTER_AREA) for m in masks]
    return (
        np.stack([pre.frame_to_input(im) for im in images]),
        np.stack([c >= 64 if (c >= 64).any() else c > 0 for c in covers]),
        labels,
        types,
    )
