"""FrameSlot: newest frame wins, every overwrite is counted, each frame is handed out once, close wakes."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge.frames import Frame, FrameSlot


def make_frame(i: int, camera: str = "cam") -> Frame:
    return Frame(camera, i, time.time(), time.monotonic(), np.full((4, 4, 3), i % 256, np.uint8))


def test_get_returns_the_newest_frame_and_counts_overwrites() -> None:
    slot = FrameSlot()
    for i in range(5):
        slot.put(make_frame(i))
    got = slot.get(timeout=1.0)
    assert got is not None and got.frame_id == 4
    assert slot.dropped == 4
    assert slot.get(timeout=0.05) is None  # each frame is handed out once
    slot.put(make_frame(5))
    assert slot.dropped == 4  # the read frame was not overwritten
    got = slot.get_nowait()
    assert got is not None and got.frame_id == 5


def test_get_times_out_with_none_on_an_empty_slot() -> None:
    slot = FrameSlot()
    t0 = time.monotonic()
    assert slot.get(timeout=0.1) is None
    assert time.monotonic() - t0 >= 0.09
    assert slot.get_nowait() is None


def test_a_waiting_getter_receives_a_frame_put_later() -> None:
    slot = FrameSlot()
    got: list[Frame | None] = []
    consumer = threading.Thread(target=lambda: got.append(slot.get(timeout=10.0)))
    consumer.start()
    slot.put(make_frame(7))
    consumer.join(10.0)
    assert not consumer.is_alive()
    assert got[0] is not None and got[0].frame_id == 7


def test_close_wakes_a_waiting_getter_and_refuses_further_frames() -> None:
    slot = FrameSlot()
    results: list[Frame | None] = []
    consumer = threading.Thread(target=lambda: results.append(slot.get(timeout=60.0)))
    consumer.start()
    slot.close()
    consumer.join(10.0)
    assert not consumer.is_alive(), "close() did not wake the getter"
    assert results == [None]
    slot.put(make_frame(1))
    assert slot.get(timeout=0.01) is None
    assert slot.closed
    assert slot.dropped == 0


def test_close_discards_an_unread_frame() -> None:
    slot = FrameSlot()
    slot.put(make_frame(1))
    slot.close()
    assert slot.get_nowait() is None


def test_concurrent_consumers_never_share_a_frame_and_every_frame_is_accounted_for() -> None:
    slot = FrameSlot()
    n = 3000
    received: list[list[int]] = [[] for _ in range(3)]

    def consume(out: list[int]) -> None:
        while True:
            frame = slot.get(timeout=5.0)
            if frame is None:
                return
            out.append(frame.frame_id)

    consumers = [threading.Thread(target=consume, args=(out,)) for out in received]
    for c in consumers:
        c.start()
    for i in range(n):
        slot.put(make_frame(i))
    leftover = slot.get_nowait()
    slot.close()
    for c in consumers:
        c.join(10.0)
        assert not c.is_alive()
    ids = [i for out in received for i in out] + ([leftover.frame_id] if leftover else [])
    assert len(ids) == len(set(ids)), "a frame was returned twice"
    assert len(ids) + slot.dropped == n
    for out in received:  # each consumer sees frames in the order they were put
        assert out == sorted(out)
