"""The whole daemon against a real broker, a real ONNX bundle and real video files.

Videos come from training.synthetic (parts with known defects at known frames), the bundle from
tests/helpers/tiny_bundle.py (real ONNX run by onnxruntime). Every wait is on a condition over received
messages (or notify datagrams) with a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import load_config
from edge.service.daemon import EXIT_UNDELIVERED, Daemon, build
from tests.edge.test_mqtt import persistent_broker
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Received, Subscriber, availability_text, has_availability
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0
DEFECT_EVERY = 3  # frames 2, 5, 8, ... are defective


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    bundle = make_tiny_bundle(root / "bundle", size=128)
    frames, masks = part_sequence(24, DEFECT_EVERY, size=128, seed=11)
    video = write_video(root / "parts.avi", frames, fps=10)
    long_frames, _ = part_sequence(45, DEFECT_EVERY, size=128, seed=12)
    long_video = write_video(root / "parts-long.avi", long_frames, fps=10)
    return {"bundle": bundle, "video": video, "masks": masks, "long_video": long_video, "n": len(frames)}


def config_toml(prefix_id: str, broker: Broker, bundle: Path, cameras: list[dict], **sections: dict) -> str:
    """A config file as an operator would write it."""
    lines = [
        f'device_id = "{prefix_id}"',
        'log_level = "INFO"',
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        "stats_interval_s = 0.3",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in sections.get("mqtt", {}).items()]
    lines += ["[model]", f'bundle = "{bundle}"', "intra_op_threads = 1"]
    for name, values in sections.items():
        if name == "mqtt":
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    for cam in cameras:
        lines.append("[[cameras]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in cam.items()]
    return "\n".join(lines) + "\n"


class InProcess:
    """The daemon built from a config file and run in a thread, as edge-run would run it."""

    def __init__(self, tmp_path: Path, text: str) -> None:
        path = tmp_path / "edge.toml"
        path.write_text(text, encoding="utf-8")
        self.daemon: Daemon = build(load_config(path))
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.rc = self.daemon.run_until_stopped()

    def start(self) -> InProcess:
        self.thread.start()
        return self

    def stop(self) -> int | None:
        self.daemon.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.rc


def results(sub: Subscriber, prefix: str, camera: str) -> list[dict]:
    return [m.json() for m in sub.on(f"{prefix}/{camera}/result")]


def status_states(sub: Subscriber, prefix: str) -> list[str]:
    return [m.json()["state"] for m in sub.on(f"{prefix}/status")]


# --- results, masks, faults ----------------------------------------------------------------------------


def test_verdicts_masks_and_faults(broker: Broker, media: dict, tmp_path: Path) -> None:
    dev = f"e2e-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [
        {"name": "line", "source": str(media["video"]), "fps": 12, "publish_heatmap": True},
        {"name": "missing", "source": str(tmp_path / "no-such-video.avi"), "fault_after_s": 30},
    ]
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    # QoS 1 for images too: frames scored before the first connect are queued, not dropped like QoS 0.
    text = config_toml(dev, broker, media["bundle"], cams, mqtt={"qos_mask": 1})
    run = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
        missing = has_availability(f"{prefix}/missing/availability", "fault: cannot open", startswith=True)
        assert sub.wait_for(missing, WAIT)
        assert sub.wait_for(lambda m: any(x.topic == f"{prefix}/stats" for x in m), WAIT)
    finally:
        assert run.stop() == 0
    assert sub.wait_for(lambda m: "offline" in status_states(sub, prefix), WAIT)
    sub.close()

    assert status_states(sub, prefix)[0] == "online"
    online = sub.on(f"{prefix}/status")[0].json()
    assert online["model"]["id"].startswith("tiny-reference@") and set(online["cameras"]) == {
        "line",
        "missing",
    }
    assert online["device_id"] == dev and online["model"]["signer"] is None
    avail = [availability_text(m) for m in sub.on(f"{prefix}/line/availability") if m.payload]
    assert avail[-1] == "offline" and "online" in avail
    assert not any(m.retain for m in sub.under(prefix) if "/availability" in m.topic and m.payload)

    got = results(sub, prefix, "line")
    ids = [r["frame_id"] for r in got]
    assert len(ids) == len(set(ids)), "a frame was scored twice"
    assert len(got) >= media["n"] // 2, f"only {len(got)} of {media['n']} frames scored"
    defect_ids = {i for i, m in enumerate(media["masks"]) if m is not None}
    assert len(defect_ids & set(ids)) >= 3
    for r in got:
        assert r["schema"] == 2 and r["threshold"] == 4.0 and r["threshold_source"] == "manifest"
        assert r["device_id"] == dev and r["frame_key"] == f"{r['run_id']}-{r['seq']}"
        assert r["anomalous"] == (r["frame_id"] in defect_ids), r
        assert r["anomalous"] == (r["score"] > r["threshold"])
        assert set(r["latency_ms"]) == {"capture_to_infer", "inference", "postprocess", "total"}
        assert r["model"]["precision"] == "fp32" and r["frame_size"] == [128, 128]
        if r["anomalous"]:
            assert r["regions"] and r["defect_area"] > 0
    assert results(sub, prefix, "missing") == []  # frames that never arrived are never scored

    assert [r["seq"] for r in got] == list(range(len(got)))  # nothing lost: no gap in the sequence
    masks = {m.topic: m for m in sub.under(f"{prefix}/line/mask")}
    by_key = {r["frame_key"]: r for r in got}
    anomalous = [r for r in got if r["anomalous"]]
    assert set(masks) == {r["mask"]["topic"] for r in anomalous}  # publish_mask = "anomalous"
    assert all(r["mask"] is None for r in got if not r["anomalous"])
    for r in anomalous:
        fid = r["frame_id"]
        msg = masks[r["mask"]["topic"]]
        assert (
            by_key[msg.topic.rsplit("/", 1)[1]] is r
        )  # the frame key in the topic pairs it (MQTT 3.1.1 too)
        assert msg.properties["ContentType"] == "image/png"
        assert msg.properties["CorrelationData"] == r["frame_key"].encode()
        pred = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_UNCHANGED) > 0
        truth = media["masks"][fid] > 0
        assert pred.shape == truth.shape == (128, 128)
        overlap = (pred & truth).sum() / truth.sum()
        assert overlap > 0.3, f"frame {fid}: mask covers {overlap:.2f} of the true defect"
        assert pred.mean() < 0.5  # not just "everything"
    heat = sub.under(f"{prefix}/line/heatmap")
    assert len(heat) == len(got), (len(heat), len(got), [m.properties for m in heat])
    assert cv2.imdecode(np.frombuffer(heat[0].payload, np.uint8), cv2.IMREAD_COLOR).shape == (128, 128, 3)

    stats = [m.json() for m in sub.on(f"{prefix}/stats")]
    assert {"fps", "drops", "latency_ms", "queues", "cameras", "mqtt"} <= set(stats[-1])
    assert set(stats[-1]["drops"]) >= {"camera_slots", "inference", "mqtt_result", "mqtt_mask"}


# --- threshold/set over MQTT ---------------------------------------------------------------------------


def test_threshold_set_round_trips(broker: Broker, media: dict, tmp_path: Path) -> None:
    dev = f"thr-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [
        {"name": "a", "source": str(media["video"]), "fps": 15, "loop": True, "publish_mask": "never"},
        {
            "name": "fixed",
            "source": str(media["video"]),
            "fps": 15,
            "loop": True,
            "threshold": 2.5,
            "publish_mask": "never",
        },
    ]
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    # a configured range, wide enough to make every part bad (-50) or good (900)
    wide = {"threshold_min": -1000.0, "threshold_max": 1000.0}
    run = InProcess(tmp_path, config_toml(dev, broker, media["bundle"], cams, postprocess=wide)).start()
    state_topic = f"{prefix}/a/threshold/state"

    def states() -> list[dict]:
        return [m.json() for m in sub.on(state_topic)]

    def set_and_wait(payload: bytes, n_states: int) -> dict:
        sub.publish(f"{prefix}/a/threshold/set", payload)
        assert sub.wait_for(lambda m: len(states()) >= n_states, WAIT), payload
        return states()[-1]

    def value(doc: dict) -> tuple:
        return doc["threshold"], doc["source"], doc["error"]

    def wait_result_with(threshold: float) -> None:
        assert sub.wait_for(
            lambda m: any(r["threshold"] == threshold for r in results(sub, prefix, "a")), WAIT
        )

    try:
        assert sub.wait_for(lambda m: len(states()) >= 1 and len(results(sub, prefix, "a")) >= 1, WAIT)
        assert value(states()[0]) == (4.0, "manifest", None) and states()[0]["set_at"] is None
        assert value(set_and_wait(b"-50", 2)) == (-50.0, "mqtt", None)
        wait_result_with(-50.0)
        for n, bad in enumerate([b"abc", b"nan", b"5000", b"1" * 65, b'{"threshold": true}'], start=3):
            refused = set_and_wait(bad, n)
            assert refused["threshold"] == -50.0 and refused["error"], bad
        assert value(set_and_wait(b'{"threshold": 900}', 8)) == (900.0, "mqtt", None)
        wait_result_with(900.0)
        sub.publish(f"{prefix}/fixed/threshold/set", b"1.0")
        assert sub.wait_for(
            lambda m: any(x.json()["error"] for x in sub.on(f"{prefix}/fixed/threshold/state"))
        )
    finally:
        assert run.stop() == 0
    sub.close()

    fixed_state = [m.json() for m in sub.on(f"{prefix}/fixed/threshold/state")]
    assert fixed_state[-1]["threshold"] == 2.5 and "fixed in the config" in fixed_state[-1]["error"]
    assert {r["threshold"] for r in results(sub, prefix, "fixed")} == {2.5}

    got = results(sub, prefix, "a")
    seen = [r["threshold"] for r in got]
    phases = [t for i, t in enumerate(seen) if i == 0 or seen[i - 1] != t]
    assert phases == [4.0, -50.0, 900.0], "a refused value changed the threshold, or a change was undone"
    for r in got:
        assert r["anomalous"] == (r["score"] > r["threshold"])
    assert all(r["anomalous"] for r in got if r["threshold"] == -50.0)  # good parts too: verdicts changed
    assert not any(r["anomalous"] for r in got if r["threshold"] == 900.0)  # defects too


# --- broker stopped and restarted -----------------------------------------------------------------------


def test_broker_restart_delivers_queued_results_in_order(media: dict, tmp_path: Path) -> None:
    broker = persistent_broker(tmp_path / "mosq").start()
    bound = 4
    dev = f"rst-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media["long_video"]), "fps": 15, "publish_mask": "never"}]
    sub = Subscriber(
        broker.host,
        broker.port,
        [f"{prefix}/+/result", f"{prefix}/stats"],
        v5=False,
        client_id=f"sub-{dev}",
        persistent=True,
    )
    run = InProcess(
        tmp_path, config_toml(dev, broker, media["bundle"], cams, mqtt={"offline_queue_max": bound})
    )
    ended = threading.Event()
    source = run.daemon.cameras[0].source
    forward = source._on_state

    def spy(camera: str, state: str, reason: str) -> None:
        forward(camera, state, reason)
        if state == "ended":
            ended.set()

    source._on_state = spy
    run.start()
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 3, WAIT)
        broker.stop()
        before = [r["frame_id"] for r in results(sub, prefix, "line")]
        assert ended.wait(WAIT), "the video did not end"
        dropped = run.daemon.transport.snapshot()["dropped"]["result"]  # type: ignore[index]
        assert dropped > 0, "the outage was too short to overflow the queue"
        broker.start()

        def complete(msgs: list[Received]) -> bool:
            got = {r["frame_id"] for r in results(sub, prefix, "line")}
            return len(got) + dropped >= run.daemon.stats.count("frames_scored")

        assert sub.wait_for(complete, WAIT)
        assert sub.wait_for(
            lambda m: any(
                x.topic.endswith("/stats") and x.json()["drops"]["mqtt_result"] == dropped for x in m
            ),
            WAIT,
        )
    finally:
        rc = run.stop()
        sub.close()
        broker.stop()
    assert rc == EXIT_UNDELIVERED and run.daemon.undelivered_results == dropped  # lost results: not a success
    ids = [r["frame_id"] for r in results(sub, prefix, "line")]
    assert len(set(ids)) + dropped == run.daemon.stats.count("frames_scored")
    after = list(dict.fromkeys(ids[len(before) :]))  # QoS 1 may repeat one in flight at the outage
    after = [i for i in after if i not in before]
    assert after == sorted(after), f"delivered out of order after the reconnect: {after}"
    # In flight and queued share the bound; one in flight at the outage may have reached us already.
    assert len(after) >= bound - 1


# --- subprocess: Last Will on kill -9, watchdog ------------------------------------------------------


def spawn(config: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.service.cli", "--config", str(config), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_kill_9_leaves_status_offline_via_last_will(
    broker: Broker, media: dict, tmp_path: Path, procs: list[subprocess.Popen]
) -> None:
    dev = f"kill-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cfg = tmp_path / "edge.toml"
    cams = [{"name": "line", "source": str(media["video"]), "loop": True, "fps": 10}]
    cfg.write_text(config_toml(dev, broker, media["bundle"], cams), encoding="utf-8")
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/status", f"{prefix}/line/result"])
    procs.append(proc := spawn(cfg))
    try:
        assert sub.wait_for(
            lambda m: "online" in status_states(sub, prefix) and results(sub, prefix, "line"), WAIT
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda m: status_states(sub, prefix)[-1] == "offline", WAIT)
    finally:
        sub.close()
    will = sub.on(f"{prefix}/status")[-1].json()
    assert will["reason"] == "connection lost" and will["model"]["id"].startswith("tiny-reference@")
    # A fresh subscriber to everything the device has: nothing retained may say it or a camera is online.
    late = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    try:
        late.barrier()  # retained messages are delivered before the barrier comes back
    finally:
        late.close()
    retained = [m for m in late.under(prefix) if m.retain]
    assert [m.topic for m in retained if m.topic.endswith("/status")] == [f"{prefix}/status"]
    for m in retained:
        assert not m.topic.endswith("/availability"), m  # availability is never retained
        if m.topic.endswith("/status"):
            doc = m.json()
            assert doc["state"] == "offline" and doc["cameras"]["line"]["state"] == "offline", doc


def test_watchdog_only_while_frames_flow_and_clean_sigterm(
    broker: Broker, media: dict, tmp_path: Path, procs: list[subprocess.Popen]
) -> None:
    dev = f"wd-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "edge.toml"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 12}]
    secret = "pw-SECRET-4711"  # the broker allows anonymous clients and ignores it; it must never be logged
    text = config_toml(
        dev,
        broker,
        media["bundle"],
        cams,
        health={"stall_after_s": 0.6},
        mqtt={"username": "edge", "password": secret},
    )
    cfg.write_text(text.replace('log_level = "INFO"', 'log_level = "DEBUG"'), encoding="utf-8")
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(WAIT)
    interval = 0.15  # WATCHDOG_USEC / 2
    notify = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "300000"}
    procs.append(proc := spawn(cfg, "--keep-running", env=notify))  # up after the video ends: the stall
    got: list[str] = []

    def until(prefix_: str) -> None:
        while not any(line.startswith(prefix_) for line in got):
            got.extend(sock.recv(4096).decode().split("\n"))

    try:
        until("READY=1")
        assert not any(g == "WATCHDOG=1" for g in got)  # nothing is petted before the first inference
        until("WATCHDOG=1")
        until("STATUS=stalled")  # the video ended and nothing was scored for stall_after_s
        stalled_at = len(got)
        sock.settimeout(4 * interval)  # watch a few watchdog periods: the pings must stay away
        try:
            while True:
                got.extend(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            pass
        assert "WATCHDOG=1" not in got[stalled_at:]
        sock.settimeout(WAIT)
        proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        out, _ = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, out.decode()[-2000:]
    finally:
        sock.close()
    assert b"stopped cleanly" in out
    assert secret.encode() not in out
    assert got.count("WATCHDOG=1") >= 1
    assert got.index("READY=1") < got.index("WATCHDOG=1") < got.index("STOPPING=1")


def test_duration_limit_stops_cleanly(broker: Broker, media: dict, tmp_path: Path) -> None:
    from edge.service.cli import main

    dev = f"dur-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cfg = tmp_path / "edge.toml"
    cams = [{"name": "line", "source": str(media["video"]), "loop": True, "fps": 20}]
    cfg.write_text(config_toml(dev, broker, media["bundle"], cams), encoding="utf-8")
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/status", f"{prefix}/line/availability"])
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        assert main(["--config", str(cfg), "--duration", "0.5", "--log-format", "json"]) == 0
        # model.opencv_threads' default: OpenCV's own worker threads leave the cores to the backend
        assert cv2.getNumThreads() == 1
        assert sub.wait_for(lambda m: "offline" in status_states(sub, prefix), WAIT)
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "offline"), WAIT)
    finally:
        sub.close()
        cv2.setNumThreads(opencv_threads)
    states = status_states(sub, prefix)
    assert states[0] == "online" and states[-1] == "offline" and set(states) == {"online", "offline"}
    assert sub.on(f"{prefix}/status")[-1].json()["reason"] == "shutdown"


def test_startup_errors_exit_3_and_config_errors_exit_2(broker: Broker, media: dict, tmp_path: Path) -> None:
    from edge.service.cli import EXIT_CONFIG, EXIT_STARTUP, main

    cams = [{"name": "line", "source": str(media["video"])}]
    cfg = tmp_path / "edge.toml"
    cfg.write_text(config_toml("x", broker, tmp_path / "no-bundle", cams), encoding="utf-8")
    assert main(["--config", str(cfg)]) == EXIT_STARTUP
    cfg.write_text(config_toml("x", broker, media["bundle"], cams), encoding="utf-8")
    assert main(["--config", str(cfg), "--set", "model.precision=int8"]) == EXIT_STARTUP  # not in this bundle
    missing_secret = ["--set", "mqtt.password_file=/nonexistent/secret"]
    assert main(["--config", str(cfg), *missing_secret]) == EXIT_CONFIG


def test_an_unreachable_broker_is_named_and_lost_results_exit_non_zero(
    media: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from edge.service import daemon as daemon_mod
    from edge.service.cli import EXIT_UNDELIVERED, main

    with socket.socket() as s:  # a port nobody listens on: every connect is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nobody = SimpleNamespace(host="127.0.0.1", port=port)
    cams = [{"name": "line", "source": str(media["video"]), "loop": True, "fps": 20}]
    cfg = tmp_path / "edge.toml"
    cfg.write_text(config_toml("gone", nobody, media["bundle"], cams), encoding="utf-8")  # type: ignore[arg-type]
    caplog.set_level(logging.INFO)
    assert EXIT_UNDELIVERED == daemon_mod.EXIT_UNDELIVERED != 0
    assert main(["--config", str(cfg), "--max-frames", "6"]) == EXIT_UNDELIVERED
    lines = [r.getMessage() for r in caplog.records]
    refused = [m for m in lines if f"127.0.0.1:{port}: cannot connect" in m]
    assert len(refused) == 1 and "refused" in refused[0].lower(), lines  # one line per state change
    final = [r for r in caplog.records if "never reached broker" in r.getMessage()]
    assert len(final) == 1 and final[0].levelno == logging.ERROR
    n = int(final[0].getMessage().split()[0])
    assert n >= 6 and f"127.0.0.1:{port}" in final[0].getMessage()


def test_every_result_delivered_exits_0(broker: Broker, media: dict, tmp_path: Path) -> None:
    from edge.service.cli import main

    cams = [{"name": "line", "source": str(media["video"]), "loop": True, "fps": 20}]
    cfg = tmp_path / "edge.toml"
    cfg.write_text(config_toml(f"ok-{uuid.uuid4().hex[:6]}", broker, media["bundle"], cams), encoding="utf-8")
    assert main(["--config", str(cfg), "--max-frames", "6"]) == 0


# --- large MJPEG frames, slow postprocess ----------------------------------------------------------------


def test_large_mjpeg_frames_and_slow_postprocess_lose_nothing(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    """256x256 camera frames into a 128x128 model: decoded at half scale (JPEG DCT scaling), masks still land
    on the defect in camera pixels; a postprocess slower than inference delays results but drops none."""
    frames, masks = part_sequence(18, DEFECT_EVERY, size=256, seed=13)
    video = write_video(tmp_path / "big.avi", frames, fps=20)
    dev = f"big-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(video)}]
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, config_toml(dev, broker, media["bundle"], cams, mqtt={"qos_mask": 1}))
    decoded_sizes: list[tuple[int, ...]] = []
    model = run.daemon.models.active("line")  # postprocess belongs to the model that scored the frame
    prepare, post = run.daemon.inference._prepare, model.post
    release = threading.Event()

    def recording_prepare(batch):  # type: ignore[no-untyped-def]
        out = prepare(batch)
        decoded_sizes.extend(f.image.shape if f.image is not None else (0,) for _, f, _, _ in out)
        return out

    def slow_post(*args, **kwargs):  # type: ignore[no-untyped-def]
        release.wait(0.05)  # never set: each frame's postprocess takes 50 ms, slower than the tiny model
        return post(*args, **kwargs)

    run.daemon.inference._prepare = recording_prepare  # type: ignore[method-assign]
    model.post = slow_post  # type: ignore[assignment]
    run.start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
    finally:
        assert run.stop() == 0
    scored = run.daemon.stats.count("frames_scored")
    assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= scored, WAIT)
    sub.close()

    got = results(sub, prefix, "line")
    ids = [r["frame_id"] for r in got]
    # every frame that left the backend was published, in order
    assert len(got) == scored == run.daemon._submitted > 0 and ids == sorted(ids), ids
    assert decoded_sizes and all(s == (0,) for s in decoded_sizes)  # never a full-size decode
    defect_ids = {i for i, m in enumerate(masks) if m is not None}
    png = {m.topic: m.payload for m in sub.under(f"{prefix}/line/mask")}
    checked = 0
    for r in got:
        assert r["frame_size"] == [256, 256] and r["anomalous"] == (r["frame_id"] in defect_ids), r
        if r["anomalous"]:
            pred = cv2.imdecode(np.frombuffer(png[r["mask"]["topic"]], np.uint8), cv2.IMREAD_UNCHANGED) > 0
            truth = masks[r["frame_id"]] > 0
            assert pred.shape == truth.shape == (256, 256)
            assert (pred & truth).sum() / truth.sum() > 0.3 and pred.mean() < 0.5
            checked += 1
    assert checked >= 2


def test_black_mjpeg_frames_are_never_scored_and_a_black_camera_faults(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    """MJPEG frames are checked only when scored: black ones are skipped and counted there, and a camera
    sending nothing else goes to fault after fault_after_s, though its packets keep arriving."""
    frames, _ = part_sequence(16, DEFECT_EVERY, size=128, seed=14)
    black_ids = {3, 4, 9}
    for i in black_ids:
        frames[i] = np.zeros_like(frames[i])
    video = write_video(tmp_path / "some-black.avi", frames, fps=20)
    dark = write_video(tmp_path / "all-black.avi", [np.zeros((128, 128, 3), np.uint8)] * 4, fps=20)
    dev = f"blk-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [
        {"name": "line", "source": str(video)},
        {"name": "dark", "source": str(dark), "loop": True, "fault_after_s": 0.5},
    ]
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, config_toml(dev, broker, media["bundle"], cams)).start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
        dark_fault = "fault: only black or undecodable frames for 0.5 s"
        assert sub.wait_for(has_availability(f"{prefix}/dark/availability", dark_fault), WAIT)
    finally:
        assert run.stop() == 0
    snapshot = run.daemon.snapshot()
    sub.close()

    ids = {r["frame_id"] for r in results(sub, prefix, "line")}
    assert ids and not ids & black_ids
    assert len(ids) >= (len(frames) - len(black_ids)) // 2
    assert results(sub, prefix, "dark") == []
    cameras = snapshot["cameras"]
    assert cameras["dark"]["black_frames"] > 0 and cameras["dark"]["state"] == "offline"
    assert snapshot["drops"]["undecodable"] == 0  # black is not corrupt
