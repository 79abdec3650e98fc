"""Postprocess: normalisation, mask, regions mapped to camera pixels, PNG/JPEG, threshold parsing and
precedence."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.commands import MAX_THRESHOLD_PAYLOAD, ThresholdError, parse_threshold_payload
from edge.results.postprocess import Postprocessor, Verdict, clip_roi, encode_heatmap_jpeg, encode_mask_png
from edge.trust.manifest import ScoreNormalization

NORM = ScoreNormalization(offset=0.1, scale=0.05)


def raw_from_norm(norm: np.ndarray | float) -> np.ndarray | float:
    return norm * NORM.scale + NORM.offset


def two_blob_map(h: int = 64, w: int = 64) -> np.ndarray:
    """Normalised map: background 0, a 10x8 block at (x=20, y=30) peaking at 9, a 2x2 speck at (5, 5) of 6."""
    norm = np.zeros((h, w), np.float32)
    norm[30:38, 20:30] = 5.0
    norm[33, 25] = 9.0
    norm[5:7, 5:7] = 6.0
    return norm


def test_score_normalised_and_verdict() -> None:
    post = Postprocessor(NORM, min_region_area=0)
    raw_map = raw_from_norm(np.zeros((32, 32), np.float32))
    v = post(raw_from_norm(3.0), raw_map, threshold=2.0, frame_hw=(32, 32), roi=(0, 0, 32, 32))
    assert v.score == pytest.approx(3.0) and v.raw_score == pytest.approx(0.25)
    assert v.anomalous
    v = post(raw_from_norm(1.5), raw_map, threshold=2.0, frame_hw=(32, 32), roi=(0, 0, 32, 32))
    assert not v.anomalous and v.regions == [] and v.defect_area == 0.0


def test_regions_in_model_pixels_when_frame_is_model_size() -> None:
    post = Postprocessor(NORM, min_region_area=0)
    v = post(raw_from_norm(9.0), raw_from_norm(two_blob_map()), 1.0, frame_hw=(64, 64), roi=(0, 0, 64, 64))
    assert [r.bbox for r in v.regions] == [(20, 30, 10, 8), (5, 5, 2, 2)]  # largest first
    assert [r.area for r in v.regions] == [80, 4]
    assert v.regions[0].peak == pytest.approx(9.0) and v.regions[1].peak == pytest.approx(6.0)
    assert v.defect_area == pytest.approx(84 / 64**2)


def test_min_area_removes_small_regions_from_mask_too() -> None:
    post = Postprocessor(NORM, min_region_area=10)
    v = post(raw_from_norm(9.0), raw_from_norm(two_blob_map()), 1.0, frame_hw=(64, 64), roi=(0, 0, 64, 64))
    assert [r.bbox for r in v.regions] == [(20, 30, 10, 8)]
    mask = v.frame_mask()
    assert mask[5, 5] == 0 and mask[33, 25] == 255
    assert int((mask > 0).sum()) == 80
    assert v.defect_area == pytest.approx(80 / 64**2)


def test_mapping_back_through_roi_offset_and_scale() -> None:
    """Model 64x64 looks at a 128x96 ROI at (100, 50) of a 480x640 frame: x scale 2, y scale 1.5."""
    post = Postprocessor(NORM, min_region_area=0)
    roi = (100, 50, 128, 96)
    v = post(raw_from_norm(9.0), raw_from_norm(two_blob_map()), 1.0, frame_hw=(480, 640), roi=roi)
    big = v.regions[0]
    assert big.bbox == (100 + 40, 50 + 45, 20, 12)
    assert big.area == 80 * 3  # 80 model pixels x (2 x 1.5) camera pixels each
    mask = v.frame_mask()
    assert mask.shape == (480, 640)
    ys, xs = np.nonzero(mask)
    assert xs.min() >= 100 and xs.max() < 228 and ys.min() >= 50 and ys.max() < 146  # nothing outside the ROI
    bx, by, bw, bh = big.bbox
    assert mask[by : by + bh, bx : bx + bw].mean() == 255  # the big region is fully set in camera pixels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), min_area=st.sampled_from([0, 3, 12]))
def test_regions_match_a_reference_labelling(seed: int, min_area: int) -> None:
    """Boxes, areas, peaks and the kept mask agree with OpenCV's default labelling and a full-map peak
    search."""
    rng = np.random.default_rng(seed)
    norm = cv2.GaussianBlur(rng.normal(0, 1, (48, 40)).astype(np.float32), (0, 0), 1.5) * 4
    post = Postprocessor(NORM, min_region_area=min_area, max_regions=1000)
    v = post(raw_from_norm(9.0), raw_from_norm(norm), 0.8, frame_hw=(48, 40), roi=(0, 0, 40, 48))
    n, labels, stats, _ = cv2.connectedComponentsWithStats((norm > 0.8).astype(np.uint8), connectivity=8)
    kept = [i for i in range(1, n) if stats[i, 4] >= min_area]
    expected = sorted(
        (tuple(int(c) for c in stats[i, :4]), int(stats[i, 4]), float(norm[labels == i].max())) for i in kept
    )
    got = sorted((r.bbox, r.area, r.peak) for r in v.regions)
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    # peaks went through raw units and back, so they agree to float32 rounding, not bit for bit
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], abs=1e-4)
    assert v.regions_total == len(kept)
    assert np.array_equal(v.mask_model > 0, np.isin(labels, kept))


def test_a_map_below_the_threshold_everywhere_has_no_regions_and_an_empty_mask() -> None:
    post = Postprocessor(NORM)
    v = post(raw_from_norm(0.5), raw_from_norm(np.zeros((32, 32), np.float32)), 1.0, (64, 64), (0, 0, 64, 64))
    assert v.regions == [] and v.regions_total == 0 and v.defect_area == 0.0
    assert not v.frame_mask().any() and v.frame_mask().shape == (64, 64)


def test_clip_roi() -> None:
    assert clip_roi(None, (480, 640)) == (0, 0, 640, 480)
    assert clip_roi((600, 400, 100, 100), (480, 640)) == (600, 400, 40, 80)
    assert clip_roi((700, 0, 10, 10), (480, 640)) is None


def test_mask_png_and_heatmap_jpeg_decode() -> None:
    post = Postprocessor(NORM, min_region_area=0)
    frame = np.full((96, 160, 3), 90, np.uint8)
    v = post(
        raw_from_norm(9.0), raw_from_norm(two_blob_map()), 1.0, frame_hw=(96, 160), roi=(16, 16, 128, 64)
    )
    png = encode_mask_png(v)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (96, 160) and np.array_equal(decoded, v.frame_mask())
    jpg = encode_heatmap_jpeg(frame, v, quality=70)
    heat = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert heat.shape == (96, 160, 3)
    assert np.abs(heat[:10].astype(int) - 90).max() <= 8  # outside the ROI the frame is unchanged
    hot = heat[16 + 33, 16 + 50].astype(int)  # the peak pixel (model 25,33 -> camera x 16+50, y 16+33)
    assert hot[2] > hot[0]  # red over blue where the score is far above the threshold


@settings(max_examples=150, deadline=None)
@given(
    model_hw=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    frame_hw=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    box=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
    seed=st.integers(0, 2**16),
)
def test_mask_png_is_the_frame_mask_for_any_roi_and_scale(model_hw, frame_hw, box, seed) -> None:
    """The PNG is built from packed model rows, not from frame_mask(): both must give the same pixels."""
    fh, fw = frame_hw
    x, y = int(box[0] * (fw - 1)), int(box[1] * (fh - 1))
    w, h = 1 + int(box[2] * (fw - x - 1)), 1 + int(box[3] * (fh - y - 1))
    mask = (np.random.default_rng(seed).random(model_hw) > 0.7).astype(np.uint8) * 255
    v = Verdict(1.0, 1.0, 0.5, True, 0.1, [], 0, mask, mask.astype(np.float32), (x, y, w, h), (fh, fw))
    decoded = cv2.imdecode(np.frombuffer(encode_mask_png(v), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (fh, fw) and np.array_equal(decoded, v.frame_mask())


# --- threshold/set parsing ------------------------------------------------------------------------------

LO, HI = -10.0, 100.0
finite_in_range = st.floats(min_value=LO, max_value=HI, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(finite_in_range)
def test_valid_numbers_round_trip_in_every_format(value: float) -> None:
    for payload in (
        repr(value).encode(),
        json.dumps(value).encode(),
        json.dumps({"threshold": value}).encode(),
    ):
        if len(payload) <= MAX_THRESHOLD_PAYLOAD:
            assert parse_threshold_payload(payload, LO, HI) == value


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not LO <= v <= HI))
def test_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ThresholdError, match="outside the allowed range"):
        parse_threshold_payload(repr(value).encode(), LO, HI)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    try:
        value = parse_threshold_payload(payload, LO, HI)
    except ThresholdError:
        return
    assert math.isfinite(value) and LO <= value <= HI and len(payload) <= MAX_THRESHOLD_PAYLOAD


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        value = parse_threshold_payload(text.encode("utf-8"), LO, HI)
    except ThresholdError:
        return
    assert math.isfinite(value) and LO <= value <= HI


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"abc",
        b"nan",
        b"NaN",
        b"inf",
        b"-Infinity",
        b"1e999",
        b"true",
        b"null",
        b"[1]",
        b'"1.5"',
        b'{"threshold": NaN}',
        b'{"threshold": true}',
        b'{"threshold": 1, "x": 2}',
        b'{"value": 1}',
        b"1_0",
        b"0x10",
        b"1" * 65,
        b"\xff\xfe",
        b"1" + b" " * 70,
    ],
)
def test_refused_payloads(payload: bytes) -> None:
    with pytest.raises(ThresholdError):
        parse_threshold_payload(payload, -1e300, 1e300)


def test_accepted_spellings() -> None:
    assert parse_threshold_payload(b" 2.5\n", LO, HI) == 2.5
    assert parse_threshold_payload(b"-1e-1", LO, HI) == -0.1
    assert parse_threshold_payload(b"7", LO, HI) == 7.0
    assert parse_threshold_payload(b'{"threshold": 3}', LO, HI) == 3.0
