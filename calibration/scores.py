"""Raw scores of good images -> score normalisation and a default threshold (pure numpy).

Normalisation (written to the manifest, applied by the daemon to the score and every map pixel alike)::

    normalised = (raw - offset) / scale
    offset = median of the good scores
    scale  = q99 of the good scores - median     (floored, see ``scale_floor``)

so a typical good part scores about 0 and the worst 1 % of good parts about 1 and above, whatever the
model's raw units. Quantiles rather than mean/std because raw scores (the maximum of a smoothed map) are
skewed to the right, and a single odd part in the validation slice should not move the scale much.

Default threshold, on the normalised scale, picked in one of two ways:

- ``false-alarm-rate`` (good images only): the (1 - FAR) quantile of the normalised good scores plus a
  margin. With FAR = 1 % the quantile is 1.0 by construction; the margin (default 0.5, i.e. half the good
  spread) is there because a quantile estimated from tens of parts underestimates the line's real tail,
  and a false alarm stops a line while SCADA can always lower the threshold over MQTT.
- ``best-f1`` (a labelled validation set): the threshold that maximises F1 of ``score >= threshold``,
  placed midway between the two scores it separates. Use a validation set, not the test set you report.

Nothing here goes into the ONNX graph: the threshold and the normalisation can change without a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_FAR = 0.01
DEFAULT_MARGIN = 0.5
SPREAD_QUANTILE = 0.99
# floor of the scale, relative to |median|: a model that
# scores every good part alike still gets a usable scale
REL_SCALE_FLOOR = 1e-3
ABS_SCALE_FLOOR = 1e-8


class ScoreCalibrationError(ValueError):
    """The scores cannot be calibrated (none, NaN/inf, no defects for best-F1)."""


@dataclass(frozen=True)
class Normalization:
    offset: float
    scale: float
    method: str = "good-quantiles"
    n_images: int = 0

    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - self.offset) / self.scale


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    false_alarm_rate: float | None = None
    f1: float | None = None


def _scores(values: object, what: str) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64).ravel()
    if s.size == 0:
        raise ScoreCalibrationError(f"no {what} to calibrate on; at least one image is needed")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ScoreCalibrationError(
            f"{bad} of {s.size} {what} are NaN or infinite; check the model and its input images"
        )
    return s


def scale_floor(median: float) -> float:
    return max(REL_SCALE_FLOOR * abs(median), ABS_SCALE_FLOOR)


def normalization_from_good(raw_good: object, quantile: float = SPREAD_QUANTILE) -> Normalization:
    """offset = median, scale = max(q(quantile) - median, floor) of the raw good scores."""
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0.5, 1), got {quantile}")
    s = _scores(raw_good, "good-image scores")
    median = float(np.median(s))
    spread = float(np.quantile(s, quantile)) - median
    return Normalization(offset=median, scale=max(spread, scale_floor(median)), n_images=int(s.size))


def threshold_from_good(
    normalised_good: object, false_alarm_rate: float = DEFAULT_FAR, margin: float = DEFAULT_MARGIN
) -> Threshold:
    """The (1 - FAR) quantile of normalised good scores plus ``margin`` normalised units."""
    if not 0.0 < false_alarm_rate < 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    s = _scores(normalised_good, "good-image scores")
    value = float(np.quantile(s, 1.0 - false_alarm_rate)) + margin
    return Threshold(value=value, method="false-alarm-rate", false_alarm_rate=false_alarm_rate)


def threshold_best_f1(normalised: object, labels: object) -> Threshold:
    """Threshold maximising F1 of ``score >= threshold`` (label 1 = defect); ties go to the higher
    threshold."""
    s = _scores(normalised, "scores")
    y = np.asarray(labels).ravel()
    if y.shape != s.shape:
        raise ScoreCalibrationError(f"{s.size} scores but {y.size} labels")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ScoreCalibrationError("labels must be 0 (good) or 1 (defect)")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ScoreCalibrationError("best-F1 needs at least one defective image in the labelled set")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order].astype(np.int64)
    tp = np.cumsum(y_desc)  # flagging the top k+1 scores
    k = np.arange(1, s.size + 1)
    f1 = 2.0 * tp / (k + n_pos)
    # only cut where the next score is strictly lower (a threshold cannot split equal scores)
    valid = np.append(s_desc[:-1] > s_desc[1:], True)
    f1 = np.where(valid, f1, -1.0)
    best = int(np.argmax(f1))  # first maximum = fewest flagged = highest threshold
    value = s_desc[best] if best == s.size - 1 else 0.5 * (s_desc[best] + s_desc[best + 1])
    return Threshold(value=float(value), method="best-f1", f1=float(f1[best]))
