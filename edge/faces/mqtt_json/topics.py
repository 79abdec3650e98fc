"""The topic table of the JSON face: every topic below ``<prefix>/``, its QoS, retain flag and payload model.

MQTT topics are a public API: a row here is a promise to SCADA programs (docs/mqtt-api.md documents them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Type

from pydantic import BaseModel

from edge.results.payloads import (
    AvailabilityPayload,
    CameraState,
    Identity,
    ModelSetPayload,
    ModelStatePayload,
    PartPayload,
    ResultPayload,
    StatsPayload,
    StatusPayload,
    ThresholdSetPayload,
    ThresholdStatePayload,
    TriggerPayload,
    iso_utc,
)


@dataclass(frozen=True)
class Topic:
    """One row of the API: ``pattern`` is below ``<prefix>/``; ``{camera}`` and ``{key}`` are filled in."""

    name: str
    pattern: str
    direction: Literal["publish", "subscribe"]
    qos: Optional[int]  # None: from the config (mqtt.qos_result / mqtt.qos_mask)
    retain: bool
    content_type: str
    model: Optional[Type[BaseModel]]  # None: not JSON (images)

    def filled(self, camera: str = "", key: str = "") -> str:
        return self.pattern.format(camera=camera, key=key)

    @property
    def filter(self) -> str:
        """The MQTT subscription filter below the prefix (every camera, every key)."""
        return self.pattern.replace("{camera}", "+").replace("{key}", "+")


TOPICS: Dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("status", "status", "publish", 1, True, "application/json", StatusPayload),
        Topic("part", "part/{key}", "publish", 1, False, "application/json", PartPayload),
        Topic("availability", "{camera}/availability", "publish", 1, False, "application/json",
              AvailabilityPayload),
        Topic("result", "{camera}/result", "publish", None, False, "application/json", ResultPayload),
        Topic("mask", "{camera}/mask/{key}", "publish", None, False, "image/png", None),
        Topic("heatmap", "{camera}/heatmap/{key}", "publish", None, False, "image/jpeg", None),
        Topic("threshold_set", "{camera}/threshold/set", "subscribe", 1, False, "application/json",
              ThresholdSetPayload),
        Topic("threshold_state", "{camera}/threshold/state", "publish", 1, True, "application/json",
              ThresholdStatePayload),
        Topic("stats", "stats", "publish", 0, False, "application/json", StatsPayload),
        Topic("model_set", "{camera}/model/set", "subscribe", 1, False, "application/json", ModelSetPayload),
        Topic("model_state", "{camera}/model/state", "publish", 1, True, "application/json",
              ModelStatePayload),
        Topic("trigger", "{camera}/trigger", "subscribe", 1, False, "application/json", TriggerPayload),
    )
}  # fmt: skip

# The JSON-Schema document of each JSON payload, by topic name (what docs/schemas holds).
SCHEMA_MODELS: Dict[str, Type[BaseModel]] = {
    name: topic.model for name, topic in TOPICS.items() if topic.model is not None
}


def _levels(suffix: str, topic: Topic) -> Optional[List[str]]:
    """The suffix's levels lined up with the pattern's, a region's ``<camera>/<region>`` as one level; None
    when the suffix is not of that row."""
    parts, pattern = suffix.split("/"), topic.pattern.split("/")
    if not all(parts):
        return None
    if pattern[0] == "{camera}" and len(parts) == len(pattern) + 1:  # a region: two levels name the unit
        parts = ["/".join(parts[:2]), *parts[2:]]
    if len(parts) != len(pattern) or any(p != s and not p.startswith("{") for p, s in zip(pattern, parts)):
        return None
    return parts


def topic_name_of(suffix: str) -> Optional[str]:
    """Which row of the table a topic below the prefix belongs to (None when it is not ours)."""
    for topic in TOPICS.values():
        if _levels(suffix, topic) is not None:
            return topic.name
    return None


def camera_of(suffix: str, topic: Topic) -> Optional[str]:
    """The camera level of a concrete topic below the prefix, for a ``{camera}/...`` row (``cam0/label`` for
    a region)."""
    parts = _levels(suffix, topic)
    if parts is None or "{camera}" not in topic.pattern.split("/"):
        return None
    return parts[topic.pattern.split("/").index("{camera}")] or None


def region_filter(topic: Topic) -> str:
    """The subscription filter of a ``{camera}/...`` row for region units (``+/+/threshold/set``)."""
    return topic.filter.replace("+", "+/+", 1) if topic.pattern.startswith("{camera}") else topic.filter


# --- the status document and its Last Will --------------------------------------------------------------


def status_will(identity: Identity, cameras: Sequence[str]) -> Tuple[str, bytes]:
    """The Last Will: the device and every camera offline, so a dead station never looks alive."""
    since = iso_utc(identity.started_at)
    doc = status_doc(identity, "offline", "connection lost", {
        cam: CameraState(state="offline", reason="device connection lost", since=since) for cam in cameras
    }, [])  # fmt: skip
    return TOPICS["status"].filled(), doc.to_bytes()


def status_doc(
    identity: Identity,
    state: str,
    reason: Optional[str],
    cameras: Dict[str, CameraState],
    warnings: List[str],
) -> StatusPayload:
    return StatusPayload(
        state=state,  # type: ignore[arg-type]
        reason=reason,
        device_id=identity.device_id,
        run_id=identity.run_id,
        started_at=iso_utc(identity.started_at),
        version=identity.version,
        model=identity.model,
        cameras=cameras,
        warnings=warnings,
    )
