"""Sparkplug commands cannot make the node eat memory, time or the SCADA network: the real daemon, a real
mosquitto. Before: one 70 MB DCMD with 2,000,000 threshold metrics took RSS from 143 to 893 MB and was still
being applied 35 s later; 3000 NCMD Rebirths gave 3000 NBIRTHs.

Bounds stated here: a 70 MB DCMD grows the daemon's RSS by less than ``RSS_BOUND_MIB`` (the broker is asked,
MQTT 5 Maximum Packet Size, not to send it; the payload cap refuses what comes anyway, unread); 3000 rebirth
requests give at most ``MAX_NBIRTHS`` NBIRTHs (coalesced, one per second at most).
"""

from __future__ import annotations

import time
from pathlib import Path

from edge.faces.sparkplug import limits
from edge.faces.sparkplug.sparkplug_b_pb2 import Payload
from tests.faults.conftest import WAIT, config_text, device_id, stats, write_config
from tests.helpers.mqtt import Subscriber

RSS_BOUND_MIB = 40.0
MAX_NBIRTHS = 8  # 3000 requests sent over a few seconds: one at once, then at most one per second


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metrics_payload(name: str, value: object, count: int) -> bytes:
    """An NCMD/DCMD with ``count`` copies of one metric (repeated protobuf fields concatenate)."""
    one = Payload()
    metric = one.metrics.add()
    metric.name = name
    if isinstance(value, bool):
        metric.datatype, metric.boolean_value = 11, value
    else:
        metric.datatype, metric.double_value = 10, float(value)  # type: ignore[arg-type]
    return one.SerializeToString() * count


def test_huge_dcmd_and_rebirth_storm_are_bounded(tmp_path: Path, broker, media, spawn) -> None:  # noqa: ANN001
    dev, group, node = device_id("spblim"), device_id("grp"), device_id("node")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "cam1", "source": str(media.video), "loop": True, "fps": 10, "publish_mask": "never"}]
    spb = {"enabled": True, "group_id": group, "edge_node_id": node}
    config = write_config(tmp_path, config_text(dev, broker, media.bundle, cams, sparkplug=spb))
    base = f"spBv1.0/{group}"
    sub = Subscriber(broker.host, broker.port, [f"{base}/NBIRTH/#", f"{base}/DDATA/#", f"{prefix}/#"])
    daemon = spawn(config)

    def nbirths() -> int:
        return sum(1 for m in sub.snapshot() if m.topic == f"{base}/NBIRTH/{node}")

    def threshold_is(value: float) -> bool:
        return any(m.json()["threshold"] == value for m in sub.on(f"{prefix}/cam1/threshold/state"))

    try:
        assert sub.wait_for(lambda _: nbirths() >= 1 and len(sub.on(f"{base}/DDATA/{node}/cam1")) >= 3, WAIT)
        time.sleep(1.0)
        before = rss_mib(daemon.pid)
        huge = metrics_payload("Inspection/Threshold", 2.0, 2_000_000)
        assert len(huge) > 60_000_000
        sub.publish(f"{base}/DCMD/{node}/cam1", huge)
        del huge
        # a normal command right after it is applied at once: the node is not busy with the big one
        sub.publish(f"{base}/DCMD/{node}/cam1", metrics_payload("Inspection/Threshold", 2.5, 1))
        assert sub.wait_for(lambda _: threshold_is(2.5), WAIT)
        assert not threshold_is(2.0)
        grown = rss_mib(daemon.pid) - before
        assert grown < RSS_BOUND_MIB, f"RSS grew by {grown:.0f} MiB"

        # between the payload cap and the packet size asked of the broker: delivered, refused unread, counted
        mid = metrics_payload("Inspection/Threshold", 3.0, 1) * (limits.MAX_COMMAND_BYTES // 30 + 10)
        assert limits.MAX_COMMAND_BYTES < len(mid) < limits.MAX_PACKET_BYTES
        sub.publish(f"{base}/DCMD/{node}/cam1", mid)
        many = metrics_payload("Inspection/Threshold", 3.0, limits.MAX_METRICS + 1)  # small, too many
        sub.publish(f"{base}/DCMD/{node}/cam1", many)

        def refused() -> dict:
            docs = stats(sub, prefix)
            return docs[-1]["commands"] if docs else {}

        def both_refused() -> bool:
            counts = refused()
            return (
                counts.get("sparkplug_commands_too_large", 0) >= 1
                and counts.get("sparkplug_commands_too_many_metrics", 0) >= 1
            )

        assert sub.wait_for(lambda _: both_refused(), WAIT), refused()
        assert not threshold_is(3.0)

        births_before = nbirths()
        rebirth = metrics_payload("Node Control/Rebirth", True, 1)
        for _ in range(3000):
            sub.client.publish(f"{base}/NCMD/{node}", rebirth, qos=0)
        assert sub.wait_for(lambda _: refused().get("sparkplug_rebirth_requests", 0) >= 3000, WAIT), refused()
        time.sleep(2.0)  # the last coalesced rebirth
        births = nbirths() - births_before
        assert 1 <= births <= MAX_NBIRTHS, births
        assert refused()["sparkplug_rebirths_coalesced"] >= 3000 - MAX_NBIRTHS
        assert daemon.terminate() == 0, daemon.output()[-3000:]
    finally:
        sub.close()
    log = daemon.output()
    # refusals are counted, not journalled one by one
    assert log.count("refused a command on") <= 4, log[-3000:]
