"""Metrics against hand-checked cases and an independent brute-force PRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.metrics import (
    area_to_limit,
    aupro,
    best_f1_threshold,
    evaluate_maps,
    f1_at_threshold,
    image_auroc,
    pixel_auroc,
    pro_curve,
)

# ---- image AUROC ----------------------------------------------------------------------------------------


def test_image_auroc_perfect_inverted_constant() -> None:
    labels = [0, 0, 0, 1, 1]
    assert image_auroc(labels, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert image_auroc(labels, [0.9, 0.8, 0.7, 0.2, 0.1]) == 0.0
    assert image_auroc(labels, [0.5] * 5) == 0.5


def test_image_auroc_hand_computed() -> None:
    # Pairs (defect, good): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_image_auroc_random_scores_near_half() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20_000)
    # Standard error of AUROC at n=10k per class is ~0.003; 0.02 is > 6 sigma.
    assert image_auroc(labels, rng.random(20_000)) == pytest.approx(0.5, abs=0.02)


def test_image_auroc_rejects_undefined_and_bad_input() -> None:
    with pytest.raises(ValueError, match="no defective images"):
        image_auroc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="no good images"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="2 labels, 3 scores"):
        image_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1 \\(defect\\)"):
        image_auroc([0, 2], [0.1, 0.2])


# ---- pixel AUROC ----------------------------------------------------------------------------------------


def _two_images() -> np.ndarray:
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:5] = True
    masks[1, 6:8, 0:2] = True
    return masks


def test_pixel_auroc_perfect_inverted_constant() -> None:
    masks = _two_images()
    assert pixel_auroc(masks, masks.astype(np.float32)) == 1.0
    assert pixel_auroc(masks, (~masks).astype(np.float32)) == 0.0
    assert pixel_auroc(masks, np.zeros(masks.shape)) == 0.5


def test_pixel_auroc_random_maps_near_half() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((4, 64, 64)) < 0.2
    assert pixel_auroc(masks, rng.random(masks.shape)) == pytest.approx(0.5, abs=0.02)


def test_pixel_auroc_hand_computed() -> None:
    # One defect pixel scoring 0.5 among normal pixels 0.1, 0.6, 0.4: above 2 of 3 normals.
    masks = np.array([[True, False], [False, False]])
    maps = np.array([[0.5, 0.1], [0.6, 0.4]])
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3)


def test_pixel_auroc_rejects_undefined_and_mismatched() -> None:
    with pytest.raises(ValueError, match="no defective pixels"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.random.default_rng(0).random((2, 4, 4)))
    with pytest.raises(ValueError, match="no good pixels"):
        pixel_auroc(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 8, 8)))
    masks = _two_images()
    maps = masks.astype(np.float32)
    maps[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        pixel_auroc(masks, maps)


# ---- AUPRO ----------------------------------------------------------------------------------------------


def test_aupro_perfect_and_inverted() -> None:
    masks = _two_images()
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert aupro(masks, (~masks).astype(np.float32)) == pytest.approx(0.0)


def test_aupro_constant_map_is_half_the_limit() -> None:
    """A constant map jumps from (0,0) to (1,1); the area to 0.3 is 0.3*0.3/2, normalised: 0.15.
    This also checks that the PRO at exactly FPR 0.3 is interpolated, not dropped."""
    masks = _two_images()
    assert aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)
    assert aupro(masks, np.zeros(masks.shape), fpr_limit=1.0) == pytest.approx(0.5)
    assert aupro(masks, np.zeros(masks.shape), fpr_limit=0.1) == pytest.approx(0.05)


def test_aupro_random_maps_near_half_the_limit() -> None:
    rng = np.random.default_rng(2)
    masks = np.zeros((6, 64, 64), bool)
    for i in range(6):
        y, x = rng.integers(5, 50, 2)
        masks[i, y : y + 10, x : x + 8] = True
    assert aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.02)


def _region_case() -> tuple[np.ndarray, np.ndarray]:
    """Region A (2 pixels, touching only diagonally) half detected; region B (2x2) fully detected."""
    masks = np.zeros((1, 8, 8), bool)
    maps = np.zeros((1, 8, 8))
    masks[0, 0, 0] = masks[0, 1, 1] = True  # A: one region under 8-connectivity
    maps[0, 0, 0] = 1.0  # half of A found
    masks[0, 5:7, 5:7] = True  # B
    maps[0, 5:7, 5:7] = 1.0  # all of B found
    return masks, maps


def test_aupro_hand_computed_two_regions() -> None:
    """At threshold 1: FPR 0, PRO = (1/2 + 1)/2 = 0.75 (per region, not per pixel: that would be 5/6).
    At threshold 0: (1, 1). Curve (0,0)-(0,0.75)-(1,1); PRO at FPR 0.3 = 0.75 + 0.3*0.25 = 0.825.
    Area = 0.3 * (0.75 + 0.825)/2 = 0.23625; / 0.3 = 0.7875. With 4-connectivity (three regions) it would
    be 0.71667."""
    masks, maps = _region_case()
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.75, 1.0])
    assert aupro(masks, maps) == pytest.approx(0.7875)


def test_aupro_small_region_counts_as_much_as_a_large_one() -> None:
    masks = np.zeros((2, 16, 16), bool)
    maps = np.zeros((2, 16, 16))
    masks[0, 2:12, 2:12] = True  # 100 pixels, all found
    maps[0, 2:12, 2:12] = 1.0
    masks[1, 8, 8] = True  # 1 pixel, missed
    # PRO at threshold 1 is 0.5 (pixel-wise overlap would be 100/101); then (1, 1).
    # PRO at FPR 0.3 = 0.5 + 0.3*0.5 = 0.65; area = 0.3*(0.5+0.65)/2 / 0.3 = 0.575.
    assert aupro(masks, maps) == pytest.approx(0.575)


@pytest.mark.parametrize(
    ("n_hot", "limit", "expected"),
    [
        (2, 0.3, 1 / 3),  # curve (0,0)-(0.2,0)-(0.2,1)-(1,1): area 0.1 to FPR 0.3
        (4, 0.3, 0.0),  # the region is only found beyond FPR 0.4: nothing counts below 0.3
        (4, 0.5, 0.2),  # ... but with a 0.5 limit: area 0.1 / 0.5
        (0, 0.3, 1.0),
    ],
)
def test_aupro_fpr_cutoff(n_hot: int, limit: float, expected: float) -> None:
    """Ten normal pixels of which ``n_hot`` score above the one 10-pixel defect region."""
    masks = np.zeros((1, 2, 10), bool)
    masks[0, 0] = True
    maps = np.zeros((1, 2, 10))
    maps[0, 0] = 0.5
    maps[0, 1, :n_hot] = 1.0
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected)


def _brute_force_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One threshold at a time, straight from the definition; scipy labels the regions."""
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(labels == r, amap) for r in range(1, n + 1)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float((normal >= t).mean()))
        pros.append(float(np.mean([(amap[region] >= t).mean() for region, amap in regions])))
    return np.array(fprs), np.array(pros)


