"""The one backoff of the runtime: capped exponential, optionally jittered, reset after a success.

Cameras, the broker connection and the inference loop (after a failed backend call) retry with it. The
cap is what bounds recovery time: once the camera or broker is back, the next attempt comes at most
``maximum`` seconds later, however long the outage was.
Jitter (each delay drawn from [1 - jitter, 1] x the nominal delay) keeps a line of devices that lost the
same broker from reconnecting in lock step.
"""

from __future__ import annotations

import random
from typing import Callable, Optional


class Backoff:
    """Delays ``initial``, 2x, 4x ... up to ``maximum``; :meth:`reset` after a success."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float = 0.0,
        rand: Optional[Callable[[], float]] = None,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial ({initial}) <= maximum ({maximum})")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rand = rand or random.random
        self._next = initial

    def next_delay(self) -> float:
        nominal = self._next
        self._next = min(self._next * 2.0, self.maximum)
        if not self.jitter:
            return nominal
        return nominal * (1.0 - self.jitter * self._rand())

    def reset(self) -> None:
        self._next = self.initial
