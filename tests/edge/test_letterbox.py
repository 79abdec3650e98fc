"""Input geometry: a letterboxed frame keeps its shape, masks follow it, and padding never scores."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.capture.preprocess import Preprocess
from edge.results.postprocess import Postprocessor
from edge.trust.manifest import ScoreNormalization

LETTERBOX = Preprocess(height=64, width=64, resize="letterbox")


@settings(max_examples=60, deadline=None)
@given(h=st.integers(8, 700), w=st.integers(8, 700))
def test_content_box_keeps_the_aspect_ratio_and_fills_one_side(h: int, w: int) -> None:
    x, y, cw, ch = LETTERBOX.content_box(h, w)
    assert x >= 0 and y >= 0 and x + cw <= 64 and y + ch <= 64
    assert cw == 64 or ch == 64  # the longer side fills the input
    assert abs(cw / ch - w / h) <= (w / h) * (1.0 / min(cw, ch)) + 1e-9  # aspect kept to a pixel
    assert abs(x - (64 - cw - x)) <= 1 and abs(y - (64 - ch - y)) <= 1  # centred


def test_a_circle_stays_round_in_a_wide_frame() -> None:
    frame = np.zeros((100, 300, 3), np.uint8)
    cv2.circle(frame, (150, 50), 30, (255, 255, 255), -1)
    for pre, round_ in ((LETTERBOX, True), (Preprocess(height=64, width=64), False)):
        img = pre.frame_to_input(frame)
        assert img.shape == (64, 64, 3)
        ys, xs = np.nonzero(img[..., 0] > 127)
        aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
        assert bool(abs(aspect - 1.0) < 0.2) == round_, (pre.resize, aspect)


def test_padding_is_black_and_masks_follow_the_image() -> None:
    frame = np.full((50, 100, 3), 200, np.uint8)
    img = LETTERBOX.frame_to_input(frame)
    x, y, cw, ch = LETTERBOX.content_box(50, 100)
    assert (x, y, cw, ch) == (0, 16, 64, 32)
    assert (img[:16] == 0).all() and (img[48:] == 0).all() and (img[16:48] == 200).all()
    mask = np.zeros((50, 100), np.uint8)
    mask[:, 50:] = 255
    fitted = LETTERBOX.fit(mask, cv2.INTER_NEAREST)
    assert fitted.shape == (64, 64)
    assert (fitted[:16] == 0).all() and (fitted[16:48, 32:] == 255).all() and (fitted[16:48, :32] == 0).all()


def test_old_manifests_stretch_and_unknown_modes_are_refused() -> None:
    pre = Preprocess.from_dict(
        {"height": 32, "width": 32, "color_order": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1]}
    )
    assert pre.resize == "stretch" and pre.content_box(10, 40) == (0, 0, 32, 32)
    assert Preprocess.from_dict(LETTERBOX.to_dict()) == LETTERBOX
    with pytest.raises(ValueError, match="resize must be one of"):
        Preprocess(resize="crop")


def test_padding_never_scores_and_the_mask_maps_to_the_frame() -> None:
    post = Postprocessor(ScoreNormalization(offset=0.0, scale=1.0), min_region_area=1, pre=LETTERBOX)
    raw = np.zeros((64, 64), np.float32)
    raw[:16] = 9.0  # the padding above a 100x50 frame: must not make the frame anomalous
    raw[30:34, 40:44] = 2.0  # a defect inside the content
    verdict = post(9.0, raw, threshold=1.0, frame_hw=(50, 100), roi=(0, 0, 100, 50))
    assert verdict.score == pytest.approx(2.0) and verdict.anomalous
    mask = verdict.frame_mask()
    assert mask.shape == (50, 100)
    ys, xs = np.nonzero(mask)
    # content rows 16..47 map to frame rows 0..49 (x 1.5625), columns 0..63 to 0..99 (x 1.5625)
    assert ys.min() >= 20 and ys.max() <= 29 and xs.min() >= 61 and xs.max() <= 70
    quiet = post(
        9.0,
        np.where(np.arange(64)[:, None] < 16, 9.0, 0.5).astype(np.float32),
        1.0,
        (50, 100),
        (0, 0, 100, 50),
    )
    assert not quiet.anomalous and quiet.score == pytest.approx(0.5)
