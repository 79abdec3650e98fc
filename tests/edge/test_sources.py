"""CameraSource on real generated MJPG videos (and a scripted capture for live-stream failures).

Synchronisation is by events set from the on_state callback and from a consumer thread, with timeouts;
timed waits only ever bound how long a test may take.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.frames import BLACK_MAX, Frame, FrameSlot, UnusableFrame
from edge.capture.sources import REJECTED_FAULT, CameraSource, Pacer, jpeg_packet, uri_kind, usable_image
from edge.util.backoff import Backoff
from training.synthetic import write_video

H, W = 48, 64
WAIT = 10.0  # upper bound for any single wait; tests normally finish far sooner


def level(i: int) -> int:
    """The grey level of frame i in the generated videos: distinct, never black, survives MJPG."""
    return 20 + 12 * (i % 19)


def grey_frames(n: int) -> list[np.ndarray]:
    return [np.full((H, W, 3), level(i), np.uint8) for i in range(n)]


def frame_level(frame: Frame) -> float:
    return float(frame.full_image().mean())


class States:
    """Records on_state calls; wait(state) blocks until that state has been reported."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, camera: str, state: str, reason: str) -> None:
        with self._cond:
            self.calls.append((camera, state, reason))
            self._cond.notify_all()

    def wait(self, state: str, count: int = 1, timeout: float = WAIT) -> tuple[str, str, str]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.of(state)) >= count, timeout)
        assert ok, f"state {state!r} x{count} not reported within {timeout} s; calls: {self.calls}"
        return self.of(state)[count - 1]

    def of(self, state: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[1] == state]


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for a condition that has no event of its own (e.g. a counter), with a hard timeout."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        tick.wait(0.005)


class Collector:
    """A consumer thread draining the slot; ``reached(n)`` is set once frame_id n has been seen."""

    def __init__(self, slot: FrameSlot) -> None:
        self.slot = slot
        self.frames: list[Frame] = []
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            frame = self.slot.get(timeout=0.5)
            if frame is None:
                if self.slot.closed:
                    return
                continue
            with self._seen:
                self.frames.append(frame)
                self._seen.notify_all()

    def wait_for_id(self, frame_id: int, timeout: float = WAIT) -> None:
        with self._seen:
            ok = self._seen.wait_for(lambda: any(f.frame_id >= frame_id for f in self.frames), timeout)
        assert ok, f"frame {frame_id} not received; got {[f.frame_id for f in self.frames]}"

    def stop(self) -> None:
        self.slot.close()
        self._thread.join(WAIT)


@pytest.fixture
def sources() -> Iterator[list[CameraSource]]:
    """Sources started by a test are always stopped, even when it fails."""
    started: list[CameraSource] = []
    yield started
    for src in started:
        src.stop(timeout=5.0)


def start(sources: list[CameraSource], *args: object, **kwargs: object) -> CameraSource:
    src = CameraSource(*args, **kwargs)  # type: ignore[arg-type]
    sources.append(src)
    src.start()
    return src


# ---- files ---------------------------------------------------------------------------------------


def test_file_plays_in_order_then_reports_end_of_stream_and_stops(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "parts.avi", grey_frames(12), fps=200)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    src = start(sources, "cam1", str(path), slot, on_state=states)

    assert states.wait("online")[2] == "frames flowing"
    camera, _, reason = states.wait("ended")
    collector.wait_for_id(11)
    collector.stop()

    assert (camera, reason) == ("cam1", "end of stream")
    stats = src.stats
    assert stats["frames_read"] == 12
    assert stats["state"] == "ended" and stats["reason"] == "end of stream"
    assert len(collector.frames) + stats["frames_dropped"] == 12
    ids = [f.frame_id for f in collector.frames]
    assert ids == sorted(ids) and ids[-1] == 11
    for f in collector.frames:
        assert f.camera == "cam1"
        assert f.full_image().shape == (H, W, 3) and f.full_image().dtype == np.uint8
        assert abs(frame_level(f) - level(f.frame_id)) < 4  # the frame with that id, not a neighbour
    assert [c[1] for c in states.calls] == ["online", "ended"]  # only changes are reported


