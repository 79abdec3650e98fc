"""Synthetic anomalies for training a denoising student (GTrans ``denoise``).

A student trained only to copy the teacher on good images learns a general image-to-feature mapping, and a
general mapping copies the teacher on anomalies too: a low-contrast stain or a thin crack comes out of
the student as faithfully as out of the teacher, and the difference that should flag it is small. A
*denoising* student (as in DeSTSeg, Zhang et al., CVPR 2023) sees a corrupted image and must still
produce the teacher's features of the clean one, so it learns to map anything off the normal manifold
back onto it, and the teacher-student difference grows exactly where an image is abnormal.

The corruptions here are irregular regions (thresholded smooth noise, as DRAEM draws them) filled three
ways: a generated texture blended in, the image's own brightness shifted (low-contrast areas), or the
image's own content from elsewhere. They are deliberately unlike the rectangles, strips and ellipses of
``training.pasted_defects``, so a check on pasted defects does not just measure the training recipe.
"""

from __future__ import annotations

import cv2
import numpy as np

from training.textures import TEXTURES, texture_image

KINDS = ("texture", "shade", "shift")


def region_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An irregular region covering about 0.5-10 % of the image, float32 {0..1} with a soft 1-px edge."""
    scale = float(rng.uniform(4.0, 16.0))
    noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), scale)
    share = float(rng.uniform(0.005, 0.10))
    mask = (noise > np.quantile(noise, 1.0 - share)).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), 1.0)


def corrupt(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uint8 HxWx3 image with one synthetic anomaly (never the identity: the region is never empty)."""
    h, w = image.shape[:2]
    mask = region_mask(rng, h, w)[..., None]
    kind = KINDS[int(rng.integers(len(KINDS)))]
    img = image.astype(np.float32)
    if kind == "texture":
        tex = texture_image(list(TEXTURES)[int(rng.integers(len(TEXTURES)))], rng, max(h, w))[:h, :w]
        fill = tex.astype(np.float32) * float(rng.uniform(0.5, 1.5))
        beta = float(rng.uniform(0.3, 1.0))
        fill = beta * fill + (1.0 - beta) * img
    elif kind == "shade":
        factor = float(rng.choice([rng.uniform(0.6, 0.85), rng.uniform(1.15, 1.5)]))
        fill = img * factor + float(rng.uniform(-10, 10))
    else:  # shift: the image's own content from elsewhere, turned
        angle = float(rng.uniform(-180, 180))
        centre = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        m = cv2.getRotationMatrix2D(centre, angle, 1.0)
        fill = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = img * (1.0 - mask) + fill * mask
    return np.clip(out, 0, 255).astype(np.uint8)


def corrupt_batch(images: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of a uint8 (N, H, W, 3) batch with ``share`` of its images corrupted (the rest untouched)."""
    out = images.copy()
    for i in range(len(images)):
        if rng.random() < share:
            out[i] = corrupt(images[i], rng)
    return out
