"""Score normalisation and thresholds on hand-checked arrays (numbers worked out in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.scores import (
    ABS_SCALE_FLOOR,
    DEFAULT_MARGIN,
    Normalization,
    ScoreCalibrationError,
    normalization_from_good,
    threshold_best_f1,
    threshold_from_good,
)


def test_normalization_is_median_and_q99_spread() -> None:
    # median 3; q99 (linear) = 4 + 0.96 * (5 - 4) = 4.96; scale = 1.96
    norm = normalization_from_good([5.0, 1.0, 4.0, 2.0, 3.0])
    assert norm.offset == pytest.approx(3.0)
    assert norm.scale == pytest.approx(1.96)
    assert norm.n_images == 5
    assert norm.method == "good-quantiles"
    assert norm.apply([3.0, 4.96, 1.04]) == pytest.approx([0.0, 1.0, -1.0])


def test_identical_scores_get_a_floor_scale_not_zero() -> None:
    assert normalization_from_good([2.0, 2.0, 2.0]).scale == pytest.approx(2e-3)  # 1e-3 * |median|
    assert normalization_from_good([0.0]).scale == pytest.approx(ABS_SCALE_FLOOR)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_unusable_scores_are_refused(bad: list[float]) -> None:
    with pytest.raises(ScoreCalibrationError):
        normalization_from_good(bad)


def test_far_threshold_is_quantile_plus_margin() -> None:
    # q75 of [0, 0.5, 1, 2] (linear) = 1 + 0.25 * (2 - 1) = 1.25; + margin 0.5 = 1.75
    t = threshold_from_good([0.0, 0.5, 1.0, 2.0], false_alarm_rate=0.25, margin=0.5)
    assert t.value == pytest.approx(1.75)
    assert t.method == "false-alarm-rate"
    assert t.false_alarm_rate == 0.25


def test_default_threshold_sits_margin_above_the_good_q99() -> None:
    # normalised by their own q99 spread, good scores have q99 = 1 exactly, so the default is 1 + margin
    raw = np.random.default_rng(0).gamma(2.0, 0.05, size=200) + 0.3
    norm = normalization_from_good(raw)
    t = threshold_from_good(norm.apply(raw))
    assert t.value == pytest.approx(1.0 + DEFAULT_MARGIN)
    assert (norm.apply(raw) >= t.value).mean() <= 0.01


def test_threshold_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="false_alarm_rate"):
        threshold_from_good([0.0, 1.0], false_alarm_rate=0.0)
    with pytest.raises(ValueError, match="margin"):
        threshold_from_good([0.0, 1.0], margin=-1.0)


def test_best_f1_hand_checked() -> None:
    # descending: 0.8(d) 0.4(g) 0.35(d) 0.1(g); flag top 3 -> TP 2, FP 1 -> F1 0.8, the best;
    # the threshold goes midway between 0.35 and 0.1
    t = threshold_best_f1([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert t.value == pytest.approx(0.225)
    assert t.f1 == pytest.approx(0.8)
    assert t.method == "best-f1"


def test_best_f1_separates_a_clean_split_midway() -> None:
    t = threshold_best_f1([0.1, 0.2, 0.9, 1.0], [0, 0, 1, 1])
    assert t.value == pytest.approx(0.55)
    assert t.f1 == pytest.approx(1.0)


def test_best_f1_never_splits_tied_scores() -> None:
    # 0.5(d) and 0.5(g) tie: flagging one without the other is impossible; flag both -> F1 2/3
    t = threshold_best_f1([0.5, 0.5, 0.1], [1, 0, 0])
    assert t.value == pytest.approx(0.3)
    assert t.f1 == pytest.approx(2 / 3)


def test_best_f1_all_defects_flags_everything() -> None:
    t = threshold_best_f1([0.3, 0.2], [1, 1])
    assert t.value == pytest.approx(0.2)
    assert t.f1 == pytest.approx(1.0)


def _f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    flag = scores >= threshold
    tp = int((flag & (labels == 1)).sum())
    return 2 * tp / (flag.sum() + labels.sum())


def test_best_f1_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        labels = rng.integers(0, 2, n)
        labels[0] = 1
        scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounding makes ties
        t = threshold_best_f1(scores, labels)
        assert t.f1 == pytest.approx(max(_f1_at(scores, labels, v) for v in np.unique(scores)))
        assert _f1_at(scores, labels, t.value) == pytest.approx(t.f1)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2], [0, 0], "at least one defective"),
        ([0.1, 0.2], [0, 1, 1], "labels"),
        ([0.1], [2], "0 \\(good\\)"),
    ],
)
def test_best_f1_bad_labels(scores: list[float], labels: list[int], match: str) -> None:
    with pytest.raises(ScoreCalibrationError, match=match):
        threshold_best_f1(scores, labels)


def test_normalization_applies_to_maps_alike() -> None:
    norm = Normalization(offset=1.0, scale=2.0)
    assert norm.apply(np.array([[1.0, 3.0], [5.0, -1.0]])) == pytest.approx(
        np.array([[0.0, 1.0], [2.0, -1.0]])
    )
