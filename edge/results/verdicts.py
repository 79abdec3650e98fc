"""The four verdicts of the line: ``ok`` / ``warn`` / ``ng`` per camera result, ``no_result`` when none came,
and how the verdicts of several cameras combine into one part's.

Pure functions; the part tracker (:mod:`edge.results.parts`) and the publish thread use them.
"""

from __future__ import annotations

from typing import Iterable, Literal

VerdictName = Literal["ok", "warn", "ng", "no_result"]
ActionName = Literal["reject", "pass"]


def camera_verdict(score: float, threshold: float, anomalous: bool, warn_band: float) -> VerdictName:
    """``ng`` when the result is anomalous (score > threshold, the postprocess's own rule, so the verdict and
    ``anomalous`` never disagree); ``warn`` when the score lies within ``warn_band`` x |threshold| below the
    threshold; else ``ok``. ``warn_band`` 0 turns warn off."""
    if anomalous:
        return "ng"
    if warn_band > 0.0 and score >= threshold - warn_band * abs(threshold):
        return "warn"
    return "ok"


def combined_verdict(verdicts: Iterable[VerdictName]) -> VerdictName:
    """One part from its cameras: NG if any is NG, else no_result if any is missing, else warn if any warns.

    NG wins over a missing camera: a part one camera already saw as defective is rejected whatever the
    other says, and the reason is known."""
    found = set(verdicts)
    for verdict in ("ng", "no_result", "warn"):
        if verdict in found:
            return verdict
    return "ok"


def action_of(verdict: VerdictName, default_action: ActionName) -> ActionName:
    """What the reject gate does: ok and warn pass, ng rejects, no_result takes the configured default."""
    if verdict in ("ok", "warn"):
        return "pass"
    if verdict == "ng":
        return "reject"
    return default_action
