"""Parts end to end, with a real mosquitto: a trigger message over MQTT gets its part's verdict within the
deadline; a part whose camera is absent, and a part whose inference thread stalls, get ``no_result`` with the
default action ``reject`` by the deadline (never ``ok``); the stalled one's verdict comes later marked late;
a retained trigger is refused; the counts reach the stats topic."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

pytestmark = pytest.mark.usefixtures("clean_env")

SOLO_DEADLINE_MS = 400.0
PAIR_DEADLINE_MS = 300.0
SLACK_S = 0.25  # the deadline thread's lateness allowed on a loaded 2-core test machine


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("parts")
    frames, _ = part_sequence(50, 3, size=128, seed=21)
    return {
        "bundle": make_tiny_bundle(root / "bundle", size=128),
        "video": write_video(root / "v.avi", frames, fps=25),
    }


def parts_config(dev: str, broker: Broker, media: dict, tmp_path: Path) -> str:
    video = str(media["video"])
    cams = [
        {
            "name": "solo",
            "source": video,
            "loop": True,
            "fps": 25,
            "trigger": "message",
            "publish_mask": "never",
        },
        {
            "name": "left",
            "source": video,
            "loop": True,
            "fps": 25,
            "trigger": "message",
            "publish_mask": "never",
        },
        {"name": "right", "source": str(tmp_path / "no-such.avi"), "trigger": "message", "fault_after_s": 30},
    ]
    text = config_toml(dev, broker, media["bundle"], cams)
    text += f'[[parts]]\nname = "solo"\ncameras = ["solo"]\ndeadline_ms = {SOLO_DEADLINE_MS}\n'
    text += f'[[parts]]\nname = "pair"\ncameras = ["left", "right"]\ndeadline_ms = {PAIR_DEADLINE_MS}\n'
    return text


def part_docs(sub: Subscriber, prefix: str, name: str, part_id: str) -> list[tuple[float, dict]]:
    msgs = sub.on(f"{prefix}/part/{name}")
    return [(m.received_at, d) for m in msgs for d in [m.json()] if d["part_id"] == part_id]


def trigger(sub: Subscriber, prefix: str, camera: str, part_id: str, **kw: bool) -> float:
    sent = time.time()
    sub.publish(f"{prefix}/{camera}/trigger", json.dumps({"part_id": part_id}).encode(), **kw)
    return sent


def test_triggers_deadlines_and_no_result(broker: Broker, media: dict, tmp_path: Path) -> None:
    dev = f"parts-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, parts_config(dev, broker, media, tmp_path)).start()
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "solo")) >= 5, WAIT)

        # 1. a trigger over MQTT: the verdict of the next frame, on time
        sent = trigger(sub, prefix, "solo", "P-1")
        assert sub.wait_for(lambda m: bool(part_docs(sub, prefix, "solo", "P-1")), WAIT)
        [(arrived, doc)] = part_docs(sub, prefix, "solo", "P-1")
        assert doc["verdict"] in ("ok", "warn", "ng") and doc["late"] is False and doc["trigger"] == "message"
        assert doc["action"] == ("reject" if doc["verdict"] == "ng" else "pass")
        assert doc["elapsed_ms"] <= SOLO_DEADLINE_MS and arrived - sent < SOLO_DEADLINE_MS / 1000 + SLACK_S
        cam = doc["cameras"]["solo"]
        solo_results = {r["seq"]: r for r in results(sub, prefix, "solo")}
        assert cam["verdict"] == solo_results[cam["seq"]]["verdict"] == doc["verdict"]
        assert cam["score"] == solo_results[cam["seq"]]["score"]

        # 2. a part with an absent camera: no_result and reject at the deadline, never ok
        sent = trigger(sub, prefix, "left", "P-2")
        assert sub.wait_for(lambda m: bool(part_docs(sub, prefix, "pair", "P-2")), WAIT)
        [(arrived, doc)] = part_docs(sub, prefix, "pair", "P-2")
        if doc["verdict"] != "ng":  # ng on the left camera would reject on its own: also never ok
            assert (doc["verdict"], doc["action"], doc["late"]) == ("no_result", "reject", False)
        assert doc["cameras"]["right"]["verdict"] == "no_result" and "right: camera" in doc["reason"]
        assert doc["cameras"]["left"]["verdict"] in ("ok", "warn", "ng")
        assert PAIR_DEADLINE_MS <= doc["elapsed_ms"] <= PAIR_DEADLINE_MS + SLACK_S * 1000
        assert arrived - sent < PAIR_DEADLINE_MS / 1000 + SLACK_S + 0.2

        # 3. a stalled inference thread: no_result by the deadline all the same, the verdict later marked late
        stall = _stall(run)
        time.sleep(0.5)  # whatever was in the pipeline is out; the inference thread now hangs
        sent = trigger(sub, prefix, "solo", "P-3")
        assert sub.wait_for(lambda m: bool(part_docs(sub, prefix, "solo", "P-3")), WAIT)
        [(arrived, doc)] = part_docs(sub, prefix, "solo", "P-3")
        assert (doc["verdict"], doc["action"], doc["late"]) == ("no_result", "reject", False)
        assert "inference stalled" in doc["reason"], doc["reason"]
        assert arrived - sent < SOLO_DEADLINE_MS / 1000 + SLACK_S + 0.2
        stall.set()
        assert sub.wait_for(lambda m: len(part_docs(sub, prefix, "solo", "P-3")) == 2, WAIT)
        late = part_docs(sub, prefix, "solo", "P-3")[1][1]
        assert late["late"] is True and late["action"] == "reject" and late["verdict"] in ("ok", "warn", "ng")
        assert late["elapsed_ms"] > SOLO_DEADLINE_MS

        # 4. a retained trigger is refused (and cleared): no part opens
        trigger(sub, prefix, "solo", "P-old", retain=True)
        n_stats = len(sub.on(f"{prefix}/stats"))
        assert sub.wait_for(lambda m: len(sub.on(f"{prefix}/stats")) > n_stats + 1, WAIT)
        stats = sub.on(f"{prefix}/stats")[-1].json()
        assert stats["commands"]["rejected_retained"] >= 1 and not part_docs(sub, prefix, "solo", "P-old")
        assert stats["parts"]["pair"]["no_result"] + stats["parts"]["pair"]["ng"] == 1
        assert stats["parts"]["solo"]["no_result"] == 1 and stats["parts"]["solo"]["late"] == 1
        assert stats["parts"]["solo"]["triggered"] == 2
    finally:
        assert run.stop() == 0
        sub.close()


def _stall(run: InProcess) -> threading.Event:
    """Make the daemon's inference thread hang in its next batch until the returned event is set."""
    release = threading.Event()
    inference = run.daemon.inference
    score = inference.score

    def stalled(batch):  # type: ignore[no-untyped-def]
        release.wait(WAIT)
        return score(batch)

    inference.score = stalled  # type: ignore[method-assign]
    return release
