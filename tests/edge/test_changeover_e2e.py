"""Changeover end to end, with a real mosquitto: recipes switched during a 25 fps video lose no frame and
score none twice, each result names (and was really scored by) its model; refused recipes leave the old
model running; SIGHUP applies a changed config; memory returns to one model after a swap.

Recipes are tiny bundles (tests/helpers/tiny_bundle.py) whose "reference part" differs, so the raw score
of a frame tells which model scored it: each result's raw score is recomputed here from the video frame
with the reference of the model the result names.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.trust.manifest import MANIFEST_NAME, sha256_file
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results, spawn
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber, has_availability
from tests.helpers.tiny_bundle import default_reference, make_tiny_bundle, reference_scores
from training.synthetic import part_sequence, write_video

SIZE = 128
FPS = 25
N_FRAMES = 200  # 8 s at 25 fps: room for two switches while the video plays


def reference_of(recipe: str) -> np.ndarray:
    shift = {"A": 0.0, "B": 40.0, "E": -30.0}[recipe]
    return np.clip(default_reference(SIZE) + shift, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recipes")
    bundles = root / "bundles"
    for recipe in ("A", "B"):
        make_tiny_bundle(bundles / recipe, size=SIZE, reference=reference_of(recipe))
    # C: A's bundle with one byte of its model changed (fails verification)
    shutil.copytree(bundles / "A", bundles / "C")
    onnx_c = bundles / "C" / "model.fp32.onnx"
    data = bytearray(onnx_c.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_c.write_bytes(bytes(data))
    # D: hashes right, but its model takes 128x128 images while its manifest says 96x96 (fails to load)
    make_tiny_bundle(bundles / "D", size=96)
    shutil.copyfile(bundles / "A" / "model.fp32.onnx", bundles / "D" / "model.fp32.onnx")
    manifest = json.loads((bundles / "D" / MANIFEST_NAME).read_text())
    manifest["precisions"]["fp32"]["sha256"] = sha256_file(bundles / "D" / "model.fp32.onnx")
    (bundles / "D" / MANIFEST_NAME).write_text(json.dumps(manifest))
    frames, _ = part_sequence(N_FRAMES, 5, size=SIZE, seed=51)
    video = write_video(root / "parts.avi", frames, fps=FPS)
    return {"bundles": bundles, "video": video}


def video_frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def model_states(sub: Subscriber, prefix: str, camera: str = "line") -> list[dict]:
    return [m.json() for m in sub.on(f"{prefix}/{camera}/model/state") if m.payload]


def active_is(sub: Subscriber, prefix: str, recipe: str, camera: str = "line") -> bool:
    states = model_states(sub, prefix, camera)
    return bool(states) and states[-1]["active"]["recipe"] == recipe and states[-1]["loading"] is None


def config_for(dev: str, broker: Broker, bundles: Path, camera: dict, **sections: dict) -> str:
    text = config_toml(dev, broker, bundles / "A", [camera], **sections)
    return text.replace("[model]\n", f'[model]\nstore = "{bundles}"\n', 1)


def test_switch_and_rollback_during_a_25fps_video_lose_and_repeat_nothing(
    broker: Broker, store: dict, tmp_path: Path
) -> None:
    dev = f"swap-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cam = {"name": "line", "source": str(store["video"]), "fps": FPS, "publish_mask": "never"}
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, config_for(dev, broker, store["bundles"], cam)).start()
    set_topic = f"{prefix}/line/model/set"
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 30, WAIT)
        sub.publish(set_topic, b"B")
        assert sub.wait_for(lambda m: active_is(sub, prefix, "B"), WAIT)
        n_switch = len(results(sub, prefix, "line"))
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= n_switch + 30, WAIT)
        sub.publish(set_topic, json.dumps({"rollback": True}).encode())
        assert sub.wait_for(
            lambda m: active_is(sub, prefix, "A") and len(model_states(sub, prefix)) > 3, WAIT
        )
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
        assert sub.wait_for(lambda m: any(s.json()["cameras"]["line"]["state"] == "ended"
                                          for s in sub.on(f"{prefix}/stats")), WAIT)  # fmt: skip
    finally:
        assert run.stop() == 0
    sub.close()
    got = results(sub, prefix, "line")
    stats = [m.json() for m in sub.on(f"{prefix}/stats")][-1]

    # no result lost, none repeated; a frame id missing only where the camera slot dropped a frame (counted):
    # between two results, or before the first one (frame ids count from 0; a loaded machine can replace
    # the first frames in the slot while the model is still loading)
    assert [r["seq"] for r in got] == list(range(len(got)))
    ids = [r["frame_id"] for r in got]
    assert ids == sorted(set(ids))
    gaps = ids[0] + sum(b - a - 1 for a, b in zip(ids, ids[1:], strict=False))
    assert gaps == stats["cameras"]["line"]["frames_dropped"] == stats["drops"]["camera_slots"]
    assert stats["drops"]["inference"] == 0 and stats["errors"]["inference"] == 0

    # one model per stretch: A, then B, then A again (two switch points, each between two frames)
    ids_a = {r["model"]["id"] for r in got[:10]}
    recipes = ["A" if r["model"]["id"] in ids_a else "B" for r in got]
    runs = [recipes[0]] + [b for a, b in zip(recipes, recipes[1:], strict=False) if a != b]
    assert runs == ["A", "B", "A"], runs

    # each result was really scored by the model it names
    frames = video_frames(store["video"])
    raw = {rec: reference_scores(np.stack(frames), reference_of(rec))[0] for rec in ("A", "B")}
    for r, rec in zip(got, recipes, strict=True):
        other = "B" if rec == "A" else "A"
        mine, theirs = raw[rec][r["frame_id"]], raw[other][r["frame_id"]]
        assert abs(r["raw_score"] - mine) < 0.25 * abs(mine - theirs), (r["frame_id"], rec, r["raw_score"])

    # retained state: A again, B is what a rollback would return to, one model in memory
    state = model_states(sub, prefix)[-1]
    assert state["active"]["recipe"] == "A" and state["previous"] == "B" and state["resident"] == 1
    assert state["last_error"] is None and set(state["recipes"]) >= {"A", "B", "C", "D"}
    assert run.daemon.models.peak_resident == 2 and run.daemon.models.resident() == 1
    loading = [s["loading"] for s in model_states(sub, prefix) if s["loading"]]
    loading = [x for i, x in enumerate(loading) if i == 0 or x != loading[i - 1]]  # each switch once
    assert [x["recipe"] for x in loading] == ["B", "A"] and loading[1]["origin"] == "rollback"


def test_refused_recipes_leave_the_old_model_running(broker: Broker, store: dict, tmp_path: Path) -> None:
    dev = f"refuse-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    set_topic = f"{prefix}/line/model/set"
    cam = {"name": "line", "source": str(store["video"]), "fps": FPS, "loop": True, "publish_mask": "never"}
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    sub.publish(set_topic, b"B", retain=True)  # an old command left on the broker: never acted on
    run = InProcess(tmp_path, config_for(dev, broker, store["bundles"], cam)).start()
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 5, WAIT)
        for recipe, expected in (("C", "sha256"), ("D", "96x96"), ("nope", "no recipe 'nope'"),
                                 ("../A", "recipe name")):  # fmt: skip
            n = len(model_states(sub, prefix))
            sub.publish(set_topic, recipe.encode())
            assert sub.wait_for(lambda m, n=n, expected=expected: any(
                s["last_error"] and expected in s["last_error"]["message"]
                for s in model_states(sub, prefix)[n:]), WAIT), recipe  # fmt: skip
            n_results = len(results(sub, prefix, "line"))
            assert sub.wait_for(lambda m, k=n_results: len(results(sub, prefix, "line")) >= k + 5, WAIT)
        assert sub.wait_for(lambda m: any(s.json()["commands"]["rejected_retained"] >= 1
                                          for s in sub.on(f"{prefix}/stats")), WAIT)  # fmt: skip
    finally:
        assert run.stop() == 0
    sub.close()
    got = results(sub, prefix, "line")
    assert len({r["model"]["id"] for r in got}) == 1  # A throughout
    assert [r["seq"] for r in got] == list(range(len(got)))
    state = model_states(sub, prefix)[-1]
    assert state["active"]["recipe"] == "A" and state["resident"] == 1 and state["loading"] is None
    assert run.daemon.models.resident() == 1


def test_a_recipe_chosen_over_mqtt_survives_a_restart_and_can_still_be_rolled_back(
    broker: Broker, store: dict, tmp_path: Path
) -> None:
    dev = f"keep-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cam = {"name": "line", "source": str(store["video"]), "fps": FPS, "loop": True, "publish_mask": "never"}
    text = config_for(dev, broker, store["bundles"], cam)
    text = text.replace(f'device_id = "{dev}"', f'device_id = "{dev}"\nstate_dir = "{tmp_path / "state"}"', 1)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 5, WAIT)
        sub.publish(f"{prefix}/line/model/set", b"B")
        assert sub.wait_for(lambda m: active_is(sub, prefix, "B"), WAIT)
        id_b = model_states(sub, prefix)[-1]["active"]["model"]["id"]
    finally:
        assert run.stop() == 0
    sub.close()
    assert (
        json.loads((tmp_path / "state" / f"recipes-{dev}.json").read_text())["cameras"]["line"]["recipe"]
        == "B"
    )

    # a restart on the same config comes back on B, and knows A is what a rollback returns to
    later = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    again = InProcess(tmp_path, text).start()
    try:
        assert later.wait_for(lambda m: len(results(later, prefix, "line")) >= 5, WAIT)
        assert {r["model"]["id"] for r in results(later, prefix, "line")} == {id_b}
        state = model_states(later, prefix)[-1]
        assert state["active"]["recipe"] == "B" and state["previous"] == "A"
        later.publish(f"{prefix}/line/model/set", json.dumps({"rollback": True}).encode())
        assert later.wait_for(lambda m: active_is(later, prefix, "A"), WAIT)
    finally:
        assert again.stop() == 0
    later.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


BALLAST_MB = 48


def test_sighup_applies_a_changed_config_and_memory_returns_to_one_model(
    broker: Broker, store: dict, tmp_path: Path, procs: list[subprocess.Popen]
) -> None:
    """edge-run as a service runs it: SIGHUP after the config names another recipe; each model carries
    48 MiB of weights, so a model left behind after a swap would show in the daemon's RSS."""
    bundles = tmp_path / "bundles"
    for recipe in ("A", "B", "E"):
        make_tiny_bundle(bundles / recipe, size=SIZE, reference=reference_of(recipe), ballast_mb=BALLAST_MB)
    dev = f"hup-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cam = {"name": "line", "source": str(store["video"]), "fps": 15, "loop": True, "publish_mask": "never"}
    cfg = tmp_path / "edge.toml"
    cfg.write_text(config_for(dev, broker, bundles, cam), encoding="utf-8")
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    procs.append(proc := spawn(cfg))
    peak = {"rss": 0.0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            try:
                peak["rss"] = max(peak["rss"], rss_mib(proc.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.01)

    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 10, WAIT)
        settled_one = rss_mib(proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cam_b = dict(cam, recipe="B")
        cfg.write_text(config_for(dev, broker, bundles, cam_b), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda m: active_is(sub, prefix, "B"), WAIT)
        after = []
        for recipe in ("E", "A", "B", "E"):  # four more swaps over MQTT: nothing may pile up
            sub.publish(f"{prefix}/line/model/set", recipe.encode())
            assert sub.wait_for(lambda m, r=recipe: active_is(sub, prefix, r), WAIT)
            after.append(rss_mib(proc.pid))
        n = len(results(sub, prefix, "line"))
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= n + 5, WAIT)
        settled_end = rss_mib(proc.pid)
        sampling.set()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, out.decode()[-3000:]
    finally:
        sampling.set()
        sub.close()
    log = out.decode()
    assert "SIGHUP: config and bundle store read again" in log
    got = results(sub, prefix, "line")
    assert [r["seq"] for r in got] == list(range(len(got)))
    assert {r["model"]["id"].split("@")[0] for r in got} == {"tiny-reference"}
    assert len({r["model"]["id"] for r in got}) == 3  # A, B, E
    states = model_states(sub, prefix)
    assert states[-1]["active"]["recipe"] == "E" and states[-1]["resident"] == 1
    assert any(s["loading"] and s["loading"]["origin"] == "reload" for s in states)
    # Memory: after five swaps the daemon holds about one model, as it did before them (a model left
    # resident would add ~48 MiB each); during a swap never more than two models' worth.
    print(
        f"rss MiB: one model {settled_one:.0f}, after each swap {after}, end {settled_end:.0f}, peak {peak}"
    )
    assert settled_end < settled_one + 0.5 * BALLAST_MB, (settled_one, after, settled_end)
    assert max(after) < settled_one + 0.5 * BALLAST_MB, (settled_one, after)
    # the peak: one model in use + the one loading, whose file is read once while its weights are copied
    assert peak["rss"] < settled_one + 2.75 * BALLAST_MB, (settled_one, peak)


def test_sighup_switches_one_region_and_changes_the_other_ones_threshold(
    broker: Broker, store: dict, tmp_path: Path, procs: list[subprocess.Popen]
) -> None:
    """A region's recipe and fixed threshold are reloadable like a camera's: after SIGHUP region b runs B
    and region a keeps A with its new threshold; the camera itself is never restarted."""
    dev = f"hupr-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    bundles = store["bundles"]
    cam = {"name": "line", "source": str(store["video"]), "fps": 15, "loop": True, "publish_mask": "never"}

    def text(b_recipe: str, a_threshold: float) -> str:
        regions = [
            {"name": "a", "roi": [0, 0, SIZE // 2, SIZE], "recipe": "A", "threshold": a_threshold},
            {"name": "b", "roi": [SIZE // 2, 0, SIZE // 2, SIZE], "recipe": b_recipe},
        ]
        lines = [["[[cameras.regions]]"] + [f"{k} = {json.dumps(v)}" for k, v in r.items()] for r in regions]
        body = "".join("\n".join(entry) + "\n" for entry in lines)
        return config_for(dev, broker, bundles, cam) + body

    cfg = tmp_path / "edge.toml"
    cfg.write_text(text("A", 2.0), encoding="utf-8")
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    procs.append(proc := spawn(cfg))
    try:
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line/b")) >= 3, WAIT)
        assert active_is(sub, prefix, "A", "line/b") and active_is(sub, prefix, "A", "line/a")
        cfg.write_text(text("B", 3.5), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda m: active_is(sub, prefix, "B", "line/b"), WAIT)
        n = len(results(sub, prefix, "line/a"))
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line/a")) >= n + 5, WAIT)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, out.decode()[-3000:]
    finally:
        sub.close()
    log = out.decode()
    assert "SIGHUP: config and bundle store read again" in log
    assert "at the next restart" not in log  # a region's recipe and threshold are not restart-only
    assert active_is(sub, prefix, "A", "line/a")  # the other region's recipe did not move
    a = results(sub, prefix, "line/a")
    assert a[0]["threshold"] == 2.0 and a[-1]["threshold"] == 3.5
    assert [r["seq"] for r in a] == list(range(len(a)))  # nothing lost or repeated across the reload
    b_models = [r["model"]["id"] for r in results(sub, prefix, "line/b")]
    assert len(set(b_models)) == 2 and b_models[-1] != b_models[0]
