"""Sparkplug B payloads: the metric table of the node and its cameras, encoding, and command decoding.

The metric table is the Sparkplug face of the typed API (:mod:`edge.faces.mqtt_json.api`): every value comes
from a
``ResultPayload``, a camera state or the threshold book. README "Sparkplug B" lists it for people (a test
keeps the two in step).

Every metric carries its datatype, in data messages too: the spec only says data messages *should not*
repeat it, and hosts built on Eclipse Tahu's decoders need it to read the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from edge.faces.sparkplug import sparkplug_b_pb2

# sparkplug_b_pb2 builds its classes at import time (protoc's builder), so type checkers cannot see them.
Payload: Any = sparkplug_b_pb2.Payload  # type: ignore[attr-defined]

# Sparkplug datatypes used here (the full table is in sparkplug_b.proto).
INT32, INT64, DOUBLE, BOOLEAN, STRING = 3, 4, 10, 11, 12
TYPE_NAMES = {INT32: "Int32", INT64: "Int64", DOUBLE: "Double", BOOLEAN: "Boolean", STRING: "String"}


class PayloadError(ValueError):
    """A command payload that is not a Sparkplug B payload."""


@dataclass(frozen=True)
class MetricDef:
    """One metric: its name (``/`` makes folders in Ignition), datatype, unit and meaning."""

    name: str
    datatype: int
    unit: str
    meaning: str
    writable: bool = False


BDSEQ = MetricDef(
    "bdSeq", INT64, "", "birth/death sequence of this MQTT session, 0-255; NDEATH carries the same"
)
REBIRTH = MetricDef(
    "Node Control/Rebirth", BOOLEAN, "", "always false; write true (NCMD) to get NBIRTH and every DBIRTH "
        "again",
    writable=True,
)  # fmt: skip

NODE_METRICS: Tuple[MetricDef, ...] = (
    BDSEQ,
    REBIRTH,
    MetricDef("Properties/Device ID", STRING, "", "device_id of the JSON API"),
    MetricDef("Properties/Version", STRING, "", "edge-anomaly version"),
    MetricDef("Properties/Run ID", STRING, "", "new at every start of the daemon (as in the JSON results)"),
    MetricDef(
        "Properties/Model", STRING, "", "model name @ checkpoint sha256 prefix (NDATA when it changes)"
    ),
    MetricDef("Properties/Precision", STRING, "", "fp32, fp16 or int8"),
    MetricDef("Properties/Backend", STRING, "", "inference backend"),
    MetricDef(
        "Properties/JSON Prefix", STRING, "",
        "topic prefix of the JSON API; a frame's PNG mask is at prefix/camera/mask/Frame Key",
    ),
)  # fmt: skip

THRESHOLD = MetricDef(
    "Inspection/Threshold", DOUBLE, "normalised",
    "threshold in force; write it (DCMD) like JSON threshold/set: same range, same record, same answer",
    writable=True,
)  # fmt: skip

DEVICE_METRICS: Tuple[MetricDef, ...] = (
    MetricDef("Inspection/Score", DOUBLE, "normalised", "0 = median good part, 1 = its 99th percentile"),
    MetricDef("Inspection/Anomalous", BOOLEAN, "", "the verdict: score > threshold"),
    MetricDef("Inspection/Defect Area", DOUBLE, "fraction 0-1", "share of the inspected area inside kept "
        "regions"),
    MetricDef("Inspection/Region Count", INT32, "", "defect regions found (before the max_regions cut)"),
    THRESHOLD,
    MetricDef("Inspection/Threshold Source", STRING, "", "config, mqtt (a set over JSON or Sparkplug) or "
        "manifest"),
    MetricDef("Inspection/Frame Key", STRING, "", "run_id-seq of the JSON result, the last level of its mask "
        "topic"),
    MetricDef("Camera/State", STRING, "", "online, offline, fault or ended"),
    MetricDef("Camera/Reason", STRING, "", "why (e.g. cannot open, no frame for 3.0 s)"),
    MetricDef("Latency/Total", DOUBLE, "ms", "capture to hand-over to MQTT"),
    MetricDef("Latency/Inference", DOUBLE, "ms", "time in the backend (the whole batch)"),
    MetricDef("Inspection/Verdict", STRING, "", "ok, warn (inside the camera's warn band) or ng"),
)  # fmt: skip

# [[parts]]: node metrics Parts/<part>/<name>, one set per part, all sent in one NDATA per part verdict
PART_METRICS: Tuple[MetricDef, ...] = (
    MetricDef("Verdict", STRING, "", "ok, warn, ng or no_result: the part's combined verdict"),
    MetricDef("Action", STRING, "", "reject or pass: what the reject gate does"),
    MetricDef("Part ID", STRING, "", "the trigger's part id (<camera>:<frame_id> when frame-triggered)"),
    MetricDef("Reason", STRING, "", "why no_result (per missing camera), or late; empty otherwise"),
    MetricDef("Late", BOOLEAN, "", "true: after the deadline; the default action stood (a second NDATA)"),
    MetricDef("Elapsed", DOUBLE, "ms", "trigger to verdict"),
)  # fmt: skip
PART_ALIAS_BASE = 1_000_000_000  # part i's metrics: base + 100 * i + their index (above every camera's)

NODE_ALIAS = {m.name: i for i, m in enumerate(NODE_METRICS)}
DEVICE_ALIAS_BASE = 1000  # camera i's metrics are 1000 * (i + 1) + their index: unique across the node


def device_alias(camera_index: int, name: str) -> int:
    return DEVICE_ALIAS_BASE * (camera_index + 1) + DEVICE_INDEX[name]


DEVICE_INDEX = {m.name: i for i, m in enumerate(DEVICE_METRICS)}
METRIC_BY_NAME: Dict[str, MetricDef] = {m.name: m for m in NODE_METRICS + DEVICE_METRICS}

Value = Any  # bool, int, float, str or None (sent as is_null)
Entry = Tuple[MetricDef, int, Value, int]  # (definition, alias, value, timestamp in ms)


def part_metrics(part: str, index: int) -> List[Tuple[MetricDef, int]]:
    """Part ``part``'s node metrics (named ``Parts/<part>/...``) with their aliases."""
    return [
        (
            MetricDef(f"Parts/{part}/{m.name}", m.datatype, m.unit, m.meaning),
            PART_ALIAS_BASE + 100 * index + i,
        )
        for i, m in enumerate(PART_METRICS)
    ]


