"""The Sparkplug B 3.0 edge node end to end: the real daemon, a real mosquitto, and every Sparkplug message
decoded by Eclipse Tahu's JavaScript ``sparkplug-payload`` (tests/helpers/sparkplug.py), not by our code.

What a SCADA host relies on: births before data, seq without gaps (0-255, wrapping), the Will's NDEATH
naming the bdSeq of the birth it ends, a rebirth on request, threshold writes that the JSON API agrees
with, device deaths and births with the camera, and births only while the primary host is online.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.faults.conftest import DaemonProcess
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.sparkplug import Decoder, SpbMessage, aliases, encode_command, sparkplug_messages
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sparkplug")
    bundle = make_tiny_bundle(root / "bundle", size=64)
    frames, _ = part_sequence(20, 3, size=64, seed=41)
    return {"bundle": bundle, "video": write_video(root / "parts.avi", frames, fps=10)}


class Host:
    """A SCADA host's view: every message of the group (raw), decoded by Tahu on demand."""

    def __init__(self, broker: Broker, group: str, node: str, decoder: Decoder, json_prefix: str) -> None:
        self.group, self.node, self.decoder = group, node, decoder
        self.sub = Subscriber(
            broker.host, broker.port, [f"spBv1.0/{group}/#", "spBv1.0/STATE/#", f"{json_prefix}/#"]
        )

    def raw_count(self, kind: str, device: str | None = None) -> int:
        tail = f"/{device}" if device else ""
        return sum(
            1 for m in self.sub.snapshot() if m.topic == f"spBv1.0/{self.group}/{kind}/{self.node}{tail}"
        )

    def wait_count(self, kind: str, n: int, device: str | None = None, timeout: float = WAIT) -> bool:
        return self.sub.wait_for(lambda _: self.raw_count(kind, device) >= n, timeout)

    def messages(self) -> list[SpbMessage]:
        return sparkplug_messages(self.sub.snapshot(), self.group, self.node, self.decoder)

    def command(self, kind: str, metrics: list[tuple[str, str, object]], device: str | None = None) -> float:
        tail = f"/{device}" if device else ""
        payload = encode_command(metrics)
        sent = time.time()
        self.sub.publish(f"spBv1.0/{self.group}/{kind}/{self.node}{tail}", payload)
        return sent


def _names(group: str) -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"{group}-{tag}", f"node-{tag}", f"dev-{tag}"


def assert_seq_continuous(msgs: list[SpbMessage]) -> int:
    """seq +1 per node message, 0-255 wrapping, NBIRTH at 0; returns how many times it wrapped."""
    wraps, prev = 0, None
    for m in msgs:
        if m.kind == "NDEATH":
            assert m.seq is None, "NDEATH carries no seq"
            prev = None
            continue
        if m.kind == "NBIRTH":
            assert m.seq == 0
        else:
            assert prev is not None, f"{m.kind} before any NBIRTH"
            assert m.seq == (prev + 1) % 256, f"seq gap: {prev} -> {m.seq} ({m.kind})"
            wraps += m.seq == 0
        prev = m.seq
    return wraps


