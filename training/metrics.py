"""Evaluation metrics with the definitions anomalib and the MVTec AD paper use.

- image AUROC: ROC area of the per-image score against the good/defect label.
- pixel AUROC: ROC area of every pixel of every anomaly map against the ground-truth masks.
- AUPRO: area under the per-region-overlap curve up to 30 % false-positive rate, divided by that limit so a
  perfect map scores 1.0. Each connected defect region counts once whatever its size, so a small scratch
  matters as much as a large stain; false positives are counted over the normal pixels of all images.
- F1 of the image decision at a threshold (``score >= threshold`` is a defect).

The building blocks raise ValueError when a metric is undefined (one class only, NaN scores);
``evaluate_maps`` turns undefined per-type metrics into None so a report can still be printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

DEFAULT_FPR_LIMIT = 0.3


def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} labels, {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError(
            f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values; check the model output"
        )
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0 (good) or 1 (defect), found {sorted(values)}")
    return y.astype(bool), s


def _require_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        found = "no defective" if n_pos == 0 else "no good"
        raise ValueError(
            f"{what} is undefined: there are {found} {'pixels' if 'pixel' in what else 'images'}"
        )


def image_auroc(labels: Any, scores: Any) -> float:
    """ROC area of image scores; 1.0 = every defect scores above every good image, 0.5 = chance."""
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "image AUROC")
    return float(roc_auc_score(y, s))


def _masks_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(masks)
    a = np.asarray(maps)
    if m.ndim == 2 and a.ndim == 2:  # one image
        m, a = m[None], a[None]
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) or (H, W), got shape {m.shape}")
    if m.shape != a.shape:
        raise ValueError(
            f"masks {m.shape} and anomaly maps {a.shape} differ in shape; resize the maps to the mask size "
            f"first"
        )
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(
            f"anomaly maps contain {int((~np.isfinite(a)).sum())} NaN/inf values; check the model output"
        )
    return m.astype(bool, copy=False), a


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC area over all pixels of all maps against the ground-truth masks."""
    m, a = _masks_maps(masks, maps)
    y = m.ravel()
    _require_both_classes(y, "pixel AUROC")
    return float(roc_auc_score(y, a.ravel()))


def _region_ids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel region id (0 = normal, 1..R = connected defect region, 8-connectivity, numbered across all
    images) and the size of each region (index r-1 for region r)."""
    ids = np.zeros(masks.shape, dtype=np.int32)
    offset = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        ids[i] = np.where(labels > 0, labels + offset, 0)
        offset += n - 1
    sizes = np.bincount(ids.ravel(), minlength=offset + 1)[1:]
    return ids, sizes


def _pro_weights(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-pixel region ids, each id's contribution to PRO (1/(R*|region|), 0 for normal pixels) and the
    number of normal pixels (each contributes 1/#normal to the FPR)."""
    ids, sizes = _region_ids(masks)
    n_regions = sizes.size
    ids = ids.ravel()
    n_normal = int(ids.size - sizes.sum())
    if n_regions == 0:
        raise ValueError("AUPRO is undefined: the masks contain no defect regions")
    if n_normal == 0:
        raise ValueError("AUPRO is undefined: the masks contain no normal pixels")
    per_region = np.concatenate([[0.0], 1.0 / (n_regions * sizes.astype(np.float64))])
    return ids, per_region, n_normal


def pro_curve(masks: Any, maps: Any, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) points for thresholds from high to low, starting at (0, 0) and ending at (1, 1).

    Exact by default: pixels sorted by score, one point per distinct score (ties move together).
    With ``num_thresholds`` the scores are binned on an even grid between the min and max score instead,
    which needs no sort (less memory for very large maps).
    """
    m, a = _masks_maps(masks, maps)
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    ids, per_region, n_normal = _pro_weights(m)
    scores = a.ravel()
    if num_thresholds is None:
        return _exact_curve(scores, ids, per_region, n_normal)
    return _binned_curve(scores, ids, per_region, n_normal, num_thresholds)


def _exact_curve(
    scores: np.ndarray, ids: np.ndarray, per_region: np.ndarray, n_normal: int
) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(scores, kind="stable")[::-1]  # high to low
    sorted_scores = scores[order]
    sorted_ids = ids[order]
    del order
    # The curve has one point per threshold: the last pixel of each run of equal scores.
    last_of_run = np.append(np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1)
    fpr = np.cumsum(sorted_ids == 0)[last_of_run] / n_normal
    pro = np.cumsum(per_region[sorted_ids])[last_of_run]
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def _binned_curve(
    scores: np.ndarray, ids: np.ndarray, per_region: np.ndarray, n_normal: int, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)
    # A pixel is flagged at every threshold <= its score: its bin is the number of such thresholds.
    bins = np.searchsorted(thresholds, scores, side="right")
    normal_per_bin = np.bincount(bins[ids == 0], minlength=num_thresholds + 1)
    pro_per_bin = np.bincount(bins, weights=per_region[ids], minlength=num_thresholds + 1)
    # Flagged at threshold j = pixels in bins above j; walk from the highest threshold down.
    fpr = np.cumsum(normal_per_bin[::-1])[:num_thresholds] / n_normal
    pro = np.cumsum(pro_per_bin[::-1])[:num_thresholds]
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], x non-decreasing; y at ``limit`` is interpolated
    linearly between the two curve points either side of it."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and (xs.size == 0 or xs[-1] < limit):
        x0, y0, x1, y1 = x[inside - 1], y[inside - 1], x[inside], y[inside]
        y_limit = y0 + (limit - x0) * (y1 - y0) / (x1 - x0)
        xs, ys = np.append(xs, limit), np.append(ys, y_limit)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(
    masks: Any, maps: Any, fpr_limit: float = DEFAULT_FPR_LIMIT, num_thresholds: int | None = None
) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (perfect = 1.0).

    A constant or random map scores about fpr_limit / 2 (0.15 at the default limit), not 0.5.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, num_thresholds)
    return area_to_limit(fpr, pro, fpr_limit) / fpr_limit


def f1_at_threshold(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of ``score >= threshold`` as the defect decision (0.0 where undefined)."""
    y, s = _labels_scores(labels, scores)
    predicted = s >= threshold
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def best_f1_threshold(labels: Any, scores: Any) -> tuple[float, float]:
    """The score threshold with the highest F1 on these labels, and that F1 (an optimistic upper bound:
    the deployed threshold comes from good images only)."""
    y, s = _labels_scores(labels, scores)
    if not y.any():
        raise ValueError("best F1 threshold is undefined: there are no defective images")
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


