"""Fail-safe parts end to end, with a real mosquitto: a camera whose source goes away, a model switch and a
frame-triggered camera's frame dropped before it was scored each give ``no_result`` with the default action
``reject`` by the deadline, never ``ok``; the verdict that comes after the deadline is marked late and keeps
the default action; the counts reach the stats topic.

The camera is killed the way a camera is lost on a line: its video file is renamed away while it plays, so
the grabber's real reopen fails (``fault: cannot open``). The model switch is a real ``model/set``: its load
is held open (the recipe's load waits on an event), and while it loads the inference thread is held too, as
a switch that takes the device's accelerator or cores would hold it; the part's reason names the switch.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge.service.parts import DROPPED_IN_SLOT
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.edge.test_parts_e2e import SLACK_S, _stall, part_docs, trigger
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber, has_availability
from tests.helpers.tiny_bundle import default_reference, make_tiny_bundle
from training.synthetic import part_sequence, write_video

pytestmark = pytest.mark.usefixtures("clean_env")

DEADLINE_MS = 300.0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("failsafe")
    bundles = root / "bundles"
    for recipe, shift in (("A", 0.0), ("B", 40.0)):
        make_tiny_bundle(
            bundles / recipe, size=128, reference=np.clip(default_reference(128) + shift, 0, 255)
        )
    frames, _ = part_sequence(40, 3, size=128, seed=31)
    short, _ = part_sequence(8, 3, size=128, seed=32)  # loops every 0.3 s: the rename is noticed soon
    return {
        "bundles": bundles,
        "video": write_video(root / "v.avi", frames, fps=25),
        "short": write_video(root / "short.avi", short, fps=25),
    }


def failsafe_config(dev: str, broker: Broker, media: dict, camera_file: Path) -> str:
    cams = [
        {"name": "gone", "source": str(camera_file), "loop": True, "fps": 25, "trigger": "message",
         "fault_after_s": 30, "publish_mask": "never"},
        {"name": "swap", "source": str(media["video"]), "loop": True, "fps": 25, "trigger": "message",
         "publish_mask": "never"},
    ]  # fmt: skip
    text = config_toml(dev, broker, media["bundles"] / "A", cams)
    text = text.replace("[model]\n", f'[model]\nstore = "{media["bundles"]}"\n', 1)
    for name in ("gone", "swap"):
        text += f'[[parts]]\nname = "{name}"\ncameras = ["{name}"]\ndeadline_ms = {DEADLINE_MS}\n'
    return text


def test_a_lost_camera_and_a_model_switch_give_no_result_by_the_deadline(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    dev = f"failsafe-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    camera_file = tmp_path / "camera" / "gone.avi"
    camera_file.parent.mkdir()
    camera_file.write_bytes(media["short"].read_bytes())
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, failsafe_config(dev, broker, media, camera_file)).start()
    try:
        assert sub.wait_for(
            lambda m: len(results(sub, prefix, "gone")) >= 3 and len(results(sub, prefix, "swap")) >= 3, WAIT
        )
        # 1. the camera is lost: its parts close no_result at the deadline, naming the fault, and reject
        camera_file.rename(tmp_path / "parked.avi")
        lost = has_availability(f"{prefix}/gone/availability", "fault: cannot open", startswith=True)
        assert sub.wait_for(lost, WAIT)
        sent = trigger(sub, prefix, "gone", "G-1")
        assert sub.wait_for(lambda m: bool(part_docs(sub, prefix, "gone", "G-1")), WAIT)
        [(arrived, doc)] = part_docs(sub, prefix, "gone", "G-1")
        assert (doc["verdict"], doc["action"], doc["late"]) == ("no_result", "reject", False)
        assert doc["reason"].startswith("gone: camera fault: cannot open"), doc["reason"]
        assert DEADLINE_MS <= doc["elapsed_ms"] <= DEADLINE_MS + SLACK_S * 1000
        assert arrived - sent < DEADLINE_MS / 1000 + SLACK_S + 0.2

        # 2. a model switch whose load is held: the old model still scores, so a part gets its verdict
        release_load = threading.Event()
        changeover = run.daemon.changeover
        assert changeover is not None
        load = changeover._load

        def held_load(*args, **kwargs):  # type: ignore[no-untyped-def]
            release_load.wait(WAIT)
            return load(*args, **kwargs)

        changeover._load = held_load  # type: ignore[method-assign]
        sub.publish(f"{prefix}/swap/model/set", b"B")
        assert sub.wait_for(lambda m: _loading(sub, prefix) == "B", WAIT)
        trigger(sub, prefix, "swap", "S-1")
        assert sub.wait_for(lambda m: bool(part_docs(sub, prefix, "swap", "S-1")), WAIT)
        [(_, doc)] = part_docs(sub, prefix, "swap", "S-1")
        assert doc["verdict"] in ("ok", "warn", "ng") and doc["late"] is False

        # ... and when the switch holds the camera's results, no_result by the deadline, naming the switch
        stall = _stall(run)
        time.sleep(0.5)  # what was in the pipeline is out; the inference thread now hangs
        sent = trigger(sub, prefix, "swap", "S-2")
        assert sub.wait_for(lambda m: bool(part_docs(sub, prefix, "swap", "S-2")), WAIT)
        [(arrived, doc)] = part_docs(sub, prefix, "swap", "S-2")
        assert (doc["verdict"], doc["action"], doc["late"]) == ("no_result", "reject", False)
        assert doc["reason"] == "swap: model switch to B in progress", doc["reason"]
        assert arrived - sent < DEADLINE_MS / 1000 + SLACK_S + 0.2
        release_load.set()
        stall.set()
        # the frame captured for S-2 is scored after all: published late, the default action stands
        assert sub.wait_for(lambda m: len(part_docs(sub, prefix, "swap", "S-2")) == 2, WAIT)
        late = part_docs(sub, prefix, "swap", "S-2")[1][1]
        assert late["late"] is True and late["action"] == "reject" and late["verdict"] in ("ok", "warn", "ng")
        assert sub.wait_for(lambda m: _active(sub, prefix) == "B", WAIT)

        # counts in stats
        n_stats = len(sub.on(f"{prefix}/stats"))
        assert sub.wait_for(lambda m: len(sub.on(f"{prefix}/stats")) > n_stats + 1, WAIT)
        parts = sub.on(f"{prefix}/stats")[-1].json()["parts"]
        assert parts["gone"]["no_result"] == 1 and parts["gone"]["triggered"] == 1
        assert parts["gone"]["ok"] + parts["gone"]["warn"] + parts["gone"]["ng"] == 0
        assert (
            parts["swap"]["no_result"] == 1 and parts["swap"]["late"] == 1 and parts["swap"]["triggered"] == 2
        )
    finally:
        assert run.stop() == 0
        sub.close()
    assert not [d for _, d in part_docs(sub, prefix, "gone", "G-1") if d["verdict"] != "no_result"]


def _states(sub: Subscriber, prefix: str) -> list[dict]:
    return [m.json() for m in sub.on(f"{prefix}/swap/model/state") if m.payload]


def _loading(sub: Subscriber, prefix: str) -> str | None:
    states = _states(sub, prefix)
    return states[-1]["loading"]["recipe"] if states and states[-1]["loading"] else None


def _active(sub: Subscriber, prefix: str) -> str | None:
    states = _states(sub, prefix)
    return states[-1]["active"]["recipe"] if states and not states[-1]["loading"] else None


def test_a_frame_triggered_part_opens_at_capture_and_a_dropped_frame_gives_no_result(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    dev = f"framepart-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cam = {"name": "hw", "source": str(media["video"]), "loop": True, "fps": 25, "publish_mask": "never"}
    text = config_toml(dev, broker, media["bundles"] / "A", [cam])
    text += f'[[parts]]\nname = "hw"\ncameras = ["hw"]\ndeadline_ms = {DEADLINE_MS}\n'
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, text).start()

    def docs() -> list[dict]:
        return [m.json() for m in sub.on(f"{prefix}/part/hw")]

    try:
        assert sub.wait_for(lambda m: sum(d["verdict"] != "no_result" for d in docs()) >= 3, WAIT)
        stall = _stall(run)  # the backend hangs: frames keep coming and replace each other in the slot
        dropped = lambda m: any(d["verdict"] == "no_result" and not d["late"] for d in docs())  # noqa: E731
        assert sub.wait_for(dropped, WAIT)
        stall.set()
    finally:
        assert run.stop() == 0
        sub.close()
    missed = [d for d in docs() if d["verdict"] == "no_result" and not d["late"]]
    assert all(d["action"] == "reject" and d["trigger"] == "frame" for d in missed)
    assert any(d["reason"] == f"hw: {DROPPED_IN_SLOT}" for d in missed), [d["reason"] for d in missed]
    for d in missed:  # opened when the frame was read: its deadline ran from the capture
        assert (
            d["part_id"].startswith("hw:") and DEADLINE_MS <= d["elapsed_ms"] <= DEADLINE_MS + SLACK_S * 1000
        )
    ok = [d for d in docs() if d["verdict"] != "no_result" and not d["late"]]
    frame_ids = {int(d["part_id"].split(":")[1]) for d in ok}
    assert frame_ids == {d["cameras"]["hw"]["frame_id"] for d in ok}  # each scored frame its own part
    assert not frame_ids & {int(d["part_id"].split(":")[1]) for d in missed}
