"""The public MQTT API of a device, schema 2: topics, payload models, JSON Schemas and command routing.

This module is the contract SCADA programs against (README "MQTT API" documents it for people). Everything
that decides what a subscriber sees lives here: which topics exist, their QoS and retain flags, the typed
payloads, and which handler acts on which command topic. :mod:`edge.faces.mqtt_json.transport` only moves bytes;
:mod:`edge.service.daemon` wires the two together.

The rules the contract keeps (each has an end-to-end test):

- After the daemon dies, no retained topic says the device or a camera is online: camera states live inside
  the retained ``status`` document, whose Last Will marks the device and every camera offline. The per-camera
  ``availability`` topic carries state *changes* only and is never retained (and a retained copy left by
  schema 1 is cleared at connect).
- Commands act once: a retained command is never applied (it is cleared and counted); errors are answered
  without retain, so the retained ``threshold/state`` is always the threshold in force.
- Every result names its device, run, camera and per-camera sequence number, so ``(device_id, run_id,
  camera, seq)`` is unique across restarts; masks are paired through a frame key in their topic, which works
  on MQTT 3.1.1 as well as 5.

Regenerate the committed JSON Schemas after changing a model::

    python3 -m edge.faces.mqtt_json.api --write-schemas docs/schemas
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Protocol, Sequence, Tuple, Type, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel

from edge.faces.mqtt_json.transport import Inbound
from edge.results.postprocess import ThresholdError
from edge.results.thresholds import ThresholdBook

log = logging.getLogger("edge.api")

SCHEMA = 2
CameraStateName = Literal["online", "offline", "fault", "ended"]
ThresholdSource = Literal["config", "mqtt", "manifest"]


def iso_utc(epoch_s: float) -> str:
    """``2026-12-01T20:27:36.123Z``: ISO-8601 UTC with milliseconds, as historians parse it."""
    stamp = datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# --- payload models ------------------------------------------------------------------------------------


class _Payload(BaseModel):
    """Every payload: unknown keys are errors, so a test that parses a payload notices a stray field."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class _Versioned(_Payload):
    schema_version: Literal[2] = Field(default=2, alias="schema", description="payload schema version")


class ModelRef(_Payload):
    id: str = Field(description="model name @ first 12 hex digits of the source checkpoint's sha256")
    precision: str = Field(description="fp32, fp16 or int8")
    backend: str = Field(description="inference backend that runs it")
    signer: Optional[str] = Field(
        default=None, description="fingerprint of the key that signed the bundle; null when unsigned"
    )


class RegionDoc(_Payload):
    bbox: Tuple[int, int, int, int] = Field(description="[x, y, w, h] in camera pixels")
    area: int = Field(description="defect pixels, in camera pixels")
    peak: float = Field(description="highest normalised map value in the region")


class ImageRef(_Payload):
    """Where the image of this result was published (absent when none was)."""

    topic: str = Field(description="full topic of the image; its last level is the result's frame_key")
    content_type: str = Field(description="image/png (mask) or image/jpeg (heatmap)")
    qos: int = Field(ge=0, le=2)


class LatencyDoc(_Payload):
    capture_to_infer: float = Field(description="milliseconds from capture to the inference call")
    inference: float = Field(description="milliseconds in the backend (the whole batch)")
    postprocess: float = Field(description="milliseconds for threshold, regions and images")
    total: float = Field(description="milliseconds from capture to the hand-over to MQTT")


class ResultPayload(_Versioned):
    """``<prefix>/<camera>/result``: the verdict on one frame."""

    device_id: str
    run_id: str = Field(description="new at every start of the daemon")
    camera: str
    seq: int = Field(ge=0, description="per camera and run, +1 per result published; a gap is a lost result")
    frame_id: int = Field(ge=0, description="per camera and run, +1 per frame read; gaps are unscored frames")
    frame_key: str = Field(description="'<run_id>-<seq>': the last level of this result's image topics")
    capture_ts: float = Field(description="capture time, seconds since the Unix epoch (UTC)")
    capture_time: str = Field(description="capture time, ISO-8601 UTC with milliseconds")
    score: float = Field(description="normalised score: 0 = median good part, 1 = its 99th percentile")
    raw_score: float = Field(description="the model's raw output")
    threshold: float = Field(description="normalised threshold in force for this frame")
    threshold_source: ThresholdSource
    anomalous: bool = Field(description="score > threshold")
    defect_area: float = Field(description="fraction (0..1) of the inspected area inside kept regions")
    regions: List[RegionDoc]
    regions_total: int = Field(ge=0, description="regions found before the max_regions cut")
    roi: Tuple[int, int, int, int] = Field(description="inspected area [x, y, w, h] in camera pixels")
    frame_size: Tuple[int, int] = Field(description="[width, height] of the camera frame in pixels")
    mask: Optional[ImageRef] = Field(description="the defect mask published for this frame, or null")
    heatmap: Optional[ImageRef] = Field(default=None, description="the heatmap published, or null")
    model: ModelRef
    latency_ms: LatencyDoc