def test_pro_curve_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 12, 12)) < 0.15  # many small, oddly shaped regions
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # rounding makes ties
    fpr, pro = pro_curve(masks, maps)
    ref_fpr, ref_pro = _brute_force_curve(masks, maps)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)


def test_binned_curve_agrees_with_exact() -> None:
    masks, maps = _region_case()
    # The scores 0 and 1 sit exactly on a 3-point grid, so binning loses nothing here.
    assert aupro(masks, maps, num_thresholds=3) == pytest.approx(0.7875)
    rng = np.random.default_rng(4)
    masks = rng.random((4, 32, 32)) < 0.1
    maps = rng.random(masks.shape) + 0.5 * masks
    assert aupro(masks, maps, num_thresholds=2000) == pytest.approx(aupro(masks, maps), abs=2e-3)


def test_area_to_limit_interpolates_at_the_limit() -> None:
    x = np.array([0.0, 0.2, 0.4, 1.0])
    y = np.array([0.0, 0.2, 0.6, 1.0])
    # (0,0)-(0.2,0.2): 0.02; (0.2,0.2)-(0.3,0.4): 0.1*0.3 = 0.03.
    assert area_to_limit(x, y, 0.3) == pytest.approx(0.05)
    assert area_to_limit(x, y, 0.2) == pytest.approx(0.02)  # a point exactly on the limit