def now_ms(epoch_s: float) -> int:
    return int(round(epoch_s * 1000.0))


def _set_value(metric: Any, datatype: int, value: Value) -> None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        metric.is_null = True
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == STRING:
        metric.string_value = str(value)
    elif datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype == INT32:
        metric.int_value = int(value) & 0xFFFFFFFF  # two's complement, as the spec stores signed ints
    elif datatype == INT64:
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    else:
        raise ValueError(f"datatype {datatype} is not used by this node")


def encode(
    timestamp_ms: int, entries: Iterable[Entry], seq: Optional[int] = None, names: bool = False
) -> bytes:
    """One payload. ``names``: spell out metric names (births, NDEATH); data messages use aliases only."""
    payload = Payload()
    payload.timestamp = timestamp_ms
    if seq is not None:
        payload.seq = seq
    for definition, alias, value, ts in entries:
        metric = payload.metrics.add()
        if names:
            metric.name = definition.name
        metric.alias = alias
        metric.timestamp = ts
        metric.datatype = definition.datatype
        _set_value(metric, definition.datatype, value)
    return bytes(payload.SerializeToString())


def death(timestamp_ms: int, bdseq: int) -> bytes:
    """NDEATH (the Will, and the last message of a clean stop): the bdSeq of the session, no seq."""
    return encode(timestamp_ms, [(BDSEQ, NODE_ALIAS[BDSEQ.name], bdseq, timestamp_ms)], names=True)


@dataclass(frozen=True)
class Command:
    """One metric of an NCMD or DCMD: by name, alias or both, and its value."""

    name: Optional[str]
    alias: Optional[int]
    value: Value


def decode_commands(data: bytes) -> List[Command]:
    """The metrics of an NCMD/DCMD payload; :class:`PayloadError` when it is not a Sparkplug payload."""
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError; the runtime's class varies by version
        raise PayloadError(f"not a Sparkplug B payload ({len(data)} bytes): {exc}") from exc
    commands = []
    for metric in payload.metrics:
        field = metric.WhichOneof("value")
        value = None if metric.is_null or field is None else getattr(metric, field)
        commands.append(
            Command(
                metric.name if metric.HasField("name") else None,
                int(metric.alias) if metric.HasField("alias") else None,
                value,
            )
        )
    return commands


def number(command: Command) -> Optional[float]:
    """A command's value as a number (hosts write doubles, floats or ints); None when it is not one."""
    value = command.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metric_table(metrics: Sequence[MetricDef]) -> List[Tuple[str, str, str, str]]:
    """(name, datatype, unit, meaning) rows, as README shows them."""
    return [(m.name, TYPE_NAMES[m.datatype], m.unit or "-", m.meaning) for m in metrics]
