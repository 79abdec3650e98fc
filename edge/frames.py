"""Frames and the latest-frame slot between a camera's grabber thread and the inference thread.

A line camera produces frames at its own pace; inference may be slower. Scoring an old frame is worse than
skipping it (the part has moved on), so each camera hands over through a one-frame slot: a new frame replaces
an unread one, and every replaced frame is counted so the drop reaches the stats topic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One image read from a camera, stamped when it was read."""

    camera: str
    frame_id: int  # per camera, starts at 0, increments per frame actually read
    capture_ts: float  # time.time() when read (wall clock, for payloads)
    capture_mono: float  # time.monotonic() when read (for latency maths)
    image: np.ndarray  # BGR uint8 HxWx3, full camera resolution


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
