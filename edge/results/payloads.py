"""The typed documents of a device (schema 2): results, states, stats, commands, as every face publishes them.

The JSON face sends them as they are (:mod:`edge.faces.mqtt_json`), the Sparkplug face turns them into
metrics (:mod:`edge.faces.sparkplug`); ``docs/schemas`` holds their JSON Schemas
(``python3 -m edge.faces.mqtt_json.schema --write-schemas docs/schemas``). Every payload refuses unknown keys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel

from edge.results.payload_numbers import payload_json

SCHEMA = 2
CameraStateName = Literal["online", "offline", "fault", "ended"]
ThresholdSource = Literal["config", "mqtt", "web", "manifest"]
CameraVerdict = Literal["ok", "warn", "ng"]
PartVerdictName = Literal["ok", "warn", "ng", "no_result"]


def iso_utc(epoch_s: float) -> str:
    """``2026-12-01T20:27:36.123Z``: ISO-8601 UTC with milliseconds, as historians parse it."""
    stamp = datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# --- payload models ------------------------------------------------------------------------------------


class _Payload(BaseModel):
    """Every payload: unknown keys are errors, so a test that parses a payload notices a stray field."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    def to_bytes(self) -> bytes:
        return payload_json(
            self
        )  # the one place payload floats are rounded (edge/results/payload_numbers.py)


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


class TileDoc(_Payload):
    index: int = Field(ge=0, description="the tile's place in the grid, row-major from the top left")
    bbox: Tuple[int, int, int, int] = Field(description="[x, y, w, h] of the tile in camera pixels")
    peak: float = Field(description="highest normalised map value inside the tile")


class TilesDoc(_Payload):
    """A tiled bundle's grid over the ROI and the tiles that fired (docs/tiling.md)."""

    grid: Tuple[int, int] = Field(description="[rows, columns] of tiles over the ROI")
    size: int = Field(ge=1, description="tile side in scaled pixels (the model input)")
    overlap: int = Field(ge=0, description="overlap of neighbouring tiles in scaled pixels")
    scale: float = Field(gt=0, description="scaled pixels per camera pixel (1: the camera's own pixels)")
    fired: List[TileDoc] = Field(description="tiles whose part of the stitched map exceeds the threshold")


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
    verdict: Optional[CameraVerdict] = Field(
        default=None,
        description="ng when anomalous, warn when the score lies in the camera's warn band under the "
        "threshold, else ok",
    )
    defect_area: float = Field(description="fraction (0..1) of the inspected area inside kept regions")
    regions: List[RegionDoc]
    regions_total: int = Field(ge=0, description="regions found before the max_regions cut")
    roi: Tuple[int, int, int, int] = Field(description="inspected area [x, y, w, h] in camera pixels")
    frame_size: Tuple[int, int] = Field(description="[width, height] of the camera frame in pixels")
    mask: Optional[ImageRef] = Field(description="the defect mask published for this frame, or null")
    heatmap: Optional[ImageRef] = Field(default=None, description="the heatmap published, or null")
    model: ModelRef
    latency_ms: LatencyDoc
    tiles: Optional[TilesDoc] = Field(
        default=None,
        description="tiled bundles only (absent otherwise): the tile grid and the tiles that fired",
    )

    def to_bytes(self) -> bytes:
        """A whole-image bundle's result has no ``tiles`` key at all: the bytes it always had."""
        return payload_json(self, exclude=None if self.tiles is not None else {"tiles"})


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
    threshold: float = Field(
        description="normalised threshold; must lie in the range threshold/state reports"
    )


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
        description="config file, a set over MQTT or from the web page (kept across restarts), or the bundle"
    )
    set_at: Optional[str] = Field(description="ISO-8601 UTC time it was set (null for config and manifest)")
    range: Tuple[float, float] = Field(description="[min, max] accepted over MQTT")
    error: Optional[str] = None


class ModelSetObject(_Payload):
    recipe: Optional[str] = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="recipe name in the bundle store, or a bundle id",
    )
    rollback: bool = Field(
        default=False, description="true: go back to the recipe active before the last switch"
    )


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
    resident: int = Field(
        ge=0, description="models in memory on the device now (one more only during a swap)"
    )


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
    index_rebuilt: int = Field(
        default=0, description="times the index was found corrupt, moved aside and rebuilt from the files"
    )
    unsafe_names: int = Field(
        default=0, description="index rows naming a file outside the store (never touched)"
    )
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
    parts: Dict[str, PartStats] = Field(default_factory=dict, description="per [[parts]] table; {} when none")


class TriggerObject(_Payload):
    part_id: str = Field(min_length=1, max_length=64, description="the part in front of the camera")


class TriggerPayload(RootModel[Union[str, TriggerObject]]):
    """``<prefix>/<camera>/trigger`` (sent by the PLC, never retained): the camera's next frame belongs to
    part ``part_id``. Plain text (``P-0042``), a JSON string or ``{"part_id": "P-0042"}``; at most 128
    bytes; the part id is 1-64 printable characters without ``/``, ``+`` or ``#``
    (:func:`edge.commands.parse_trigger`)."""


class PartCameraDoc(_Payload):
    """One camera of a part: its verdict, and its result when it reported one."""

    verdict: PartVerdictName
    score: Optional[float] = Field(default=None, description="normalised score of its result, or null")
    threshold: Optional[float] = Field(default=None, description="threshold its result was judged with")
    seq: Optional[int] = Field(default=None, description="seq of its result on <camera>/result, or null")
    frame_id: Optional[int] = None
    reason: Optional[str] = Field(default=None, description="why there is no result (no_result only)")


class PartPayload(_Versioned):
    """``<prefix>/part/<name>`` (QoS 1, never retained): one part's combined verdict and the gate's action.

    Published when every camera of the part reported, or at the deadline with ``no_result`` (and the default
    action) for a part still missing a camera; a verdict completed after the deadline is published again
    with ``late: true`` and the default action, which it never overrides."""

    device_id: str
    run_id: str
    part: str = Field(description="the [[parts]] table's name")
    part_id: str = Field(description="the trigger's part id ('<camera>:<frame_id>' for frame triggers)")
    verdict: PartVerdictName = Field(description="ng if any camera is ng, no_result if any is missing, ...")
    action: Literal["reject", "pass"] = Field(description="what the reject gate does with the part")
    reason: Optional[str] = Field(description="why no_result (per missing camera), or why late; else null")
    late: bool = Field(description="true: completed after the deadline; action is the default action")
    trigger: Literal["frame", "message"]
    trigger_ts: float = Field(description="trigger time, seconds since the Unix epoch (UTC)")
    trigger_time: str = Field(description="trigger time, ISO-8601 UTC with milliseconds")
    verdict_ts: float = Field(description="time of this verdict, seconds since the Unix epoch (UTC)")
    verdict_time: str
    elapsed_ms: float = Field(description="milliseconds from the trigger to this verdict")
    deadline_ms: float
    cameras: Dict[str, PartCameraDoc]


class PartStats(_Payload):
    """One part's counters since the start: triggers and verdicts (on time), late verdicts."""

    triggered: int
    ok: int
    warn: int
    ng: int
    no_result: int = Field(description="parts closed at the deadline without every camera's result")
    late: int = Field(description="verdicts completed after their deadline (published with late: true)")


# --- who publishes ---------------------------------------------------------------------------------------


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
