"""Several named regions of one camera, through the whole daemon: one source opened once feeds each region,
each region publishes its own results on <prefix>/<camera>/<region>/..., and a region that cannot be
inspected faults alone."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import edge.capture.sources as sources
from edge.config import load_config
from edge.service.daemon import build
from edge.service.loader import StartupError
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.edge.test_sparkplug import Host
from tests.edge.test_tiled_daemon_e2e import GREY, tiled_bundle
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber, has_availability
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import write_video

pytestmark = pytest.mark.usefixtures("clean_env")

FRAME_HW = (150, 220)
LEFT = [0, 0, 100, 100]  # whole-image bundle
RIGHT = [110, 20, 100, 100]  # tiled bundle (64 px tiles, 16 px overlap: a 2 x 2 grid)
DEFECT_LEFT = (30, 40, 24, 16)  # frames 1, 3, 5, 7
DEFECT_RIGHT = (160, 70, 20, 20)  # frames 2, 6
N_FRAMES = 8


def whole_bundle(root: Path) -> Path:
    """The tiny |x - reference| model on a flat grey reference: grey scores 0, white far above 5."""
    bundle = make_tiny_bundle(root / "whole", size=64, reference=np.full((64, 64, 3), GREY, np.float32))
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["normalization"].update({"offset": 0.0, "scale": 0.01})
    doc["threshold"]["default"] = 5.0
    path.write_text(json.dumps(doc), encoding="utf-8")
    return bundle


def video(tmp_path: Path) -> Path:
    frames = []
    for i in range(N_FRAMES):
        frame = np.full((*FRAME_HW, 3), GREY, np.uint8)
        for (x, y, w, h), hit in ((DEFECT_LEFT, i % 2 == 1), (DEFECT_RIGHT, i % 4 == 2)):
            if hit:
                frame[y : y + h, x : x + w] = 255
        frames.append(frame)
    return write_video(tmp_path / "grey.avi", frames, fps=10)


def regions_config(
    dev: str, broker: Broker, bundle: Path, store: Path, cam: dict, regions: list[dict]
) -> str:
    text = config_toml(dev, broker, bundle, [{"name": "cam0", "fps": 20, **cam}])
    text = text.replace("[model]\n", f'[model]\nstore = "{store}"\n')
    for region in regions:
        text += "[[cameras.regions]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in region.items())
    return text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "other.toml"
    path.write_text(text, encoding="utf-8")
    return path


def inside(box: list[int], area: list[int]) -> bool:
    x, y, w, h = box
    ax, ay, aw, ah = area
    return x >= ax and y >= ay and x + w <= ax + aw and y + h <= ay + ah


def near(box: list[int], defect: Any, tol: int = 4) -> bool:
    x, y, w, h = box
    dx, dy, dw, dh = defect
    return all(abs(a - b) <= tol for a, b in ((x, dx), (y, dy), (x + w, dx + dw), (y + h, dy + dh)))


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every uri the daemon's camera sources open."""
    seen: list[str] = []
    real = sources.open_capture

    def counting(uri: str) -> Any:
        seen.append(uri)
        return real(uri)

    monkeypatch.setattr(sources, "open_capture", counting)
    return seen


