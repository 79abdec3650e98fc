"""Generated surface textures: categories no recipe was developed on, for pasted-defect checks.

Real categories are few here (MVTec bottle, DeepPCB), and a default tuned on them may not carry to a
user's part. These procedural surfaces stand in for kinds of products the real data lacks: cast or
sand-blasted metal (``grain``), woven fabric (``weave``), brushed metal (``brushed``) and perforated
sheet (``holes``). Each image varies in phase, orientation, scale and lighting the way photos of one
product do, so a model must learn the texture, not memorise images. Defects come from
``training.pasted_defects`` on the held-out images, never from here.

    python -m training.textures --out runs/textures --n 120
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

SIZE = 256


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gentle linear illumination gradient and gain, as across a camera's field of view."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    return rng.uniform(0.9, 1.1) * (1.0 + gx * (xx - 0.5) + gy * (yy - 0.5))


def grain(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    fine = _smooth_noise(rng, size, 1.0)
    coarse = _smooth_noise(rng, size, 6.0)
    return 128 + 22 * fine + 12 * coarse


def weave(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.deg2rad(rng.uniform(-4, 4))
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    period = rng.uniform(9, 11)
    pu, pv = rng.uniform(0, period, 2)
    warp = np.sin(2 * np.pi * (u + pu) / period)
    weft = np.sin(2 * np.pi * (v + pv) / period)
    over = np.sign(np.sin(np.pi * (u + pu) / period) * np.sin(np.pi * (v + pv) / period))
    return 120 + 35 * np.where(over > 0, warp, weft) + 6 * _smooth_noise(rng, size, 1.0)


def brushed(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    streaks = rng.standard_normal((size, size)).astype(np.float32)
    angle = rng.uniform(-5, 5)
    streaks = cv2.GaussianBlur(streaks, (0, 0), sigmaX=25.0, sigmaY=0.7)
    rot = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    streaks = cv2.warpAffine(streaks, rot, (size, size), borderMode=cv2.BORDER_REFLECT)
    streaks /= streaks.std() + 1e-6
    return 150 + 18 * streaks + 5 * _smooth_noise(rng, size, 1.0)


def holes(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    img = np.full((size, size), 170.0, np.float32)
    pitch = rng.uniform(20, 24)
    radius = pitch * rng.uniform(0.22, 0.26)
    ox, oy = rng.uniform(0, pitch, 2)
    for row, y in enumerate(np.arange(-pitch + oy, size + pitch, pitch)):
        shift = pitch / 2 if row % 2 else 0.0  # staggered rows, as perforated sheet is punched
        for x in np.arange(-pitch + ox + shift, size + pitch, pitch):
            cv2.circle(img, (int(round(x)), int(round(y))), int(round(radius)), 45.0, -1, cv2.LINE_AA)
    return img + 5 * _smooth_noise(rng, size, 1.0)


TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "grain": grain,
    "weave": weave,
    "brushed": brushed,
    "holes": holes,
}


def texture_image(kind: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One BGR uint8 image of a texture kind, with its own phase, lighting and sensor noise."""
    if kind not in TEXTURES:
        raise ValueError(f"unknown texture {kind!r}; choose one of {', '.join(TEXTURES)}")
    grey = TEXTURES[kind](rng, size) * _lighting(rng, size) + rng.normal(0, 2.0, (size, size))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def write_texture_folder(folder: Path, kind: str, n: int, seed: int = 0, size: int = SIZE) -> Path:
    """``n`` good images of one texture as ``folder/NNN.png`` (a plain folder edge-train accepts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, list(TEXTURES).index(kind)])
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), texture_image(kind, rng, size))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write folders of generated good texture images.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=120)
    p.add_argument("--kinds", default=",".join(TEXTURES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for kind in args.kinds.split(","):
        print(write_texture_folder(args.out / kind, kind, args.n, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
