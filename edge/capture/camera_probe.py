"""Open a camera briefly, as ``edge-run --check-config`` does, and say why it cannot be used.

A check that only parses the source passed ``source = "7"`` on a machine with no /dev/video7; this opens the
capture the way the daemon does (:func:`edge.capture.sources.open_capture`) and reads one frame, in a helper
thread bounded by a timeout (an RTSP camera that does not answer, a GStreamer pipeline that hangs), and
releases it.
A capture that is still opening when the timeout passes is left to its thread (daemon) and reported.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, List, Optional

from edge.util.redact import redact

CaptureOpener = Callable[[str], Any]


def probe_camera(uri: str, timeout_s: float, opener: Optional[CaptureOpener] = None) -> Optional[str]:
    """None when ``uri`` opens and gives a frame within ``timeout_s``; else why not, as one line."""
    if opener is None:
        from edge.capture.sources import open_capture  # cv2: imported only when a camera is probed

        opener = open_capture
    outcome: List[Optional[str]] = []
    thread = threading.Thread(target=lambda: outcome.append(_open_and_read(uri, opener)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"did not open within {timeout_s:g} s (unreachable, or held by another program?)"
    return outcome[0]


def _open_and_read(uri: str, opener: CaptureOpener) -> Optional[str]:
    try:
        capture = opener(uri)
    except Exception as exc:  # cv2.error for a malformed pipeline: reported, not raised
        return f"OpenCV cannot open it ({redact(str(exc)).strip()})"
    try:
        if capture is None or not capture.isOpened():
            return "OpenCV cannot open it (no such camera, wrong URL or format, or it is in use)"
        ok, image = capture.read()
        if not ok or image is None or getattr(image, "size", 0) == 0:
            return "opens, but gives no frame"
        return None
    finally:
        if capture is not None:
            with contextlib.suppress(Exception):  # releasing a broken capture: nothing more to report
                capture.release()
