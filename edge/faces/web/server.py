"""The live view's aiohttp application and the thread that serves it (imported only when [web] is enabled).

Routes: ``/`` (the page, or the login form when a token is needed), ``/static/*``, ``/api/state``,
``/api/timeline``, ``/cam/<name>/latest`` (the newest snapshot's fields, naming its own
``/cam/<name>/frame/<frame_id>.jpg`` and ``.../mask.png``), ``/cam/<name>/frame.jpg`` (the newest picture
alone), ``POST /api/threshold/<name>`` (the body is a
``threshold/set`` payload and takes the same path: :meth:`DeviceApi.set_threshold` with source ``web``),
``POST /login`` and ``POST /logout``.

Security (docs/configuration.md, ``[web]``):

- Bound to loopback by default. With ``token_file`` every request needs the token: as
  ``Authorization: Bearer <token>`` or once through the login form, which sets a random session id in a
  HttpOnly, SameSite=Strict cookie. The token never travels in a URL and is never put in a page.
- Without a token (loopback only, enforced by the config), the Host header must name this machine
  (127.0.0.1, localhost, ::1), so a DNS-rebinding page cannot reach the API.
- Every POST from a browser must carry an Origin equal to this server's own and the header
  ``X-Edge-Request: 1`` (a cross-site page can send neither without a CORS preflight, which is never
  granted); a request carrying the Bearer token is not a browser's ambient credential and needs neither.
- Responses carry a strict Content-Security-Policy (no inline script, nothing from elsewhere), no framing,
  no referrer, and API answers are not cached. Camera sources are shown redacted.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Optional, Protocol
from urllib.parse import quote

from aiohttp import web

from edge.config.web import LOOPBACK_NAMES
from edge.faces.web.evidence_routes import EvidencePages, EvidenceReader
from edge.faces.web.live import LiveView
from edge.results.payloads import ThresholdStatePayload
from edge.util.priority import lower_current_thread_priority

log = logging.getLogger("edge.web")

STATIC = Path(__file__).parent / "static"
COOKIE = "edge_session"
SESSION_S = 12 * 3600.0
FAILED_LOGIN_DELAY_S = 1.0
CSRF_HEADER = "X-Edge-Request"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LIVE: web.AppKey[LiveView] = web.AppKey("live", LiveView)
ACCESS: web.AppKey[Access] = web.AppKey("access", object)  # type: ignore[arg-type]
COMMANDS: web.AppKey[Commands] = web.AppKey("commands", object)  # type: ignore[arg-type]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Commands(Protocol):
    """What the page needs from the JSON face (:class:`edge.faces.mqtt_json.api.DeviceApi`)."""

    def set_threshold(
        self, camera: str, payload: bytes, origin: str = ..., source: str = ...
    ) -> Optional[str]: ...

    def threshold_state(self, camera: str, error: Optional[str] = ...) -> ThresholdStatePayload: ...


class Access:
    """Who may do what: the token (None: loopback without one), login sessions, the Origin and Host rules."""

    def __init__(self, token: Optional[str]) -> None:
        self.token = token
        self._sessions: Dict[str, float] = {}  # session id -> expiry (monotonic)
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return self.token is not None

    def bearer(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.token is None or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def authenticated(self, request: web.Request) -> bool:
        if self.token is None or self.bearer(request):
            return True
        sid = request.cookies.get(COOKIE, "")
        now = time.monotonic()
        with self._lock:
            expiry = self._sessions.get(sid)
            return expiry is not None and expiry > now

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def new_session(self) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {s: t for s, t in self._sessions.items() if t > now}
            self._sessions[sid] = now + SESSION_S
        return sid

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    @staticmethod
    def same_origin(request: web.Request) -> bool:
        """A browser's POST from our own page: Origin is ours and the custom header is there."""
        origin = request.headers.get("Origin")
        return origin == f"{request.scheme}://{request.host}" and request.headers.get(CSRF_HEADER) == "1"

    @staticmethod
    def same_origin_form(request: web.Request) -> bool:
        """The login form cannot add a header; its Origin must be ours."""
        return request.headers.get("Origin") == f"{request.scheme}://{request.host}"

    def host_allowed(self, request: web.Request) -> bool:
        if self.token is not None:
            return True
        host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else request.host[1:]
        host = host.split("]", 1)[0]
        return host in LOOPBACK_NAMES


