"""``edge-eval --worst N``: the N highest-scoring good images and the N lowest-scoring defective ones.

"Why was this good part flagged?" is the first question a line engineer asks. For each image this writes
one PNG: the image the model saw, beside it the anomaly map over it (colour 0 at the held-out good median,
full at the held-out 1 % false-alarm threshold, so colours mean the same in every file) with a circle on
the map's maximum, the pixel that decided the score. ``index.json`` and ``index.md`` list them with their
scores, whether the station's threshold flags them, and where the maximum is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def overlay(image: np.ndarray, amap: np.ndarray, low: float, high: float, bgr_in: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 (RGB, or BGR with ``bgr_in``) and its (H, W) map -> (H, 2W, 3) BGR: the image | the
    map over it, max circled."""
    span = max(high - low, 1e-12)
    heat = np.clip((amap - low) / span, 0.0, 1.0)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    bgr = image if bgr_in else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    mixed = cv2.addWeighted(bgr, 0.5, colour, 0.5, 0.0)
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    radius = max(4, amap.shape[0] // 24)
    cv2.circle(mixed, (int(x), int(y)), radius, (255, 255, 255), 2)
    return np.concatenate([bgr, mixed], axis=1)


def pick_worst(scores: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` highest-scoring good images and the ``n`` lowest-scoring defective ones."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    return good[np.argsort(-scores[good], kind="stable")[:n]], bad[np.argsort(scores[bad], kind="stable")[:n]]


def write_worst(
    out: Path,
    n: int,
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    good_reference: np.ndarray,
    threshold: float | None = None,
    bgr_in: bool = False,
) -> dict[str, Any]:
    """Write the overlays and the index under ``out``; returns the index.

    ``good_reference``: held-out good images' scores (the colour scale and, without ``threshold``, the
    1 % false-alarm threshold the station would set). ``images`` is only indexed, so a sequence that reads
    each file when asked serves for a large test split; ``bgr_in``: they are BGR (OpenCV's order).
    """
    if n < 1:
        raise ValueError(f"--worst needs N >= 1, got {n}")
    ref = np.asarray(good_reference, dtype=np.float64)
    low = float(np.median(ref))
    thr = float(np.quantile(ref, 0.99)) if threshold is None else float(threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good_idx, bad_idx = pick_worst(scores, labels, n)
    entries = []
    for group, idx in (("good-highest", good_idx), ("defective-lowest", bad_idx)):
        for rank, i in enumerate(idx, start=1):
            amap = maps[i]
            y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
            png = f"{group}-{rank:02d}.png"
            cv2.imwrite(str(out / png), overlay(images[i], amap, low, max(thr, low + 1e-6), bgr_in))
            entries.append(
                {
                    "group": group,
                    "rank": rank,
                    "file": png,
                    "image": str(names[i]),
                    "score": float(scores[i]),
                    "flagged": bool(scores[i] > thr),
                    "max_xy": [int(x), int(y)],
                    "map_size": [int(amap.shape[1]), int(amap.shape[0])],
                }
            )
    index = {"threshold": thr, "good_median": low, "n": n, "images": entries}
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (out / "index.md").write_text(index_markdown(index), encoding="utf-8")
    return index


def index_markdown(index: dict[str, Any]) -> str:
    lines = [
        "# Worst images",
        "",
        f"Threshold (1 % false alarms on held-out good images): {index['threshold']:.4g}; "
        f"held-out good median {index['good_median']:.4g}. Colour: blue at the median, red at the threshold.",
        "",
        "| group | rank | overlay | image | score | flagged | max at (x, y) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in index["images"]:
        lines.append(
            f"| {e['group']} | {e['rank']} | [{e['file']}]({e['file']}) | {e['image']} | {e['score']:.4g} "
            f"| {'yes' if e['flagged'] else 'no'} | {e['max_xy'][0]}, {e['max_xy'][1]} |"
        )
    return "\n".join(lines) + "\n"
