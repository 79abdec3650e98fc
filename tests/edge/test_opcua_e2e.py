"""The OPC UA face end to end: the real daemon on a generated video, a real mosquitto, and node-opcua (an
independent client, tests/node/opcua_client.js) browsing VisionSystem, reading a camera's verdict, calling
Trigger, writing the threshold (a bad value refused with the MQTT text) and selecting a recipe; the MQTT
face reports each command on the same ``threshold/state`` / ``model/state`` / ``part`` topics."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.sparkplug import NODE_DIR
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

pytestmark = pytest.mark.usefixtures("clean_env")
pytest.importorskip("asyncua", reason="the OPC UA face needs asyncua (pip install 'edge-anomaly[opcua]')")

CLIENT = NODE_DIR / "opcua_client.js"


@pytest.fixture(scope="module")
def node_opcua() -> Path:
    if shutil.which("node") is None:
        pytest.skip(
            "node is not installed (the OPC UA face is checked with node-opcua, an independent client)"
        )
    if not (NODE_DIR / "node_modules" / "node-opcua").is_dir():
        pytest.skip("tests/node has no node-opcua: run scripts/setup.sh (npm ci --prefix tests/node)")
    return CLIENT


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("opcua")
    frames, _ = part_sequence(40, 3, size=96, seed=5)
    bundles = root / "bundles"
    for recipe in ("A", "B"):
        make_tiny_bundle(bundles / recipe, size=96)
    return {"bundles": bundles, "video": write_video(root / "v.avi", frames, fps=25)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_node_opcua_reads_triggers_and_writes_through_the_mqtt_command_path(
    broker: Broker, media: dict, node_opcua: Path, tmp_path: Path
) -> None:
    dev = f"opcua-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    cam = {"name": "line", "source": str(media["video"]), "loop": True, "fps": 25, "trigger": "message",
           "publish_mask": "never"}  # fmt: skip
    text = config_toml(
        dev, broker, media["bundles"] / "A", [cam], opcua={"enabled": True, "endpoint": endpoint}
    )
    text = text.replace("[model]\n", f'[model]\nstore = "{media["bundles"]}"\n', 1)
    text += '[[parts]]\nname = "item"\ncameras = ["line"]\ndeadline_ms = 400\n'
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 5, WAIT)
        state = sub.on(f"{prefix}/line/threshold/state")[-1].json()
        lo, hi = state["range"]
        bad = hi * 10 + 1
        # the refusal over MQTT, for the text the OPC UA write must give
        sub.publish(f"{prefix}/line/threshold/set", repr(bad).encode())
        assert sub.wait_for(
            lambda m: any(m.json().get("error") for m in sub.on(f"{prefix}/line/threshold/state")), WAIT
        )
        mqtt_error = [
            d["error"] for m in sub.on(f"{prefix}/line/threshold/state") if (d := m.json())["error"]
        ][0]
        good = round((lo + hi) / 2, 6)
        args = {"endpoint": endpoint, "camera": "line", "part": "item", "part_id": "P-7",
                "bad_threshold": bad, "good_threshold": good, "recipe": "B"}  # fmt: skip
        done = subprocess.run(
            ["node", str(node_opcua), json.dumps(args)], capture_output=True, text=True, timeout=120,
            cwd=NODE_DIR,
        )  # fmt: skip
        found = [line[len("RESULT ") :] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        out = json.loads(found[-1]) if found else {}
        assert done.returncode == 0 and "error" not in out, (done.stdout[-3000:], done.stderr[-3000:])

        # browse: the 40100-1-like structure
        assert out["vision"] == ["Cameras", "Parts", "Trigger"] and out["cameras"] == ["line"]
        assert out["parts"] == ["item"]
        assert {"LastVerdict", "Score", "Threshold", "RecipeId", "State"} <= set(out["camera_variables"])
        # read: the values of the published results (no second scoring path)
        before = out["before"]
        assert before["LastVerdict"] in ("ok", "warn", "ng") and before["State"] == "online"
        assert math.isfinite(before["Score"]) and before["RecipeId"] == "A"
        scores = {r["score"] for r in results(sub, prefix, "line")}
        assert before["Score"] in scores
        # Trigger: the part opens and closes with a verdict, published on <prefix>/part/item too
        assert out["trigger"] == {"status": "Good", "message": ""}
        assert out["trigger_bad"]["status"] == "BadInvalidArgument"
        assert "part id" in out["trigger_bad"]["message"] == out["trigger_bad_error"]
        parts = [d for m in sub.on(f"{prefix}/part/item") if (d := m.json())["part_id"] == "P-7"]
        assert parts and out["part"]["PartId"] == "P-7"
        assert (
            out["part"]["LastVerdict"] == parts[0]["verdict"] and out["part"]["Action"] == parts[0]["action"]
        )
        # threshold: the bad value refused with the MQTT text, the good one applied and reported over MQTT
        assert out["write_bad"]["status"] == "BadOutOfRange"
        assert out["write_bad"]["error"] == mqtt_error and out["write_bad"]["threshold"] == state["threshold"]
        assert out["write_good"] == {"status": "Good", "threshold": good, "error": ""}
        assert sub.wait_for(
            lambda m: sub.on(f"{prefix}/line/threshold/state")[-1].json()["threshold"] == good, WAIT
        )
        errors = [d["error"] for m in sub.on(f"{prefix}/line/threshold/state") if (d := m.json())["error"]]
        assert errors == [mqtt_error, mqtt_error]  # the MQTT refusal, then the OPC UA one: one text
        # recipe: the camera switches through model/set's path; model/state says so
        assert out["recipe"] == {"status": "Good", "error": ""}
        assert sub.wait_for(
            lambda m: any((d := x.json())["active"]["recipe"] == "B" and d["loading"] is None
                          for x in sub.on(f"{prefix}/line/model/state")), WAIT,
        )  # fmt: skip
        n_stats = len(sub.on(f"{prefix}/stats"))
        assert sub.wait_for(lambda m: len(sub.on(f"{prefix}/stats")) > n_stats, WAIT)
        commands = sub.on(f"{prefix}/stats")[-1].json()["commands"]
        assert commands["accepted"] >= 3 and commands["rejected_invalid"] >= 3
    finally:
        assert run.stop() == 0
        sub.close()
