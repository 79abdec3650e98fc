"""Log lines that a flood cannot multiply: the first of a kind is logged, the next ones at most once per
interval, with how many were left out since.

A command storm (3000 Sparkplug rebirths, a ``model/set`` loop refused as busy) is counted in the stats
where it belongs; the journal gets one line per interval and kind, not one per message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Tuple

INTERVAL_S = 10.0


class RateLimitedLog:
    """``log(level, key, text, *args)``: logged unless a line of the same ``key`` went out within
    ``interval_s``; the next line that goes out says how many of that key were left out."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, Tuple[float, int]] = {}  # key -> (when logged, left out since)

    def log(self, level: int, key: str, text: str, *args: Any) -> bool:
        """True when the line was logged."""
        now = self._clock()
        with self._lock:
            when, skipped = self._last.get(key, (-float("inf"), 0))
            if now - when < self.interval_s:
                self._last[key] = (when, skipped + 1)
                return False
            self._last[key] = (now, 0)
        if skipped:
            text += f" (and {skipped} more like it in the last {self.interval_s:.0f} s, not logged)"
        self.logger.log(level, text, *args)
        return True

    def warning(self, key: str, text: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, text, *args)

    def error(self, key: str, text: str, *args: Any) -> bool:
        return self.log(logging.ERROR, key, text, *args)
