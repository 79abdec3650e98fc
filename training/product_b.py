"""A second generated product ("product B"), visibly different from :mod:`training.synthetic`'s disc: a
hexagonal nut, brushed grey with a dark central hole, on a dark blue-grey belt. Used by the onboarding demo
(``edge-onboard``): a line that changes from product A to product B, whose model is trained from the line.

Same conventions as :mod:`training.synthetic`: BGR uint8 images, defects are blobs or scratches on the
part's face with a known mask; only numpy and OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

from training.synthetic import Defect, draw_scratch, part_sequence


def _hexagon(cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    theta = angle + np.arange(6) * np.pi / 3
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1).astype(np.int32)


def good_part_b(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One defect-free nut, BGR uint8 of size x size."""
    belt = rng.normal(45, 5, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 + rng.uniform(-1.5, 1.5)
    cy = size / 2 + rng.uniform(-1.5, 1.5)
    face = np.zeros((size, size), np.uint8)
    cv2.fillPoly(face, [_hexagon(cx, cy, size * 0.4, rng.uniform(-0.05, 0.05))], 1)
    r = np.hypot(xx - cx, yy - cy)
    hole = r < size * 0.14
    brushed = 120 + 25 * (xx - cx) / size + 8 * np.sin(r * 1.7)  # a light gradient and fine turned rings
    img = np.where((face > 0) & ~hole, brushed, belt)
    img = np.where(hole, 20.0, img)
    img += rng.normal(0, 3, img.shape)
    gain = rng.uniform(0.95, 1.05)
    tint = np.array([1.08, 1.0, 0.9], np.float32)  # bluish steel, unlike A's warm disc
    return np.clip(img[..., None] * tint * gain, 0, 255).astype(np.uint8)


def defective_part_b(rng: np.random.Generator, size: int = 128, kind: str | None = None) -> Defect:
    """A nut with one defect on its face (between the hole and the edge); 'blob' or 'scratch'."""
    img = good_part_b(rng, size)
    mask = np.zeros((size, size), np.uint8)
    kind = kind or str(rng.choice(["blob", "scratch"]))
    angle = rng.uniform(0, 2 * np.pi)
    dist = size * rng.uniform(0.22, 0.28)
    cx, cy = int(size / 2 + dist * np.cos(angle)), int(size / 2 + dist * np.sin(angle))
    if kind == "blob":
        axes = (int(size * rng.uniform(0.05, 0.08)), int(size * rng.uniform(0.04, 0.07)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        colour = (30, 60, 150) if rng.random() < 0.5 else (235, 240, 245)  # rust or a bright burr
    elif kind == "scratch":
        length = size * rng.uniform(0.15, 0.22)
        draw_scratch(mask, cx, cy, length, angle + np.pi / 2)  # along the face, not into the hole
        colour = (15, 15, 15)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; use 'blob' or 'scratch'")
    img[mask > 0] = colour
    return Defect(image=img, mask=mask)


def part_sequence_b(
    n: int, defect_every: int, size: int = 128, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Frames of nuts for a video: every ``defect_every``-th is defective (0: none); masks (None = good)."""
    return part_sequence(n, defect_every, size, seed, good=good_part_b, defective=defective_part_b)
