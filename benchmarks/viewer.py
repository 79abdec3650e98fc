"""One live-view viewer for ``edge-bench pipeline --viewer``: polls the daemon's page as the page's own
script (edge/faces/web/static/app.js) does in a browser, so the daemon encodes frames for it at the page's
capped rate during the measured windows.

Per camera, ``/cam/<name>/latest`` every 0.25 s and, when it names a new frame, that frame's JPEG and mask
overlay; ``/api/state`` and ``/api/timeline`` every second; ``/api/evidence`` every 5 s. One keep-alive
connection, as a browser would hold. The bytes are read and dropped (a browser would decode and paint them
on the viewer's own machine; that cost is not the station's).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

FRAME_S, STATE_S, EVIDENCE_S = 0.25, 1.0, 5.0
TIMEOUT_S = 5.0


class PageViewer:
    """A polling client in its own thread; ``pause`` (before the daemon is frozen) waits for the request in
    flight, ``resume`` (re)starts the polling."""

    def __init__(self, host: str, port: int, cameras: list[str]) -> None:
        self.host, self.port, self.cameras = host, port, list(cameras)
        self.counts = {"requests": 0, "frames": 0, "bytes": 0, "errors": 0}
        self._run = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-viewer", daemon=True)
        self._conn: http.client.HTTPConnection | None = None

    def start(self) -> PageViewer:
        """Starts the thread, paused: :meth:`resume` starts the polling."""
        self._thread.start()
        return self

    def pause(self) -> None:
        self._run.clear()
        self._idle.wait(TIMEOUT_S + 1.0)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._run.set()
        self._thread.join(TIMEOUT_S + 2.0)
        if self._conn is not None:
            self._conn.close()
        return dict(self.counts)

    def _loop(self) -> None:
        shown: dict[str, int] = {}
        next_state = next_evidence = 0.0
        while not self._stop.is_set():
            if not self._run.is_set():
                self._run.wait()
                continue
            self._idle.clear()
            try:
                now = time.monotonic()
                for cam in self.cameras:
                    snap = self._get_json(f"/cam/{cam}/latest")
                    if snap is not None and snap.get("frame_id") != shown.get(cam):
                        shown[cam] = snap["frame_id"]
                        self._get(snap["image"])
                        if snap.get("mask"):
                            self._get(snap["mask"])
                        self.counts["frames"] += 1
                if now >= next_state:
                    self._get("/api/state")
                    self._get("/api/timeline")
                    next_state = now + STATE_S
                if now >= next_evidence:
                    self._get("/api/evidence")
                    next_evidence = now + EVIDENCE_S
            finally:
                self._idle.set()
            self._stop.wait(FRAME_S)

    def _get_json(self, path: str) -> Any:
        body = self._get(path)
        return json.loads(body) if body else None

    def _get(self, path: str) -> bytes | None:
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
            self._conn.request("GET", path)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.counts["errors"] += 1
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None
        self.counts["requests"] += 1
        self.counts["bytes"] += len(body)
        return body if response.status == 200 else None
