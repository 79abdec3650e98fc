"""``edge-run --save-overlays DIR``: see your own run's verdicts as pictures.

Each saved image is the frame with the defect mask in red and its outline in yellow, under a banner that
holds the camera, frame, score, threshold and verdict. The banner is added above the image, so no text is
ever drawn over the part. Anomalous frames are saved (and, with ``every``, each every-th frame too) up to
``limit`` images, so a long run cannot fill the disk; the publish thread writes them after the result is
published, and a failed write is logged once and ends the saving, never the results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np

from edge.capture.frames import Frame
from edge.config.regions import flat_name
from edge.results.postprocess import Verdict

log = logging.getLogger("edge.overlays")

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.4
LINE_H = 14  # banner pixels per text line at FONT_SCALE
RED, YELLOW, GREEN = (0, 0, 255), (0, 255, 255), (0, 200, 0)
DEFAULT_LIMIT = 200


def annotate(
    frame_bgr: np.ndarray, mask: Optional[np.ndarray], lines: List[str], anomalous: bool
) -> np.ndarray:
    """The frame with ``mask`` (uint8, frame size, >0 = defect) blended in red, under a banner of
    ``lines``."""
    image = frame_bgr if frame_bgr.ndim == 3 else cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    image = image.copy()
    if mask is not None and mask.any():
        on = mask > 0
        image[on] = (0.4 * image[on] + 0.6 * np.array(RED)).astype(np.uint8)
        contours, _ = cv2.findContours(on.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, YELLOW, 1)
    banner = np.full((LINE_H * len(lines) + 6, image.shape[1], 3), 32, np.uint8)
    for i, text in enumerate(lines):
        colour = (RED if anomalous else GREEN) if i == len(lines) - 1 else (255, 255, 255)
        cv2.putText(banner, text, (4, LINE_H * (i + 1)), FONT, FONT_SCALE, colour, 1, cv2.LINE_AA)
    return np.vstack([banner, image])


def verdict_lines(camera: str, frame_id: int, score: float, threshold: float, anomalous: bool) -> List[str]:
    return [
        f"{camera} frame {frame_id}",
        f"score {score:.2f} / thr {threshold:.2f}",
        "ANOMALOUS" if anomalous else "ok",
    ]


class OverlaySaver:
    """Writes ``<camera>_<frame_id>.jpg`` into ``folder`` for anomalous frames (and every ``every``-th)."""

    def __init__(self, folder: Path, every: int = 0, limit: int = DEFAULT_LIMIT) -> None:
        self.folder = Path(folder)
        self.every = every
        self.limit = limit
        self.saved = 0
        self._stopped = False

    def wanted(self, frame_id: int, anomalous: bool) -> bool:
        if self._stopped or self.saved >= self.limit:
            return False
        return anomalous or (self.every > 0 and frame_id % self.every == 0)

    def offer(self, camera: str, frame: Frame, verdict: Verdict) -> Optional[Path]:
        """Save the frame when it is wanted; the path written, or None."""
        frame_id, anomalous = frame.frame_id, verdict.anomalous
        if not self.wanted(frame_id, anomalous):
            return None
        try:
            lines = verdict_lines(camera, frame_id, verdict.score, verdict.threshold, anomalous)
            image = annotate(frame.full_image(), verdict.frame_mask(), lines, anomalous)
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{flat_name(camera)}_{frame_id:06d}.jpg"  # a region: cam0:label_...
            if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                raise OSError(f"OpenCV could not write {path}")
        except Exception as exc:  # a full disk or a bad folder must not stop the results
            self._stopped = True
            log.warning("--save-overlays: stopped saving overlays into %s: %s", self.folder, exc)
            return None
        self.saved += 1
        if self.saved == self.limit:
            log.info(
                "--save-overlays: %d overlays saved in %s; that is the limit, no more",
                self.limit,
                self.folder,
            )
        return path
