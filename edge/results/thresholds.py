"""The threshold in force per camera, where it came from, and the daemon's own record of it.

Precedence: the config file (``cameras.threshold``) > the last accepted MQTT ``threshold/set`` > the bundle's
default. An MQTT set is written to the daemon's state file at once (atomically), so it survives a restart
without depending on a retained command on the broker (retained commands are never replayed, see
:mod:`edge.faces.mqtt_json.api`). A recorded value is dropped with a warning when the bundle's model changed
or the value
is outside the range accepted now.

The accepted range comes from the bundle's calibration unless configured: normalised scores put the median
good part at 0 and its 99th percentile at 1, so a threshold below 0 would call most good parts bad.
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
    source: str  # 'config', 'mqtt' or 'manifest'
    set_at: Optional[float] = None  # epoch seconds of the MQTT set


def threshold_range(default: float, lo: Optional[float], hi: Optional[float]) -> Tuple[float, float]:
    """[lo, hi] accepted over MQTT: the configured bounds, else from calibration (see module docstring)."""
    low = lo if lo is not None else min(0.0, default)
    high = hi if hi is not None else max(100.0, 10.0 * abs(default))
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

    def set_from_payload(self, camera: str, payload: bytes, now: Optional[float] = None) -> InForce:
        """Apply a threshold/set payload and record it; :class:`ThresholdError` says why it was refused."""
        if camera in self._fixed:
            raise ThresholdError(
                "this camera's threshold is fixed in the config file (cameras.threshold); remove it there "
                "to allow changes over MQTT"
            )
        value = parse_threshold_payload(payload, *self.range(camera))
        state = InForce(value, "mqtt", time.time() if now is None else now)
        with self._lock:
            self._live[camera] = state
            snapshot = dict(self._live)
        self._save(snapshot)
        return state

    # --- the state file ------------------------------------------------------------------------------------

    def _save(self, live: Dict[str, InForce]) -> None:
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
        try:
            write_json_atomically(self.state_file, doc)
        except OSError as exc:  # the set stays in force for this run; say that it will not survive a restart
            log.error(
                "cannot record the threshold in %s (%s); it is lost at the next restart", self.state_file, exc
            )

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