def test_births_data_seq_rebirth_and_threshold_commands(
    broker: Broker, media: dict, tmp_path: Path, tahu: Decoder
) -> None:
    group, node, dev = _names("line")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "cam1", "source": str(media["video"]), "fps": 60, "loop": True, "publish_mask": "never"}]
    text = config_toml(dev, broker, media["bundle"], cams,
                       sparkplug={"enabled": True, "group_id": group, "edge_node_id": node})  # fmt: skip
    host = Host(broker, group, node, tahu, prefix)
    run = InProcess(tmp_path, text).start()
    try:
        assert host.wait_count("DDATA", 20, "cam1")
        # A late host asks for a rebirth: NBIRTH + DBIRTH again, within a second.
        asked = host.command("NCMD", [("Node Control/Rebirth", "Boolean", True)])
        assert host.wait_count("NBIRTH", 2) and host.wait_count("DBIRTH", 2, "cam1")
        reborn = [m for m in host.sub.snapshot() if m.topic.endswith(f"NBIRTH/{node}")][1]
        assert reborn.received_at - asked < 1.0, f"rebirth took {reborn.received_at - asked:.2f} s"
        # DCMD writes the threshold through the JSON API's command path.
        host.command("DCMD", [("Inspection/Threshold", "Double", 2.5)], "cam1")
        state = f"{prefix}/cam1/threshold/state"
        assert host.sub.wait_for(lambda _: any(m.json()["threshold"] == 2.5 and m.json()["source"] == "mqtt"
                                               for m in host.sub.on(state)), WAIT)  # fmt: skip
        host.sub.publish(f"{prefix}/cam1/threshold/set", b"3.5")  # and the JSON set reaches Sparkplug
        assert host.sub.wait_for(
            lambda _: any(m.json()["threshold"] == 3.5 for m in host.sub.on(state)), WAIT
        )
        host.command("DCMD", [("Inspection/Threshold", "Double", -5.0)], "cam1")  # out of range: refused
        assert host.sub.wait_for(lambda _: any(m.json()["error"] for m in host.sub.on(state)), WAIT)
        since_rebirth = host.raw_count("DDATA", "cam1")
        assert host.wait_count(
            "DDATA", since_rebirth + 300, "cam1", timeout=180
        )  # 300 after the last NBIRTH: a wrap
    finally:
        assert run.stop() == 0
    assert host.wait_count("NDEATH", 1)
    host.sub.barrier()
    host.sub.close()

    msgs = host.messages()
    names = aliases(msgs)
    assert all(not m.retain for m in msgs)
    assert assert_seq_continuous(msgs) >= 1
    births = [m for m in msgs if m.kind == "NBIRTH"]
    node_metrics = births[0].metrics()
    assert node_metrics["Node Control/Rebirth"] is False and node_metrics["Properties/Device ID"] == dev
    bdseq = node_metrics["bdSeq"]
    assert all(b.metrics()["bdSeq"] == bdseq for b in births)  # a rebirth keeps the session's bdSeq
    types = {m["name"]: m["type"] for m in births[0].doc["metrics"]}
    assert types["bdSeq"] == "Int64" and types["Node Control/Rebirth"] == "Boolean"
    deaths = [m for m in msgs if m.kind == "NDEATH"]
    assert len(deaths) == 1 and deaths[0].metrics()["bdSeq"] == bdseq and msgs[-1].kind == "NDEATH"
    # every birth comes before any data of the same connection; DBIRTH follows NBIRTH
    assert msgs[0].kind == "NBIRTH" and msgs[1].kind == "DBIRTH"
    dbirth = msgs[1].metrics()
    assert dbirth["Inspection/Threshold"] == 4.0 and dbirth["Camera/State"] in ("offline", "online")
    assert {m["type"] for m in msgs[1].doc["metrics"] if m["name"] == "Inspection/Score"} == {"Double"}

    # DDATA carries what the JSON results say, for the same frames.
    by_key = {r["frame_key"]: r for r in results(host.sub, prefix, "cam1")}
    data = [m.metrics(names) for m in msgs if m.kind == "DDATA"]
    scored = [d for d in data if "Inspection/Frame Key" in d]
    assert len(scored) >= 300
    for d in scored:
        r = by_key[d["Inspection/Frame Key"]]
        if "Inspection/Score" in d:
            assert d["Inspection/Score"] == r["score"]
        if "Inspection/Anomalous" in d:
            assert d["Inspection/Anomalous"] == r["anomalous"]
    # only changed metrics: the verdict is not repeated in every DDATA
    assert sum("Inspection/Anomalous" in d for d in data) < len(data) / 2
    thresholds = [d["Inspection/Threshold"] for d in data if "Inspection/Threshold" in d]
    assert thresholds[:2] == [2.5, 3.5] and thresholds[-1] == 3.5  # the refused write answered with 3.5
    stats = [m.json() for m in host.sub.on(f"{prefix}/stats")]
    assert stats and all(
        "sparkplug_ddata" in d["drops"] for d in stats
    )  # drops of the second face counted too
    assert stats[-1]["commands"]["accepted"] == 2 and stats[-1]["commands"]["rejected_invalid"] == 1
    json_states = [m.json() for m in host.sub.on(f"{prefix}/cam1/threshold/state")]
    assert json_states[-1]["threshold"] == 3.5 and json_states[-1]["error"]


