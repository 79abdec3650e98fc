"""A retained command published while the daemon is connected is refused, counted and cleared, as one left
on the broker before it connected is (tests/edge/test_contract_e2e.py). The faces subscribe with MQTT 5
retain-as-published, so the retain flag survives live delivery and the one guard
(edge.commands.CommandDesk) sees it. Before, it became the live threshold at once and stayed on the broker.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("retained-live")
    frames, _ = part_sequence(20, 3, size=64, seed=5)
    return {
        "bundle": make_tiny_bundle(root / "bundle", size=64),
        "video": write_video(root / "parts.avi", frames, fps=10),
    }


def test_a_retained_set_published_live_is_refused_and_cleared(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    dev = f"live-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    set_topic, state_topic = f"{prefix}/line/threshold/set", f"{prefix}/line/threshold/state"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 20, "loop": True, "publish_mask": "never"}]
    text = f'state_dir = "{tmp_path / "state"}"\n' + config_toml(dev, broker, media["bundle"], cams)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, text).start()

    def retained_refusals() -> int:
        return max((s.json()["commands"]["rejected_retained"] for s in sub.on(f"{prefix}/stats")), default=0)

    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 3, WAIT)
        sub.publish(set_topic, b"7.5", retain=True)  # live, while the daemon is connected
        assert sub.wait_for(lambda m: retained_refusals() >= 1, WAIT)
        n = len(results(sub, prefix, "line"))
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= n + 3, WAIT)
        sub.publish(set_topic, b"2.5")  # an operator's set, not retained: applied
        assert sub.wait_for(lambda m: any(s.json()["threshold"] == 2.5 for s in sub.on(state_topic)), WAIT)
    finally:
        assert run.stop() == 0
    sub.close()
    assert {r["threshold"] for r in results(sub, prefix, "line")} <= {4.0, 2.5}  # never 7.5
    assert all(m.json()["threshold"] != 7.5 for m in sub.on(state_topic))
    fresh = Subscriber(broker.host, broker.port, [set_topic])  # cleared: nothing retained on the topic
    try:
        fresh.barrier()
    finally:
        fresh.close()
    assert fresh.on(set_topic) == []
