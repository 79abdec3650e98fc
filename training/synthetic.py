"""Generated parts with pasted defects, for tests and the demo (the real MVTec data may not be present).

A "part" is a bright disc with a fine radial texture on a noisy background, jittered in position and
lighting like parts on a conveyor; a defect is a dark or bright blob or a scratch whose mask is known.
Only numpy and OpenCV, so the daemon's tests can use it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Defect:
    image: np.ndarray  # BGR uint8
    mask: np.ndarray  # uint8 {0, 255}


def good_part(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One defect-free part, BGR uint8 of size x size."""
    base = rng.normal(60, 6, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 + rng.uniform(-1.5, 1.5)
    cy = size / 2 + rng.uniform(-1.5, 1.5)
    r = np.hypot(xx - cx, yy - cy)
    angle = np.arctan2(yy - cy, xx - cx)
    disc = r < size * 0.38
    texture = 170 + 18 * np.sin(angle * 24) + 10 * np.cos(r * 0.9)
    img = np.where(disc, texture, base)
    img += rng.normal(0, 3, img.shape)
    gain = rng.uniform(0.95, 1.05)
    tint = np.array([1.0, 0.97, 0.92], np.float32)
    bgr = np.clip(img[..., None] * tint * gain, 0, 255).astype(np.uint8)
    return bgr


def draw_scratch(mask: np.ndarray, cx: int, cy: int, length: float, theta: float) -> None:
    """A straight scratch of ``length`` px centred on (cx, cy) at angle ``theta``, into ``mask`` (255)."""
    dx, dy = np.cos(theta) * length / 2, np.sin(theta) * length / 2
    p1, p2 = (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy))
    cv2.line(mask, p1, p2, 255, max(2, mask.shape[0] // 40))


def defective_part(rng: np.random.Generator, size: int = 128, kind: str | None = None) -> Defect:
    """A part with one pasted defect inside the disc; ``kind`` is 'blob' or 'scratch' (random if None)."""
    img = good_part(rng, size)
    mask = np.zeros((size, size), np.uint8)
    kind = kind or str(rng.choice(["blob", "scratch"]))
    centre = size / 2 + rng.uniform(-0.2, 0.2, 2) * size
    cx, cy = int(centre[0]), int(centre[1])
    if kind == "blob":
        axes = (int(size * rng.uniform(0.06, 0.1)), int(size * rng.uniform(0.05, 0.09)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        colour = (25, 30, 40) if rng.random() < 0.5 else (240, 250, 255)
    elif kind == "scratch":
        length = size * rng.uniform(0.2, 0.3)
        draw_scratch(mask, cx, cy, length, rng.uniform(0, np.pi))
        colour = (20, 20, 20)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; use 'blob' or 'scratch'")
    img[mask > 0] = colour
    return Defect(image=img, mask=mask)


def write_mvtec_dataset(
    root: Path,
    n_train: int = 40,
    n_test_good: int = 8,
    n_test_defect: int = 8,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a dataset in MVTec AD layout under ``root`` (train/good, test/<type>, ground_truth/<type>)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), good_part(rng, size))
    for i in range(n_test_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), good_part(rng, size))
    for kind in ("blob", "scratch"):
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_test_defect // 2):
            d = defective_part(rng, size, kind)
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), d.image)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), d.mask)
    return root


def write_good_folder(root: Path, n: int, size: int = 128, seed: int = 0) -> Path:
    """A plain folder of ``n`` good parts (PNG), the way a line delivers them: no MVTec layout, no defects."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / f"part_{i:04d}.png"), good_part(rng, size))
    return root


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """Write BGR frames to a lossless-enough MJPG AVI that OpenCV can read back everywhere."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write video {path}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def part_sequence(
    n: int,
    defect_every: int,
    size: int = 128,
    seed: int = 0,
    good: Callable[[np.random.Generator, int], np.ndarray] = good_part,
    defective: Callable[[np.random.Generator, int], Defect] = defective_part,
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Frames for a video: every ``defect_every``-th frame is defective (0: none); returns frames and masks
    (None = good). ``good`` and ``defective`` make the product (another generator: another product)."""
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for i in range(n):
        if defect_every and i % defect_every == defect_every - 1:
            d = defective(rng, size)
            frames.append(d.image)
            masks.append(d.mask)
        else:
            frames.append(good(rng, size))
            masks.append(None)
    return frames, masks
