"""A varied-framing copy of a category: every image cut as an upstream part locator would cut it.

On a line the camera often sees a crop that a locator cut around the part, and the crop's size and aspect
ratio change from part to part. The MVTec-style sets here are framed identically image to image, so they
cannot show what that does to a model's input geometry (letterbox moves the content border from image to
image; stretch distorts). This writes a copy of a category in MVTec layout in which every image, good or
defective, is a random crop whose width and height are each drawn independently from
``[min_side, 1]`` of the original's, at a random place; a defect image's mask gets the very same crop, and
the crop is placed so it keeps the whole defect where it can (a locator cuts around the part, not through
the defect). Seeded: the same category and seed give the same set.

    python -m training.framing --data ../shared/data/mvtec-bottle/bottle --out runs/framing/bottle

The copy lives under ``runs/`` (never in the repository: the data's licences forbid copying it there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from training.data import GOOD, MASK_SUFFIX, MVTecCategory, good_images

MIN_SIDE = 0.6  # each crop side is 60-100 % of the original's: aspect ratios from 0.6 to 1.67 times


def crop_box(
    hw: tuple[int, int], rng: np.random.Generator, min_side: float = MIN_SIDE, keep: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a random crop of an image of size ``hw``; ``keep``: a bool mask whose bounding box
    the crop should contain (when it fits; otherwise the crop is centred on it)."""
    if not 0.0 < min_side <= 1.0:
        raise ValueError(f"min_side must be in (0, 1], got {min_side}")
    height, width = hw
    w = max(1, round(width * rng.uniform(min_side, 1.0)))
    h = max(1, round(height * rng.uniform(min_side, 1.0)))
    return _place(width, w, rng, _span(keep, 1)), _place(height, h, rng, _span(keep, 0)), w, h


def _span(mask: np.ndarray | None, axis: int) -> tuple[int, int] | None:
    """First and last index along the image ``axis`` (0 rows, 1 columns) where ``mask`` is set."""
    if mask is None or not mask.any():
        return None
    hit = np.flatnonzero(mask.any(axis=1 - axis))
    return int(hit[0]), int(hit[-1])


def _place(full: int, size: int, rng: np.random.Generator, span: tuple[int, int] | None) -> int:
    """Start of a ``size``-long window in ``[0, full)`` that contains ``span`` when it fits."""
    lo, hi = 0, full - size
    if span is not None:
        first, last = span
        if last - first + 1 <= size:
            lo, hi = max(lo, last - size + 1), min(hi, first)
        else:  # the defect is longer than the crop: centre the crop on it
            centre = (first + last) // 2 - size // 2
            lo = hi = min(max(centre, 0), full - size)
    return int(rng.integers(lo, hi + 1))


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def make_varied_framing(
    data: Path, out: Path, seed: int = 0, min_side: float = MIN_SIDE, log=print
) -> dict[str, int]:
    """Write the varied-framing copy of ``data`` (an MVTec category, or a plain folder of good images, whose
    copy gets only train/good) to ``out``; returns image counts per split."""
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for path in good_images(data):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        x, y, w, h = crop_box(image.shape[:2], rng, min_side)
        _write(out / "train" / GOOD / f"{path.stem}.png", image[y : y + h, x : x + w])
        counts["train"] += 1
    items = MVTecCategory(data).test_items() if (Path(data) / "test").is_dir() else []
    for item in items:
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        mask = None if item.mask_path is None else cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE)
        x, y, w, h = crop_box(image.shape[:2], rng, min_side, None if mask is None else mask > 0)
        _write(out / "test" / item.defect_type / f"{item.path.stem}.png", image[y : y + h, x : x + w])
        if mask is not None:
            name = f"{item.path.stem}{MASK_SUFFIX}.png"
            _write(out / "ground_truth" / item.defect_type / name, mask[y : y + h, x : x + w])
        counts["test"] += 1
    log(
        f"varied framing of {Path(data).name}: {counts['train']} train, {counts['test']} test images in {out}"
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout category folder")
    p.add_argument("--out", type=Path, required=True, help="where the copy goes (e.g. runs/framing/NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=float, default=MIN_SIDE, help="smallest crop side, share of the image")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"framing: {args.out} is not empty; choose a new --out", file=sys.stderr)
        return 2
    make_varied_framing(
        args.data, args.out, args.seed, args.min_side, log=lambda m: print(m, file=sys.stderr)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