def test_two_regions_of_one_camera_each_publish_their_own_results(
    broker: Broker, tmp_path: Path, opens: list[str]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(str(tiled_bundle(tmp_path / "t")), str(store / "tiled"))  # the store's recipe 'tiled'
    src = video(tmp_path)
    dev = f"regions-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    regions = [
        {"name": "left", "roi": LEFT, "publish_mask": "always"},
        {"name": "right", "roi": RIGHT, "recipe": "tiled", "threshold": 6.0, "publish_mask": "never"},
    ]
    run = InProcess(
        tmp_path, regions_config(dev, broker, whole_bundle(tmp_path), store, {"source": str(src)}, regions)
    ).start()
    try:
        for region in ("left", "right"):
            ended = has_availability(f"{prefix}/cam0/{region}/availability", "ended: end of stream")
            assert sub.wait_for(ended, WAIT)
    finally:
        assert run.stop() == 0
    sub.close()
    assert opens == [str(src)]  # one source, opened once, for both regions
    assert not sub.on(f"{prefix}/cam0/result") and not sub.on(f"{prefix}/cam0/availability")

    left, right = results(sub, prefix, "cam0/left"), results(sub, prefix, "cam0/right")
    assert len(left) >= N_FRAMES // 2 and len(right) >= N_FRAMES // 2
    for r in left:
        assert r["camera"] == "cam0/left" and r["roi"] == LEFT and r["frame_size"] == [220, 150]
        assert r["threshold"] == 5.0 and r["threshold_source"] == "manifest" and "tiles" not in r
        assert r["anomalous"] == (r["frame_id"] % 2 == 1), r  # the right-hand defect never fires left
        if r["anomalous"]:
            assert len(r["regions"]) == 1 and near(r["regions"][0]["bbox"], DEFECT_LEFT, tol=8), r
        mask = sub.on(r["mask"]["topic"])[0].payload
        image = cv2.imdecode(np.frombuffer(mask, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert image.shape == FRAME_HW  # the mask is in camera pixels, as for any ROI
        ys, xs = np.nonzero(image)
        assert bool(len(xs)) == r["anomalous"]
        if len(xs):
            assert inside([int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1], LEFT)
    for r in right:
        assert r["camera"] == "cam0/right" and r["roi"] == RIGHT and r["frame_size"] == [220, 150]
        assert r["threshold"] == 6.0 and r["threshold_source"] == "config" and r["mask"] is None
        assert r["tiles"]["grid"] == [2, 2] and r["model"]["id"] != left[0]["model"]["id"]
        assert r["anomalous"] == (r["frame_id"] % 4 == 2), r  # the left-hand defect never fires right
        if r["anomalous"]:  # a tiled region's boxes are in camera pixels, not region or tile pixels
            assert len(r["regions"]) == 1 and near(r["regions"][0]["bbox"], DEFECT_RIGHT), r
            assert all(inside(t["bbox"], RIGHT) for t in r["tiles"]["fired"])
    status = sub.on(f"{prefix}/status")[-1].json()
    assert set(status["cameras"]) == {"cam0/left", "cam0/right"}


def test_a_region_outside_the_frame_faults_alone(broker: Broker, tmp_path: Path, opens: list[str]) -> None:
    src = video(tmp_path)
    dev = f"regions-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    regions = [{"name": "left", "roi": LEFT}, {"name": "far", "roi": [200, 100, 40, 40]}]
    cam = {"source": str(src), "loop": True}
    run = InProcess(
        tmp_path, regions_config(dev, broker, whole_bundle(tmp_path), tmp_path, cam, regions)
    ).start()
    try:
        fault = "fault: roi [200, 100, 40, 40] does not fit the 220x150 frame"
        assert sub.wait_for(has_availability(f"{prefix}/cam0/far/availability", fault), WAIT)
        n = len(results(sub, prefix, "cam0/left"))
        assert sub.wait_for(lambda _: len(results(sub, prefix, "cam0/left")) >= n + 3, WAIT)
        sub.publish(f"{prefix}/cam0/left/threshold/set", b"7.5")  # commands reach a region by its topic
        state = f"{prefix}/cam0/left/threshold/state"
        assert sub.wait_for(lambda _: any(m.json()["threshold"] == 7.5 for m in sub.on(state)), WAIT)
        # the state can arrive before a result scored at the new threshold: wait for one, not assume it
        assert sub.wait_for(
            lambda _: any(r["threshold"] == 7.5 for r in results(sub, prefix, "cam0/left")), WAIT
        )
        statuses = [m.json()["cameras"] for m in sub.on(f"{prefix}/status")]
        assert sub.wait_for(
            lambda _: any(
                m.json()["cameras"]["cam0/far"]["state"] == "fault"
                and m.json()["cameras"]["cam0/left"]["state"] == "online"
                for m in sub.on(f"{prefix}/status")
            ),
            WAIT,
        ), statuses
        stats = run.daemon.stats_payload()
        assert stats.cameras["cam0/far"].state == "fault" and stats.cameras["cam0/left"].state == "online"
    finally:
        assert run.stop() == 0
    sub.close()
    assert not results(sub, prefix, "cam0/far")
    assert len(opens) >= 1 and set(opens) == {str(src)}
    assert any(r["threshold"] == 7.5 for r in results(sub, prefix, "cam0/left"))


def test_each_region_is_a_sparkplug_device_of_its_own(broker: Broker, tmp_path: Path) -> None:
    src = video(tmp_path)
    tag = uuid.uuid4().hex[:8]
    group, node, dev = f"line-{tag}", f"node-{tag}", f"regions-{tag}"
    prefix = f"edge-anomaly/{dev}"
    regions = [{"name": "left", "roi": LEFT}, {"name": "right", "roi": RIGHT}]
    text = regions_config(
        dev, broker, whole_bundle(tmp_path), tmp_path, {"source": str(src), "loop": True}, regions
    )
    text = text.replace(
        "[model]\n", f'[sparkplug]\nenabled = true\ngroup_id = "{group}"\nedge_node_id = "{node}"\n[model]\n'
    )
    host = Host(broker, group, node, None, prefix)  # type: ignore[arg-type]  # only raw topics are read
    run = InProcess(tmp_path, text).start()
    try:
        for region in ("left", "right"):  # '/' cannot be in a device id: <camera>:<region>
            assert host.wait_count("DBIRTH", 1, f"cam0:{region}") and host.wait_count(
                "DDATA", 2, f"cam0:{region}"
            )
        host.command("DCMD", [("Inspection/Threshold", "Double", 4.5)], "cam0:right")
        state = f"{prefix}/cam0/right/threshold/state"
        assert host.sub.wait_for(
            lambda _: any(m.json()["threshold"] == 4.5 for m in host.sub.on(state)), WAIT
        )
    finally:
        assert run.stop() == 0
    host.sub.close()
    assert not any("/DDATA/" in m.topic and m.topic.endswith("/cam0") for m in host.sub.snapshot())


def test_a_region_whose_recipe_fails_to_load_faults_alone_and_its_parts_close_no_result(
    broker: Broker, tmp_path: Path
) -> None:
    src = video(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    dev = f"regions-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    regions = [{"name": "left", "roi": LEFT}, {"name": "broken", "roi": RIGHT, "recipe": "missing"}]
    cam = {"source": str(src), "loop": True}
    text = regions_config(dev, broker, whole_bundle(tmp_path), store, cam, regions)
    text += '[[parts]]\nname = "pair"\ncameras = ["cam0/left", "cam0/broken"]\ndeadline_ms = 300\n'
    run = InProcess(tmp_path, text).start()
    try:
        fault = "fault: recipe missing cannot be loaded: no recipe 'missing' in the bundle store"
        assert sub.wait_for(
            has_availability(f"{prefix}/cam0/broken/availability", fault, startswith=True), WAIT
        )
        assert sub.wait_for(lambda _: len(results(sub, prefix, "cam0/left")) >= 3, WAIT)
        assert sub.wait_for(
            lambda _: any(m.json()["verdict"] == "no_result" for m in sub.on(f"{prefix}/part/pair")), WAIT
        )
        sub.publish(f"{prefix}/cam0/broken/model/set", b"other")  # refused: not a model switch
        status = sub.on(f"{prefix}/status")[-1].json()["cameras"]
        assert status["cam0/broken"]["state"] == "fault" and status["cam0/left"]["state"] == "online"
    finally:
        assert run.stop() == 0
    sub.close()
    assert not results(sub, prefix, "cam0/broken")
    for doc in (m.json() for m in sub.on(f"{prefix}/part/pair")):
        assert doc["verdict"] in ("no_result", "ng") and doc["action"] == "reject", doc  # never ok
        assert doc["cameras"]["cam0/broken"]["verdict"] == "no_result"

    every = [{"name": "a", "roi": LEFT, "recipe": "missing"}, {"name": "b", "roi": RIGHT, "recipe": "gone"}]
    with pytest.raises(StartupError, match="no camera or region can be inspected: cam0/a: recipe missing"):
        build(
            load_config(
                write(tmp_path, regions_config(dev, broker, whole_bundle(tmp_path), store, cam, every))
            )
        )
