"""Real-texture categories from the photographs scikit-image ships (brick, grass, gravel; CC0, offline).

The generated textures (``training.textures``) are procedural; these are photographs of real surfaces,
each one 512 x 512 grey image. A category is cut from one photograph so that training and test never share
pixels: training crops come from the top ``TRAIN_SHARE`` of the rows, test crops from the rest. Each crop
gets its own horizontal flip, gain, illumination gradient and sensor noise, as photos of one product
differ. Defective test images are test crops with one pasted defect each (``training.pasted_defects``:
patch, scar and blob in turn, donors from other test crops), with their exact masks; the result is an MVTec
layout that ``edge-train`` and ``edge-eval --data`` read as they read a real category.

What such a category cannot measure: the line threshold. 120 crops of one 307-row strip share most of their
pixels, so the held-out good crops ``edge-train`` keeps (a random 10 % of them) are near copies of training
content and score lower than any new crop; the threshold they set flags a large share of the good test crops
(the results files' "good test flagged" column). AUROC and AUPRO compare test images with test images and
stay valid; so do the held-out pasted sets as relative measures.

    python -m training.real_textures --out runs/real-textures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from training.pasted_defects import KINDS, paste_defect

PHOTOS = ("brick", "grass", "gravel")
CROP = 160  # px of the 512 x 512 photograph: a few bricks, a tuft of grass, a handful of stones
TRAIN_SHARE = 0.6


def photograph(name: str) -> np.ndarray:
    """The grey uint8 photograph ``name`` from scikit-image's bundled data (no download)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photograph {name!r}; choose one of {', '.join(PHOTOS)}")
    from skimage import data  # a training-side extra (docs/dependencies.md): only this module needs it

    image = np.asarray(getattr(data, name)())
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def crops(region: np.ndarray, n: int, rng: np.random.Generator, size: int = CROP) -> list[np.ndarray]:
    """``n`` random ``size`` crops of ``region`` as BGR uint8, each with its own flip, light and noise."""
    h, w = region.shape
    if h < size or w < size:
        raise ValueError(f"a {w}x{h} region is too small for {size}-px crops")
    out = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(n):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = region[y : y + size, x : x + size].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        gx, gy = rng.uniform(-0.08, 0.08, 2)
        light = rng.uniform(0.9, 1.1) * (1.0 + gx * (xx - 0.5) + gy * (yy - 0.5))
        grey = np.clip(crop * light + rng.normal(0, 2.0, crop.shape), 0, 255).astype(np.uint8)
        out.append(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return out


def write_category(out: Path, name: str, n_train: int = 120, n_test: int = 30, seed: int = 0) -> Path:
    """One photograph as an MVTec-layout category under ``out/name``: ``n_train`` good training crops,
    ``n_test`` good and ``n_test`` defective test crops (with masks), training and test rows disjoint."""
    photo = photograph(name)
    split = int(round(photo.shape[0] * TRAIN_SHARE))
    rng = np.random.default_rng([seed, PHOTOS.index(name)])
    root = Path(out) / name
    folders = {k: root / k for k in ("train/good", "test/good", "test/pasted", "ground_truth/pasted")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(crops(photo[:split], n_train, rng)):
        cv2.imwrite(str(folders["train/good"] / f"{i:03d}.png"), image)
    good = crops(photo[split:], 2 * n_test, rng)
    for i, image in enumerate(good[:n_test]):
        cv2.imwrite(str(folders["test/good"] / f"{i:03d}.png"), image)
    bases = good[n_test:]
    for i, image in enumerate(bases):
        donor = bases[(i + 1) % len(bases)]
        defective, mask = paste_defect(image, donor, KINDS[i % len(KINDS)], rng)
        cv2.imwrite(str(folders["test/pasted"] / f"{i:03d}.png"), defective)
        cv2.imwrite(str(folders["ground_truth/pasted"] / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--n-train", type=int, default=120)
    p.add_argument("--n-test", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in args.photos.split(","):
        print(write_category(args.out, name, args.n_train, args.n_test, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