def test_after_end_of_stream_no_further_frames_arrive(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "short.avi", grey_frames(4), fps=200)
    states, slot = States(), FrameSlot()
    src = start(sources, "cam", str(path), slot, on_state=states, fault_after_s=0.2)
    states.wait("ended")
    last = slot.get_nowait()
    assert last is not None and last.frame_id == 3
    assert slot.get(timeout=0.6) is None  # longer than fault_after_s: the watchdog must not change anything
    assert src.stats["frames_read"] == 4
    assert [c[1] for c in states.calls] == ["online", "ended"]
    assert states.calls[-1][2] == "end of stream"


def test_unread_frames_are_dropped_and_counted(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "fast.avi", grey_frames(30), fps=1000)
    states, slot = States(), FrameSlot()
    src = start(sources, "cam", str(path), slot, on_state=states)
    states.wait("ended")
    assert src.stats["frames_read"] == 30
    assert src.stats["frames_dropped"] == 29 == slot.dropped
    newest = slot.get_nowait()
    assert newest is not None and newest.frame_id == 29
    assert abs(frame_level(newest) - level(29)) < 4


def test_loop_mode_restarts_the_file_and_keeps_counting(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "loop.avi", grey_frames(5), fps=500)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    src = start(sources, "cam", str(path), slot, loop=True, on_state=states)
    collector.wait_for_id(16)
    collector.stop()
    stats = src.stats
    assert stats["loops"] >= 3
    assert stats["reconnects"] == 0 and stats["read_errors"] == 0
    assert stats["state"] == "online"
    assert states.of("fault") == []
    for f in collector.frames:  # frame_id keeps increasing across loops; content cycles with the file
        assert abs(frame_level(f) - level(f.frame_id % 5)) < 4


def test_file_is_paced_at_fps_cap(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "paced.avi", grey_frames(10), fps=1000)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    start(sources, "cam", str(path), slot, fps_cap=50.0, on_state=states)
    states.wait("ended")
    collector.wait_for_id(9)
    collector.stop()
    first, last = collector.frames[0], collector.frames[-1]
    # the cap is a lower bound on spacing: 9 intervals of 1/50 s (a consumer can only lose frames, not time)
    assert last.capture_mono - first.capture_mono >= (last.frame_id - first.frame_id) / 50.0 * 0.9
    assert last.capture_ts >= first.capture_ts


def test_file_without_cap_plays_at_its_own_frame_rate(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "own.avi", grey_frames(8), fps=40)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    start(sources, "cam", str(path), slot, on_state=states)
    states.wait("ended")
    collector.wait_for_id(7)
    collector.stop()
    first, last = collector.frames[0], collector.frames[-1]
    assert last.capture_mono - first.capture_mono >= (last.frame_id - first.frame_id) / 40.0 * 0.9


def test_black_frames_never_reach_the_slot(tmp_path: Path, sources: list) -> None:
    frames = grey_frames(6)
    frames[1] = np.zeros_like(frames[1])
    frames[4] = np.zeros_like(frames[4])
    path = write_video(tmp_path / "black.avi", frames, fps=200)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    src = start(sources, "cam", str(path), slot, on_state=states, decode_on_demand=False)
    states.wait("ended")
    collector.wait_for_id(3)
    collector.stop()
    assert src.stats["frames_read"] == 4
    assert src.stats["black_frames"] == 2
    for f in collector.frames:
        assert f.full_image().max() > 0
    # frame ids count delivered frames, so the levels seen are those of the non-black frames in order
    expected = [level(i) for i in (0, 2, 3, 5)]
    for f in collector.frames:
        assert abs(frame_level(f) - expected[f.frame_id]) < 4


