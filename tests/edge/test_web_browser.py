"""The live view in real browsers (tests/helpers/browsers.py: Debian's chromium through Selenium and
chromedriver, Debian's firefox-esr through its own WebDriver BiDi; nothing downloaded), against a running
daemon, a generated video with defects at known places, mosquitto and an evidence store. On the page:

- the tile's picture, its frame id, score and verdict belong to one frame, the one MQTT published with that
  frame id (the page never shows one frame's picture with another's text);
- the mask the page draws over the picture is, pixel for pixel, the mask published on MQTT for the picture's
  frame, lies on the known defect, and covers the picture exactly;
- the timeline grows; the threshold form takes the MQTT path (``threshold/state`` with source ``web``);
- the evidence store's anomalous frames are thumbnails that open full size with their stored masks;
- a camera that goes away (its file renamed) shows as ``fault`` on the page within 5 s.

LIVE_VIEW_SCREENSHOT=1 saves chromium's screenshot to docs/img/live-view.png (the README's picture)."""

from __future__ import annotations

import base64
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the live view needs edge-anomaly[web] (aiohttp)")
pytest.importorskip("selenium", reason="the browser test needs selenium (the dev extra)")

from edge.service.web_face import WebFace  # noqa: E402
from edge.stores.evidence_index import query  # noqa: E402
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.browsers import Page, open_page, wait_until  # noqa: E402
from tests.helpers.mqtt import Received, Subscriber  # noqa: E402
from tests.helpers.tiny_bundle import make_tiny_bundle  # noqa: E402
from training.synthetic import part_sequence, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FRAMES, DEFECT_EVERY, SIZE = 12, 3, 128  # a 1.2 s loop at 10 fps: a renamed file is missed within a loop
SAMPLES = 24  # reads of the tile, 0.15 s apart: several pictures and several state polls
FAULT_SHOWN_S = 5.0  # the deadline for a camera fault to show on the page
pytestmark = pytest.mark.usefixtures("clean_env")

# One read of the tile, in one script (so nothing changes between its parts): the frame id the view shows,
# its picture's URL, the text beside it, and the mask canvas as PNG (alpha > 0 where the page drew the mask).
READ_TILE = """
const tile = document.getElementById("cam-line");
const view = tile && tile.querySelector(".view");
if (!view || !view.dataset.frameId) { return null; }
const img = view.querySelector(".frame"), mask = view.querySelector(".mask");
const a = img.getBoundingClientRect(), b = mask.getBoundingClientRect();
return {
  id: Number(view.dataset.frameId), src: img.src, natural: [img.naturalWidth, img.naturalHeight],
  frame: tile.querySelector(".frameid").textContent, score: tile.querySelector(".score").textContent,
  verdict: tile.querySelector(".verdict").textContent, mask: mask.toDataURL("image/png"),
  rects: [[a.left, a.top, a.width, a.height], [b.left, b.top, b.width, b.height]],
};
"""

THUMB = """const img = document.querySelector('#evidence .thumb img');
return img && img.complete && img.naturalWidth > 0 && Number(img.parentNode.dataset.id);"""
FULL = """const d = document.getElementById('full'), v = d.querySelector('.view');
if (!d.open || v.dataset.id !== 'ID') { return null; }
const img = v.querySelector('.frame');
return {natural: [img.naturalWidth, img.naturalHeight], mask: v.querySelector('.mask').toDataURL()};"""
FAULT = """const s = document.querySelector('#cam-line .camstate').textContent;
return s.startsWith('fault') && s;"""