def test_the_will_pairs_with_the_birth_after_kill_9_and_bdseq_survives_restarts(
    broker: Broker, media: dict, tmp_path: Path, tahu: Decoder
) -> None:
    group, node, dev = _names("kill")
    cams = [{"name": "cam1", "source": str(media["video"]), "fps": 10, "loop": True, "publish_mask": "never"}]
    text = f'state_dir = "{tmp_path / "state"}"\n' + config_toml(
        dev,
        broker,
        media["bundle"],
        cams,
        sparkplug={"enabled": True, "group_id": group, "edge_node_id": node},
    )
    config = tmp_path / "edge.toml"
    config.write_text(text, encoding="utf-8")
    host = Host(broker, group, node, tahu, f"edge-anomaly/{dev}")
    first = DaemonProcess(config, log=tmp_path / "first.log")
    try:
        assert host.wait_count("DDATA", 3, "cam1"), first.output()
        first.proc.kill()  # kill -9: no NDEATH of its own, the broker publishes the Will
        first.proc.wait(10)
        assert host.wait_count("NDEATH", 1), first.output()
        second = DaemonProcess(config, log=tmp_path / "second.log")
        try:
            assert host.wait_count("NBIRTH", 2) and host.wait_count("DBIRTH", 2, "cam1"), second.output()
            assert second.terminate() == 0
        finally:
            second.kill()
    finally:
        first.kill()
    assert host.wait_count("NDEATH", 2)
    host.sub.close()
    msgs = host.messages()
    births = [m.metrics()["bdSeq"] for m in msgs if m.kind == "NBIRTH"]
    deaths = [m.metrics()["bdSeq"] for m in msgs if m.kind == "NDEATH"]
    assert births[0] == deaths[0], "the Will names the bdSeq of the birth it ends"
    assert births[1] == (births[0] + 1) % 256 == deaths[1], "bdSeq continues across a restart"
    assert [m.kind for m in msgs].index("NDEATH") > [m.kind for m in msgs].index("NBIRTH")
    assert not any(m.retain for m in msgs)
    assert_seq_continuous(msgs)


def test_a_camera_outage_is_a_device_death_and_its_return_a_birth(
    broker: Broker, media: dict, tmp_path: Path, tahu: Decoder
) -> None:
    group, node, dev = _names("cam")
    camera = tmp_path / "camera" / "line.avi"
    camera.parent.mkdir()
    shutil.copy(media["video"], camera)
    parked = tmp_path / "parked.avi"
    cams = [{"name": "cam1", "source": str(camera), "fps": 30, "loop": True, "fault_after_s": 60,
             "publish_mask": "never"}]  # fmt: skip
    text = config_toml(
        dev,
        broker,
        media["bundle"],
        cams,
        sparkplug={"enabled": True, "group_id": group, "edge_node_id": node},
    )
    host = Host(broker, group, node, tahu, f"edge-anomaly/{dev}")
    run = InProcess(tmp_path, text).start()
    try:
        assert host.wait_count("DDATA", 5, "cam1")
        camera.rename(parked)  # at the end of the current loop the reopen fails: fault
        assert host.wait_count("DDEATH", 1, "cam1")
        parked.rename(camera)
        assert host.wait_count("DBIRTH", 2, "cam1")
        n = host.raw_count("DDATA", "cam1")
        assert host.wait_count("DDATA", n + 3, "cam1")
    finally:
        assert run.stop() == 0
    host.sub.barrier()
    host.sub.close()
    msgs = host.messages()
    assert_seq_continuous(msgs)
    kinds = [m.kind for m in msgs if m.device == "cam1"]
    death = kinds.index("DDEATH")
    assert "DDATA" not in kinds[death + 1 : kinds.index("DBIRTH", death)], "data from a dead device"
    reborn = [m for m in msgs if m.kind == "DBIRTH"][1].metrics()
    assert reborn["Camera/State"] == "online"
    names = aliases(msgs)
    states = [m.metrics(names).get("Camera/State") for m in msgs if m.kind in ("DDATA", "DBIRTH")]
    assert "online" in states


