"""The threshold in force per camera, where it came from, and the daemon's own record of it.

Precedence: the config file (``cameras.threshold``) > the last accepted MQTT ``threshold/set`` > the bundle's
default. An MQTT set is written to the daemon's state file at once (atomically), so it survives a restart
without depending on a retained command on the broker (retained commands are never replayed, see
:mod:`edge.faces.mqtt_json.api`). A recorded value is dropped with a warning when the bundle's model changed
or the value
is outside the range accepted now.

The accepted range comes from the bundle's calibration unless configured (``postprocess.threshold_min`` /
``threshold_max`` widen or narrow it): normalised scores put the median held-out good part at 0 and its 99th
percentile at 1. A threshold must still separate something, so the range runs from half way between those
two (a threshold nearer the median calls a large share of good parts bad; 5e-324 calls half of them bad)
to a bound a few good spreads above the bundle's own threshold, which the calibration put above the good
parts (a threshold far above it lets every defect through: 100 where the bundle says 11 is inspection
switched off). A set that cannot be recorded in the state file is refused and not applied.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from edge.commands import ThresholdError, parse_threshold_payload
from edge.util.atomic import write_json_atomically

log = logging.getLogger("edge.thresholds")

STATE_FORMAT = 1
DEFAULT_STATE_DIR = Path("/var/lib/edge-anomaly")


@dataclass(frozen=True)
class InForce:
    """One camera's threshold and its provenance."""

    value: float
    source: str  # 'config', 'mqtt', 'web' (the live-view page) or 'manifest'
    set_at: Optional[float] = None  # epoch seconds of the MQTT set


RANGE_LOW = 0.5  # normalised: half way from the median good part (0) to the 99th percentile (1)
RANGE_HIGH_FACTOR = 3.0  # the highest threshold: this many times the bundle's own ...
RANGE_HIGH_SPREADS = 5.0  # ... or this many good spreads above it, whichever is more


def threshold_range(default: float, lo: Optional[float], hi: Optional[float]) -> Tuple[float, float]:
    """[lo, hi] accepted over MQTT: the configured bounds, else from calibration (see module docstring)."""
    low = lo if lo is not None else min(RANGE_LOW, default)
    high = hi if hi is not None else max(RANGE_HIGH_FACTOR * default, default + RANGE_HIGH_SPREADS)
    if low >= high:
        raise ValueError(f"threshold range [{low:g}, {high:g}] is empty; check postprocess.threshold_min/max")
    return low, high


def resolve_state_dir(configured: Optional[Path]) -> Path:
    """The configured folder, else systemd's StateDirectory, else /var/lib/edge-anomaly or the user's own."""
    if configured is not None:
        return Path(configured)
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    probe = DEFAULT_STATE_DIR if DEFAULT_STATE_DIR.exists() else DEFAULT_STATE_DIR.parent
    if os.access(probe, os.W_OK):
        return DEFAULT_STATE_DIR
    return Path.home() / ".local" / "state" / "edge-anomaly"


