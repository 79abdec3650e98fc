"""OpenCV's own log at a level that suits ours.

OpenCV writes ``[ WARN:0@…] … can't open camera by index`` to stderr from C++ on every attempt to open a
missing camera (every reconnect, so every ~2 s), outside our log format and level. Our WARNING already says
the camera is in fault, once per state change; OpenCV's lines are shown only at ``log_level = "DEBUG"``.
An ``OPENCV_LOG_LEVEL`` set in the environment is the user's choice and is left alone.
"""

from __future__ import annotations

import os


def set_opencv_log_level(log_level: str) -> None:
    """OpenCV's warnings at DEBUG, else only its errors (unless OPENCV_LOG_LEVEL says otherwise)."""
    if os.environ.get("OPENCV_LOG_LEVEL"):
        return
    import cv2

    levels = cv2.utils.logging
    levels.setLogLevel(levels.LOG_LEVEL_WARNING if log_level == "DEBUG" else levels.LOG_LEVEL_ERROR)
