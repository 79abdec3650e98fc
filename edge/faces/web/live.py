"""What the page shows, kept by the daemon's threads and read by the web thread (no aiohttp here).

Cost rules: offering a frame stores a reference (no copy, no encoding), and only while a viewer polled in the
last :data:`VIEWER_IDLE_S` seconds; a frame is drawn and encoded in the web thread when a viewer asks for
it, at most ``frame_fps`` times a second per camera (between two encodes the last JPEG is served again).
An idle page, or no page, costs a timestamp comparison per published frame.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge.capture.frames import Frame
from edge.results.overlays import annotate, verdict_lines
from edge.results.payloads import CameraState, PartPayload, ResultPayload
from edge.results.postprocess import Verdict

VIEWER_IDLE_S = 5.0  # no frame request for this long: frames are no longer kept for viewers
MAX_WIDTH = 800  # frames wider than this are scaled down before encoding (the tile is smaller anyway)
JPEG_QUALITY = 80
HOURS_KEPT = 24
FPS_WINDOW_S = 5.0


@dataclass
class _Camera:
    state: CameraState
    last: Optional[Dict[str, Any]] = None  # the latest result's fields the page shows
    timeline: Deque[Tuple[float, float, float, int]] = field(default_factory=collections.deque)
    hours: Dict[int, Dict[str, int]] = field(default_factory=dict)  # hour start (epoch s) -> verdict counts
    arrivals: Deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))
    frame: Optional[Tuple[Frame, Verdict]] = None  # newest published frame while a viewer is connected
    jpeg: Optional[bytes] = None
    jpeg_frame_id: int = -1
    jpeg_at: float = float("-inf")


class LiveView:
    """The page's data. Thread use: ``result``/``camera_state`` from the publish and grabber threads,
    ``offer`` from the publish thread, the readers from the web thread; one small lock, never held while
    encoding."""

    def __init__(
        self,
        cameras: Mapping[str, CameraState],
        sources: Mapping[str, str],
        frame_fps: float,
        timeline_s: float,
    ) -> None:
        self._lock = threading.Lock()
        self._cams: Dict[str, _Camera] = {name: _Camera(state=state) for name, state in cameras.items()}
        self.sources = dict(sources)  # already redacted by the caller
        self.frame_interval_s = 1.0 / frame_fps
        self.timeline_s = timeline_s
        self._viewed_at = float("-inf")
        self.encoded = 0  # frames encoded for viewers since the start (a test and a benchmark read it)

    @property
    def cameras(self) -> List[str]:
        return list(self._cams)

    # --- ApiObserver: told by the JSON face after it published --------------------------------------------

    def result(self, doc: ResultPayload) -> None:
        now = time.monotonic()
        ng = doc.verdict == "ng" if doc.verdict is not None else doc.anomalous
        verdict = doc.verdict or ("ng" if doc.anomalous else "ok")
        last = {
            "seq": doc.seq,
            "frame_id": doc.frame_id,
            "time": doc.capture_time,
            "score": doc.score,
            "threshold": doc.threshold,
            "threshold_source": doc.threshold_source,
            "verdict": verdict,
            "regions": len(doc.regions),
            "model": {"id": doc.model.id, "precision": doc.model.precision, "backend": doc.model.backend},
            "latency_ms": doc.latency_ms.total,
        }
        hour = int(doc.capture_ts // 3600) * 3600
        with self._lock:
            cam = self._cams.get(doc.camera)
            if cam is None:
                return
            cam.last = last
            cam.arrivals.append(now)
            cam.timeline.append((round(doc.capture_ts, 3), doc.score, doc.threshold, int(ng)))
            while cam.timeline and cam.timeline[0][0] < doc.capture_ts - self.timeline_s:
                cam.timeline.popleft()
            counts = cam.hours.setdefault(hour, {"ok": 0, "warn": 0, "ng": 0})
            counts[verdict] = counts.get(verdict, 0) + 1
            for old in sorted(cam.hours)[:-HOURS_KEPT]:
                del cam.hours[old]

    def camera_state(self, camera: str, state: CameraState) -> None:
        with self._lock:
            if camera in self._cams:
                self._cams[camera].state = state

    def threshold(self, camera: str) -> None:
        """The threshold changed: the page reads the one in force with every state poll."""

    def part(self, doc: PartPayload) -> None:
        """Part verdicts are not on the page yet (issue 29): the JSON face and OPC UA carry them."""

    # --- the publish thread's frame tap -----------------------------------------------------------------

    def offer(self, camera: str, frame: Frame, verdict: Verdict) -> None:
        """Keep a reference to the newest frame, only while someone is watching (no copy, no encoding)."""
        if time.monotonic() - self._viewed_at > VIEWER_IDLE_S:
            return
        with self._lock:
            cam = self._cams.get(camera)
            if cam is not None:
                cam.frame = (frame, verdict)

    # --- readers (the web thread) -------------------------------------------------------------------------

    def jpeg(self, camera: str) -> Optional[bytes]:
        """The newest frame with its mask drawn, as JPEG; encoded at most every ``frame_interval_s``."""
        now = time.monotonic()
        self._viewed_at = now
        with self._lock:
            cam = self._cams[camera]
            taken = cam.frame
            if taken is None or now - cam.jpeg_at < self.frame_interval_s:
                return cam.jpeg
            if taken[0].frame_id == cam.jpeg_frame_id:
                return cam.jpeg
            cam.jpeg_at = now
        frame, verdict = taken
        data = encode_overlay(camera, frame, verdict)
        with self._lock:
            cam.jpeg, cam.jpeg_frame_id = data, frame.frame_id
            self.encoded += 1
        return data

    def watching(self) -> bool:
        return time.monotonic() - self._viewed_at <= VIEWER_IDLE_S

    def forget_frames(self) -> None:
        """Drop the frame references once nobody watches (the web thread calls it now and then)."""
        if self.watching():
            return
        with self._lock:
            for cam in self._cams.values():
                cam.frame = None

    def state(self) -> Dict[str, Dict[str, Any]]:
        """Per camera: state, source (redacted), the latest result's fields, fps and hourly counts."""
        now = time.monotonic()
        out: Dict[str, Dict[str, Any]] = {}
        with self._lock:
            for name, cam in self._cams.items():
                recent = [t for t in cam.arrivals if now - t <= FPS_WINDOW_S]
                fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
                if recent and now - recent[-1] > 2.0:
                    fps = 0.0
                out[name] = {
                    "state": cam.state.model_dump(),
                    "source": self.sources.get(name, ""),
                    "last": cam.last,
                    "fps": round(fps, 2),
                    "hours": [{"hour": h, **c} for h, c in sorted(cam.hours.items())],
                }
        return out

    def timeline(self, since: float = 0.0) -> Dict[str, List[Tuple[float, float, float, int]]]:
        """Per camera: (capture time, score, threshold, ng) newer than ``since``, oldest first."""
        with self._lock:
            return {name: [p for p in cam.timeline if p[0] > since] for name, cam in self._cams.items()}


def encode_overlay(camera: str, frame: Frame, verdict: Verdict) -> bytes:
    """The frame with its mask and regions drawn (the --save-overlays drawing), scaled to MAX_WIDTH, JPEG."""
    lines = verdict_lines(camera, frame.frame_id, verdict.score, verdict.threshold, verdict.anomalous)
    image = annotate(frame.full_image(), verdict.frame_mask(), lines, verdict.anomalous)
    for region in verdict.regions:
        x0, y0, x1, y1 = _box(region.bbox)
        top = image.shape[0] - frame.hw[0]  # annotate puts the banner above the frame
        cv2.rectangle(image, (x0, y0 + top), (x1, y1 + top), (0, 255, 255), 1)
    if image.shape[1] > MAX_WIDTH:
        scale = MAX_WIDTH / image.shape[1]
        image = cv2.resize(
            image, (MAX_WIDTH, int(round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a frame of {camera} as JPEG")
    return bytes(buf)


def _box(bbox: Sequence[int]) -> Tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in bbox[:4])
    return x, y, x + w - 1, y + h - 1