class ThresholdBook:
    """Thresholds per camera. Written from the MQTT thread (threshold/set), read per frame by postprocess."""

    def __init__(
        self,
        default: float,
        fixed: Dict[str, Optional[float]],
        lo: float,
        hi: float,
        state_file: Optional[Path] = None,
        model_id: str = "",
        models: Optional[Dict[str, str]] = None,
        bounds: Tuple[Optional[float], Optional[float]] = (None, None),
    ) -> None:
        self.default = float(default)
        self.lo, self.hi = float(lo), float(hi)  # the range of ``default``'s bundle
        self._bounds = bounds  # postprocess.threshold_min/max as configured (None: from each bundle)
        self.state_file = state_file
        self.model_id = model_id
        # The model each camera runs, where it is not ``model_id``
        # (recipes, edge.service.changeover): a recorded
        # threshold applies only to the model it was set for.
        self._models: Dict[str, str] = dict(models or {})
        self._fixed = {cam: v for cam, v in fixed.items() if v is not None}
        self._live: Dict[str, InForce] = {}
        self._defaults: Dict[str, float] = {}  # per camera, after a changeover to another bundle
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer of the state file at a time
        if state_file is not None:
            self._live = self._load(state_file)

    # --- reading ------------------------------------------------------------------------------------------

    def get(self, camera: str) -> Tuple[float, str]:
        """(threshold, source): the hot path, once per frame."""
        state = self.in_force(camera)
        return state.value, state.source

    def in_force(self, camera: str) -> InForce:
        if camera in self._fixed:
            return InForce(self._fixed[camera], "config")
        with self._lock:
            live = self._live.get(camera)
            default = self._defaults.get(camera, self.default)
        return live if live is not None else InForce(default, "manifest")

    def range(self, camera: str) -> Tuple[float, float]:
        """[lo, hi] accepted for ``camera``: from the calibration of the bundle it runs, unless configured."""
        with self._lock:
            default = self._defaults.get(camera)
        if default is None:
            return self.lo, self.hi
        try:
            return threshold_range(default, *self._bounds)
        except ValueError:  # configured bounds that fit the first bundle but not this one: keep those
            return self.lo, self.hi

    # --- changeover (edge.service.changeover) ---------------------------------------------------------------

    def model_changed(self, camera: str, default: float, model_id: str, keep_live: bool = False) -> None:
        """The camera now runs another bundle: its default is that bundle's, and a threshold set over MQTT
        for the previous model no longer applies (it was chosen for that model's scores)."""
        with self._lock:
            self._defaults[camera] = float(default)
            self._models[camera] = model_id
        lo, hi = self.range(camera)
        with self._lock:
            live = self._live.get(camera)
            out_of_range = live is not None and not lo <= live.value <= hi
            dropped = self._live.pop(camera, None) if (not keep_live or out_of_range) else None
            snapshot = dict(self._live)
        if dropped is not None:
            why = f"outside [{lo:g}, {hi:g}]" if out_of_range else "set for the previous model"
            log.warning(
                "threshold %g of %s was %s; using the bundle's default %g",
                dropped.value,
                camera,
                why,
                default,
            )
            self._save(snapshot)

    def set_fixed(self, fixed: Dict[str, Optional[float]]) -> None:
        """New ``cameras.threshold`` values from a reloaded config."""
        self._fixed = {cam: v for cam, v in fixed.items() if v is not None}

    # --- the MQTT command -----------------------------------------------------------------------------------

    def set_from_payload(
        self, camera: str, payload: bytes, now: Optional[float] = None, source: str = "mqtt"
    ) -> InForce:
        """Apply a threshold/set payload and record it; :class:`ThresholdError` says why it was refused.
        ``source``: the face it came from (``mqtt``, or ``web`` for the live-view page)."""
        if camera in self._fixed:
            raise ThresholdError(
                "this camera's threshold is fixed in the config file (cameras.threshold); remove it there "
                "to allow changes over MQTT"
            )
        value = parse_threshold_payload(payload, *self.range(camera))
        state = InForce(value, source, time.time() if now is None else now)
        # Recorded first, applied once recorded: a set that would not survive a restart is refused, not half
        # done. The frame path's lock is not held while the file is written.
        with self._write_lock:
            with self._lock:
                snapshot = dict(self._live, **{camera: state})
            try:
                self._write(snapshot)
            except OSError as exc:
                raise ThresholdError(
                    f"cannot record the threshold in {self.state_file} ({exc.strerror or exc}); not applied"
                ) from exc
            with self._lock:
                self._live[camera] = state
        return state

    # --- the state file ------------------------------------------------------------------------------------

    def _save(self, live: Dict[str, InForce]) -> None:
        try:
            with self._write_lock:
                self._write(live)
        except OSError as exc:  # the set stays in force for this run; say that it will not survive a restart
            log.error(
                "cannot record the threshold in %s (%s); it is lost at the next restart", self.state_file, exc
            )

    def _write(self, live: Dict[str, InForce]) -> None:
        """The state file with ``live``; OSError when it cannot be written (full disk, read-only)."""
        if self.state_file is None:
            return
        doc = {
            "format": STATE_FORMAT,
            "model": self.model_id,
            "thresholds": {
                cam: {"threshold": s.value, "set_at": s.set_at, "model": self._models.get(cam, self.model_id)}
                for cam, s in live.items()
            },
        }
        write_json_atomically(self.state_file, doc)

    def _load(self, path: Path) -> Dict[str, InForce]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("ignoring the state file %s: %s", path, exc)
            return {}
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            log.error("ignoring the state file %s: not format %d", path, STATE_FORMAT)
            return {}
        if doc.get("model") != self.model_id and not self._models:
            log.warning(
                "thresholds in %s were set for model %s, not %s; using the bundle's default",
                path,
                doc.get("model"),
                self.model_id,
            )
            return {}
        live: Dict[str, InForce] = {}
        for cam, entry in (doc.get("thresholds") or {}).items():
            try:
                value = float(entry["threshold"])
                set_at = entry.get("set_at")
                set_at = None if set_at is None else float(set_at)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.error("ignoring the recorded threshold of %s in %s: malformed", cam, path)
                continue
            recorded, running = entry.get("model", doc.get("model")), self._models.get(cam, self.model_id)
            if recorded != running:
                log.warning(
                    "ignoring the recorded threshold of %s: set for model %s, not %s", cam, recorded, running
                )
                continue
            # a camera on another recipe is checked against its bundle's range once that is known
            # (model_changed with keep_live); the others against this bundle's
            if cam not in self._models and not self.lo <= value <= self.hi:
                log.warning(
                    "ignoring the recorded threshold %g of %s: outside [%g, %g]", value, cam, self.lo, self.hi
                )
                continue
            live[cam] = InForce(value, "mqtt", set_at)
            log.info("threshold of %s is %g, as set over MQTT before the restart", cam, value)
        return live
