"""One helper that hides credentials inside camera sources before anything is printed or published.

An RTSP camera is usually opened as ``rtsp://user:password@host/stream``; an HTTP camera often as
``http://cam/videostream.cgi?user=admin&pwd=…``; a GStreamer pipeline may carry ``user-pw=…``. The source
string itself must reach OpenCV unchanged, but every copy of it that leaves the process (log lines,
``--check-config``, the ``availability``, ``status`` and ``stats`` topics, /metrics) goes through
:func:`redact` first. Sources redact their own state reasons, the config redacts its printed form, and the
log formatters redact every line as a last line of defence.

What is hidden: URL user info whole, and the value of every query (or fragment) parameter whose name is a
credential: :data:`SECRET_PARAMS`, a name ending in one of them (``access_token``, ``api-key``) or holding
``pass``, ``token`` or ``secret``, and the names a camera lists in ``secret_params``
(:func:`add_secret_params`, called by :func:`edge.config.load_config`).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterable, Set

MASK = "***"
SECRET_PARAMS = frozenset(
    ("user", "username", "pass", "pwd", "passwd", "password", "token", "key", "auth", "sig", "signature",
     "secret", "apikey", "credential", "credentials", "session", "sid")
)  # fmt: skip
_SECRET_PARTS = ("pass", "token", "secret", "pwd")
_extra: Set[str] = set()
_extra_lock = threading.Lock()

# scheme://userinfo@ : the user info runs to the LAST '@' before whitespace or a double quote, so a password
# that itself holds an unescaped '@', '/' or "'" is hidden whole (over-redacting an odd path is the safe
# failure).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s\"<>]*@")
# GStreamer elements (rtspsrc, souphttpsrc) take credentials as properties: user-pw=…, proxy-pw=…
_PROPERTY = re.compile(
    r"(?P<key>\b(?:user-pw|proxy-pw|password|passwd)\s*=\s*)(?:\"[^\"]*\"|'[^']*'|[^\s!]+)"
)
# ?name=value, &name=value, ;name=value, #name=value: the value runs to the next separator, space or double
# quote (a single quote may be part of a value: hiding the quote that ends a printed '<url>' is safe).
_QUERY = re.compile(r"(?P<head>[?&;#](?P<name>[^=&;#?\s\"'<>]{1,128})=)(?P<value>[^&;#\s\"<>]*)")


def add_secret_params(names: Iterable[str]) -> None:
    """Query parameter names (any case) whose values are secret beside :data:`SECRET_PARAMS`."""
    with _extra_lock:
        _extra.update(name.lower() for name in names if name)


def is_secret_param(name: str) -> bool:
    key = name.lower()
    if key in SECRET_PARAMS or key in _extra:
        return True
    last = re.split(r"[-_.]", key)[-1]
    return last in SECRET_PARAMS or any(part in key for part in _SECRET_PARTS)


def _query_value(match: re.Match[str]) -> str:
    if not match.group("value") or not is_secret_param(match.group("name")):
        return match.group(0)
    return f"{match.group('head')}{MASK}"


def redact(text: str) -> str:
    """``text`` with URL user info, credential query values and credential properties replaced by ``***``."""
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _QUERY.sub(_query_value, text)
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
