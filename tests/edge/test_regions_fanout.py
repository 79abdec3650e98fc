"""The capture side of regions: one source's frames reach every region's slot; a region that does not read
drops (and counts) only its own frames; a region's own fault holds while the camera is online."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge.capture.fanout import FanOutSlot, RegionSource, RegionStates
from edge.capture.frames import Frame, FrameSlot
from edge.capture.sources import CameraSource


def frame(i: int) -> Frame:
    return Frame("cam0", i, time.time(), time.monotonic(), np.full((8, 8, 3), 100, np.uint8))


def test_every_frame_reaches_every_region_and_a_slow_region_drops_only_its_own() -> None:
    fast, slow = FrameSlot(), FrameSlot()
    fan = FanOutSlot([fast, slow])
    seen = []
    for i in range(5):
        fan.put(frame(i))
        got = fast.get_nowait()  # the fast region reads each frame as it comes
        assert got is not None
        seen.append(got.frame_id)
    assert seen == [0, 1, 2, 3, 4] and fast.dropped == 0
    last = slow.get_nowait()  # the slow region reads once: the newest, four replaced unread
    assert last is not None and last.frame_id == 4 and slow.dropped == 4
    assert fan.dropped == 0
    fan.close()
    assert fast.closed and slow.closed


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, unit: str, state: str, reason: str) -> None:
        self.events.append((unit, state, reason))


def test_a_region_fault_holds_while_the_camera_is_online_and_ends_when_the_roi_fits() -> None:
    sink = Sink()
    states = RegionStates(["cam0/a", "cam0/b"], sink)
    states.on_camera_state("cam0", "online", "frames flowing")
    assert sink.events == [("cam0/a", "online", "frames flowing"), ("cam0/b", "online", "frames flowing")]
    sink.events.clear()
    states.region_fault("cam0/b", "roi does not fit")
    states.region_fault("cam0/b", "roi does not fit")  # told once
    assert sink.events == [("cam0/b", "fault", "roi does not fit")]
    sink.events.clear()
    states.on_camera_state("cam0", "fault", "no frame for 3.0 s")  # the camera's fault reaches both
    states.on_camera_state("cam0", "online", "frames flowing")  # its return: b keeps its own fault
    assert sink.events == [
        ("cam0/a", "fault", "no frame for 3.0 s"),
        ("cam0/b", "fault", "no frame for 3.0 s"),
        ("cam0/a", "online", "frames flowing"),
        ("cam0/b", "fault", "roi does not fit"),
    ]
    assert states.state_of("cam0/b", "online", "frames flowing") == ("fault", "roi does not fit")
    assert states.state_of("cam0/b", "ended", "end of stream") == ("ended", "end of stream")
    sink.events.clear()
    states.region_ok("cam0/b")
    assert sink.events == [("cam0/b", "online", "frames flowing")]


def test_regions_start_their_shared_source_once() -> None:
    opened = []
    ready = threading.Event()

    class Capture:
        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return True

        def read(self):  # type: ignore[no-untyped-def]
            ready.set()
            time.sleep(0.01)
            return True, np.full((8, 8, 3), 100, np.uint8)

        def get(self, prop: int) -> float:
            return 0.0

        def release(self) -> None:
            return None

    def factory(uri: str) -> Capture:
        opened.append(uri)
        return Capture()

    slots = [FrameSlot(), FrameSlot()]
    states = RegionStates(["cam0/a", "cam0/b"], Sink())
    shared = CameraSource(
        "cam0", "0", FanOutSlot(slots), capture_factory=factory, on_state=states.on_camera_state
    )
    views = [RegionSource(shared, f"cam0/{n}", s, states) for n, s in zip("ab", slots, strict=True)]
    for view in views:
        view.start()
    try:
        assert ready.wait(5)
        assert all(s.get(5) is not None for s in slots)
    finally:
        for view in views:
            view.stop()
    assert opened == ["0"]
    assert views[0].stats["frames_dropped"] == slots[0].dropped and views[0].display == "0"
