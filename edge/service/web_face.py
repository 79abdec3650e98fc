"""Wires the live-view page (edge/faces/web/) into the daemon when ``[web] enabled = true``.

aiohttp is imported here only then (the ``web`` extra); the page is told every result and camera change by
the JSON face (as one more observer), offered every published frame by the publish thread, and sends
threshold changes through the JSON face's ``set_threshold`` (source ``web``); with ``[evidence]`` on, it lists
the store's latest anomalous frames (read-only, edge.service.web_evidence). A port that cannot be bound is
logged and the daemon inspects on without the page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from edge.config import EdgeConfig
from edge.faces.web.live import LiveView
from edge.service.loader import StartupError
from edge.util.deps import require
from edge.util.redact import redact

if TYPE_CHECKING:
    from edge.faces.web.server import WebServer
    from edge.service.daemon import Daemon

log = logging.getLogger("edge.web")


class WebFace:
    """The live view's data and its server; started after the publish thread, stopped before MQTT."""

    def __init__(self, live: LiveView, server: WebServer) -> None:
        self.live = live
        self.server = server

    @classmethod
    def wired(cls, config: EdgeConfig, daemon: Daemon) -> Optional[WebFace]:
        web = config.web
        if not web.enabled:
            return None
        require("aiohttp", "web", "The live-view page ([web] enabled)")
        from edge.faces.web.server import Access, WebServer, make_app
        from edge.service.web_evidence import StoreEvidence

        token = read_token(web.token_file) if web.token_file is not None else None
        sources = {cam.name: redact(str(cam.source)) for cam in config.enabled_cameras()}
        live = LiveView(daemon.api.cameras_now(), sources, web.frame_fps, web.timeline_s)
        daemon.api.observers.append(live)
        daemon.publisher.live = live
        evidence = StoreEvidence(daemon.evidence.root) if daemon.evidence is not None else None
        app = make_app(live, daemon.api, Access(token), evidence)
        return cls(live, WebServer(app, web.host, web.port, live, config.model.helper_threads_nice))

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


def read_token(path: Path) -> str:
    """The access token: the file's first line, at least 16 characters; StartupError says what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"web.token_file {path}: cannot read it ({exc})") from exc
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise StartupError(
            f"web.token_file {path}: the token must be at least 16 characters (e.g. the output of "
            "'openssl rand -hex 24')"
        )
    return token
