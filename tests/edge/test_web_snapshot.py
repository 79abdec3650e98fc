"""The live view shows one frame at a time: the picture, its mask overlay and the score and verdict beside it
come from the same published frame (one snapshot named by its frame id), even when newer results arrived
between two encodes (the rate cap). Checked on LiveView and through its routes with aiohttp's test client."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the live view needs edge-anomaly[web] (aiohttp)")

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from edge.capture.frames import Frame  # noqa: E402
from edge.faces.web.live import LiveView  # noqa: E402
from edge.faces.web.server import Access, make_app  # noqa: E402
from edge.results.payloads import CameraState  # noqa: E402
from edge.results.postprocess import Region, Verdict  # noqa: E402
from tests.edge.test_web import FakeCommands  # noqa: E402

SIZE = 64
DEFECT = (40, 8, 16, 12)  # x, y, w, h of frame 2's defect


def doc(frame_id: int, score: float, ng: bool) -> SimpleNamespace:
    """The ResultPayload fields LiveView reads."""
    regions = [SimpleNamespace(bbox=DEFECT)] if ng else []
    return SimpleNamespace(
        camera="line", seq=frame_id, frame_id=frame_id, capture_time=f"t{frame_id}",
        capture_ts=1000.0 + frame_id,
        score=score, threshold=1.0, threshold_source="manifest", verdict="ng" if ng else "ok", anomalous=ng,
        regions=regions, model=SimpleNamespace(id="m@1", precision="fp32", backend="onnxruntime"),
        latency_ms=SimpleNamespace(total=5.0),
    )  # fmt: skip


def published(live: LiveView, frame_id: int, grey: int, score: float, ng: bool) -> None:
    """What the publish thread does for one frame: the JSON face tells the result, then offers the frame."""
    image = np.full((SIZE, SIZE, 3), grey, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if ng:
        x, y, w, h = DEFECT
        mask[y : y + h, x : x + w] = 255
    verdict = Verdict(
        score=score, raw_score=score, threshold=1.0, anomalous=ng, defect_area=0.0,
        regions=[Region(DEFECT, 1, 1.0)] if ng else [], regions_total=int(ng), mask_model=mask,
        norm_map=np.zeros((SIZE, SIZE), np.float32), roi=(0, 0, SIZE, SIZE), frame_hw=(SIZE, SIZE),
    )  # fmt: skip
    live.result(doc(frame_id, score, ng))  # type: ignore[arg-type]
    live.offer("line", Frame("line", frame_id, 1000.0 + frame_id, time.monotonic(), image), verdict)


def test_the_text_shown_is_the_text_of_the_frame_whose_picture_is_shown() -> None:
    state = CameraState(state="online", reason="", since="2026-12-06T00:00:00.000Z")
    live = LiveView({"line": state}, {"line": "video"}, 1.0, 60.0)
    live.frame_interval_s = 3600.0  # a newer frame arrives before the rate cap allows the next encode
    published(live, 1, grey=0, score=0.5, ng=False)  # before anyone looked: a page opened later shows it
    published(live, 2, grey=255, score=3.0, ng=True)  # newer, but never snapshot while the cap holds

    async def main() -> None:
        async with TestClient(TestServer(make_app(live, FakeCommands(), Access(None)))) as client:
            first = await (await client.get("/cam/line/latest")).json()
            assert first["frame_id"] == 2 and first["score"] == 3.0 and first["verdict"] == "ng"
            published(live, 3, grey=128, score=0.4, ng=False)  # after the snapshot: not in it
            again = await (await client.get("/cam/line/latest")).json()
            assert again == first  # the cap holds: the same snapshot, not frame 2's picture with 3's text
            assert live.state()["line"]["last"]["frame_id"] == 3  # while the newest result is frame 3
            picture = await client.get(first["image"])
            assert first["image"] == "/cam/line/frame/2.jpg" and picture.status == 200
            pixels = cv2.imdecode(np.frombuffer(await picture.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
            assert pixels.shape == (SIZE, SIZE) and pixels.mean() > 240  # frame 2 (white), not 1 or 3
            overlay = await client.get(first["mask"])
            rgba = cv2.imdecode(np.frombuffer(await overlay.read(), np.uint8), cv2.IMREAD_UNCHANGED)
            x, y, w, h = DEFECT
            assert rgba.shape == (SIZE, SIZE, 4) and (rgba[..., 3] > 0).sum() == w * h
            assert rgba[y : y + h, x : x + w, 3].min() > 0
            assert first["boxes"] == [list(DEFECT)]

            live.frame_interval_s = 0.0  # the cap allows the next one: frame 3, with its own text
            third = await (await client.get("/cam/line/latest")).json()
            assert (third["frame_id"], third["score"], third["verdict"], third["mask"]) == (
                3,
                0.4,
                "ok",
                None,
            )
            pixels = cv2.imdecode(
                np.frombuffer(await (await client.get(third["image"])).read(), np.uint8), cv2.IMREAD_GRAYSCALE
            )
            assert abs(float(pixels.mean()) - 128) < 3
            assert (await client.get("/cam/line/frame/3/mask.png")).status == 404  # no mask on frame 3
            assert (await client.get("/cam/line/frame/99.jpg")).status == 404  # never a snapshot

    asyncio.run(main())
    assert live.encoded == 2
