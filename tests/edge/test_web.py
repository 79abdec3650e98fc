"""The live view's endpoints through aiohttp's test client: the login and cross-site rules, the Host check,
and (with a real daemon, a generated video and mosquitto) a threshold change from the page that goes the
same way as MQTT ``threshold/set``: a bad one refused with the MQTT answer's message, a good one seen on
``threshold/state`` with source ``web``; frames are encoded only once a viewer asks."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the live view needs edge-anomaly[web] (aiohttp)")

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from edge.faces.web.evidence_routes import THUMB_WIDTH  # noqa: E402
from edge.faces.web.live import LiveView  # noqa: E402
from edge.faces.web.server import COOKIE, Access, make_app  # noqa: E402
from edge.results.payloads import CameraState, ThresholdStatePayload  # noqa: E402
from edge.service.web_evidence import StoreEvidence  # noqa: E402
from edge.service.web_face import WebFace  # noqa: E402
from edge.stores.evidence_index import query  # noqa: E402
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.mqtt import Subscriber  # noqa: E402
from tests.helpers.tiny_bundle import make_tiny_bundle  # noqa: E402
from training.synthetic import part_sequence, write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_env")
TOKEN = "s3cret-token-0123456789"


class FakeCommands:
    def __init__(self) -> None:
        self.sets: list = []

    def set_threshold(self, camera: str, payload: bytes, origin: str = "MQTT", source: str = "mqtt") -> Any:
        self.sets.append((camera, payload, origin, source))
        return None

    def threshold_state(self, camera: str, error: str | None = None) -> ThresholdStatePayload:
        return ThresholdStatePayload(
            camera=camera, threshold=1.0, source="manifest", set_at=None, range=(0.5, 3.0), error=error
        )


def with_client(token: str | None, body: Callable[[TestClient, FakeCommands], Awaitable[None]]) -> None:
    commands = FakeCommands()
    state = CameraState(state="online", reason="", since="2026-12-06T00:00:00.000Z")
    live = LiveView({"line": state}, {"line": "rtsp://***@cam/stream"}, 4.0, 60.0)

    async def main() -> None:
        async with TestClient(TestServer(make_app(live, commands, Access(token)))) as client:
            await body(client, commands)

    asyncio.run(main())


def origin(client: TestClient) -> str:
    return f"http://{client.host}:{client.port}"


def test_token_login_cookie_and_cross_site_posts() -> None:
    async def body(client: TestClient, commands: FakeCommands) -> None:
        assert (await client.get("/api/state")).status == 401
        page = await client.get("/")
        text = await page.text()
        assert page.status == 200 and 'name="token"' in text and TOKEN not in text
        assert (await client.post("/api/threshold/line", data=b"1.2")).status == 401
        # a login from another site is refused; a wrong token is refused
        bad = await client.post("/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"})
        assert bad.status == 403
        wrong = await client.post("/login", data={"token": "nope"}, headers={"Origin": origin(client)})
        assert wrong.status == 401 and not wrong.cookies
        ok = await client.post(
            "/login", data={"token": TOKEN}, headers={"Origin": origin(client)}, allow_redirects=False
        )
        assert ok.status == 303
        cookie = ok.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        state = await client.get("/api/state")
        assert state.status == 200 and (await state.json())["cameras"]["line"]["source"].startswith(
            "rtsp://***"
        )
        assert "frame-ancestors 'none'" in state.headers["Content-Security-Policy"]
        # logged in, but a POST without our Origin and header (a cross-site form) is refused
        cross = await client.post(
            "/api/threshold/line", data=b"1.2", headers={"Origin": "http://evil.example"}
        )
        assert cross.status == 403 and not commands.sets
        no_header = await client.post("/api/threshold/line", data=b"1.2", headers={"Origin": origin(client)})
        assert no_header.status == 403 and not commands.sets
        good = await client.post(
            "/api/threshold/line", data=b"1.2", headers={"Origin": origin(client), "X-Edge-Request": "1"}
        )
        assert good.status == 200 and commands.sets == [("line", b"1.2", "web", "web")]

    with_client(TOKEN, body)


def test_every_image_and_evidence_route_needs_the_login() -> None:
    async def body(client: TestClient, commands: FakeCommands) -> None:
        for path in ("/cam/line/latest", "/cam/line/frame.jpg", "/cam/line/frame/0.jpg",
                     "/cam/line/frame/0/mask.png", "/api/evidence", "/evidence/1/thumb.jpg",
                     "/evidence/1/image.jpg", "/evidence/1/mask.png"):  # fmt: skip
            answer = await client.get(path)
            assert answer.status == 401, path

    with_client(TOKEN, body)


def test_bearer_token_and_no_cookie_without_login() -> None:
    async def body(client: TestClient, commands: FakeCommands) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/api/timeline", headers=headers)).status == 200
        assert (await client.get("/api/timeline", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.post("/api/threshold/line", data=b"1.3", headers=headers)).status == 200
        client.session.cookie_jar.update_cookies({COOKIE: "forged"})
        assert (await client.get("/api/state")).status == 401

    with_client(TOKEN, body)


def test_loopback_without_token_still_needs_same_origin_and_host() -> None:
    async def body(client: TestClient, commands: FakeCommands) -> None:
        assert (await client.get("/api/state")).status == 200
        assert (await client.post("/api/threshold/line", data=b"1.2")).status == 403
        rebinding = await client.get("/api/state", headers={"Host": f"evil.example:{client.port}"})
        assert rebinding.status == 421
        assert (await client.get("/cam/line/frame.jpg")).status == 503  # nothing published yet
        assert (await client.get("/cam/other/frame.jpg")).status == 404
        assert (await client.get("/cam/line/latest")).status == 503
        evidence = await (await client.get("/api/evidence")).json()
        assert evidence == {"enabled": False, "items": []}  # no store: the page hides the section
        assert (await client.get("/evidence/1/thumb.jpg")).status == 404
        assert not commands.sets

    with_client(None, body)


# --- with a real daemon and broker ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("web")
    frames, _ = part_sequence(30, 3, size=128, seed=31)
    return {
        "bundle": make_tiny_bundle(root / "bundle", size=128),
        "video": write_video(root / "v.avi", frames),
    }


def web_daemon(broker: Broker, media: dict, tmp_path: Path, **sections: dict) -> tuple:
    dev = f"web-{uuid.uuid4().hex[:8]}"
    cams = [
        {"name": "line", "source": str(media["video"]), "loop": True, "fps": 15, "publish_mask": "always"}
    ]
    text = config_toml(dev, broker, media["bundle"], cams, web={"enabled": True, "port": 0}, **sections)
    return f"edge-anomaly/{dev}", InProcess(tmp_path, text)


def test_threshold_from_the_page_takes_the_mqtt_path(broker: Broker, media: dict, tmp_path: Path) -> None:
    prefix, run = web_daemon(broker, media, tmp_path)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run.start()
    try:
        assert sub.wait_for(lambda m: len(sub.on(f"{prefix}/line/result")) >= 5, WAIT)
        face = next((f for f in run.daemon.faces if isinstance(f, WebFace)), None)
        assert face is not None and face.live.encoded == 0  # nobody watched: nothing encoded
        with urllib.request.urlopen(face.server.url, timeout=WAIT) as page:  # the daemon's own server
            assert page.status == 200 and b"/static/app.js" in page.read()
        app = make_app(face.live, run.daemon.api, Access(None))  # the same view and API, on this loop
        bad_payload = b"1e9"
        sub.publish(f"{prefix}/line/threshold/set", bad_payload)
        states = f"{prefix}/line/threshold/state"
        assert sub.wait_for(lambda m: any(x.json().get("error") for x in sub.on(states)), WAIT)
        mqtt_error = [x.json()["error"] for x in sub.on(states) if x.json().get("error")][-1]

        async def main() -> None:
            async with TestClient(TestServer(app)) as client:
                head = {"Origin": origin(client), "X-Edge-Request": "1"}
                assert (await client.post("/api/threshold/line", data=b"1.2")).status == 403
                bad = await client.post("/api/threshold/line", data=bad_payload, headers=head)
                assert bad.status == 400 and (await bad.json())["error"] == mqtt_error
                lo, hi = (await (await client.get("/api/state")).json())["cameras"]["line"]["threshold"][
                    "range"
                ]
                value = round((lo + hi) / 2, 4)
                good = await client.post("/api/threshold/line", data=str(value).encode(), headers=head)
                assert good.status == 200 and (await good.json())["source"] == "web"
                assert sub.wait_for(
                    lambda m: any(
                        x.json().get("source") == "web" and x.json()["threshold"] == value
                        for x in sub.on(states)
                    ),
                    WAIT,
                )
                frame = await client.get("/cam/line/frame.jpg")  # the first request starts the watching
                deadline = time.monotonic() + WAIT
                while frame.status != 200 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    frame = await client.get("/cam/line/frame.jpg")
                assert frame.status == 200 and (await frame.read())[:2] == b"\xff\xd8"
                timeline = await (await client.get("/api/timeline")).json()
                assert len(timeline["cameras"]["line"]) >= 5

        asyncio.run(main())
        assert face.live.encoded >= 1
        doc = json.loads(sub.on(states)[-1].payload)
        assert doc["source"] == "web"
    finally:
        sub.close()
        run.stop()


def test_evidence_thumbnails_full_frames_and_masks(broker: Broker, media: dict, tmp_path: Path) -> None:
    """The page lists the store's newest anomalous frames (read through its index) and serves each as a
    thumbnail with the mask tinted in, as the stored JPEG itself, and its stored mask as the overlay."""
    store = tmp_path / "evidence"
    prefix, run = web_daemon(broker, media, tmp_path, evidence={"enabled": True, "dir": str(store)})
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/line/result"])
    run.start()
    try:
        face = next(f for f in run.daemon.faces if isinstance(f, WebFace))
        app = make_app(face.live, run.daemon.api, Access(None), StoreEvidence(store))

        async def main() -> None:
            async with TestClient(TestServer(app)) as client:
                items: list = []
                deadline = time.monotonic() + WAIT
                while len(items) < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                    doc = await (await client.get("/api/evidence")).json()
                    assert doc["enabled"]
                    items = doc["items"]
                assert len(items) >= 3
                records = {r.id: r for r in query(store, verdict="anomalous")}
                assert [i["id"] for i in items] == sorted(records, key=lambda k: -records[k].ts)[: len(items)]
                item = items[0]
                rec = records[item["id"]]
                assert (item["camera"], item["frame_id"], item["score"]) == (
                    rec.camera,
                    rec.frame_id,
                    rec.score,
                )
                full = await client.get(item["image"])
                assert full.status == 200 and await full.read() == (store / rec.image).read_bytes()
                overlay = await client.get(item["mask"])
                rgba = cv2.imdecode(np.frombuffer(await overlay.read(), np.uint8), cv2.IMREAD_UNCHANGED)
                assert rec.mask is not None
                stored = cv2.imread(str(store / rec.mask), cv2.IMREAD_GRAYSCALE) > 0
                assert stored.any() and np.array_equal(rgba[..., 3] > 0, stored)
                thumb = await client.get(item["thumb"])
                small = cv2.imdecode(np.frombuffer(await thumb.read(), np.uint8), cv2.IMREAD_COLOR)
                assert small.shape[1] == THUMB_WIDTH
                on = (
                    cv2.resize(stored.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                    > 0
                )
                red = small[..., 2].astype(int) - small[..., 1].astype(int)
                assert red[on].mean() > red[~on].mean() + 50  # the mask is tinted red in the thumbnail
                assert (await client.get("/evidence/987654/thumb.jpg")).status == 404

        asyncio.run(main())
        assert sub.wait_for(lambda m: len(m) >= 3, WAIT)
    finally:
        sub.close()
        run.stop()