OPERATING_FPRS = (0.01, 0.001)  # the false-alarm rates a plant asks about


def recall_at_fpr(labels: Any, scores: Any, fpr: float) -> float:
    """Share of defective images caught at the best threshold that flags at most ``fpr`` of the good ones.

    The point on the ROC curve with the highest true-positive rate whose false-positive rate is <= fpr
    (a tie at the threshold counts as flagged). With fewer than 1/fpr good images the only such point
    flags none of them, so 0.1 % on 100 good images reads as "recall with zero false alarms".
    """
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "recall at a false-alarm rate")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"false-alarm rate must be in [0, 1), got {fpr}")
    false_pos, true_pos, _ = roc_curve(y, s, drop_intermediate=False)
    return float(true_pos[false_pos <= fpr + 1e-12].max())


def line_operating_points(good_scores: Any, labels: Any, scores: Any) -> dict[str, dict[str, float]]:
    """The line protocol: for each false-alarm rate in ``OPERATING_FPRS``, the threshold a station sets from
    good images alone (the (1 - rate) quantile of ``good_scores``, held-out good images never used for
    the bank), and what it does on the labelled set: the share of defective images above it (``recall``)
    and of good ones (``false_alarm_rate``, what the line would really see). A score strictly above the
    threshold is flagged, as the daemon does. With fewer than 1/rate good images the quantile is
    interpolated near their maximum.
    """
    g = np.asarray(good_scores, dtype=np.float64).ravel()
    if g.size == 0 or not np.isfinite(g).all():
        raise ValueError("line operating points need at least one finite good-image score")
    y, s = _labels_scores(labels, scores)
    out = {}
    for fpr in OPERATING_FPRS:
        threshold = float(np.quantile(g, 1.0 - fpr))
        flagged = s > threshold
        out[str(fpr)] = {
            "threshold": threshold,
            "recall": float(flagged[y].mean()) if y.any() else float("nan"),
            "false_alarm_rate": float(flagged[~y].mean()) if (~y).any() else float("nan"),
        }
    return out


def _or_none(metric: Any, *args: Any) -> float | None:
    try:
        return metric(*args)
    except ValueError:
        return None


def probe_metrics(labels: Any, scores: Any, masks: Any, maps: Any) -> dict[str, float | None]:
    """The four numbers the training probes decide by, over the whole set only (``evaluate_maps`` adds a
    per-type breakdown a probe never reads, at four times the cost): image AUROC, pixel AUROC, AUPRO and
    the line recall at 1 % false alarms, the threshold from the set's own good images."""
    y, s = _labels_scores(labels, scores)
    line = line_operating_points(s[y == 0], y, s)
    return {
        "image_auroc": image_auroc(y, s),
        "pixel_auroc": _or_none(pixel_auroc, masks, maps),
        "aupro": _or_none(aupro, masks, maps),
        "recall_1": line["0.01"]["recall"],
    }


def evaluate_maps(labels: Any, scores: Any, masks: Any, maps: Any, types: Sequence[str]) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and AUPRO over the whole test set and per defect type.

    A type's metrics use that type's images together with every good image (label 0), as anomalib does.
    Pixel metrics that are undefined (a type whose masks are empty) are None; bad inputs (NaN, shape
    mismatch, a test set without good or defect images) raise ValueError.
    """
    y, s = _labels_scores(labels, scores)
    m, a = _masks_maps(masks, maps)
    t = np.asarray([str(v) for v in types], dtype=object)
    if not (y.size == len(m) == t.size):
        raise ValueError(
            f"evaluate_maps needs one entry per image: {y.size} labels/scores, {len(m)} masks/maps, {t.size} "
            f"types"
        )
    result: dict[str, Any] = {
        "image_auroc": image_auroc(y, s),
        "pixel_auroc": _or_none(pixel_auroc, m, a),
        "aupro": _or_none(aupro, m, a),
        "recall_at_fpr": {str(f): recall_at_fpr(y, s, f) for f in OPERATING_FPRS},
    }
    per_type: dict[str, dict[str, Any]] = {}
    for name in sorted(set(t[y].tolist())):
        of_type = t == name
        subset = ~y | of_type
        per_type[name] = {
            "image_auroc": _or_none(image_auroc, y[subset], s[subset]),
            "pixel_auroc": _or_none(pixel_auroc, m[subset], a[subset]),
            "aupro": _or_none(aupro, m[subset], a[subset]),
            "n_images": int(of_type.sum()),
        }
    result["per_type"] = per_type
    return result
