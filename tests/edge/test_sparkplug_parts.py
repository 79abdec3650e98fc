"""Part verdicts on the Sparkplug B face, end to end (the real daemon, a real mosquitto), decoded by Eclipse
Tahu's JavaScript decoder, not by our code: NBIRTH names every part metric; each verdict is one NDATA that
says what the JSON part topic says (a part on time, and a part whose camera is missing: no_result with its
reason and the default action); each camera's DDATA carries its verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.edge.test_sparkplug import Host, _names, assert_seq_continuous
from tests.helpers.broker import Broker
from tests.helpers.sparkplug import Decoder, aliases
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

PART_METRICS = ("Verdict", "Action", "Part ID", "Reason", "Late", "Elapsed")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sparkplug-parts")
    frames, _ = part_sequence(20, 3, size=64, seed=43)
    return {
        "bundle": make_tiny_bundle(root / "bundle", size=64),
        "video": write_video(root / "v.avi", frames),
    }


def test_part_verdicts_are_node_metrics_decoded_by_tahu(
    broker: Broker, media: dict, tmp_path: Path, tahu: Decoder
) -> None:
    group, node, dev = _names("parts")
    prefix = f"edge-anomaly/{dev}"
    cams = [
        {"name": "cam1", "source": str(media["video"]), "fps": 25, "loop": True, "trigger": "message",
         "publish_mask": "never"},
        {"name": "dark", "source": str(tmp_path / "no-such.avi"), "trigger": "message", "fault_after_s": 30},
    ]  # fmt: skip
    text = config_toml(dev, broker, media["bundle"], cams,
                       sparkplug={"enabled": True, "group_id": group, "edge_node_id": node})  # fmt: skip
    text += '[[parts]]\nname = "gate"\ncameras = ["cam1"]\ndeadline_ms = 400\n'
    text += '[[parts]]\nname = "dead"\ncameras = ["dark"]\ndeadline_ms = 200\n'
    host = Host(broker, group, node, tahu, prefix)
    run = InProcess(tmp_path, text).start()

    def part_doc(name: str, part_id: str) -> dict | None:
        docs = [m.json() for m in host.sub.on(f"{prefix}/part/{name}")]
        return next((d for d in docs if d["part_id"] == part_id), None)

    try:
        assert host.wait_count("DDATA", 5, "cam1")
        host.sub.publish(f"{prefix}/cam1/trigger", json.dumps({"part_id": "P-1"}).encode())
        host.sub.publish(f"{prefix}/dark/trigger", b"D-1")
        assert host.sub.wait_for(lambda _: part_doc("gate", "P-1") and part_doc("dead", "D-1"), WAIT)
        assert host.wait_count("NDATA", 2)
    finally:
        assert run.stop() == 0
    assert host.wait_count("NDEATH", 1)
    host.sub.barrier()
    host.sub.close()

    msgs = host.messages()
    names = aliases(msgs)
    assert_seq_continuous(msgs)
    birth = next(m for m in msgs if m.kind == "NBIRTH")
    types = {m["name"]: m["type"] for m in birth.doc["metrics"]}
    for part in ("gate", "dead"):
        assert [types[f"Parts/{part}/{n}"] for n in PART_METRICS] == [
            "String", "String", "String", "String", "Boolean", "Double"
        ]  # fmt: skip
        assert birth.metrics()[f"Parts/{part}/Verdict"] is None  # born null: no verdict yet
    data = [m.metrics(names) for m in msgs if m.kind == "NDATA"]
    for part, part_id in (("gate", "P-1"), ("dead", "D-1")):
        doc = part_doc(part, part_id)
        assert doc is not None
        [sent] = [d for d in data if d.get(f"Parts/{part}/Part ID") == part_id]
        assert {n: sent[f"Parts/{part}/{n}"] for n in PART_METRICS} == {
            "Verdict": doc["verdict"], "Action": doc["action"], "Part ID": part_id,
            "Reason": doc["reason"] or "", "Late": doc["late"], "Elapsed": doc["elapsed_ms"],
        }  # fmt: skip
    dead = part_doc("dead", "D-1")
    assert dead is not None and (dead["verdict"], dead["action"]) == ("no_result", "reject")
    assert part_doc("gate", "P-1")["verdict"] in ("ok", "warn", "ng")  # type: ignore[index]

    by_key = {r["frame_key"]: r for r in results(host.sub, prefix, "cam1")}
    verdicts = [
        (d["Inspection/Frame Key"], d["Inspection/Verdict"])
        for d in (m.metrics(names) for m in msgs if m.kind == "DDATA" and m.device == "cam1")
        if "Inspection/Verdict" in d and "Inspection/Frame Key" in d
    ]
    assert verdicts and all(by_key[key]["verdict"] == v for key, v in verdicts)
