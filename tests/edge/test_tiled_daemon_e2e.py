"""A tiled bundle in the whole daemon: real broker, real ONNX, an MJPEG video; a defect across a tile border
is one region in camera pixels and the result names the tiles that fired."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber, has_availability
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import write_video

pytestmark = pytest.mark.usefixtures("clean_env")

GREY = 128
DEFECT = (
    96,
    40,
    30,
    20,
)  # camera pixels; across the tile border at x = 112 (column starts 0, 48, 96, 144, 156)
N_FRAMES = 8


def tiled_bundle(root: Path) -> Path:
    """The tiny |x - reference| model with a flat grey reference, turned into a 64 px tiled bundle: a grey
    frame scores 0, a white defect scores far above the threshold wherever it lies."""
    bundle = make_tiny_bundle(root / "bundle", size=64, reference=np.full((64, 64, 3), GREY, np.float32))
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["input"]["tiling"] = {"tile": 64, "overlap": 16, "scale": 1.0}
    doc["normalization"].update({"offset": 0.0, "scale": 0.01})  # raw |diff|/255 -> 0..100
    doc["threshold"]["default"] = 5.0
    path.write_text(json.dumps(doc), encoding="utf-8")
    return bundle


def test_a_tiled_bundle_end_to_end(broker: Broker, tmp_path: Path) -> None:
    frames = []
    for i in range(N_FRAMES):
        frame = np.full((150, 220, 3), GREY, np.uint8)
        if i % 2:
            x, y, w, h = DEFECT
            frame[y : y + h, x : x + w] = 255
        frames.append(frame)
    video = write_video(tmp_path / "grey.avi", frames, fps=10)
    dev = f"tiled-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    cams = [{"name": "cam0", "source": str(video), "fps": 20, "publish_mask": "never"}]
    run = InProcess(tmp_path, config_toml(dev, broker, tiled_bundle(tmp_path), cams)).start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/cam0/availability", "ended: end of stream"), WAIT)
    finally:
        assert run.stop() == 0
    sub.close()
    got = results(sub, prefix, "cam0")
    assert len(got) >= N_FRAMES // 2
    for r in got:
        assert r["frame_size"] == [220, 150]
        tiles = r["tiles"]
        assert tiles["grid"] == [3, 5] and tiles["size"] == 64 and tiles["overlap"] == 16
        if r["frame_id"] % 2 == 0:
            assert not r["anomalous"] and r["regions"] == [] and tiles["fired"] == []
            continue
        assert r["anomalous"], r
        assert len(r["regions"]) == 1, r["regions"]  # one defect across a tile border: one region
        x, y, w, h = r["regions"][0]["bbox"]
        dx, dy, dw, dh = DEFECT
        assert (
            abs(x - dx) <= 4 and abs(y - dy) <= 4 and abs(x + w - dx - dw) <= 4 and abs(y + h - dy - dh) <= 4
        )
        fired = {t["index"] for t in tiles["fired"]}
        assert {1, 2} <= fired  # the tiles at columns 48 and 96 of the first row both see it
        for t in tiles["fired"]:
            tx, ty, tw, th = t["bbox"]
            assert tx < dx + dw and tx + tw > dx and ty < dy + dh and ty + th > dy
