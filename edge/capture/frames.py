"""Frames and the latest-frame slot between a camera's grabber thread and the inference thread.

A line camera produces frames at its own pace; inference may be slower. Scoring an old frame is worse than
skipping it (the part has moved on), so each camera hands over through a one-frame slot: a new frame replaces
an unread one, and every replaced frame is counted so the drop reaches the stats topic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional, Tuple

import cv2
import numpy as np

# cv2.imdecode flags for JPEG DCT-domain downscaling: libjpeg decodes 1/2, 1/4, 1/8 of the size directly,
# doing a fraction of the work of a full decode followed by a resize.
JPEG_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip


BLACK_MAX = 2  # a frame whose every pixel is at most this is "entirely black" (JPEG's YCbCr -> BGR gives 0/1)


def is_black(image: np.ndarray) -> bool:
    """True when no pixel exceeds ``BLACK_MAX``: a camera with no signal, a capture card's blank frame."""
    return int(image[::8, ::8].max()) <= BLACK_MAX and int(image.max()) <= BLACK_MAX  # subsample first


class UnusableFrame(ValueError):
    """A compressed frame that does not decode or decodes to an entirely black image.

    The grabber only checks that a packet looks like a JPEG; decoding is left to the frames that get scored,
    so this is where a corrupt or black MJPEG frame is found. ``reason`` is 'undecodable' or 'black'.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Frame:
    """One image read from a camera, stamped when it was read.

    An MJPEG camera's frame may stay compressed (``jpeg``, ``image`` None) until it is scored: most frames a
    saturated pipeline reads are replaced in the slot unread, and decoding them would cost as much CPU as a
    good part of the model. ``image_for`` then decodes at the smallest JPEG scale that still covers the model
    input; ``full_image`` gives the frame at camera resolution (for overlays).
    """

    camera: str
    frame_id: int  # per camera, starts at 0, increments per frame actually read
    capture_ts: float  # time.time() when read (wall clock, for payloads)
    capture_mono: float  # time.monotonic() when read (for latency maths)
    image: Optional[np.ndarray]  # BGR uint8 HxWx3 at full camera resolution; None while still compressed
    jpeg: Optional[np.ndarray] = None  # the camera's JPEG bytes (uint8, 1-D) when ``image`` is None
    hw: Tuple[int, int] = field(default=(0, 0))  # (height, width) at camera resolution

    def __post_init__(self) -> None:
        if self.image is not None:
            self.hw = (int(self.image.shape[0]), int(self.image.shape[1]))
        elif self.jpeg is None:
            raise ValueError("a frame needs an image or JPEG bytes")
        elif self.hw[0] < 1 or self.hw[1] < 1:
            raise ValueError(f"a compressed frame needs its camera size, got {self.hw}")

    def full_image(self) -> np.ndarray:
        """The frame at camera resolution (decoded once, then kept)."""
        if self.image is None:
            self.image = self._decode(1)
        return self.image

    def image_for(self, roi: Tuple[int, int, int, int], min_hw: Tuple[int, int]) -> np.ndarray:
        """The ROI ``[x, y, w, h]`` (camera pixels) at the coarsest scale that still has ``min_hw`` pixels.

        The crop at a reduced scale covers the same camera area to within one reduced pixel; the daemon maps
        results back with the ROI in camera pixels, so nothing downstream sees the scale.
        """
        x, y, w, h = roi
        if self.image is not None:
            return self.image[y : y + h, x : x + w]
        k = self.reduction_for(roi, min_hw)
        if k == 1:
            return self.full_image()[y : y + h, x : x + w]
        small = self._decode(k)
        x0, y0 = x // k, y // k
        return small[y0 : y0 + max(1, h // k), x0 : x0 + max(1, w // k)]

    def reduction_for(self, roi: Tuple[int, int, int, int], min_hw: Tuple[int, int]) -> int:
        """The JPEG scale divisor ``image_for`` decodes at: 1 for a decoded frame, else 1, 2, 4 or 8."""
        if self.image is not None:
            return 1
        w, h = roi[2], roi[3]
        return max((f for f in JPEG_REDUCED if h // f >= min_hw[0] and w // f >= min_hw[1]), default=1)

    def _decode(self, factor: int) -> np.ndarray:
        image = cv2.imdecode(self.jpeg, JPEG_REDUCED[factor]) if self.jpeg is not None else None
        what = f"camera {self.camera} frame {self.frame_id}"
        if image is None or image.ndim != 3:
            raise UnusableFrame(f"{what}: JPEG does not decode", "undecodable")
        if is_black(image):
            raise UnusableFrame(f"{what}: entirely black", "black")
        return image


class FrameSlot:
    """Latest-frame slot: put() overwrites an unread frame and counts it in ``dropped``.

    Any number of producers and consumers may use it; each frame is returned by get() at most once.
    After close(), get() returns None at once and put() discards (without counting a drop), so a stopping
    daemon never blocks on a slot.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._dropped = 0
        self._closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._closed:
                return
            if self._frame is not None:
                self._dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The newest unread frame, waiting up to ``timeout`` seconds; None on timeout or when closed."""
        with self._cond:
            if not self._closed and self._frame is None:
                self._cond.wait_for(
                    lambda: self._closed or self._frame is not None, timeout=max(0.0, timeout)
                )
            if self._closed or self._frame is None:
                return None
            frame, self._frame = self._frame, None
            return frame

    def get_nowait(self) -> Frame | None:
        """The newest unread frame or None, without waiting (for gathering a batch across cameras)."""
        return self.get(0.0)

    @property
    def dropped(self) -> int:
        """Frames overwritten before anyone read them."""
        with self._cond:
            return self._dropped

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def close(self) -> None:
        """Wake all getters; from now on get() returns None and the unread frame is discarded."""
        with self._cond:
            self._closed = True
            self._frame = None
            self._cond.notify_all()