def test_missing_file_faults_naming_the_path_retries_with_backoff_and_recovers(
    tmp_path: Path, sources: list
) -> None:
    path = tmp_path / "later.avi"
    states, slot = States(), FrameSlot()
    src = start(sources, "cam", str(path), slot, on_state=states, backoff_initial_s=0.01, backoff_max_s=0.05)
    _, _, reason = states.wait("fault")
    assert str(path) in reason and "cannot open" in reason
    wait_until(lambda: src.stats["reconnects"] >= 3)
    assert src.stats["open_failures"] >= 3
    assert slot.get_nowait() is None

    write_video(tmp_path / "tmp.avi", grey_frames(3), fps=200).rename(path)  # appears atomically
    states.wait("online")
    states.wait("ended")
    assert states.calls[-1][2] == "end of stream"
    assert src.stats["frames_read"] == 3


def test_a_file_that_is_not_a_video_faults_and_is_retried(tmp_path: Path, sources: list) -> None:
    path = tmp_path / "garbage.avi"
    path.write_bytes(b"this is not a video" * 100)
    opened: list[str] = []
    retried = threading.Event()

    def counting_open(uri: str) -> cv2.VideoCapture:
        opened.append(uri)
        if len(opened) >= 3:
            retried.set()
        return cv2.VideoCapture(uri)

    states, slot = States(), FrameSlot()
    start(
        sources,
        "cam",
        str(path),
        slot,
        on_state=states,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        capture_factory=counting_open,
    )
    _, _, reason = states.wait("fault")
    assert str(path) in reason
    assert retried.wait(WAIT)
    assert slot.get_nowait() is None


def test_stop_reports_offline_and_ends_the_threads(tmp_path: Path, sources: list) -> None:
    path = write_video(tmp_path / "loop.avi", grey_frames(5), fps=100)
    states, slot = States(), FrameSlot()
    src = CameraSource("cam", str(path), slot, loop=True, on_state=states)
    src.start()
    states.wait("online")
    src.stop(timeout=5.0)
    assert states.calls[-1] == ("cam", "offline", "stopped")
    assert src.state == "offline"
    n = src.stats["frames_read"]
    slot.get_nowait()
    assert slot.get(timeout=0.2) is None
    assert src.stats["frames_read"] == n
    with pytest.raises(RuntimeError, match="already started"):
        src.start()


# ---- live streams (scripted capture: no RTSP server here) ---------------------------------------


class ScriptedCapture:
    """A stand-in for an OpenCV capture of a live stream: frames, then failures or a hang on demand."""

    def __init__(self, n_good: int, then: str = "fail", hang: threading.Event | None = None) -> None:
        self.n_good = n_good
        self.then = then
        self.hang = hang
        self.reads = 0
        self.grabs = 0
        self.retrieves = 0
        self.released = False
        self.released_event = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def _next(self) -> tuple[bool, np.ndarray | None]:
        self.reads += 1
        if self.reads <= self.n_good:
            return True, np.full((H, W, 3), level(self.reads), np.uint8)
        if self.then == "hang" and self.hang is not None:
            self.hang.wait(WAIT)
            return True, np.full((H, W, 3), 200, np.uint8)
        if self.then == "empty":
            return True, np.zeros((0, 0, 3), np.uint8)
        return False, None

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self._next()

    def grab(self) -> bool:
        self.grabs += 1
        return True

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        self.retrieves += 1
        return self._next()

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        self.released = True
        self.released_event.set()


def test_live_stream_failure_faults_reconnects_and_comes_back(sources: list) -> None:
    captures: list[ScriptedCapture] = []

    def factory(uri: str) -> ScriptedCapture:
        captures.append(ScriptedCapture(n_good=5))
        return captures[-1]

    states, slot = States(), FrameSlot()
    src = start(
        sources,
        "line",
        "rtsp://camera.local/stream",
        slot,
        on_state=states,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        capture_factory=factory,
    )
    states.wait("online")
    _, _, reason = states.wait("fault")
    assert "rtsp://camera.local/stream" in reason
    states.wait("online", count=2)
    stats = src.stats
    assert stats["reconnects"] >= 1
    assert stats["read_errors"] >= 3
    assert captures[0].released
    wait_until(lambda: src.stats["frames_read"] >= 10)  # counting continues across reconnects