def test_aupro_rejects_undefined() -> None:
    with pytest.raises(ValueError, match="no defect regions"):
        aupro(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="no normal pixels"):
        aupro(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(_two_images(), np.zeros((2, 8, 8)), fpr_limit=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(_two_images(), np.zeros((2, 8, 8)), num_thresholds=1)


# ---- F1 -------------------------------------------------------------------------------------------------

LABELS = [0, 0, 1, 1, 1]
SCORES = [0.1, 0.6, 0.5, 0.7, 0.9]


def test_f1_at_threshold_hand_computed() -> None:
    # >= 0.55 flags 0.6 (good), 0.7, 0.9: tp 2, fp 1, fn 1.
    r = f1_at_threshold(LABELS, SCORES, 0.55)
    assert r == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    # The threshold is inclusive: >= 0.5 also flags the defect at exactly 0.5.
    r = f1_at_threshold(LABELS, SCORES, 0.5)
    assert r == pytest.approx({"precision": 0.75, "recall": 1.0, "f1": 6 / 7})
    # Nothing flagged: precision and F1 are 0, not NaN.
    assert f1_at_threshold(LABELS, SCORES, 2.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_best_f1_threshold() -> None:
    threshold, f1 = best_f1_threshold(LABELS, SCORES)
    assert threshold == pytest.approx(0.5)
    assert f1 == pytest.approx(6 / 7)
    assert f1_at_threshold(LABELS, SCORES, threshold)["f1"] == pytest.approx(f1)
    threshold, f1 = best_f1_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (threshold, f1) == (pytest.approx(0.8), 1.0)
    with pytest.raises(ValueError, match="no defective images"):
        best_f1_threshold([0, 0], [0.1, 0.2])


# ---- evaluate_maps --------------------------------------------------------------------------------------


def _test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """4 good images, 3 'blob' found perfectly, 2 'dent' with no masks and scores below every good image."""
    types = ["good"] * 4 + ["blob"] * 3 + ["dent"] * 2
    labels = np.array([0] * 4 + [1] * 5)
    scores = np.array([0.2, 0.3, 0.4, 0.5, 0.9, 0.9, 0.9, 0.0, 0.1])
    masks = np.zeros((9, 16, 16), bool)
    for i in (4, 5, 6):
        masks[i, i : i + 4, 3:7] = True
    maps = masks.astype(np.float32)
    return labels, scores, masks, maps, types


def test_evaluate_maps_overall_and_per_type() -> None:
    r = evaluate_maps(*_test_set())
    # 12 of 20 (defect, good) pairs ordered right: every blob beats every good, no dent does.
    assert r["image_auroc"] == pytest.approx(0.6)
    assert r["pixel_auroc"] == 1.0
    assert r["aupro"] == pytest.approx(1.0)
    assert set(r["per_type"]) == {"blob", "dent"}
    assert r["per_type"]["blob"] == {
        "image_auroc": 1.0,
        "pixel_auroc": 1.0,
        "aupro": pytest.approx(1.0),
        "n_images": 3,
    }
    # A type without masks keeps its image metric and reports None for the pixel ones.
    assert r["per_type"]["dent"] == {"image_auroc": 0.0, "pixel_auroc": None, "aupro": None, "n_images": 2}


def test_evaluate_maps_without_any_masks_reports_none() -> None:
    labels, scores, masks, maps, types = _test_set()
    r = evaluate_maps(labels, scores, np.zeros_like(masks), maps, types)
    assert r["pixel_auroc"] is None and r["aupro"] is None
    assert r["image_auroc"] == pytest.approx(0.6)


def test_evaluate_maps_rejects_bad_input() -> None:
    labels, scores, masks, maps, types = _test_set()
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_maps(labels, scores, masks, maps, types[:-1])
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_maps(labels, scores, masks, maps, types)


def test_maps_of_several_sizes_meet_in_one_frame() -> None:
    """Crops of one size keep it; crops of several sizes meet at the largest height and width, and a defect of
    one pixel in a small crop still marks a pixel there."""
    from training.native_eval import stack_in_frame

    same = [np.random.default_rng(0).random((6, 8), dtype=np.float32) for _ in range(2)]
    maps, masks = stack_in_frame(same, [np.zeros((6, 8), bool)] * 2)
    assert maps.shape == (2, 6, 8) and (maps[1] == same[1]).all() and not masks.any()
    small_mask = np.zeros((5, 4), bool)
    small_mask[2, 1] = True
    maps, masks = stack_in_frame(
        [np.ones((5, 4), np.float32), np.zeros((10, 3), np.float32)], [small_mask, np.zeros((10, 3), bool)]
    )
    assert maps.shape == masks.shape == (2, 10, 4)
    assert masks[0].sum() >= 1 and not masks[1].any() and (maps[0] == 1).all()