class CameraState(_Payload):
    state: CameraStateName
    reason: str
    since: str = Field(description="ISO-8601 UTC time of the change")


class AvailabilityPayload(_Versioned):
    """``<prefix>/<camera>/availability``: one camera's state change (never retained)."""

    camera: str
    state: CameraStateName
    reason: str
    since: str


class BrokerHealth(_Payload):
    connected: bool
    unacknowledged_s: float = Field(description="seconds the oldest message in flight has waited for its ack")
    in_flight: int
    queued: int


class StatusPayload(_Versioned):
    """``<prefix>/status`` (retained, and the Last Will): the device and every camera, in one document."""

    state: Literal["online", "offline"]
    reason: Optional[str] = Field(default=None, description="why offline: shutdown or connection lost")
    device_id: str
    run_id: str
    started_at: str = Field(description="ISO-8601 UTC start of this run")
    version: str
    model: ModelRef
    cameras: Dict[str, CameraState] = Field(description="offline for every camera when state is offline")
    warnings: List[str] = Field(default_factory=list, description="e.g. 'broker not acknowledging for 12 s'")


class ThresholdSetObject(_Payload):
    threshold: float = Field(description="normalised threshold; must lie in the range threshold/state reports")


class ThresholdSetPayload(RootModel[Union[float, ThresholdSetObject]]):
    """``<prefix>/<camera>/threshold/set`` (sent by SCADA, never retained): a number or ``{"threshold": x}``.

    At most 64 bytes; a plain-text number (``2.5``) is accepted too. The device parses it itself
    (:func:`edge.postprocess.parse_threshold_payload`, which also refuses NaN, infinities and booleans);
    this model exists so the command has a published schema like every other payload.
    """


class ThresholdStatePayload(_Versioned):
    """``<prefix>/<camera>/threshold/state``: retained when it reports the threshold in force; an answer
    with ``error`` is sent without retain and changes nothing."""

    camera: str
    threshold: float
    source: ThresholdSource = Field(
        description="config file, an MQTT set (kept across restarts), or the bundle"
    )
    set_at: Optional[str] = Field(description="ISO-8601 UTC time it was set (null for config and manifest)")
    range: Tuple[float, float] = Field(description="[min, max] accepted over MQTT")
    error: Optional[str] = None


class ModelSetObject(_Payload):
    recipe: Optional[str] = Field(
        default=None, min_length=1, max_length=128, description="recipe name in the bundle store, or a bundle id"
    )
    rollback: bool = Field(default=False, description="true: go back to the recipe active before the last switch")


class ModelSetPayload(RootModel[Union[str, ModelSetObject]]):
    """``<prefix>/<camera>/model/set`` (sent by SCADA, never retained): which recipe the camera runs.

    A plain-text recipe name or bundle id (``B``, ``gtrans@0123456789ab``), a JSON string, or
    ``{"recipe": "B"}`` / ``{"rollback": true}``; at most 256 bytes. The answer is ``model/state``.
    """


class ActiveModelDoc(_Payload):
    recipe: str = Field(description="recipe (bundle folder name) the camera runs")
    model: ModelRef
    since: str = Field(description="ISO-8601 UTC time of the switch (or of the start)")


class LoadingDoc(_Payload):
    recipe: str
    origin: str = Field(description="what asked for it: mqtt, reload (SIGHUP), rollback")
    since: str


class ModelErrorDoc(_Payload):
    recipe: str
    message: str = Field(description="why the recipe was refused; the active model stayed")
    at: str


