"""What the page shows, kept by the daemon's threads and read by the web thread (no aiohttp here).

Cost rules: offering a frame stores a reference to it (no copy, no encoding; the newest frame per camera is
held, so a viewer who opens the page after the camera ended or failed still sees what it saw last); a
snapshot is encoded in the web thread only when a viewer asks, at most ``frame_fps`` times a second per camera
(between two encodes the last snapshot is served again), and the encoded snapshots are dropped once no
viewer asked for :data:`VIEWER_IDLE_S` seconds. An idle page, or no page, costs one reference per published
frame.

One frame, one snapshot: the picture, its mask overlay and the result fields shown beside them are taken
together from the same published frame (:class:`Snapshot`, named by its frame id), so the page cannot show
the picture of one frame with the score or verdict of a later one.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np

from edge.capture.frames import Frame
from edge.results.payloads import CameraState, PartPayload, ResultPayload
from edge.results.postprocess import Verdict

VIEWER_IDLE_S = 5.0  # no frame request for this long: the encoded snapshots are dropped
MAX_WIDTH = 800  # frames wider than this are scaled down before encoding (the tile is smaller anyway)
JPEG_QUALITY = 80
HOURS_KEPT = 24
FPS_WINDOW_S = 5.0
SNAPSHOTS_KEPT = 4  # a page asks for a snapshot's image and overlay right after its fields
OVERLAY_RGBA = (0, 0, 255, 140)  # BGRA: the mask in translucent red (the --save-overlays colour)


@dataclass(frozen=True)
class Snapshot:
    """One published frame as the page shows it: its image, its mask overlay and the result fields that
    belong to that frame, made together so the page never shows one frame's picture with another's text."""

    frame_id: int
    info: Dict[str, Any]  # the result's fields the page shows with this frame (LiveView.result)
    jpeg: bytes  # the frame, scaled to at most MAX_WIDTH
    overlay: Optional[bytes]  # RGBA PNG of the jpeg's size: the mask in translucent red; None: no mask
    size: Tuple[int, int]  # (width, height) of the camera frame (region boxes are in these pixels)


@dataclass
class _Camera:
    state: CameraState
    last: Optional[Dict[str, Any]] = None  # the latest result's fields the page shows
    timeline: Deque[Tuple[float, float, float, int]] = field(default_factory=collections.deque)
    hours: Dict[int, Dict[str, int]] = field(default_factory=dict)  # hour start (epoch s) -> verdict counts
    arrivals: Deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))
    frame: Optional[Tuple[Frame, Verdict, Dict[str, Any]]] = None  # newest frame while a viewer watches
    snaps: Deque[Snapshot] = field(default_factory=lambda: collections.deque(maxlen=SNAPSHOTS_KEPT))
    snap_at: float = float("-inf")


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
            "boxes": [list(r.bbox) for r in doc.regions],  # x, y, w, h in camera pixels
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
        """Keep a reference to the newest frame with its result's fields (no copy, no encoding). The JSON face
        told :meth:`result` of this frame just before."""
        with self._lock:
            cam = self._cams.get(camera)
            if cam is None:
                return
            last = cam.last
            if last is None or last["frame_id"] != frame.frame_id:  # its result was not published
                return
            cam.frame = (frame, verdict, last)

    # --- readers (the web thread) -------------------------------------------------------------------------

    def latest(self, camera: str) -> Optional[Snapshot]:
        """The newest frame as a :class:`Snapshot`; a new one is made at most every ``frame_interval_s``
        (between two, the last one is given again). Asking is what counts as a viewer watching."""
        now = time.monotonic()
        self._viewed_at = now
        with self._lock:
            cam = self._cams[camera]
            taken = cam.frame
            newest = cam.snaps[-1] if cam.snaps else None
            if taken is None or now - cam.snap_at < self.frame_interval_s:
                return newest
            if newest is not None and taken[0].frame_id == newest.frame_id:
                return newest
            cam.snap_at = now
        frame, verdict, info = taken
        snap = make_snapshot(camera, frame, verdict, info)
        with self._lock:
            cam.snaps.append(snap)
            self.encoded += 1
        return snap

    def snapshot(self, camera: str, frame_id: int) -> Optional[Snapshot]:
        """One of the last few snapshots, by frame id (the image and overlay URLs a page was given)."""
        with self._lock:
            return next((s for s in self._cams[camera].snaps if s.frame_id == frame_id), None)

    def watching(self) -> bool:
        return time.monotonic() - self._viewed_at <= VIEWER_IDLE_S

    def forget_frames(self) -> None:
        """Drop the encoded snapshots once nobody watches (the web thread calls it now and then)."""
        if self.watching():
            return
        with self._lock:
            for cam in self._cams.values():
                cam.snaps.clear()

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


def make_snapshot(camera: str, frame: Frame, verdict: Verdict, info: Dict[str, Any]) -> Snapshot:
    """The frame scaled to MAX_WIDTH as JPEG and, when it has a mask, the mask at the same size as an RGBA
    PNG (the page lays it over the picture; region boxes are drawn by the page from ``info``)."""
    image = frame.full_image()
    fh, fw = frame.hw
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    size = (fw, fh)
    if fw > MAX_WIDTH:
        size = (MAX_WIDTH, max(1, int(round(fh * MAX_WIDTH / fw))))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a frame of {camera} as JPEG")
    overlay = overlay_png(verdict.frame_mask(), size) if verdict.mask_model.any() else None
    return Snapshot(frame.frame_id, info, bytes(buf), overlay, (fw, fh))


def overlay_png(mask: np.ndarray, size: Tuple[int, int]) -> Optional[bytes]:
    """``mask`` (>0 = defect) scaled to ``size`` (width, height) as an RGBA PNG: translucent red on the
    defect, transparent elsewhere; None when nothing is masked."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    if (mask.shape[1], mask.shape[0]) != size:
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    on = mask > 0
    if not on.any():
        return None
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[on] = OVERLAY_RGBA
    ok, buf = cv2.imencode(".png", rgba)
    if not ok:
        raise RuntimeError("OpenCV could not encode a mask overlay as PNG")
    return bytes(buf)
