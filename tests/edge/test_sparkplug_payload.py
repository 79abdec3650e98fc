"""Sparkplug B pieces without a broker: payloads as Eclipse Tahu decodes them, commands as Tahu encodes them,
the bdSeq record, and docs/sparkplug.md's metric tables against the code's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.faces.sparkplug import payload as spb
from edge.faces.sparkplug.node import BdSeqStore
from tests.helpers.sparkplug import Decoder, encode_command

REPO = Path(__file__).resolve().parents[2]


def test_every_datatype_and_null_decode_as_tahu_reads_them(tahu: Decoder) -> None:
    by = spb.METRIC_BY_NAME
    entries = [
        (by["bdSeq"], 0, 255, 1000),
        (by["Node Control/Rebirth"], 1, False, 1000),
        (by["Inspection/Score"], 1000, 12.375, 1001),
        (by["Inspection/Region Count"], 1003, -3, 1002),  # signed: two's complement in int_value
        (by["Inspection/Frame Key"], 1006, "abc-7", 1003),
        (by["Inspection/Anomalous"], 1001, None, 1004),  # no value yet: is_null
        (by["Latency/Total"], 1009, float("nan"), 1005),  # not a number: null rather than NaN
    ]
    [doc] = tahu([spb.encode(1_795_000_000_123, entries, seq=255, names=True)])
    assert doc["timestamp"] == 1_795_000_000_123 and doc["seq"] == 255
    got = {m["name"]: (m["type"], m["value"], m["alias"], m["timestamp"]) for m in doc["metrics"]}
    assert got["bdSeq"] == ("Int64", 255, 0, 1000)
    assert got["Node Control/Rebirth"][:2] == ("Boolean", False)
    assert got["Inspection/Score"][:2] == ("Double", 12.375)
    assert got["Inspection/Region Count"][:2] == ("Int32", -3)
    assert got["Inspection/Frame Key"][:2] == ("String", "abc-7")
    assert got["Inspection/Anomalous"][:2] == ("Boolean", None)
    assert got["Latency/Total"][:2] == ("Double", None)
    [death] = tahu([spb.death(5, 17)])
    assert (
        "seq" not in death and death["metrics"][0]["name"] == "bdSeq" and death["metrics"][0]["value"] == 17
    )
    [data] = tahu([spb.encode(5, [(by["Inspection/Score"], 2000, 1.5, 5)], seq=3)])
    assert data["metrics"][0] == {"value": 1.5, "type": "Double", "alias": 2000, "timestamp": 5}  # no name


def test_commands_encoded_by_tahu_decode(tahu: Decoder) -> None:
    commands = spb.decode_commands(
        encode_command([("Node Control/Rebirth", "Boolean", True), ("Inspection/Threshold", "Float", 2.5)])
    )
    assert [(c.name, c.value) for c in commands] == [
        ("Node Control/Rebirth", True),
        ("Inspection/Threshold", 2.5),
    ]
    assert spb.number(commands[1]) == 2.5 and spb.number(commands[0]) is None  # a boolean is not a number
    with pytest.raises(spb.PayloadError):
        spb.decode_commands(b"\xff\xff\xff not protobuf")


def test_bdseq_continues_across_restarts_wraps_and_is_written_once_per_value(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sparkplug-dev.json"
    store = BdSeqStore(path)
    assert store.take() == 0 and store.take() == 0  # attempts without a CONNACK reuse the value
    mtime = path.stat().st_mtime_ns
    assert store.take() == 0 and path.stat().st_mtime_ns == mtime
    store.connected()
    assert store.take() == 1
    assert BdSeqStore(path).take() == 2  # a restart continues after the last value taken
    path.write_text(json.dumps({"format": 1, "bdSeq": 255}), encoding="utf-8")
    assert BdSeqStore(path).take() == 0  # 0-255, wrapping
    path.write_text("{not json", encoding="utf-8")
    assert BdSeqStore(path).take() == 0  # a damaged record starts over (logged)
    assert BdSeqStore(None).take() == 0


def test_readme_lists_every_metric_as_the_code_defines_it() -> None:
    text = (REPO / "docs" / "sparkplug.md").read_text(encoding="utf-8")
    for name, datatype, unit, meaning in spb.metric_table(spb.NODE_METRICS + spb.DEVICE_METRICS):
        row = f"| `{name}` | {datatype} | {unit} | {meaning} |"
        assert row in text, f"docs/sparkplug.md's metric table lacks or differs in: {row}"
    for name, datatype, unit, meaning in spb.metric_table(spb.PART_METRICS):
        row = f"| `Parts/<part>/{name}` | {datatype} | {unit} | {meaning} |"
        assert row in text, f"docs/sparkplug.md's part metric table lacks or differs in: {row}"
    part_aliases = {a for i in range(20) for _, a in spb.part_metrics(f"p{i}", i)}
    camera_aliases = {spb.device_alias(i, m.name) for i in range(500) for m in spb.DEVICE_METRICS}
    assert len(part_aliases) == 20 * len(spb.PART_METRICS) and not part_aliases & camera_aliases
    assert len({spb.device_alias(i, m.name) for i in range(3) for m in spb.DEVICE_METRICS}) == 3 * len(
        spb.DEVICE_METRICS
    )
