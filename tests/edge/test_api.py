"""The API module: committed JSON Schemas equal the generated ones, the topic table, and DeviceApi's
command handling against a recording transport (the end-to-end versions run against mosquitto)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.commands import parse_threshold_payload
from edge.faces.mqtt_json.api import DeviceApi
from edge.faces.mqtt_json.schema import schema_text
from edge.faces.mqtt_json.topics import SCHEMA_MODELS, TOPICS, camera_of, status_will, topic_name_of
from edge.faces.mqtt_json.transport import Inbound
from edge.results.payloads import Identity, ModelRef, iso_utc
from edge.results.thresholds import ThresholdBook
from tests.helpers.contract import SCHEMAS, check

REPO = Path(__file__).resolve().parents[2]
IDENTITY = Identity(
    "dev1", "abc123def456", 1_800_000_000.0, "0.1.0", ModelRef(id="m@1", precision="fp32", backend="ort")
)


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_committed_schema_equals_the_generated_one(name: str) -> None:
    committed = (SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(name), (
        f"docs/schemas/{name}.schema.json is stale: run `python3 -m edge.faces.mqtt_json.schema "
        f"--write-schemas docs/schemas`"
    )


def test_regenerate_command_writes_every_schema(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge.faces.mqtt_json.schema", "--write-schemas", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.schema.json" for n in SCHEMA_MODELS)
    assert out.returncode == 0


def test_topic_table_names_and_flags() -> None:
    assert TOPICS["status"].retain and TOPICS["status"].qos == 1
    assert not TOPICS["availability"].retain  # a retained 'online' would outlive a crash
    assert TOPICS["threshold_state"].retain and not TOPICS["result"].retain
    assert topic_name_of("line/result") == "result"
    assert topic_name_of("line/mask/abc-3") == "mask"
    assert topic_name_of("line/threshold/set") == "threshold_set"
    assert topic_name_of("status") == "status" and topic_name_of("line/other") is None
    assert TOPICS["threshold_set"].filter == "+/threshold/set"
    assert camera_of("line/threshold/set", TOPICS["threshold_set"]) == "line"


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500Z"


def test_the_will_says_every_camera_is_offline() -> None:
    suffix, payload = status_will(IDENTITY, ["a", "b"])
    doc = check("edge-anomaly/dev1/status", json.loads(payload))
    assert suffix == "status" and doc["state"] == "offline" and doc["reason"] == "connection lost"
    assert {c["state"] for c in doc["cameras"].values()} == {"offline"} and set(doc["cameras"]) == {"a", "b"}


class Recorder:
    """Stands in for MqttTransport: records what the API hands it."""

    def __init__(self, accept: bool = True) -> None:
        self.on_warnings: Any = None
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.retained: dict[str, bytes] = {}
        self.cleared: list[str] = []
        self.handlers: dict[str, Any] = {}
        self.accept = accept

    def topic(self, suffix: str) -> str:
        return f"p/{suffix}"

    def subscribe(self, filter_suffix: str, handler: Any) -> None:
        self.handlers[filter_suffix] = handler

    def publish(self, suffix: str, payload: bytes, qos: int, *, retain: bool = False, **kw: Any) -> bool:
        if kw.get("kind") == "mask" and not self.accept:
            return False
        self.sent.append((suffix, payload, qos, retain))
        return True

    def set_retained(self, suffix: str, payload: bytes, qos: int = 1, content_type: Any = None) -> None:
        self.retained[suffix] = payload

    def clear_retained(self, suffix: str) -> None:
        self.cleared.append(suffix)

    def command(self, suffix: str, payload: bytes, retain: bool = False) -> None:
        self.handlers["+/threshold/set"](Inbound(f"p/{suffix}", suffix, payload, retain))


def make_api(tmp_path: Path, transport: Recorder) -> DeviceApi:
    book = ThresholdBook(4.0, {"line": None}, 0.0, 100.0, state_file=tmp_path / "t.json", model_id="m@1")
    return DeviceApi(transport, IDENTITY, ["line"], book)


def test_a_retained_command_is_not_applied_but_cleared_and_counted(tmp_path: Path) -> None:
    t = Recorder()
    api = make_api(tmp_path, t)
    t.command("line/threshold/set", b"9", retain=True)
    assert api.thresholds.get("line") == (4.0, "manifest")
    assert t.cleared == ["line/threshold/set"]
    assert api.command_counts()["rejected_retained"] == 1
    t.command("line/threshold/set", b"")  # the broker echoes the clear: not a command
    assert api.command_counts()["rejected_invalid"] == 0
    t.command("line/threshold/set", b"")  # an empty set from someone else is a bad command
    assert api.command_counts()["rejected_invalid"] == 1


def test_an_invalid_set_is_answered_without_retain_and_counted(tmp_path: Path) -> None:
    t = Recorder()
    api = make_api(tmp_path, t)
    t.command("line/threshold/set", b"-1")
    (suffix, payload, qos, retain) = t.sent[-1]
    doc = check("p/line/threshold/state", json.loads(payload))
    assert suffix == "line/threshold/state" and not retain and "outside" in doc["error"]
    assert doc["threshold"] == 4.0 and doc["range"] == [0.0, 100.0]
    assert api.command_counts() == {
        "accepted": 0, "rejected_retained": 0, "rejected_invalid": 1, "rejected_unknown_camera": 0,
    }  # fmt: skip
    t.command("ghost/threshold/set", b"1")
    assert api.command_counts()["rejected_unknown_camera"] == 1


def test_an_accepted_set_is_retained_with_source_and_time(tmp_path: Path) -> None:
    t = Recorder()
    api = make_api(tmp_path, t)
    t.command("line/threshold/set", b"5.5")
    doc = check("p/line/threshold/state", json.loads(t.retained["line/threshold/state"]))
    assert doc["threshold"] == 5.5 and doc["source"] == "mqtt" and doc["set_at"].endswith("Z")
    assert api.command_counts()["accepted"] == 1


def test_a_set_on_a_full_disk_is_answered_with_the_error_and_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the answer said ``error: null`` and the set was lost at the next restart."""
    t = Recorder()
    api = make_api(tmp_path, t)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edge.results.thresholds.write_json_atomically", full_disk)
    t.command("line/threshold/set", b"5.5")
    (suffix, payload, _, retain) = t.sent[-1]
    doc = check("p/line/threshold/state", json.loads(payload))
    assert suffix == "line/threshold/state" and not retain
    assert "No space left on device" in doc["error"] and "not applied" in doc["error"]
    assert doc["threshold"] == 4.0 and api.thresholds.get("line") == (4.0, "manifest")
    assert api.command_counts()["rejected_invalid"] == 1 and api.command_counts()["accepted"] == 0


