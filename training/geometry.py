"""Choose a bundle's input geometry (letterbox or stretch) from its own good images, before training.

Parts cropped by an upstream locator vary in size and aspect ratio. Letterboxing keeps shapes but moves the
content border (and with it the patches that see padding) from image to image; stretching keeps every
border in place but distorts, differently per image. Which costs less depends on the product, so
``edge-train --geometry auto`` (the default) measures it on the data it is given, never on a test split:

1. If every good image already has the model input's aspect ratio, the two geometries are the same
   resize: letterbox, nothing measured.
2. Otherwise a cheap probe (the kNN kind with the EfficientNet-Lite0 teacher and a small coreset, the
   fastest model here; the geometry is a property of the framing, not of the model) is fitted once per
   geometry on the training images and scored on the held-out good images plus defects pasted onto them
   **in their own frame** (``training.pasted_defects.paste_defect``), so both geometries see the same
   defects. Pixel metrics are computed in one frame for both (each map cropped to where the image landed
   and resized to the model's square), so padding counts for neither.
3. Stretch is chosen only when the sum of its image AUROC, pixel AUROC, AUPRO and line recall at 1 % false
   alarms beats letterbox's by more than ``MARGIN`` (stated before any data was looked at: letterbox
   keeps a thin crack thin, so it wins a tie).

The choice and both measurements are recorded in the checkpoint (``data.geometry``); the manifest carries
the chosen resize and the daemon follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from training.data import DatasetError, load_images
from training.evaluate import content_scores
from training.metrics import evaluate_maps, line_operating_points
from training.pasted_defects import paste_each

GEOMETRIES = ("letterbox", "stretch")
CHOICES = ("auto", *GEOMETRIES)
MARGIN = 0.02  # stretch must beat letterbox by this much on the sum of the four metrics
PROBE_BANK = 2048  # EfficientNet coreset rows of the probe: small, the comparison is relative
PER_IMAGE = 3  # pasted defects per held-out good image, as edge-eval --pasted


def preprocess(size: int, resize: str) -> Preprocess:
    return Preprocess(
        height=size, width=size, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=resize
    )


def _read(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise DatasetError(f"cannot read image {path}: the file is missing, corrupt or not an image")
    return frame


def image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(height, width) of every image (cv2 reads the header and the pixels; paid once, before training)."""
    return [_read(Path(p)).shape[:2] for p in paths]


def native_pasted(
    paths: Sequence[Path], seed: int = 0, per_image: int = PER_IMAGE
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """The held-out good images and defects pasted onto each **in its own frame** (BGR, sizes differ)."""
    return paste_each([_read(Path(p)) for p in paths], per_image, seed)


def to_model_frame(maps: np.ndarray, sizes: Sequence[tuple[int, int]], pre: Preprocess) -> np.ndarray:
    """Each (S, S) map cropped to where its image landed and resized back to (S, S): one frame for any
    geometry (stretch maps pass unchanged)."""
    out = np.empty_like(maps)
    for i, (amap, (h, w)) in enumerate(zip(maps, sizes, strict=True)):
        x, y, cw, ch = pre.content_box(h, w)
        out[i] = cv2.resize(amap[y : y + ch, x : x + cw], (pre.width, pre.height), cv2.INTER_LINEAR)
    return out


def score_geometry(
    resize: str,
    size: int,
    train_paths: Sequence[Path],
    pasted: tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]],
    seed: int = 0,
) -> dict[str, float]:
    """The probe fitted on ``train_paths`` under one geometry, scored on the native pasted set."""
    from training.models.patchcore import PatchCore, PatchCoreConfig
    from training.train import images_to_tensor

    pre = preprocess(size, resize)
    model = PatchCore(PatchCoreConfig(image_size=size, backbone="effnet", bank_size=PROBE_BANK)).eval()
    model.load_pretrained()
    model.fit(images_to_tensor(load_images(train_paths, pre), pre), seed=seed)
    images, masks, labels, types = pasted
    sizes = [im.shape[:2] for im in images]
    x = images_to_tensor(np.stack([pre.frame_to_input(im) for im in images]), pre)
    with torch.no_grad():
        maps = torch.cat([model(x[i : i + 16])[1] for i in range(0, len(x), 16)]).numpy()
    scores = content_scores(maps, sizes, pre)  # the maximum where the image landed, as the daemon scores
    square = np.stack([cv2.resize(m.astype(np.uint8), (size, size), cv2.INTER_NEAREST) for m in masks])
    r = evaluate_maps(labels, scores, square > 0, to_model_frame(maps, sizes, pre), types)
    line = line_operating_points(scores[labels == 0], labels, scores)
    return {
        "image_auroc": r["image_auroc"],
        "pixel_auroc": r["pixel_auroc"],
        "aupro": r["aupro"],
        "recall_1": line["0.01"]["recall"],
    }


def choose_geometry(
    train_paths: Sequence[Path],
    val_paths: Sequence[Path],
    size: int,
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """``{"resize": ..., "reason": ..., "probe": {geometry: metrics}}`` for these good images."""
    sizes = image_sizes([*train_paths, *val_paths])
    if all(h == w for h, w in sizes):
        return {"resize": "letterbox", "reason": "every image is square like the input: the geometries agree"}
    if len(val_paths) < 2:
        return {
            "resize": "letterbox",
            "reason": "fewer than 2 held-out good images: nothing to measure on (letterbox keeps shapes)",
        }
    log(f"geometry: not every image is square; probing letterbox vs stretch on {len(val_paths)} held-out")
    pasted = native_pasted(val_paths, seed)
    probe = {g: score_geometry(g, size, train_paths, pasted, seed) for g in GEOMETRIES}
    total = {g: sum(v for v in probe[g].values() if v is not None) for g in GEOMETRIES}
    for g in GEOMETRIES:
        log(f"geometry: {g}: " + " ".join(f"{k} {v:.3f}" for k, v in probe[g].items() if v is not None))
    if total["stretch"] > total["letterbox"] + MARGIN:
        reason = f"stretch beat letterbox by {total['stretch'] - total['letterbox']:.3f} (> {MARGIN})"
        chosen = "stretch"
    else:
        reason = f"stretch did not beat letterbox by more than {MARGIN} (difference "
        reason += f"{total['stretch'] - total['letterbox']:+.3f})"
        chosen = "letterbox"
    log(f"geometry: {chosen} ({reason})")
    return {"resize": chosen, "reason": reason, "probe": probe}