@pytest.fixture(params=["chromium", "firefox"])
def page(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    yield from open_page(request.param, tmp_path)


def drawn(data_url: str) -> np.ndarray:
    png = base64.b64decode(data_url.split(",", 1)[1])
    rgba = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba is not None and rgba.ndim == 3 and rgba.shape[2] == 4
    return rgba[..., 3] > 0


def by_frame(sub: Subscriber, prefix: str, frame_id: int) -> dict:
    """The result MQTT published for ``frame_id`` (it went out before the page could ask for the frame)."""
    found: list[dict] = []

    def seen(msgs: list[Received]) -> bool:
        found[:] = [m.json() for m in sub.on(f"{prefix}/line/result") if m.json()["frame_id"] == frame_id]
        return bool(found)

    assert sub.wait_for(seen, WAIT), f"no result on MQTT for frame {frame_id}"
    return found[0]


def published_mask(sub: Subscriber, result: dict) -> np.ndarray:
    topic = result["mask"]["topic"]
    assert sub.wait_for(lambda m: bool(sub.on(topic)), WAIT)
    mask = cv2.imdecode(np.frombuffer(sub.on(topic)[0].payload, np.uint8), cv2.IMREAD_GRAYSCALE)
    return mask > 0


def test_live_view_in_a_real_browser(page: Page, broker: Broker, tmp_path: Path) -> None:
    frames, truth = part_sequence(FRAMES, DEFECT_EVERY, size=SIZE, seed=41)
    bundle = make_tiny_bundle(tmp_path / "bundle", size=SIZE)
    video = write_video(tmp_path / "v.avi", frames)
    dev = f"webui-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(video), "loop": True, "fps": 10, "publish_mask": "always",
             "fault_after_s": 60}]  # fmt: skip
    store = tmp_path / "evidence"
    text = config_toml(dev, broker, bundle, cams, web={"enabled": True, "port": 0},
                       evidence={"enabled": True, "dir": str(store)})  # fmt: skip
    run = InProcess(tmp_path, text)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run.start()
    try:
        face = next((f for f in run.daemon.faces if isinstance(f, WebFace)), None)
        assert face is not None
        wait_until(lambda: face.server.port != 0, WAIT, "the page's server listening")
        page.open(face.server.url)

        # 1. Picture and text of one frame: the URL, the frame id and the score MQTT published for it, read
        # at many moments (between two pictures the page polls the state too: it must not change the text).
        page.wait(READ_TILE, WAIT, "a frame on the tile")
        shown: set[int] = set()
        for _ in range(SAMPLES):
            tile = page.run(READ_TILE)
            fid = tile["id"]
            shown.add(fid)
            assert tile["src"].endswith(f"/cam/line/frame/{fid}.jpg"), tile["src"]
            assert tile["frame"].split(" ")[0] == str(fid) and tile["natural"] == [SIZE, SIZE]
            result = by_frame(sub, prefix, fid)
            assert tile["score"].split(" ")[0] == f"{result['score']:.3f}", (tile["score"], result)
            assert tile["verdict"].split(" ")[0] == result["verdict"]
            time.sleep(0.15)
        assert len(shown) >= 3, f"the tile showed only frames {sorted(shown)} in {SAMPLES} reads"

        # 2. The timeline grows.
        first = page.wait(
            "return Number(document.querySelector('#cam-line .timeline').dataset.points || 0);", WAIT
        )
        page.wait(
            f"return Number(document.querySelector('#cam-line .timeline').dataset.points || 0) > {first};",
            WAIT,
        )

        # 3. The threshold form: same path as MQTT threshold/set, seen there with source web.
        page.run("""const f = document.querySelector('#cam-line form.setthr');
                    f.elements.threshold.value = '1.5'; f.querySelector('button').click();""")
        page.wait(
            "return document.querySelector('#cam-line .answer').textContent.startsWith('applied');", WAIT
        )
        states = f"{prefix}/line/threshold/state"
        assert sub.wait_for(lambda m: any(x.json().get("source") == "web" for x in sub.on(states)), WAIT)
        page.wait("return document.querySelector('#cam-line .threshold').textContent.includes('web');", WAIT)

        # 4. Evidence thumbnails open full size with the stored mask.
        thumb_id = page.wait(THUMB, WAIT, "an evidence thumbnail")
        page.run(f"document.querySelector('#evidence .thumb[data-id=\"{thumb_id}\"]').click();")
        full = page.wait(FULL.replace("ID", str(thumb_id)), WAIT, "the full-size evidence frame")
        record = next(r for r in query(store, verdict="anomalous") if r.id == thumb_id)
        assert record.mask is not None and full["natural"] == [record.width, record.height]
        stored = cv2.imread(str(store / record.mask), cv2.IMREAD_GRAYSCALE) > 0
        assert stored.sum() > 0 and (drawn(full["mask"]) != stored).sum() <= 0.01 * stored.sum()
        page.run("document.getElementById('close').click();")

        # 5. The drawn mask: the published one of the picture's frame, on the known defect, over the picture;
        # the screenshot then shows a frame with its mask (and the evidence thumbnails).
        def anomalous_tile() -> dict | None:
            tile = page.run(READ_TILE)
            if tile is None:
                return None
            result = by_frame(sub, prefix, tile["id"])
            return {**tile, "result": result} if result["anomalous"] and result["mask"] else None

        tile = wait_until(anomalous_tile, WAIT, "an anomalous frame on the tile")
        fid, mine, theirs = tile["id"], drawn(tile["mask"]), published_mask(sub, tile["result"])
        assert mine.shape == theirs.shape == (SIZE, SIZE) and theirs.sum() > 0
        assert (mine != theirs).sum() <= 0.01 * theirs.sum(), f"frame {fid}: drawn mask differs from MQTT's"
        known = truth[fid % FRAMES]  # frame ids count every frame read; the file loops
        assert known is not None, f"frame {fid} has no defect in the video but was shown as anomalous"
        assert (mine & (known > 0)).sum() > 0.3 * (known > 0).sum(), "the drawn mask misses the known defect"
        (a, b) = tile["rects"]
        assert all(abs(x - y) <= 1 for x, y in zip(a, b, strict=True)) and a[2] > 100, (
            f"mask canvas not over the picture: {a} {b}"
        )

        shot = tmp_path / f"live-view-{page.name}.png"
        page.run("window.scrollTo(0, 0);")
        page.screenshot(shot)
        assert shot.stat().st_size > 10_000
        if os.environ.get("LIVE_VIEW_SCREENSHOT") and page.name == "chromium":
            (REPO / "docs" / "img").mkdir(exist_ok=True)
            shutil.copy(shot, REPO / "docs" / "img" / "live-view.png")

        # 6. The camera goes away: the page says fault within 5 s.
        video.rename(tmp_path / "gone.avi")
        state = page.wait(FAULT, FAULT_SHOWN_S, "fault on the page within 5 s of the file going away")
        assert "cannot open" in state, state
    finally:
        sub.close()
        run.stop()
