"""Camera sources: one grabber thread per camera that keeps only the newest frame.

A source reads an OpenCV ``VideoCapture`` (device index, file, RTSP/HTTP stream or GStreamer pipeline) and
puts every good frame into its ``FrameSlot``; the slot drops unread frames, so inference always sees the
newest one. What can go wrong on a line is reported through ``on_state(camera, state, reason)``:

- cannot open: ``fault`` with a reason naming the uri, retried with capped exponential backoff;
- a live stream breaks (repeated read failures): ``fault``, reconnect with backoff;
- a file ends: reopened when ``loop`` is set, else ``ended`` "end of stream" (a normal end, not a fault);
- no usable frame for ``fault_after_s`` (a hung stream, a camera sending only black frames): ``fault``.
  Opening is not counted: it has its own timeout (an RTSP camera takes seconds to open), and the window
  starts when the capture is open. An open still running after ``open_timeout_s`` is a ``fault``.

Empty, unreadable or all-black frames are counted and never reach the slot (compressed MJPEG frames: never
get scored, see below), so nothing downstream is scored from a stale or black image. A video file plays at
``fps_cap`` if given, else at its own frame rate, so it behaves like a camera. A live source with ``fps_cap``
still grabs every frame (so OpenCV's buffer never lags behind) but decodes and hands over only at the capped
rate.

MJPEG streams read through FFmpeg (files, HTTP/RTSP MJPEG) are handed over still compressed when
``decode_on_demand`` is set: the grabber only checks that each packet starts like a JPEG, and the inference
thread decodes just the frames it scores, at the scale it needs (``Frame.image_for``). A frame that then
does not decode or is all black is skipped there and reported back (``reject_frame``), so the counters and
the ``fault`` after ``fault_after_s`` of nothing but such frames work as for decoded sources (the
measurements behind this choice: benchmarks/README.md, "Design measurements").
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Callable, Literal

import cv2
import numpy as np

from edge.capture.frames import Frame, FrameSlot, is_black
from edge.util.backoff import Backoff
from edge.util.priority import lower_current_thread_priority
from edge.util.redact import redact

log = logging.getLogger(__name__)

SourceState = Literal["online", "offline", "fault", "ended"]
StateCallback = Callable[[str, str, str], None]
CaptureFactory = Callable[[str], Any]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
FILE_DEFAULT_FPS = 25.0  # when a file does not say its frame rate
LIVE_ERRORS_BEFORE_RECONNECT = 3  # consecutive failed reads that mean the stream is gone
NETWORK_TIMEOUT_MS = 5000  # OpenCV's FFmpeg open/read timeouts for network streams
OPEN_TIMEOUT_S = 2 * NETWORK_TIMEOUT_MS / 1000.0  # an open still running after this is reported as a fault
REJECTED_FAULT = "only black or undecodable frames"  # the fault reason reject_frame leads to


def _no_callback(camera: str, state: str, reason: str) -> None:
    return None


def uri_kind(uri: str) -> str:
    """'gstreamer', 'device', 'stream' or 'file': decides how the uri is opened and whether it can end."""
    if "!" in uri:
        return "gstreamer"
    if uri.strip().isdigit():
        return "device"
    if uri.lower().startswith(STREAM_SCHEMES):
        return "stream"
    return "file"


def open_capture(uri: str) -> Any:
    """Open ``uri`` with the OpenCV backend that fits it; the caller checks ``isOpened()``."""
    kind = uri_kind(uri)
    if kind == "gstreamer":
        return cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
    if kind == "device":
        return cv2.VideoCapture(int(uri.strip()))
    if kind == "stream":
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            NETWORK_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            NETWORK_TIMEOUT_MS,
        ]
        try:
            return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        except (cv2.error, TypeError):  # OpenCV < 4.5.2 has no params overload
            return cv2.VideoCapture(uri)
    return cv2.VideoCapture(uri)


def usable_image(image: np.ndarray | None) -> np.ndarray | None:
    """The frame as BGR uint8 HxWx3, or None when it is empty, malformed or entirely black."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0 or image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim != 3 or image.shape[2] != 3:
        return None
    return None if is_black(image) else image


