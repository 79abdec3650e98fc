"""The live view in a real browser: Debian's chromium driven by Selenium through /usr/bin/chromedriver
(Selenium Manager is never asked to download anything). The page of a running daemon shows the camera
tile's frame, the score and verdict, a timeline that grows, and applies a threshold from its form.

LIVE_VIEW_SCREENSHOT=1 saves the screenshot to docs/img/live-view.png (the README's picture)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the live view needs edge-anomaly[web] (aiohttp)")
pytest.importorskip("selenium", reason="the browser test needs selenium (the dev extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from edge.service.web_face import WebFace  # noqa: E402
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.mqtt import Subscriber  # noqa: E402
from tests.helpers.tiny_bundle import make_tiny_bundle  # noqa: E402
from training.synthetic import part_sequence, write_video  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.usefixtures("clean_env"),
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)),
        reason="Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them)",
    ),
]


@pytest.fixture
def browser(tmp_path: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_live_view_in_chromium(browser, broker: Broker, tmp_path: Path) -> None:
    frames, _ = part_sequence(30, 3, size=128, seed=41)
    bundle = make_tiny_bundle(tmp_path / "bundle", size=128)
    video = write_video(tmp_path / "v.avi", frames)
    dev = f"webui-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(video), "loop": True, "fps": 10, "publish_mask": "always"}]
    run = InProcess(tmp_path, config_toml(dev, broker, bundle, cams, web={"enabled": True, "port": 0}))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/line/threshold/state"])
    run.start()
    try:
        face = next((f for f in run.daemon.faces if isinstance(f, WebFace)), None)
        assert face is not None
        wait = WebDriverWait(browser, WAIT)
        wait.until(lambda d: face.server.port != 0)
        browser.get(face.server.url)
        tile = wait.until(lambda d: d.find_element(By.ID, "cam-line"))
        img = tile.find_element(By.CLASS_NAME, "frame")
        wait.until(
            lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        )
        wait.until(lambda d: tile.find_element(By.CLASS_NAME, "score").text not in ("", "–"))
        verdict = tile.find_element(By.CLASS_NAME, "verdict").text
        assert verdict.split()[0] in ("ok", "warn", "ng")
        canvas = tile.find_element(By.CLASS_NAME, "timeline")
        first = int(wait.until(lambda d: canvas.get_attribute("data-points")))
        wait.until(lambda d: int(canvas.get_attribute("data-points") or 0) > first)
        assert "online" in tile.find_element(By.CLASS_NAME, "camstate").text
        # the threshold form: the same path as MQTT threshold/set, seen there with source web
        field = tile.find_element(By.NAME, "threshold")
        field.send_keys("1.5")
        tile.find_element(By.CSS_SELECTOR, "form.setthr button").click()
        wait.until(lambda d: tile.find_element(By.CLASS_NAME, "answer").text.startswith("applied"))
        assert sub.wait_for(lambda m: any(x.json().get("source") == "web" for x in m), WAIT)
        shot = tmp_path / "live-view.png"
        wait.until(lambda d: "web" in tile.find_element(By.CLASS_NAME, "threshold").text)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(shot))
        if os.environ.get("LIVE_VIEW_SCREENSHOT"):
            (REPO / "docs" / "img").mkdir(exist_ok=True)
            shutil.copy(shot, REPO / "docs" / "img" / "live-view.png")
    finally:
        sub.close()
        run.stop()