def make_app(
    live: LiveView, commands: Commands, access: Access, evidence: Optional[EvidenceReader] = None
) -> web.Application:
    """The page's application; it reads ``live`` (and ``evidence``: the store's latest anomalous frames)
    and sends threshold changes through ``commands``."""
    app = web.Application(client_max_size=4096, middlewares=[_guard(access)])
    app[LIVE], app[COMMANDS], app[ACCESS] = live, commands, access
    app.router.add_get("/", _index)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/api/state", _state)
    app.router.add_get("/api/timeline", _timeline)
    app.router.add_get("/cam/{camera}/frame.jpg", _frame)
    app.router.add_get("/cam/{camera}/latest", _latest)
    app.router.add_get("/cam/{camera}/frame/{frame_id:\\d+}.jpg", _snap_image)
    app.router.add_get("/cam/{camera}/frame/{frame_id:\\d+}/mask.png", _snap_overlay)
    app.router.add_post("/api/threshold/{camera}", _set_threshold)
    EvidencePages(evidence).add_routes(app)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app


OPEN_PATHS = ("/", "/login", "/static/style.css")


def _guard(access: Access) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not access.host_allowed(request):
            response: web.StreamResponse = _error(421, "this page answers to 127.0.0.1 or localhost only")
        elif request.path not in OPEN_PATHS and not access.authenticated(request):
            response = _error(401, "log in first (the access token is in the file named by web.token_file)")
        else:
            response = await handler(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return guard


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"Cache-Control": "no-store"})


def _json(doc: Any) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"}, dumps=json.dumps)


async def _index(request: web.Request) -> web.StreamResponse:
    access: Access = request.app[ACCESS]
    page = "index.html" if access.authenticated(request) else "login.html"
    return web.FileResponse(STATIC / page, headers={"Cache-Control": "no-store"})


