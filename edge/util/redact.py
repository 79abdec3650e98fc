"""One helper that hides credentials inside camera sources before anything is printed or published.

An RTSP camera is usually opened as ``rtsp://user:password@host/stream``; a GStreamer pipeline may carry
``user-pw=…``. The source string itself must reach OpenCV unchanged, but every copy of it that leaves the
process (log lines, ``--check-config``, the ``availability`` and ``stats`` topics, /metrics) goes through
:func:`redact` first. Sources redact their own state reasons, the config redacts its printed form, and the
log formatters redact every line as a last line of defence.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://userinfo@ : the user info runs to the LAST '@' before whitespace or a quote, so a password that
# itself holds an unescaped '@' or '/' is hidden whole (over-redacting an odd path is the safe failure).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s\"'<>]*@")
# GStreamer elements (rtspsrc, souphttpsrc) take credentials as properties: user-pw=…, proxy-pw=…
_PROPERTY = re.compile(
    r"(?P<key>\b(?:user-pw|proxy-pw|password|passwd)\s*=\s*)(?:\"[^\"]*\"|'[^']*'|[^\s!]+)"
)


def redact(text: str) -> str:
    """``text`` with URL user info and credential properties replaced by ``***``."""
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _PROPERTY.sub(lambda m: f"{m.group('key')}{MASK}", text)


def redact_deep(value: Any) -> Any:
    """:func:`redact` applied to every string inside JSON-like data (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_deep(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_deep(item) for item in value]
    return value
