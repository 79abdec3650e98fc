"""The schema 2 contract end to end: the real daemon (in process), a real mosquitto or a misbehaving broker.

Each test is one promise of issue 15 that kill -9 / broker-outage / camera tests elsewhere do not cover:
commands act once and the threshold in force outlives a restart; identities are unique across runs; masks
pair with their results on MQTT 3.1.1; a broker that stops acknowledging is reported and bounded.
Every payload read here is validated against docs/schemas (tests.helpers.mqtt.Received.json).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from edge.service.daemon import EXIT_UNDELIVERED
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.helpers.broker import Broker
from tests.helpers.contract import check
from tests.helpers.fake_broker import FakeBroker
from tests.helpers.mqtt import Subscriber, has_availability
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("contract")
    bundle = make_tiny_bundle(root / "bundle", size=128)
    frames, _ = part_sequence(12, 3, size=128, seed=31)
    return {"bundle": bundle, "video": write_video(root / "parts.avi", frames, fps=10)}


def test_commands_act_once_and_the_threshold_outlives_a_restart(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    dev = f"once-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    set_topic, state_topic = f"{prefix}/line/threshold/set", f"{prefix}/line/threshold/state"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 20, "publish_mask": "never"}]
    text = f'state_dir = "{tmp_path / "state"}"\n' + config_toml(dev, broker, media["bundle"], cams)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    # An old setpoint left retained on the broker (what schema 1 SCADA setups did): it must not be applied.
    sub.publish(set_topic, b"7.5", retain=True)
    first = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
        assert sub.wait_for(lambda m: any(s.json()["commands"]["rejected_retained"] >= 1
                                          for s in sub.on(f"{prefix}/stats")), WAIT)  # fmt: skip
        assert {r["threshold"] for r in results(sub, prefix, "line")} == {4.0}  # the bundle's, not 7.5
        sub.publish(set_topic, b"2.5")  # an operator's set, once
        assert sub.wait_for(lambda m: any(s.json()["threshold"] == 2.5 for s in sub.on(state_topic)), WAIT)
    finally:
        assert first.stop() == 0
    run_1 = [r for r in results(sub, prefix, "line")]

    # The retained command was cleared: a fresh subscriber finds nothing retained on the command topic.
    fresh = Subscriber(broker.host, broker.port, [set_topic, state_topic])
    try:
        fresh.barrier()
    finally:
        fresh.close()
    assert fresh.on(set_topic) == []
    kept = fresh.on(state_topic)
    assert len(kept) == 1 and kept[0].retain
    assert (kept[0].json()["threshold"], kept[0].json()["source"]) == (2.5, "mqtt")

    n_before = len(sub.snapshot())
    second = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(lambda m: any(r["threshold"] == 2.5 for r in results(sub, prefix, "line")), WAIT)
    finally:
        assert second.stop() == 0
    sub.close()
    states = [m.json() for m in sub.snapshot()[n_before:] if m.topic == state_topic]
    assert states[0]["threshold"] == 2.5 and states[0]["source"] == "mqtt" and states[0]["set_at"]
    run_2 = [r for r in results(sub, prefix, "line") if r not in run_1]

    # Identity: a new run id per start, so (device_id, run_id, camera, seq) never repeats across runs.
    assert {r["run_id"] for r in run_1} != {r["run_id"] for r in run_2}
    keys = [(r["device_id"], r["run_id"], r["camera"], r["seq"]) for r in run_1 + run_2]
    assert len(keys) == len(set(keys))
    assert {r["frame_id"] for r in run_1} & {r["frame_id"] for r in run_2}  # frame ids alone do repeat
    for r in run_1 + run_2:
        assert r["capture_time"].endswith("Z") and abs(_epoch(r["capture_time"]) - r["capture_ts"]) < 0.001


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_masks_pair_with_results_on_mqtt_311(broker: Broker, media: dict, tmp_path: Path) -> None:
    dev = f"pair-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 20, "publish_mask": "anomalous"}]
    text = config_toml(dev, broker, media["bundle"], cams, mqtt={"protocol": "3.1.1"})
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"], v5=False)  # no v5 properties at all
    run = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
    finally:
        assert run.stop() == 0
    sub.barrier()
    sub.close()
    got = results(sub, prefix, "line")
    masks = {m.topic: m for m in sub.under(f"{prefix}/line/mask")}
    anomalous = [r for r in got if r["anomalous"]]
    assert anomalous and all(not m.properties for m in masks.values())
    for r in got:
        if r["anomalous"]:
            assert r["mask"]["topic"] == f"{prefix}/line/mask/{r['frame_key']}" and r["mask"]["qos"] == 1
            assert masks[r["mask"]["topic"]].payload.startswith(b"\x89PNG")
        else:
            assert r["mask"] is None
    assert len(masks) == len(anomalous)


def test_a_broker_that_never_acknowledges_is_reported_and_bounded(media: dict, tmp_path: Path) -> None:
    fake = FakeBroker("no_ack")
    dev = f"stuck-{uuid.uuid4().hex[:8]}"
    bound = 8
    cams = [
        {"name": "line", "source": str(media["video"]), "fps": 20, "loop": True, "publish_mask": "always"}
    ]
    mqtt = {"offline_queue_max": bound, "ack_stall_s": 1.0}
    run = InProcess(tmp_path, config_toml(dev, fake, media["bundle"], cams, mqtt=mqtt)).start()  # type: ignore[arg-type]
    try:

        def reported(f: FakeBroker) -> bool:
            docs = [json.loads(p.payload) for p in f.published if p.topic.endswith("/stats")]
            return any(d["warnings"] and d["drops"]["mqtt_result"] > 0 for d in docs)

        assert fake.wait_for(reported, WAIT)
    finally:
        rc = run.stop()
        fake.close()
    assert rc == EXIT_UNDELIVERED  # results were dropped: the exit status says so
    docs = [check(p.topic, json.loads(p.payload)) for p in fake.published if p.topic.endswith("/stats")]
    last = docs[-1]
    assert "not acknowledging" in last["warnings"][0] and last["mqtt"]["unacknowledged_s"] >= 1.0
    assert last["queues"]["mqtt_queued"] + last["mqtt"]["in_flight"] <= bound + 20  # + QoS 0 not yet written
    assert last["queues"]["mqtt_queue_max"] == bound
    assert last["drops"]["mqtt_result"] + last["drops"]["mqtt_mask"] > 0
    qos1 = [p for p in fake.published if p.qos]
    assert len(qos1) <= bound  # the broker was never handed more than the bound
