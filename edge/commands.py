"""Every command a face receives, parsed and validated in one place; the stage that owns the state applies it.

Commands today: ``threshold/set`` (JSON face), ``model/set`` (JSON face), ``trigger`` (JSON face: a part in
front of a camera) and the Sparkplug ``DCMD`` threshold metric.
Each face hands the raw command to :class:`CommandDesk` (one retained-command guard, one set of
outcome counters) and to one parser below (one validation path, one error text); the threshold book
(:mod:`edge.results.thresholds`) and the changeover (:mod:`edge.service.changeover`) apply what was parsed.

May import: the standard library only (it sits below every stage, so every face can use it).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from typing import Callable, Dict, Optional, Tuple

log = logging.getLogger("edge.api")

OUTCOMES = ("accepted", "rejected_retained", "rejected_invalid", "rejected_unknown_camera")
SET_PAYLOAD_MAX = 256  # model/set
LOG_EVERY_S = 10.0  # a refused command of one topic is logged at most this often


class CommandDesk:
    """The one retained-command guard and the command counters of the device (every face reports here).

    A retained command is an old one: acting on it at every connect overrode later operator sets. It is
    refused, counted and cleared (``clear``), and the broker's echo of that clear is recognised and dropped.
    The faces subscribe with MQTT 5 retain-as-published, so a retained command published while the device
    is connected is seen as retained too, not only the copies the broker delivers at subscribe time.
    Refusals are logged at most once per ``LOG_EVERY_S`` per topic (a storm is counted, not journalled).
    Thread use: network threads of every face; one small lock.
    """

    def __init__(self, clear: Optional[Callable[[str], None]] = None) -> None:
        self._clear = clear
        self._lock = threading.Lock()
        self._clearing: Dict[str, int] = {}  # command topics we cleared; the broker echoes each clear to us
        self._logged: Dict[str, Tuple[float, int]] = {}  # topic -> (last refusal logged, refusals since)
        self.counts: Dict[str, int] = dict.fromkeys(OUTCOMES, 0)

    def admit(self, suffix: str, topic: str, payload: bytes, retain: bool) -> bool:
        """False when the command must not act: our own clear echoed back, or a retained (old) command."""
        if not payload and self._take_clear_echo(suffix):
            return False  # the broker echoing our own clear of a retained command: nothing was asked
        if not retain:
            return True
        self.count("rejected_retained")
        skipped = self._quiet(topic)
        if skipped is not None:
            log.warning(
                "ignored a retained %s (commands act once; send them without retain); clearing it%s", topic,
                f" ({skipped} more not logged)" if skipped else "",
            )  # fmt: skip
        if self._clear is not None:
            with self._lock:
                self._clearing[suffix] = self._clearing.get(suffix, 0) + 1
            self._clear(suffix)
        return False

    def count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _quiet(self, key: str) -> Optional[int]:
        """None: do not log now; else how many refusals of ``key`` were left out of the log since the last."""
        now = time.monotonic()
        with self._lock:
            last, skipped = self._logged.get(key, (-LOG_EVERY_S, 0))
            if now - last < LOG_EVERY_S:
                self._logged[key] = (last, skipped + 1)
                return None
            self._logged[key] = (now, 0)
            return skipped

    def _take_clear_echo(self, suffix: str) -> bool:
        with self._lock:
            pending = self._clearing.get(suffix, 0)
            if pending:
                self._clearing[suffix] = pending - 1
            return pending > 0


# --- threshold/set (and the Sparkplug DCMD threshold) ------------------------------------------------------

MAX_THRESHOLD_PAYLOAD = 64
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class ThresholdError(ValueError):
    """A threshold/set payload that cannot be used; the message goes back on threshold/state."""


def _reject_constant(name: str) -> float:
    raise ThresholdError(f"{name} is not a usable threshold")


def parse_threshold_payload(payload: bytes, lo: float, hi: float) -> float:
    """A ``threshold/set`` payload -> the new threshold, or :class:`ThresholdError` saying why not.

    Accepted: a plain number (``1.5``, ``-2e-1``) or JSON ``1.5`` / ``{"threshold": 1.5}``; at most 64 bytes,
    finite, within [lo, hi]. Anything else (NaN, Infinity, booleans, extra JSON keys, text) is refused.
    """
    if len(payload) > MAX_THRESHOLD_PAYLOAD:
        raise ThresholdError(f"payload is {len(payload)} bytes; at most {MAX_THRESHOLD_PAYLOAD} are accepted")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ThresholdError("payload is not UTF-8 text") from exc
    value = float(text) if _PLAIN_NUMBER.match(text) else _threshold_from_json(text)
    if not math.isfinite(value):
        raise ThresholdError(f"threshold {text!r} is not a finite number")
    if not lo <= value <= hi:
        raise ThresholdError(f"threshold {value:g} is outside the allowed range [{lo:g}, {hi:g}]")
    return value


def _threshold_from_json(text: str) -> float:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ThresholdError:
        raise
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ThresholdError('payload is neither a number nor JSON {"threshold": <number>}') from exc
    if isinstance(data, dict):
        if set(data) != {"threshold"}:
            raise ThresholdError('JSON payload must be exactly {"threshold": <number>}')
        data = data["threshold"]
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise ThresholdError(f"threshold must be a number, got {type(data).__name__}")
    try:
        return float(data)
    except OverflowError as exc:  # a huge JSON integer
        raise ThresholdError("threshold is too large") from exc


def threshold_payload_of(value: Optional[float]) -> bytes:
    """A Sparkplug DCMD threshold value as the bytes of a ``threshold/set``, so both take one path;
    :class:`ThresholdError` when the metric held no number."""
    if value is None:
        raise ThresholdError("not a number")
    return repr(value).encode()


# --- model/set -------------------------------------------------------------------------------------------


def _text_or_json(payload: bytes, what: str, max_bytes: int) -> object:
    """A name-like command payload: plain UTF-8 text, or JSON when it starts like JSON ('{' or '"').

    ValueError names the command, so the reply says which payload was wrong and how."""
    if len(payload) > max_bytes:
        raise ValueError(f"{what} payload is {len(payload)} bytes; at most {max_bytes}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{what} payload is not UTF-8 text") from None
    if not text.startswith(("{", '"')):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} payload looks like JSON but does not parse: {exc}") from None


def parse_model_set(payload: bytes) -> Tuple[Optional[str], bool]:
    """(recipe or bundle id, rollback) from a model/set payload; ValueError says what is accepted."""
    doc = _text_or_json(payload, "model/set", SET_PAYLOAD_MAX)
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"recipe", "rollback"})
        if unknown:
            raise ValueError(f"model/set: unknown key(s) {unknown}; use 'recipe' or 'rollback'")
        if doc.get("rollback") is True and doc.get("recipe") is None:
            return None, True
        doc = doc.get("recipe")
    if not isinstance(doc, str) or not doc or any(ch in doc for ch in "/\\\0") or doc.startswith("."):
        raise ValueError(
            'model/set expects a recipe name or bundle id (plain text or {"recipe": "B"}) or {"rollback": '
            "true}"
        )
    return doc, False


# --- trigger ---------------------------------------------------------------------------------------------

TRIGGER_PAYLOAD_MAX = 128
_PART_ID = re.compile(r"^[^\x00-\x1f\x7f/+#]{1,64}$")


def parse_trigger(payload: bytes) -> str:
    """The part id of a ``trigger`` payload; ValueError says what is accepted.

    Accepted: plain text ``P-0042``, a JSON string ``"P-0042"`` or ``{"part_id": "P-0042"}``; at most 128
    bytes; the id is 1-64 printable characters without '/', '+' or '#' (it may become a topic level)."""
    doc = _text_or_json(payload, "trigger", TRIGGER_PAYLOAD_MAX)
    if isinstance(doc, dict):
        if set(doc) != {"part_id"}:
            raise ValueError('trigger JSON must be exactly {"part_id": "<id>"}')
        doc = doc["part_id"]
    if not isinstance(doc, str) or not _PART_ID.match(doc):
        raise ValueError(
            'trigger expects a part id (plain text or {"part_id": "P-0042"}): 1-64 printable characters '
            "without '/', '+' or '#'"
        )
    return doc