def test_empty_frames_are_read_errors_that_lead_to_a_reconnect(sources: list) -> None:
    opened = threading.Event()
    captures: list[ScriptedCapture] = []

    def factory(uri: str) -> ScriptedCapture:
        captures.append(ScriptedCapture(n_good=0, then="empty"))
        if len(captures) >= 2:
            opened.set()
        return captures[-1]

    states, slot = States(), FrameSlot()
    src = start(
        sources,
        "cam",
        "rtsp://x/y",
        slot,
        on_state=states,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        capture_factory=factory,
    )
    _, _, reason = states.wait("fault")
    assert "lost 'rtsp://x/y'" in reason
    assert opened.wait(WAIT)
    assert src.stats["read_errors"] >= 3
    assert src.stats["frames_read"] == 0
    assert slot.get_nowait() is None


def test_a_hung_stream_is_reported_by_the_watchdog_and_recovers(sources: list) -> None:
    release = threading.Event()
    states, slot = States(), FrameSlot()
    src = start(
        sources,
        "cam",
        "rtsp://x/y",
        slot,
        on_state=states,
        fault_after_s=0.2,
        capture_factory=lambda uri: ScriptedCapture(n_good=3, then="hang", hang=release),
    )
    states.wait("online")
    _, _, reason = states.wait("fault")
    assert reason == "no frame for 0.2 s"
    assert src.stats["frames_read"] == 3
    release.set()
    states.wait("online", count=2)
    assert src.stats["frames_read"] >= 4


def test_a_grabber_that_wakes_after_stop_does_not_revive_the_camera(sources: list) -> None:
    release = threading.Event()
    capture = ScriptedCapture(n_good=1, then="hang", hang=release)
    states, slot = States(), FrameSlot()
    src = start(sources, "cam", "rtsp://x/y", slot, on_state=states, capture_factory=lambda uri: capture)
    states.wait("online")
    src.stop(timeout=0.1)  # the grabber is stuck in read(): stop gives up waiting for it
    assert states.calls[-1] == ("cam", "offline", "stopped")
    release.set()  # the hung read returns a good frame...
    assert capture.released_event.wait(WAIT)  # ...and the grabber exits, releasing the capture
    assert src.state == "offline" and states.calls[-1][1] == "offline"
    assert src.stats["frames_read"] == 1
    first = slot.get_nowait()
    assert first is not None and first.frame_id == 0
    assert slot.get_nowait() is None


def test_live_fps_cap_grabs_every_frame_but_decodes_only_at_the_cap(sources: list) -> None:
    capture = ScriptedCapture(n_good=10**9)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    src = start(sources, "cam", "0", slot, on_state=states, fps_cap=20.0, capture_factory=lambda uri: capture)
    collector.wait_for_id(3)
    collector.stop()
    assert capture.grabs > capture.retrieves
    assert capture.retrieves == src.stats["frames_read"] or capture.retrieves == src.stats["frames_read"] + 1


# ---- small parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("0", "device"),
        ("12", "device"),
        ("rtsp://10.0.0.5/stream1", "stream"),
        ("HTTP://cam/mjpg", "stream"),
        ("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink", "gstreamer"),
        ("/data/line3.avi", "file"),
        ("videos/0.avi", "file"),
    ],
)
def test_uri_kind(uri: str, kind: str) -> None:
    assert uri_kind(uri) == kind


