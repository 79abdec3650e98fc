"""Counters and latency percentiles the daemon reports on the stats topic and /metrics.

Written by several threads (inference, MQTT, grabbers report through callbacks), read by the stats thread;
one lock, small critical sections. Latencies keep a fixed window of recent samples so p99 reflects now,
not the whole uptime.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Deque, Dict, Iterable, Optional, Tuple

import numpy as np

LATENCY_STAGES = ("capture_to_infer", "inference", "postprocess", "total")


class LatencyWindow:
    """The last ``size`` samples of one latency, in milliseconds."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: Deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._samples.append(float(ms))

    def percentiles(self) -> Dict[str, Optional[float]]:
        if not self._samples:
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(np.fromiter(self._samples, np.float64), [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


class Stats:
    """Daemon-wide counters and latency windows (per-camera frame counts too)."""

    def __init__(self, cameras: Iterable[str], clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self._counters: Dict[str, int] = {}
        self._per_camera: Dict[str, Dict[str, int]] = {cam: {"scored": 0, "anomalous": 0} for cam in cameras}
        self._latency = {stage: LatencyWindow() for stage in LATENCY_STAGES}
        self._rate_marks: Dict[
            str, Tuple[float, int]
        ] = {}  # consumer -> (time, frames_scored) at its last call
        self._last_inference: Optional[float] = None

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def count(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def record_frame(self, camera: str, anomalous: bool, latency_ms: Dict[str, float]) -> None:
        with self._lock:
            cam = self._per_camera.setdefault(camera, {"scored": 0, "anomalous": 0})
            cam["scored"] += 1
            cam["anomalous"] += int(anomalous)
            self._counters["frames_scored"] = self._counters.get("frames_scored", 0) + 1
            for stage, ms in latency_ms.items():
                if stage in self._latency:
                    self._latency[stage].add(ms)

    def mark_inference(self) -> None:
        """Called after each successful backend call; the stall detector reads it."""
        with self._lock:
            self._last_inference = self._clock()

    def seconds_since_inference(self) -> Optional[float]:
        with self._lock:
            if self._last_inference is None:
                return None
            return self._clock() - self._last_inference

    def mark_started(self) -> None:
        with self._lock:
            self.started = self._clock()
            self._rate_marks.clear()

    def fps(self, consumer: str = "stats") -> float:
        """Frames scored per second since this consumer's previous call (so /metrics and the topic agree)."""
        with self._lock:
            now = self._clock()
            scored = self._counters.get("frames_scored", 0)
            since, count = self._rate_marks.get(consumer, (self.started, 0))
            elapsed = now - since
            rate = (scored - count) / elapsed if elapsed > 0 else 0.0
            self._rate_marks[consumer] = (now, scored)
            return round(rate, 3)

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            return {
                "uptime_s": round(self._clock() - self.started, 3),
                "counters": dict(self._counters),
                "cameras": {cam: dict(v) for cam, v in self._per_camera.items()},
                "latency_ms": {stage: w.percentiles() for stage, w in self._latency.items()},
            }