def jpeg_packet(packet: np.ndarray | None) -> np.ndarray | None:
    """A copy of the packet's bytes when they start like a JPEG (SOI marker), else None.

    Nothing is decoded here: whether the frame decodes and is not black is found when it is scored
    (``Frame.image_for``), so frames replaced in the slot unread cost no decoding at all.
    """
    if packet is None or not isinstance(packet, np.ndarray) or packet.size < 4 or packet.dtype != np.uint8:
        return None
    data = packet.reshape(-1)
    if data[0] != 0xFF or data[1] != 0xD8:  # no JPEG start-of-image marker
        return None
    return data.copy()  # OpenCV may reuse the packet buffer for the next grab


def _jpeg_passthrough(capture: Any) -> tuple[int, int] | None:
    """Switch an FFmpeg MJPEG capture to raw packets; the camera's (height, width), or None if not
    possible."""
    try:
        if capture.getBackendName() != "FFMPEG":
            return None
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace")
        hw = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        if fourcc.upper() not in ("MJPG", "MJPEG") or min(hw) < 1:
            return None
        return hw if capture.set(cv2.CAP_PROP_FORMAT, -1) else None
    except Exception:  # test doubles and exotic backends: decode every frame as before
        return None


class Pacer:
    """Spaces hand-overs ``1 / fps`` apart without bursting to catch up after a stall."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps and fps > 0 and math.isfinite(fps) else 0.0
        self._due = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next frame is due (0 when due now)."""
        return max(0.0, self._due - now) if self.period else 0.0

    def is_due(self, now: float) -> bool:
        return self.wait_s(now) == 0.0

    def mark(self, now: float) -> None:
        """A frame was handed over at ``now``: the next is due one period after the previous due time."""
        if self.period:
            self._due = now + self.period if self._due == 0.0 else max(self._due + self.period, now)