def test_usable_image_rejects_empty_and_black_and_normalises_channels() -> None:
    assert usable_image(None) is None
    assert usable_image(np.zeros((0, 0, 3), np.uint8)) is None
    assert usable_image(np.zeros((8, 8, 3), np.uint8)) is None
    assert usable_image(np.ones((8, 8, 3), np.float32)) is None
    assert usable_image(np.full((8, 8, 3), BLACK_MAX, np.uint8)) is None  # a decoder's rounding of black
    one_pixel = np.zeros((32, 32, 3), np.uint8)
    one_pixel[5, 5, 1] = BLACK_MAX + 1  # not on the subsample grid: the full check must find it
    assert usable_image(one_pixel) is one_pixel
    grey = np.full((8, 8), 100, np.uint8)
    out = usable_image(grey)
    assert out is not None and out.shape == (8, 8, 3) and int(out[0, 0, 2]) == 100
    bgra = np.full((8, 8, 4), 50, np.uint8)
    out = usable_image(bgra)
    assert out is not None and out.shape == (8, 8, 3)


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_pacer_spaces_frames_and_does_not_burst_after_a_stall() -> None:
    p = Pacer(10.0)
    assert p.wait_s(100.0) == 0.0
    p.mark(100.0)
    assert p.wait_s(100.0) == pytest.approx(0.1)
    p.mark(100.1)
    assert p.wait_s(100.1) == pytest.approx(0.1)
    p.mark(105.0)  # after a long stall: one frame at once, then one period apart again (no catch-up burst)
    assert p.wait_s(105.0) == pytest.approx(0.0)
    p.mark(105.0)
    assert p.wait_s(105.0) == pytest.approx(0.1)
    assert Pacer(None).wait_s(1.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps_cap": 0},
        {"fault_after_s": 0},
        {"backoff_initial_s": -1},
        {"backoff_initial_s": 2, "backoff_max_s": 1},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CameraSource("cam", "0", FrameSlot(), **kwargs)


# ---- MJPEG passthrough ---------------------------------------------------------------------------


def play_to_end(tmp_path: Path, sources: list, frames: list[np.ndarray], **kwargs: object) -> list[Frame]:
    """Play ``frames`` as an MJPEG file to its end; the frames the consumer got."""
    path = write_video(tmp_path / "mjpg.avi", frames, fps=200)
    states, slot = States(), FrameSlot()
    collector = Collector(slot)
    start(sources, "cam", str(path), slot, on_state=states, **kwargs)
    states.wait("ended")
    collector.wait_for_id(len(frames) - 1)
    collector.stop()
    return collector.frames


def test_mjpeg_file_frames_stay_compressed_until_used(tmp_path: Path, sources: list) -> None:
    for f in play_to_end(tmp_path, sources, grey_frames(5)):
        assert f.image is None and f.jpeg is not None and f.hw == (H, W)
        assert abs(frame_level(f) - level(f.frame_id)) < 4


def test_decode_on_demand_off_hands_over_decoded_frames(tmp_path: Path, sources: list) -> None:
    for f in play_to_end(tmp_path, sources, grey_frames(5), decode_on_demand=False):
        assert f.jpeg is None and f.image is not None and f.image.shape == (H, W, 3)


def test_jpeg_packet_copies_what_starts_like_a_jpeg_without_decoding_it() -> None:
    ok, good = cv2.imencode(".jpg", np.full((H, W, 3), 90, np.uint8))
    ok2, black = cv2.imencode(".jpg", np.zeros((H, W, 3), np.uint8))
    assert ok and ok2
    packet = jpeg_packet(good)
    assert packet is not None and packet.ndim == 1 and np.array_equal(packet, good.ravel())
    assert packet is not good and not np.shares_memory(packet, good)  # OpenCV may reuse its buffer
    assert jpeg_packet(black) is not None  # black is found when the frame is scored, not here
    assert jpeg_packet(np.frombuffer(b"\x00\x00\x01\xb3 h264 start code", np.uint8)) is None
    assert jpeg_packet(None) is None


def test_compressed_black_frames_are_found_when_decoded_for_scoring(tmp_path: Path, sources: list) -> None:
    (black,) = play_to_end(tmp_path, sources, [np.zeros((H, W, 3), np.uint8)])  # one frame: never overwritten
    assert black.image is None and black.jpeg is not None  # delivered, still compressed
    with pytest.raises(UnusableFrame, match="black") as info:
        black.image_for((0, 0, W, H), (H // 2, W // 2))
    assert info.value.reason == "black"


def test_frames_the_consumer_rejects_fault_the_camera_until_one_is_accepted(
    tmp_path: Path, sources: list
) -> None:
    path = write_video(tmp_path / "all-black.avi", [np.zeros((H, W, 3), np.uint8)] * 4, fps=100)
    states, slot = States(), FrameSlot()
    src = start(sources, "cam", str(path), slot, on_state=states, loop=True, fault_after_s=0.3)
    stop = threading.Event()

    def consume() -> None:  # what the daemon's inference thread does with each frame it takes
        while not stop.is_set():
            frame = slot.get(timeout=0.05)
            if frame is None:
                continue
            try:
                frame.image_for((0, 0, W, H), (H, W))
            except UnusableFrame as exc:
                src.reject_frame(exc.reason)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        states.wait("online")  # packets arrive, so the camera is online until the consumer has seen enough
        _, _, reason = states.wait("fault")
        assert reason.startswith(REJECTED_FAULT)
        read = src.stats["frames_read"]
        wait_until(lambda: src.stats["frames_read"] >= read + 10)  # deliveries go on ...
        assert [c[1] for c in states.calls] == ["online", "fault"]  # ... and do not make it online again
        assert src.stats["black_frames"] >= 10
    finally:
        stop.set()
        consumer.join(WAIT)
    src.accept_frame()  # the next frame the consumer can use ends the fault
    assert states.wait("online", count=2)[2] == "frames flowing"


def test_a_slow_open_is_not_a_fault(sources: list) -> None:
    """An RTSP camera takes seconds to open; that is not 'no frame' (opening has its own timeout)."""
    release = threading.Event()
    opening = threading.Event()

    def slow_open(uri: str) -> ScriptedCapture:
        opening.set()
        release.wait(WAIT)  # far longer than fault_after_s
        # frames never run out: 1000 could be read before the assertion below, and the "lost after 3
        # failed reads" that followed was a fault of the script, not of the open
        return ScriptedCapture(n_good=10**9)

    states, slot = States(), FrameSlot()
    start(sources, "cam", "rtsp://x/y", slot, on_state=states, fault_after_s=0.1, capture_factory=slow_open)
    assert opening.wait(WAIT)
    assert slot.get(timeout=0.5) is None  # five fault windows pass while the open is in progress
    release.set()
    states.wait("online")
    assert states.of("fault") == []


def test_a_camera_that_comes_back_is_read_within_the_backoff_cap(sources: list) -> None:
    """With the default cap (2 s) a camera that returns after a long outage is reopened promptly."""
    back = threading.Event()
    opens: list[float] = []

    def factory(uri: str) -> ScriptedCapture:
        opens.append(time.monotonic())
        if not back.is_set():
            raise OSError("connection refused")
        return ScriptedCapture(n_good=1000)

    states, slot = States(), FrameSlot()
    src = start(sources, "cam", "rtsp://x/y", slot, on_state=states, capture_factory=factory)
    states.wait("fault")
    wait_until(lambda: len(opens) >= 5)  # 0.5 + 1 + 2 + 2 s: the backoff has reached its cap
    back.set()
    returned = time.monotonic()
    states.wait("online")
    assert time.monotonic() - returned < 3.0
    assert src.stats["open_failures"] == len(opens) - 1


def test_backoff_jitter_stays_within_its_band() -> None:
    draws = iter([0.0, 1.0, 0.5])
    b = Backoff(1.0, 4.0, jitter=0.5, rand=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == [1.0, 1.0, 3.0]  # 1*(1-0), 2*(1-.5), 4*(1-.25)


def test_an_open_that_hangs_past_its_own_timeout_is_a_fault(sources: list) -> None:
    release = threading.Event()

    def hung_open(uri: str) -> ScriptedCapture:
        release.wait(WAIT)
        return ScriptedCapture(n_good=1000)

    states, slot = States(), FrameSlot()
    start(sources, "cam", "rtsp://x/y", slot, on_state=states, open_timeout_s=0.3, capture_factory=hung_open)
    _, _, reason = states.wait("fault")
    assert reason == "camera did not open within 0.3 s"
    release.set()
    states.wait("online")