class ModelStatePayload(_Versioned):
    """``<prefix>/<camera>/model/state`` (retained): the model in force, the one loading, the last refusal."""

    camera: str
    active: ActiveModelDoc
    loading: Optional[LoadingDoc] = Field(description="a recipe being verified, loaded and warmed, or null")
    previous: Optional[str] = Field(description="the recipe a rollback returns to, or null")
    last_error: Optional[ModelErrorDoc] = Field(description="the last refused switch, or null")
    recipes: List[str] = Field(description="recipes in the device's bundle store")
    resident: int = Field(ge=0, description="models in memory on the device now (one more only during a swap)")


class Percentiles(_Payload):
    p50: Optional[float]
    p99: Optional[float]


class MqttStats(_Payload):
    connected: bool
    broker: str = Field(description="host:port")
    connects: int
    disconnects: int
    connect_failures: int
    published: int
    in_flight: int
    queued: int
    queue_max: int = Field(description="bound on in_flight + queued together")
    unacknowledged_s: float
    dropped: Dict[str, int] = Field(description="messages dropped per kind (result, mask, stats, ...)")
    subscribe_failures: int
    handler_errors: int
    network_errors: int = Field(description="unexpected errors in the network thread (each one reconnects)")


class CameraStats(_Payload):
    frames_read: int
    frames_dropped: int = Field(description="frames replaced unread in the camera's one-frame slot")
    reconnects: int
    read_errors: int
    open_failures: int
    black_frames: int = Field(description="black or undecodable frames skipped")
    loops: int = Field(description="times a looping file restarted")
    state: CameraStateName
    reason: str
    last_frame_age_s: Optional[float]
    scored: int = 0
    anomalous: int = 0


class EvidenceStats(_Payload):
    """The evidence store's counters (present when ``evidence.enabled``)."""

    offered: int = Field(description="frames the sampling rules chose to keep")
    written: int
    dropped_queue: int = Field(description="dropped because the writer was behind (scoring never waits)")
    dropped_disk_full: int = Field(description="dropped while the disk was full")
    write_errors: int
    evicted_size: int = Field(description="oldest frames deleted to stay under max_bytes")
    evicted_age: int = Field(description="frames deleted for being older than max_age_s")
    bytes: int
    rows: int
    max_bytes: int
    queued: int
    disk_full: bool


class StatsPayload(_Versioned):
    """``<prefix>/stats`` (QoS 0, every ``mqtt.stats_interval_s``)."""

    device_id: str
    run_id: str
    ts: float
    time: str
    uptime_s: float
    fps: float
    frames_scored: int
    drops: Dict[str, int]
    errors: Dict[str, int]
    commands: Dict[str, int] = Field(description="commands accepted and rejected, per reason")
    queues: Dict[str, int]
    latency_ms: Dict[str, Percentiles]
    mqtt: MqttStats
    cameras: Dict[str, CameraStats]
    warnings: List[str] = Field(default_factory=list)
    evidence: Optional[EvidenceStats] = Field(default=None, description="null when the store is off")


# --- the topic table -------------------------------------------------------------------------------------


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
        Topic("model_state", "{camera}/model/state", "publish", 1, True, "application/json", ModelStatePayload),
    )
}  # fmt: skip

# The JSON-Schema document of each JSON payload, by topic name (what docs/schemas holds).
SCHEMA_MODELS: Dict[str, Type[BaseModel]] = {
    name: topic.model for name, topic in TOPICS.items() if topic.model is not None
}


def topic_name_of(suffix: str) -> Optional[str]:
    """Which row of the table a topic below the prefix belongs to (None when it is not ours)."""
    parts = suffix.split("/")
    for topic in TOPICS.values():
        pattern = topic.pattern.split("/")
        if len(pattern) == len(parts) and all(
            p == s or (p.startswith("{") and s) for p, s in zip(pattern, parts)
        ):
            return topic.name
    return None


def camera_of(suffix: str, topic: Topic) -> Optional[str]:
    """The camera level of a concrete topic below the prefix, for a ``{camera}/...`` row."""
    parts, pattern = suffix.split("/"), topic.pattern.split("/")
    if len(parts) != len(pattern) or "{camera}" not in pattern:
        return None
    return parts[pattern.index("{camera}")] or None


# --- the device side of the API: typed payloads out, commands in ---------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who publishes: fixed for one run of the daemon."""

    device_id: str
    run_id: str
    started_at: float  # epoch seconds
    version: str
    model: ModelRef


def new_run_id() -> str:
    """12 hex digits, new at every start: with the per-camera seq it keys a result across restarts."""
    return uuid.uuid4().hex[:12]