class CameraSource:
    """Reads one camera in its own thread and keeps the newest good frame in ``slot``.

    ``on_state(camera, state, reason)`` is called only when the state changes, from the grabber or the
    watchdog thread, one call at a time; keep it short (publish, do not block).
    """

    def __init__(
        self,
        name: str,
        uri: str,
        slot: FrameSlot,
        *,
        loop: bool = False,
        fps_cap: float | None = None,
        fault_after_s: float = 3.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 2.0,  # bounds recovery: a camera that is back is reopened within this
        on_state: StateCallback = _no_callback,
        capture_factory: CaptureFactory | None = None,
        decode_on_demand: bool = True,
        thread_nice: int = 0,
        open_timeout_s: float = OPEN_TIMEOUT_S,
    ) -> None:
        _check_positive("fps_cap", fps_cap, allow_none=True)
        _check_positive("fault_after_s", fault_after_s)
        _check_positive("backoff_initial_s", backoff_initial_s)
        if backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({backoff_max_s}) must be at least backoff_initial_s ({backoff_initial_s})"
            )
        self.name = name
        self.uri = str(uri)
        self.display = redact(self.uri)  # the uri as it may be printed or published (no passwords)
        self.kind = uri_kind(self.uri)
        self.slot = slot
        self.loop = loop
        self.fps_cap = fps_cap
        self.fault_after_s = fault_after_s
        self.decode_on_demand = decode_on_demand
        self.thread_nice = thread_nice
        self.open_timeout_s = open_timeout_s
        self._on_state = on_state
        self._open = capture_factory or open_capture
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._stop = threading.Event()
        self._lock = threading.RLock()  # guards state + counters; held while on_state runs, to keep order
        self._state = "offline"
        self._reason = "not started"
        self._fault_from_rejects = False  # the current fault is the watchdog's, for rejected frames only
        self._counts: dict[str, int] = dict.fromkeys(
            ("frames_read", "reconnects", "read_errors", "open_failures", "black_frames", "loops"), 0
        )
        self._last_frame_mono: float | None = None
        self._rejected_since: float | None = None  # first frame the consumer rejected since its last good one
        self._watch_from = time.monotonic()
        self._opening = False  # the watchdog gives an open in progress open_timeout_s, not fault_after_s
        self._threads: tuple[threading.Thread, ...] = ()

    # ---- public API ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the grabber and watchdog threads (once)."""
        if self._threads:
            raise RuntimeError(f"camera {self.name!r} is already started")
        self._watch_from = time.monotonic()
        self._threads = (
            threading.Thread(target=self._grab_loop, name=f"grab-{self.name}", daemon=True),
            threading.Thread(target=self._watch_loop, name=f"watch-{self.name}", daemon=True),
        )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, release the capture and report ``offline`` ("stopped")."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning(
                    "camera %s: %s did not stop within %.1f s (blocked in OpenCV?)",
                    self.name,
                    thread.name,
                    timeout,
                )
        self._set_state("offline", "stopped")

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for the stats topic: frames_read, frames_dropped, reconnects, read_errors, state, ..."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["frames_dropped"] = self.slot.dropped
            out["state"] = self._state
            out["reason"] = self._reason
            last = self._last_frame_mono
        out["last_frame_age_s"] = None if last is None else round(time.monotonic() - last, 3)
        return out

    # ---- state --------------------------------------------------------------------------------------

    def _set_state(self, state: str, reason: str, from_rejects: bool = False) -> None:
        with self._lock:
            if self._stop.is_set() and state != "offline":
                # a grabber that wakes up after stop() (e.g. from a hung read) must not revive the camera
                return
            reason = redact(reason)  # reasons reach the availability and stats topics
            self._reason = reason
            self._fault_from_rejects = from_rejects
            if state == self._state:
                return
            self._state = state
            level = logging.WARNING if state == "fault" else logging.INFO  # once per change, not per retry
            log.log(level, "camera %s: %s (%s)", self.name, state, reason)
            try:
                self._on_state(self.name, state, reason)
            except Exception:  # a broken subscriber must not kill the camera thread
                log.exception("camera %s: on_state callback failed", self.name)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _fault(self, reason: str, from_rejects: bool = False) -> None:
        """``from_rejects``: the fault is only that every delivered frame was rejected; a usable one ends
        it."""
        self._set_state("fault", reason, from_rejects)

    # ---- what the consumer found ----------------------------------------------------------------------

    def reject_frame(self, reason: str) -> None:
        """The consumer could not use a delivered compressed frame (``reason``: 'black' or 'undecodable').

        Counted with the grabber's own rejects; after ``fault_after_s`` of nothing but rejected frames the
        camera is in ``fault``, as a camera sending only black frames is when the grabber sees them.
        """
        with self._lock:
            self._counts["black_frames"] += 1
            if self._rejected_since is None:
                self._rejected_since = time.monotonic()

    def accept_frame(self) -> None:
        """The consumer used a delivered frame: back ``online`` if rejected frames had caused the fault."""
        with self._lock:
            if self._rejected_since is None:
                return
            self._rejected_since = None
            if self._state == "fault" and self._fault_from_rejects:
                self._set_state("online", "frames flowing")

    # ---- watchdog -----------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        """Report ``fault`` when no usable frame arrived for ``fault_after_s`` (e.g. a read that hangs)."""
        tick = min(0.25, self.fault_after_s / 4.0)
        while not self._stop.wait(tick):
            with self._lock:
                if self._state in ("fault", "ended"):
                    continue
                now = time.monotonic()
                if self._opening:  # OpenCV's own timeout should end it first; this catches a hung open
                    if now - self._watch_from >= self.open_timeout_s:
                        self._fault(f"camera did not open within {self.open_timeout_s:.1f} s")
                    continue
                since = max(self._last_frame_mono or 0.0, self._watch_from)  # the newer of last frame, open
                if now - since >= self.fault_after_s:
                    self._fault(f"no frame for {self.fault_after_s:.1f} s")
                elif self._rejected_since is not None and now - self._rejected_since >= self.fault_after_s:
                    self._fault(f"{REJECTED_FAULT} for {self.fault_after_s:.1f} s", from_rejects=True)

    # ---- grabber ------------------------------------------------------------------------------------

    def _grab_loop(self) -> None:
        lower_current_thread_priority(self.thread_nice)
        while not self._stop.is_set():
            capture = self._open_or_fault()
            if capture is None:
                next_step = "retry"
            else:
                try:
                    outcome, n_frames = self._pump(capture)
                finally:
                    _release(capture)
                next_step = self._after_pump(outcome, n_frames)
            if next_step == "end":
                return
            if next_step == "retry" and not self._stop.wait(self._backoff.next_delay()):
                self._count("reconnects")

    def _open_or_fault(self) -> Any:
        if self.kind == "file" and not os.path.isfile(self.uri):
            return self._open_failed(f"cannot open '{self.display}': no such file")
        with self._lock:
            self._opening = True
            self._watch_from = time.monotonic()
        try:
            capture = self._open(self.uri)
        except Exception as exc:  # OpenCV raises cv2.error for some malformed pipelines
            return self._open_failed(f"cannot open '{self.display}': {redact(str(exc))}")
        finally:
            with self._lock:
                self._opening = False
                self._watch_from = time.monotonic()
        if capture is None or not capture.isOpened():
            _release(capture)
            return self._open_failed(f"cannot open '{self.display}' (OpenCV could not open it)")
        return capture

    def _open_failed(self, reason: str) -> None:
        self._count("open_failures")
        self._fault(reason)
        return None

    def _after_pump(self, outcome: str, n_frames: int) -> str:
        """What follows a capture session: 'end' (thread exits), 'loop' (reopen now) or 'retry' (backoff)."""
        if outcome == "stopped":
            return "end"
        if outcome == "eos" and n_frames == 0:
            self._fault(f"no readable frames in '{self.display}'")
            return "retry"
        if outcome == "eos":
            if not self.loop:
                self._set_state("ended", "end of stream")
                return "end"
            self._count("loops")
            return "loop"
        self._fault(f"lost '{self.display}' after {LIVE_ERRORS_BEFORE_RECONNECT} failed reads; reconnecting")
        return "retry"

    def _pump(self, capture: Any) -> tuple[str, int]:
        """Read until stop, end of file or a broken stream; returns (outcome, frames handed over)."""
        is_file = self.kind == "file"
        fps = self.fps_cap if self.fps_cap else (_file_fps(capture) if is_file else None)
        pacer = Pacer(fps)
        jpeg_hw = _jpeg_passthrough(capture) if self.decode_on_demand else None
        n_frames = 0
        errors = 0
        while not self._stop.is_set():
            if is_file and self._stop.wait(pacer.wait_s(time.monotonic())):
                break
            ok, image = self._read(capture, pacer, is_file)
            if ok is None:  # live frame grabbed but not due under the fps cap
                continue
            if not ok and is_file:
                return "eos", n_frames
            if not ok or _is_empty(image):  # an "ok" read with no image is a failed read too
                self._count("read_errors")
                errors += 0 if is_file else 1
                if errors >= LIVE_ERRORS_BEFORE_RECONNECT:
                    return "broken", n_frames
                continue
            errors = 0
            pacer.mark(time.monotonic())
            if self._deliver(image, jpeg_hw):
                n_frames += 1
        return "stopped", n_frames

    def _read(self, capture: Any, pacer: Pacer, is_file: bool) -> tuple[bool | None, np.ndarray | None]:
        if is_file or not pacer.period:
            ok, image = capture.read()
            return bool(ok), image
        if not capture.grab():
            return False, None
        if not pacer.is_due(time.monotonic()):
            return None, None
        ok, image = capture.retrieve()
        return bool(ok), image

    def _deliver(self, raw: np.ndarray | None, jpeg_hw: tuple[int, int] | None = None) -> bool:
        """Put a usable frame in the slot; count and skip an empty or black one.

        With ``jpeg_hw`` (the camera size), ``raw`` is a compressed JPEG packet that stays compressed.
        """
        if self._stop.is_set():
            return False
        jpeg = jpeg_packet(raw) if jpeg_hw is not None else None
        image = None if jpeg_hw is not None else usable_image(raw)
        if image is None and jpeg is None:  # all black or malformed: skipped, never scored
            self._count("black_frames")
            return False
        now_mono = time.monotonic()
        with self._lock:
            frame_id = self._counts["frames_read"]
            self._counts["frames_read"] += 1
            self._last_frame_mono = now_mono
        hw = jpeg_hw or (0, 0)
        self.slot.put(Frame(self.name, frame_id, time.time(), now_mono, image, jpeg=jpeg, hw=hw))
        self._backoff.reset()
        with self._lock:
            if self._rejected_since is None:  # frames the consumer keeps rejecting do not make it online
                self._set_state("online", "frames flowing")
        return True


def _is_empty(image: Any) -> bool:
    return image is None or not isinstance(image, np.ndarray) or image.size == 0


def _file_fps(capture: Any) -> float:
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0.5 <= fps <= 1000.0 else FILE_DEFAULT_FPS


def _release(capture: Any) -> None:
    if capture is None:
        return
    try:
        capture.release()
    except Exception:  # releasing a broken capture must not hide the original problem
        log.debug("releasing capture failed", exc_info=True)


def _check_positive(name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds/fps, got {value!r}")
