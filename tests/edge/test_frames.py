"""FrameSlot: newest frame wins, every overwrite is counted, each frame is handed out once, close wakes.

Frame: compressed frames decode at the coarsest JPEG scale the model input allows, and the resize after it.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from edge.capture.frames import Frame, FrameSlot, UnusableFrame
from edge.capture.preprocess import Preprocess


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


# ---- compressed (MJPEG) frames ---------------------------------------------------------------------


def _jpeg(image: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.reshape(-1)


def _pattern(h: int, w: int) -> np.ndarray:
    """Smooth gradients (JPEG-friendly) that differ in x and y, so a misplaced crop shows."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.dstack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255]).astype(np.uint8)


def test_compressed_frame_decodes_once_at_full_size_for_overlays() -> None:
    image = _pattern(96, 128)
    frame = Frame("cam", 0, 0.0, 0.0, None, jpeg=_jpeg(image), hw=(96, 128))
    full = frame.full_image()
    assert full.shape == (96, 128, 3)
    assert np.abs(full.astype(int) - image).mean() < 3
    assert frame.full_image() is full  # decoded once, then kept


def test_image_for_picks_the_coarsest_jpeg_scale_that_still_covers_the_model_input() -> None:
    image = _pattern(480, 640)
    roi = (160, 80, 320, 320)
    frame = Frame("cam", 0, 0.0, 0.0, None, jpeg=_jpeg(image), hw=(480, 640))
    crop = frame.image_for(roi, (64, 64))  # 320 / 4 = 80 >= 64, 320 / 8 = 40 < 64: quarter scale
    assert crop.shape == (80, 80, 3)
    assert frame.image is None  # no full-size decode happened
    # the same camera area as a full decode of the ROI, resized: within JPEG + resampling error
    reference = cv2.resize(image[80:400, 160:480], (80, 80), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - reference).mean() < 4
    big = frame.image_for(roi, (256, 256))  # only the full scale has 320 >= 256 pixels
    assert big.shape == (320, 320, 3)


def test_reduction_for_names_the_scale_image_for_decodes_at() -> None:
    image = _pattern(480, 640)
    roi = (160, 80, 320, 320)
    frame = Frame("cam", 0, 0.0, 0.0, None, jpeg=_jpeg(image), hw=(480, 640))
    for min_hw, k in (((40, 40), 8), ((64, 64), 4), ((128, 128), 2), ((256, 256), 1)):
        assert frame.reduction_for(roi, min_hw) == k
        assert frame.image_for(roi, min_hw).shape[:2] == (320 // k, 320 // k)
    assert Frame("cam", 0, 0.0, 0.0, image).reduction_for(roi, (40, 40)) == 1  # already decoded


def test_a_prefiltered_crop_shrinks_with_linear_interpolation_only_below_2x() -> None:
    pre = Preprocess(64, 64, color_order="BGR")
    crop = _pattern(100, 100)
    area = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)
    linear = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(area, linear)
    assert np.array_equal(pre.frame_to_input(crop), area)  # training's resize
    assert np.array_equal(pre.frame_to_input(crop, prefiltered=True), linear)
    big = _pattern(160, 160)  # 2.5x: a DCT-reduced decode would have gone one scale further; keep INTER_AREA
    assert np.array_equal(
        pre.frame_to_input(big, prefiltered=True), cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    )


def test_a_decoded_frame_is_cropped_as_it_is() -> None:
    image = _pattern(60, 80)
    frame = Frame("cam", 0, 0.0, 0.0, image)
    assert frame.hw == (60, 80)
    assert np.array_equal(frame.image_for((10, 5, 20, 30), (8, 8)), image[5:35, 10:30])


def test_bytes_that_do_not_decode_raise_undecodable_frame() -> None:
    frame = Frame("cam", 3, 0.0, 0.0, None, jpeg=np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8), hw=(8, 8))
    with pytest.raises(UnusableFrame, match="frame 3"):
        frame.full_image()


def test_a_frame_needs_an_image_or_bytes_and_a_size() -> None:
    with pytest.raises(ValueError, match="image or JPEG"):
        Frame("cam", 0, 0.0, 0.0, None)
    with pytest.raises(ValueError, match="camera size"):
        Frame("cam", 0, 0.0, 0.0, None, jpeg=np.zeros(8, np.uint8))