def status_will(identity: Identity, cameras: Sequence[str]) -> Tuple[str, bytes]:
    """The Last Will: the device and every camera offline, so a dead station never looks alive."""
    since = iso_utc(identity.started_at)
    doc = _status(identity, "offline", "connection lost", {
        cam: CameraState(state="offline", reason="device connection lost", since=since) for cam in cameras
    }, [])  # fmt: skip
    return TOPICS["status"].filled(), doc.to_bytes()


def _status(
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


class Transport(Protocol):
    """What the API needs from :class:`edge.faces.mqtt_json.transport.MqttTransport` (a fake can stand in for it)."""

    on_warnings: Optional[Callable[[List[str]], None]]

    def topic(self, suffix: str) -> str: ...

    def subscribe(self, filter_suffix: str, handler: Callable[[Inbound], None]) -> None: ...

    def publish(
        self,
        suffix: str,
        payload: bytes,
        qos: int,
        *,
        kind: str = ...,
        queue: bool = ...,
        content_type: Optional[str] = ...,
        correlation: Optional[bytes] = ...,
        user_properties: Sequence[Tuple[str, str]] = ...,
        retain: bool = ...,
    ) -> bool: ...

    def set_retained(
        self, suffix: str, payload: bytes, qos: int = ..., content_type: Optional[str] = ...
    ) -> None: ...

    def clear_retained(self, suffix: str) -> None: ...


class ApiObserver(Protocol):
    """Another face of the same API (the Sparkplug B node): told every result, camera change and threshold
    change after the JSON face has published it. Called from the thread that made the change; must not block.
    """

    def result(self, doc: ResultPayload) -> None: ...

    def camera_state(self, camera: str, state: CameraState) -> None: ...

    def threshold(self, camera: str) -> None: ...


class DeviceApi:
    """Publishes the typed payloads of one device and acts on its commands (the MQTT face of the daemon).

    Thread use: camera states arrive from grabber threads, results from the postprocess thread, commands
    from the network thread; one small lock guards the camera table and the counters.
    """

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        cameras: Sequence[str],
        thresholds: ThresholdBook,
        *,
        qos_result: int = 1,
        qos_mask: int = 1,
        queue_masks: bool = True,
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.thresholds = thresholds
        self.qos_result = qos_result
        self.qos_mask = qos_mask
        self.queue_masks = queue_masks
        self._lock = threading.Lock()
        since = iso_utc(identity.started_at)
        self._cameras: Dict[str, CameraState] = {
            cam: CameraState(state="offline", reason="starting", since=since) for cam in cameras
        }
        self._seq: Dict[str, int] = dict.fromkeys(cameras, 0)
        self._warnings: List[str] = []
        self._clearing: Dict[str, int] = {}  # command topics we cleared; the broker echoes each clear to us
        self.commands: Dict[str, int] = {
            "accepted": 0,
            "rejected_retained": 0,
            "rejected_invalid": 0,
            "rejected_unknown_camera": 0,
        }
        # model/set goes to the changeover (edge.service.changeover); it answers on model/state. None: refused.
        self.on_model_set: Optional[Callable[[str, bytes], Optional[str]]] = None
        self.observers: List[ApiObserver] = []
        self.observer_errors = 0
        transport.on_warnings = self._on_warnings
        transport.subscribe(TOPICS["threshold_set"].filter, self._on_threshold_set)
        transport.subscribe(TOPICS["model_set"].filter, self._on_model_set)

    # --- retained state ------------------------------------------------------------------------------------

    def announce(self) -> None:
        """Before connecting: status online, each camera's threshold in force; clear schema 1's retained
        availability, which would otherwise say ``online`` for ever after a crash."""
        self._publish_status()
        for cam in self._cameras:
            self.transport.set_retained(TOPICS["availability"].filled(cam), b"")
            self._publish_threshold_state(cam)

    def final_retained(self, reason: str = "shutdown") -> List[Tuple[str, bytes]]:
        """The retained documents of a clean stop: status offline with every camera offline."""
        since = iso_utc(time.time())
        with self._lock:
            cams = {
                cam: (
                    s if s.state == "ended" else CameraState(state="offline", reason="stopped", since=since)
                )
                for cam, s in self._cameras.items()
            }
            doc = _status(self.identity, "offline", reason, cams, [])
        return [(TOPICS["status"].filled(), doc.to_bytes())]

    def _publish_status(self) -> None:
        with self._lock:
            doc = _status(self.identity, "online", None, dict(self._cameras), list(self._warnings))
        self.transport.set_retained(
            TOPICS["status"].filled(), doc.to_bytes(), content_type="application/json"
        )

    def camera_state(self, camera: str, state: str, reason: str) -> None:
        """A camera changed state: one availability event, and the retained status updated."""
        since = iso_utc(time.time())
        doc = CameraState(state=state, reason=reason, since=since)  # type: ignore[arg-type]
        with self._lock:
            self._cameras[camera] = doc
        event = AvailabilityPayload(camera=camera, state=state, reason=reason, since=since)  # type: ignore[arg-type]
        self.transport.publish(
            TOPICS["availability"].filled(camera), event.to_bytes(), 1, kind="availability",
            content_type="application/json",
        )  # fmt: skip
        self._publish_status()
        self._notify(lambda o: o.camera_state(camera, doc))

    def cameras_now(self) -> Dict[str, CameraState]:
        with self._lock:
            return dict(self._cameras)

    def _notify(self, call: Callable[[ApiObserver], None]) -> None:
        """Tell every other face; a failing one is logged and counted and never stops the JSON face."""
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                with self._lock:
                    self.observer_errors += 1
                log.exception("%s failed to take an update", type(observer).__name__)

    def _on_warnings(self, warnings: List[str]) -> None:
        with self._lock:
            self._warnings = list(warnings)
        self._publish_status()

    def warnings(self) -> List[str]:
        with self._lock:
            return list(self._warnings)

    # --- results -------------------------------------------------------------------------------------------

    def publish_result(
        self, camera: str, images: Dict[str, bytes], model: Optional[ModelRef] = None, **fields: Any
    ) -> ResultPayload:
        """Images first (each under the frame key), then the result that names them.

        ``fields`` are the frame's own ResultPayload fields (score, regions, latency_ms, ...); identity,
        sequence, key and image references are added here. ``model``: the model that scored the frame
        (default: the device's), which after a changeover may differ from camera to camera.
        """
        with self._lock:
            seq = self._seq.get(camera, 0)
            self._seq[camera] = seq + 1
        key = f"{self.identity.run_id}-{seq}"
        refs: Dict[str, ImageRef] = {}
        for kind, data in images.items():
            topic = TOPICS[kind]
            suffix = topic.filled(camera, key)
            sent = self.transport.publish(
                suffix, data, self.qos_mask, kind=kind, queue=self.queue_masks,
                content_type=topic.content_type, correlation=key.encode(),
                user_properties=(("frame_key", key), ("camera", camera)),
            )  # fmt: skip
            if sent:
                refs[kind] = ImageRef(
                    topic=self.transport.topic(suffix), content_type=topic.content_type, qos=self.qos_mask
                )
        doc = ResultPayload(
            device_id=self.identity.device_id,
            run_id=self.identity.run_id,
            camera=camera,
            seq=seq,
            frame_key=key,
            mask=refs.get("mask"),
            heatmap=refs.get("heatmap"),
            model=model or self.identity.model,
            **fields,
        )
        self.transport.publish(
            TOPICS["result"].filled(camera), doc.to_bytes(), self.qos_result, kind="result",
            content_type="application/json", correlation=key.encode(),
        )  # fmt: skip
        self._notify(lambda o: o.result(doc))
        return doc

    def publish_stats(self, doc: StatsPayload) -> None:
        self.transport.publish(
            TOPICS["stats"].filled(), doc.to_bytes(), 0, kind="stats", content_type="application/json"
        )

    # --- commands ------------------------------------------------------------------------------------------

    def _count_command(self, outcome: str) -> None:
        with self._lock:
            self.commands[outcome] = self.commands.get(outcome, 0) + 1

    def command_counts(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.commands)

    def _on_threshold_set(self, msg: Inbound) -> None:
        if not msg.payload and self._take_clear_echo(msg.suffix):
            return  # the broker echoing our own clear of a retained command: nothing was asked
        camera = camera_of(msg.suffix, TOPICS["threshold_set"])
        if msg.retain:
            # A retained command is an old one: acting on it at every connect overrode later operator sets.
            self._count_command("rejected_retained")
            log.warning(
                "ignored a retained %s (commands act once; send them without retain); clearing it", msg.topic
            )
            with self._lock:
                self._clearing[msg.suffix] = self._clearing.get(msg.suffix, 0) + 1
            self.transport.clear_retained(msg.suffix)
            return
        if camera is None or camera not in self._cameras:
            self._count_command("rejected_unknown_camera")
            log.warning("threshold/set for unknown camera %r ignored", camera)
            return
        self.set_threshold(camera, msg.payload)

    def set_threshold(self, camera: str, payload: bytes, origin: str = "MQTT") -> Optional[str]:
        """The threshold command of every face: validate, record, answer on threshold/state, tell the other
        faces. Returns None when accepted, else why it was refused (nothing changed then)."""
        try:
            self.thresholds.set_from_payload(camera, payload)
        except ThresholdError as exc:
            self._count_command("rejected_invalid")
            log.warning("threshold set for %s (%s) refused: %s", camera, origin, exc)
            self._publish_threshold_state(camera, error=str(exc))
            return str(exc)
        self._count_command("accepted")
        log.info("threshold for %s is now %s (from %s)", camera, self.thresholds.get(camera)[0], origin)
        self._publish_threshold_state(camera)
        self._notify(lambda o: o.threshold(camera))
        return None

    def _on_model_set(self, msg: Inbound) -> None:
        """Commands act once, as for threshold/set; the changeover answers on the retained model/state."""
        if not msg.payload and self._take_clear_echo(msg.suffix):
            return
        camera = camera_of(msg.suffix, TOPICS["model_set"])
        if msg.retain:
            self._count_command("rejected_retained")
            log.warning("ignored a retained %s (commands act once); clearing it", msg.topic)
            with self._lock:
                self._clearing[msg.suffix] = self._clearing.get(msg.suffix, 0) + 1
            self.transport.clear_retained(msg.suffix)
            return
        if camera is None or camera not in self._cameras or self.on_model_set is None:
            self._count_command("rejected_unknown_camera")
            log.warning("model/set for unknown camera %r ignored", camera)
            return
        error = self.on_model_set(camera, msg.payload)
        self._count_command("accepted" if error is None else "rejected_invalid")

    def publish_model_state(self, doc: ModelStatePayload) -> None:
        self.transport.set_retained(
            TOPICS["model_state"].filled(doc.camera), doc.to_bytes(), content_type="application/json"
        )

    def set_model(self, model: ModelRef) -> None:
        """The device's model changed (every camera now runs ``model``): status says so."""
        with self._lock:
            if self.identity.model == model:
                return
            self.identity = replace(self.identity, model=model)
        self._publish_status()

    def _take_clear_echo(self, suffix: str) -> bool:
        with self._lock:
            pending = self._clearing.get(suffix, 0)
            if pending:
                self._clearing[suffix] = pending - 1
            return pending > 0

    def threshold_state(self, camera: str, error: Optional[str] = None) -> ThresholdStatePayload:
        state = self.thresholds.in_force(camera)
        return ThresholdStatePayload(
            camera=camera,
            threshold=state.value,
            source=state.source,  # type: ignore[arg-type]
            set_at=None if state.set_at is None else iso_utc(state.set_at),
            range=self.thresholds.range(camera),
            error=error,
        )

    def threshold_changed(self, camera: str) -> None:
        """The threshold in force changed outside a command (a changeover to another bundle)."""
        self._publish_threshold_state(camera)

    def _publish_threshold_state(self, camera: str, error: Optional[str] = None) -> None:
        """The state in force is retained; an error answer is not, so it never outlives the moment."""
        doc = self.threshold_state(camera, error)
        suffix = TOPICS["threshold_state"].filled(camera)
        if error is None:
            self.transport.set_retained(suffix, doc.to_bytes(), content_type="application/json")
        else:
            self.transport.publish(
                suffix, doc.to_bytes(), 1, kind="threshold_state", content_type="application/json"
            )


# --- JSON Schemas ----------------------------------------------------------------------------------------


def json_schema(name: str) -> Dict[str, object]:
    """The JSON Schema of one payload, as committed under docs/schemas/."""
    model = SCHEMA_MODELS[name]
    doc = model.model_json_schema(by_alias=True, mode="serialization")
    doc["$id"] = f"https://edge-anomaly.invalid/schemas/{name}.schema.json"
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return doc


def schema_text(name: str) -> str:
    return json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMA_MODELS:
        path = folder / f"{name}.schema.json"
        path.write_text(schema_text(name), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edge.faces.mqtt_json.api", description=__doc__.split("\n")[0])
    parser.add_argument("--write-schemas", type=Path, metavar="DIR", required=True)
    args = parser.parse_args(argv)
    for path in write_schemas(args.write_schemas):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