async def _login(request: web.Request) -> web.StreamResponse:
    access: Access = request.app[ACCESS]
    if not access.required:
        raise web.HTTPSeeOther("/")
    if not access.same_origin_form(request):
        return _error(403, "cross-site login refused")
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not access.check_token(given):
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)  # guessing costs time
        log.warning("web: a login with a wrong token from %s", request.remote)
        return web.FileResponse(STATIC / "login.html", status=401, headers={"Cache-Control": "no-store"})
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE, access.new_session(), max_age=int(SESSION_S), path="/", httponly=True, samesite="Strict",
        secure=request.secure,
    )  # fmt: skip
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    access: Access = request.app[ACCESS]
    if not access.same_origin(request):
        return _error(403, "cross-site request refused")
    access.end_session(request.cookies.get(COOKIE, ""))
    response = _json({"logged_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def _state(request: web.Request) -> web.StreamResponse:
    live: LiveView = request.app[LIVE]
    commands: Commands = request.app[COMMANDS]
    cams = live.state()
    for name, doc in cams.items():
        doc["threshold"] = commands.threshold_state(name).model_dump()
    access: Access = request.app[ACCESS]
    return _json({"cameras": cams, "login": access.required, "timeline_s": live.timeline_s})


async def _timeline(request: web.Request) -> web.StreamResponse:
    live: LiveView = request.app[LIVE]
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return _error(400, "since must be a number (epoch seconds)")
    return _json({"timeline_s": live.timeline_s, "cameras": live.timeline(since)})


def _newest(request: web.Request) -> Any:
    """The camera's newest snapshot, or the error response to send (no such camera, no frame yet)."""
    live: LiveView = request.app[LIVE]
    camera = request.match_info["camera"]
    if camera not in live.cameras:
        return _error(404, f"no camera {camera!r}")
    snap = live.latest(camera)
    return _error(503, "no frame yet") if snap is None else snap


async def _frame(request: web.Request) -> web.StreamResponse:
    """The newest frame's picture alone (no overlay), named by the ``X-Frame-Id`` header."""
    snap = _newest(request)
    if isinstance(snap, web.Response):
        return snap
    return _image(snap.jpeg, "image/jpeg", {"X-Frame-Id": str(snap.frame_id)})


async def _latest(request: web.Request) -> web.StreamResponse:
    """The newest snapshot's result fields and the URLs of its own picture and mask overlay."""
    snap = _newest(request)
    if isinstance(snap, web.Response):
        return snap
    base = f"/cam/{quote(request.match_info['camera'], safe='')}/frame/{snap.frame_id}"
    return _json({
        **snap.info, "frame_id": snap.frame_id, "width": snap.size[0], "height": snap.size[1],
        "image": base + ".jpg", "mask": base + "/mask.png" if snap.overlay is not None else None,
    })  # fmt: skip


def _snap(request: web.Request) -> Any:
    live: LiveView = request.app[LIVE]
    camera = request.match_info["camera"]
    if camera not in live.cameras:
        return _error(404, f"no camera {camera!r}")
    snap = live.snapshot(camera, int(request.match_info["frame_id"]))
    if snap is None:
        return _error(404, "that frame is no longer kept: ask /cam/<camera>/latest again")
    return snap


async def _snap_image(request: web.Request) -> web.StreamResponse:
    snap = _snap(request)
    return snap if isinstance(snap, web.Response) else _image(snap.jpeg, "image/jpeg")


async def _snap_overlay(request: web.Request) -> web.StreamResponse:
    snap = _snap(request)
    if isinstance(snap, web.Response):
        return snap
    if snap.overlay is None:
        return _error(404, "this frame has no mask")
    return _image(snap.overlay, "image/png")


def _image(data: bytes, content_type: str, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(
        body=data, content_type=content_type, headers={"Cache-Control": "no-store", **(headers or {})}
    )


async def _set_threshold(request: web.Request) -> web.StreamResponse:
    access: Access = request.app[ACCESS]
    if not access.bearer(request) and not access.same_origin(request):
        return _error(403, "cross-site request refused: send it from the page (Origin and X-Edge-Request)")
    live: LiveView = request.app[LIVE]
    commands: Commands = request.app[COMMANDS]
    camera = request.match_info["camera"]
    if camera not in live.cameras:
        return _error(404, f"no camera {camera!r}")
    payload = await request.read()
    error = commands.set_threshold(camera, payload, origin="web", source="web")
    state = commands.threshold_state(camera, error).model_dump()
    return web.json_response(
        state, status=200 if error is None else 400, headers={"Cache-Control": "no-store"}
    )


class WebServer:
    """Serves ``app`` from its own thread and asyncio loop, at the helper threads' priority."""

    def __init__(self, app: web.Application, host: str, port: int, live: LiveView, nice: int = 0) -> None:
        self.app, self.host, self.port, self.live, self.nice = app, host, port, live, nice
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self.error: Optional[str] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> bool:
        """Start serving; False (logged) when the address cannot be bound: inspection goes on without it."""
        self._thread = threading.Thread(target=self._run, name="edge-web", daemon=True)
        self._thread.start()
        self._ready.wait(timeout_s)
        if self.error is not None:
            log.error("web: the live view is off: %s", self.error)
            return False
        log.info("web: live view at %s", self.url)
        return True

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)

    def _run(self) -> None:
        lower_current_thread_priority(self.nice)
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            server = getattr(site, "_server", None)
            if self.port == 0 and server is not None and server.sockets:
                self.port = int(server.sockets[0].getsockname()[1])
        except OSError as exc:
            self.error = f"cannot serve on {self.host}:{self.port} ({exc.strerror or exc})"
            self._ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._ready.set()
        loop.call_later(1.0, self._tidy)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def _tidy(self) -> None:
        """Every second: drop the encoded snapshots once no viewer is left."""
        self.live.forget_frames()
        if self._loop is not None and self._loop.is_running():
            self._loop.call_later(1.0, self._tidy)