def test_a_result_names_its_mask_only_when_the_mask_was_accepted(tmp_path: Path) -> None:
    fields = dict(
        frame_id=7, capture_ts=1.5, capture_time=iso_utc(1.5), score=2.0, raw_score=0.2, threshold=1.0,
        threshold_source="manifest", anomalous=True, defect_area=0.1, regions=[], regions_total=0,
        roi=(0, 0, 8, 8), frame_size=(8, 8),
        latency_ms={"capture_to_infer": 1.0, "inference": 1.0, "postprocess": 1.0, "total": 3.0},
    )  # fmt: skip
    t = Recorder()
    api = make_api(tmp_path, t)
    first = api.publish_result("line", {"mask": b"png"}, **fields)
    assert first.seq == 0 and first.frame_key == "abc123def456-0"
    assert first.mask is not None and first.mask.topic == "p/line/mask/abc123def456-0"
    assert [s[0] for s in t.sent] == ["line/mask/abc123def456-0", "line/result"]  # mask first
    refused = Recorder(accept=False)
    api = make_api(tmp_path, refused)
    assert api.publish_result("line", {"mask": b"png"}, **fields).mask is None


def test_readme_examples_follow_the_published_schemas() -> None:
    """docs/mqtt-api.md shows one payload per JSON topic; each must validate as published."""
    import re

    text = (REPO / "docs" / "mqtt-api.md").read_text(encoding="utf-8")
    examples = re.findall(r"<!-- payload: (\w+) -->\n```json\n(.*?)\n```", text, re.S)
    assert sorted(name for name, _ in examples) == sorted(SCHEMA_MODELS)
    topics = {"status": "p/status", "stats": "p/stats", "part": "p/part/cap"}
    for name, body in examples:
        topic = topics.get(name, "p/" + TOPICS[name].filled("line1"))
        check(topic, json.loads(body))


@given(value=st.floats(0.0, 100.0), wrapped=st.booleans())
def test_every_set_the_device_accepts_matches_the_published_command_schema(
    value: float, wrapped: bool
) -> None:
    payload = json.dumps({"threshold": value} if wrapped else value).encode()
    assert parse_threshold_payload(payload, 0.0, 100.0) == value
    check("p/line1/threshold/set", json.loads(payload))