def test_births_wait_for_the_primary_host_and_follow_its_state(
    broker: Broker, media: dict, tmp_path: Path, tahu: Decoder
) -> None:
    group, node, dev = _names("host")
    host_id = f"scada-{uuid.uuid4().hex[:6]}"
    state_topic = f"spBv1.0/STATE/{host_id}"
    cams = [{"name": "cam1", "source": str(media["video"]), "fps": 20, "loop": True, "publish_mask": "never"}]
    spb = {"enabled": True, "group_id": group, "edge_node_id": node, "primary_host_id": host_id}
    text = config_toml(dev, broker, media["bundle"], cams, sparkplug=spb)
    host = Host(broker, group, node, tahu, f"edge-anomaly/{dev}")
    t0 = int(time.time() * 1000)

    def state(online: bool, ts: int) -> None:
        host.sub.publish(state_topic, json.dumps({"online": online, "timestamp": ts}), retain=True)

    state(False, t0)  # the host's retained Will: offline
    run = InProcess(tmp_path, text).start()
    try:
        prefix = f"edge-anomaly/{dev}"
        assert host.sub.wait_for(lambda _: len(results(host.sub, prefix, "cam1")) >= 5, WAIT)
        host.sub.barrier()
        assert host.raw_count("NBIRTH") == 0, "births before the primary host is online"
        state(True, t0 + 1)
        assert host.wait_count("NBIRTH", 1) and host.wait_count("DDATA", 3, "cam1")
        state(False, t0 - 5)  # older than the last STATE seen: ignored
        n = host.raw_count("DDATA", "cam1")
        assert host.wait_count("DDATA", n + 5, "cam1")
        assert host.raw_count("NDEATH") == 0
        state(False, t0 + 2)  # the host goes offline: NDEATH, disconnect, wait for it
        assert host.wait_count("NDEATH", 1)
        state(True, t0 + 3)  # back: a new session (new bdSeq) and births
        assert host.wait_count("NBIRTH", 2) and host.wait_count("DBIRTH", 2, "cam1")
    finally:
        assert run.stop() == 0
        host.sub.publish(state_topic, b"", retain=True)
    assert host.wait_count("NDEATH", 2)
    host.sub.close()
    msgs = host.messages()
    assert_seq_continuous(msgs)
    births = [m.metrics()["bdSeq"] for m in msgs if m.kind == "NBIRTH"]
    deaths = [m.metrics()["bdSeq"] for m in msgs if m.kind == "NDEATH"]
    assert deaths[0] == births[0] and births[1] == (births[0] + 1) % 256 == deaths[1]
    kinds = [m.kind for m in msgs]
    first_death = kinds.index("NDEATH")
    assert "DDATA" not in kinds[first_death + 1 : kinds.index("NBIRTH", first_death)]


def test_a_broker_outage_starts_a_new_session_with_the_next_bdseq(
    own_broker: Broker, media: dict, tmp_path: Path, tahu: Decoder
) -> None:
    group, node, dev = _names("outage")
    cams = [{"name": "cam1", "source": str(media["video"]), "fps": 20, "loop": True, "publish_mask": "never"}]
    spb = {"enabled": True, "group_id": group, "edge_node_id": node}
    mqtt = {"reconnect_min_s": 1, "reconnect_max_s": 1}
    text = config_toml(dev, own_broker, media["bundle"], cams, sparkplug=spb, mqtt=mqtt)
    host = Host(own_broker, group, node, tahu, f"edge-anomaly/{dev}")
    run = InProcess(tmp_path, text).start()
    try:
        assert host.wait_count("DDATA", 3, "cam1")
        own_broker.stop()  # no Will: the broker itself is gone
        own_broker.start()
        assert host.sub.wait_for(lambda _: host.sub.connects >= 2, WAIT)
        # The host may have come back after the node's new NBIRTH; a late host asks for a rebirth.
        deadline = time.monotonic() + WAIT
        while not host.wait_count("NBIRTH", 2, timeout=2.0) and time.monotonic() < deadline:
            host.command("NCMD", [("Node Control/Rebirth", "Boolean", True)])
        assert host.wait_count("NBIRTH", 2) and host.wait_count(
            "DDATA", host.raw_count("DDATA", "cam1") + 3, "cam1"
        )
    finally:
        assert run.stop() == 0
    assert host.wait_count("NDEATH", 1)
    host.sub.close()
    msgs = host.messages()
    births = [m.metrics()["bdSeq"] for m in msgs if m.kind == "NBIRTH"]
    deaths = [m.metrics()["bdSeq"] for m in msgs if m.kind == "NDEATH"]
    assert births[-1] == (births[0] + 1) % 256 and deaths[-1] == births[-1]
    # mosquitto may publish the first session's Will to clients it has not yet closed while it shuts down
    assert set(deaths[:-1]) <= {births[0]}
