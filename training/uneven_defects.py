"""Large low-contrast defects drawn at the image's own resolution: the visible stand-in for "uneven surface".

The two other drawn sets miss the defect type on which the outside evaluation of issue 24 found the widest
gap (an uneven surface: a large area whose shading or texture is slightly off). CutPaste (``pasted_defects``)
pastes sharp-edged content of full contrast, the small set (``small_defects``) draws a few pixels; neither
has a defect that is large, soft-edged and faint, which is where a local patch distance sees little and an
image-level statistic might see more. Each defect is a soft-edged ellipse covering 10-30 % of the image
(aspect 1:2 to 2:1, any angle), its weight falling from 1 inside to 0 outside over about a fifth of its
short axis, applied as one of:

- ``shade``: the grey level moved by 12-28 levels (brighter or darker, weighted): uneven lighting or
  finish;
- ``smear``: the image blended towards a blurred copy of itself (sigma 1.5-3 % of the short side): a
  polished or smeared area whose texture is gone;
- ``dent``: the pixels pulled towards (or pushed from) the ellipse's centre by up to 1-3 % of the short
  side: a bump or dent that bends the surface's pattern.

The mask is where the weight is at least one half. A draw that changes the pixels under its mask by less
than ``MIN_CHANGE`` grey levels on average (a smear or dent on a flat area) is drawn again, up to
``small_defects.TRIES`` times, keeping the most visible: faint on purpose, never invisible. The ranges were
set from the defect type's description, before any model was scored on the set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from training.small_defects import most_visible, with_defects

UNEVEN_KINDS = ("shade", "smear", "dent")
MIN_CHANGE = 4.0  # mean |difference| (grey levels) under the mask: low on purpose, these are faint
AREA = (0.10, 0.30)  # share of the image the ellipse covers


def _soft_ellipse(hw: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """(float32 weight in [0, 1], centre (x, y)): a filled ellipse feathered by a Gaussian blur."""
    h, w = hw
    area = rng.uniform(*AREA) * h * w
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    a = math.sqrt(area * aspect / math.pi)  # semi-axes with pi * a * b = area
    b = area / (math.pi * a)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    hard = np.zeros(hw, np.float32)
    axes = (max(1, int(round(a))), max(1, int(round(b))))
    cv2.ellipse(hard, (int(round(cx)), int(round(cy))), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(hard, (0, 0), max(1.0, 0.2 * min(a, b)))
    return soft / max(float(soft.max()), 1e-6), (cx, cy)


def _draw(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One try: (defective copy, uint8 {0, 1} mask)."""
    h, w = image.shape[:2]
    weight, (cx, cy) = _soft_ellipse((h, w), rng)
    src = image.astype(np.float32)
    wgt = weight[..., None]
    out: np.ndarray
    if kind == "shade":
        delta = rng.uniform(12.0, 28.0) * (1.0 if rng.random() < 0.5 else -1.0)
        out = src + wgt * delta
    elif kind == "smear":
        blurred = cv2.GaussianBlur(src, (0, 0), rng.uniform(0.015, 0.03) * min(h, w))
        out = src * (1.0 - wgt) + blurred * wgt
    elif kind == "dent":
        amp = rng.uniform(0.01, 0.03) * min(h, w) * (1.0 if rng.random() < 0.5 else -1.0)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = xs - cx, ys - cy
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        pull = amp * weight  # read from further out (a bulge) or further in (a dent), zero outside
        out = cv2.remap(
            src, xs + pull * dx / r, ys + pull * dy / r, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
    else:
        raise ValueError(f"unknown uneven defect kind {kind!r}; use one of {', '.join(UNEVEN_KINDS)}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8), (weight >= 0.5).astype(np.uint8)


def draw_uneven_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8 at its own size with one ``kind`` defect; returns (image, bool mask)."""
    if kind not in UNEVEN_KINDS:
        raise ValueError(f"unknown uneven defect kind {kind!r}; use one of {', '.join(UNEVEN_KINDS)}")
    return most_visible(image, lambda: _draw(image, kind, rng), f"an uneven {kind}", MIN_CHANGE)


def uneven_each(
    frames: Sequence[np.ndarray], per_image: int = 3, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """The good frames followed by ``per_image`` copies of each with a large faint defect, everything at
    each frame's own size (``small_defects.with_defects``)."""
    return with_defects(
        frames, per_image, seed, UNEVEN_KINDS, lambda i, kind, rng: draw_uneven_defect(frames[i], kind, rng)
    )
