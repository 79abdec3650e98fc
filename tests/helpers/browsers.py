"""Real browsers for the live-view tests, both from Debian packages and nothing downloaded:

- chromium: Debian's ``chromium`` driven by Selenium through Debian's ``chromedriver`` (Selenium Manager is
  never asked for anything);
- firefox: Debian's ``firefox-esr`` driven over WebDriver BiDi, which Firefox serves itself
  (``--remote-debugging-port``), with websocket-client (a Selenium dependency): Selenium's Firefox driver
  needs geckodriver, which neither Debian bookworm nor PyPI ships as a package.

Both give the same small :class:`Page`: open a URL, run a script in the page (its result comes back through
JSON), save a screenshot. Tests act on the page with scripts (``button.click()``, setting an input's value),
the same way in both browsers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FIREFOX = "/usr/bin/firefox-esr"
WIDTH, HEIGHT = 1100, 900
MISSING = {
    "chromium": "Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them)",
    "firefox": "Debian's firefox-esr is not installed (scripts/setup.sh installs it)",
}


def available(name: str) -> bool:
    if name == "chromium":
        return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)
    return os.access(FIREFOX, os.X_OK)


class Page:
    name = ""

    def open(self, url: str) -> None:
        raise NotImplementedError

    def run(self, body: str) -> Any:
        """``body`` is a function body (``return ...``) run in the page; a promise is awaited."""
        raise NotImplementedError

    def screenshot(self, path: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def wait(self, body: str, timeout: float, what: str = "") -> Any:
        """Runs ``body`` until it returns something truthy (that is returned); fails after ``timeout`` s."""
        return wait_until(lambda: self.run(body), timeout, what or body)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def _wrapped(body: str) -> str:
    return f"return (async () => {{ {body} }})().then((v) => JSON.stringify(v === undefined ? null : v));"


class ChromiumPage(Page):
    name = "chromium"

    def __init__(self, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={profile}"):  # fmt: skip
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def run(self, body: str) -> Any:
        return json.loads(self.driver.execute_script(_wrapped(body)))

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        self.driver.quit()


class FirefoxPage(Page):
    """Firefox's own WebDriver BiDi endpoint (ws://127.0.0.1:PORT/session), one browsing context."""

    name = "firefox"

    def __init__(self, profile: Path, start_timeout: float = 60.0) -> None:
        import websocket  # websocket-client, installed with selenium

        profile.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.log = open(profile.parent / "firefox.log", "wb")  # noqa: SIM115  (closed by close())
        self.process = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
             f"--remote-debugging-port={port}", f"--width={WIDTH}", f"--height={HEIGHT}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._id = 0
        url = f"ws://127.0.0.1:{port}/session"

        # Firefox refuses a handshake that carries an Origin header: websocket-client must not send one
        def connect() -> Any:
            return _connected(lambda: websocket.create_connection(url, timeout=30, suppress_origin=True))

        self.ws = wait_until(connect, start_timeout, f"Firefox's WebDriver BiDi endpoint {url}")
        self.call("session.new", {"capabilities": {}})
        tree = self.call("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]
        viewport = {"width": WIDTH, "height": HEIGHT}
        self.call("browsingContext.setViewport", {"context": self.context, "viewport": viewport})

    def call(self, method: str, params: dict) -> Any:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if msg.get("type") == "error":
                    raise RuntimeError(f"Firefox {method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    def open(self, url: str) -> None:
        self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def run(self, body: str) -> Any:
        source = f"(() => {{ {_wrapped(body)} }})()"
        answer = self.call(
            "script.evaluate",
            {"expression": source, "target": {"context": self.context}, "awaitPromise": True},
        )
        if answer.get("type") == "exception":
            raise RuntimeError(f"script failed in Firefox: {answer['exceptionDetails'].get('text')}")
        return json.loads(answer["result"]["value"])

    def screenshot(self, path: Path) -> None:
        shot = self.call("browsingContext.captureScreenshot", {"context": self.context})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.call("session.end", {})
            self.ws.close()
        except Exception:  # the browser may be gone already; it is stopped below either way
            pass
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connected(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except OSError:
        return None
    except Exception as exc:  # websocket-client's handshake errors while Firefox is still starting
        if type(exc).__name__.startswith("WebSocket"):
            return None
        raise


def open_page(name: str, tmp_path: Path) -> Iterator[Page]:
    """A page of ``name`` (skips, saying why, when that browser is not installed); closed afterwards."""
    if not available(name):
        pytest.skip(MISSING[name])
    profile = tmp_path / f"{name}-profile"
    page: Page = ChromiumPage(profile) if name == "chromium" else FirefoxPage(profile)
    try:
        yield page
    finally:
        page.close()
        shutil.rmtree(profile, ignore_errors=True)
