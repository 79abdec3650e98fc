"""The MQTT session every face shares: :class:`MqttSession`, one network thread that connects, runs paho's
loop, backs off (:class:`edge.util.backoff.Backoff`) and reconnects; and one way to build a paho client
(protocol, credentials, TLS, only the network thread writes to the socket), the password and TLS files read
at start, one error text.

Each face keeps its own connection (one session each), Last Will and topics, and is a :class:`SessionFace`:
the session asks it for the client of every connection attempt (the JSON face hands back its one client to
reconnect it; the Sparkplug node makes a new one, as its Will carries a new bdSeq) and tells it, in the
network thread, when the broker accepted the connection, when it ended, at every loop tick and before it
disconnects on purpose. The face is given to the session at construction; nothing is attached later.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.config import ConfigError, MqttConfig, TlsConfig
from edge.util.backoff import Backoff
from edge.util.priority import lower_current_thread_priority

LOOP_TICK_S = 0.1  # longest the network thread waits in select() before the face's tick
RECONNECT_JITTER = 0.5  # each reconnect delay is drawn from [0.5, 1] x the nominal delay


class SessionFace(Protocol):
    """What a session needs of its face. The session calls every method in its network thread; paho may be
    holding its own locks then, so none of them may wait for a publishing thread."""

    def session_client(self) -> paho.Client:
        """The client for the next connection attempt: the same one to reconnect it, a new one for a new
        session (a new Will). Set up with the face's Will, subscriptions' callbacks and on_subscribe; the
        session sets on_connect and on_disconnect."""
        ...

    def session_up(self, client: paho.Client) -> str:
        """The broker accepted the connection: subscribe, resend. Returns what the "connected" log line
        adds (``; sending 3 queued messages``)."""
        ...

    def session_down(self) -> None:
        """The connection ended (lost, refused, closed on purpose, or a bug): nothing may be sent now. May
        be called more than once per connection."""
        ...

    def session_tick(self) -> bool:
        """About every ``LOOP_TICK_S`` while the socket is open (before the CONNACK too). False: say goodbye
        and disconnect (the session then reconnects with backoff)."""
        ...

    def session_goodbye(self, client: paho.Client) -> None:
        """The last words before a DISCONNECT on purpose (at stop, or after a tick said False)."""
        ...

    def session_count(self, name: str) -> None:
        """Count a connection event: connects, disconnects, connect_failures, network_errors."""
        ...


class MqttSession:
    """One face's connection: its network thread connects, loops, backs off and reconnects.

    Only the network thread touches the socket. Each change of connection state is one log line naming
    ``host:port`` and, for a failed attempt, the real error (``certificate verify failed``, ``Connection
    refused``); each failed attempt is counted as ``connect_failures``. The delay between attempts is capped
    at ``reconnect_max_s``, so the face is back within that plus one connect of the broker's return.
    ``changed`` (a leaf condition) is notified at every connect, failure and disconnect.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        face: SessionFace,
        *,
        label: str,
        logger: logging.Logger,
        thread_name: str,
        network_thread_nice: int = 0,
        connack_timeout_s: Optional[float] = None,
        clean_start: Optional[bool] = None,
        connect_properties: Optional[Properties] = None,
    ) -> None:
        """``connack_timeout_s``: give up an attempt the broker has not answered by then (None: paho's
        keepalive ends it). ``clean_start`` and ``connect_properties`` apply to MQTT 5 only."""
        self.cfg = cfg
        self.face = face
        self.broker = f"{cfg.host}:{cfg.port}"
        self.v5 = cfg.protocol == "5"
        self.changed = threading.Condition()
        self._label = label
        self._log = logger
        self._thread_name = thread_name
        self._nice = network_thread_nice
        self._connack_timeout_s = connack_timeout_s
        self._connect_kwargs: Dict[str, Any] = {}
        if self.v5 and clean_start is not None:
            self._connect_kwargs["clean_start"] = clean_start
        if self.v5 and connect_properties is not None:
            self._connect_kwargs["properties"] = connect_properties
        self._backoff = Backoff(
            float(cfg.reconnect_min_s), float(cfg.reconnect_max_s), jitter=RECONNECT_JITTER
        )
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._client: Optional[paho.Client] = None  # the client of the current attempt
        self._answered = False  # a CONNACK came for the current attempt
        self._up = False  # the broker accepted the current connection and it has not ended
        self.failures_in_row = 0
        self.last_error = ""
        self._offline_since: Optional[float] = None

    # --- lifecycle (any thread) --------------------------------------------------------------------------

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def offline_s(self) -> float:
        """Seconds since the connection was lost (or the session started); 0 while connected."""
        since = self._offline_since
        return 0.0 if since is None else time.monotonic() - since

    def start(self) -> None:
        """Begin connecting in the network thread; returns at once (the broker may be down)."""
        if self._thread is not None:
            return
        self._offline_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """The face's goodbye, DISCONNECT (both by the network thread), then the thread ends."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log.warning(
                "%s %s: the network thread did not end within %.0f s", self._label, self.broker, timeout
            )
        self._thread = None

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked at every connect, failure and disconnect."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # --- the network thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        lower_current_thread_priority(self._nice)
        while not self._stop.is_set():
            client: Optional[paho.Client] = None
            try:
                client = self._next_client()
                if self._connect_once(client):
                    self._loop_until_disconnected(client)
            except Exception:  # a bug here must not end the only thread that talks to the broker
                self.face.session_count("network_errors")
                self._log.exception(
                    "%s %s: network thread error; reconnecting with backoff", self._label, self.broker
                )
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.disconnect()
            self._up = False
            self.face.session_down()
            self.notify()
            if not self._stop.is_set():
                self._stop.wait(self._backoff.next_delay())

    def _next_client(self) -> paho.Client:
        client = self.face.session_client()
        if client is not self._client:
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive,
                                 **self._connect_kwargs)  # fmt: skip
            self._client = client
        return client

    def _connect_once(self, client: paho.Client) -> bool:
        self._answered = False
        try:
            rc = client.reconnect()
        except Exception as exc:  # OSError (refused, unreachable, TLS), ValueError (bad host), ...
            self._connect_failed(error_text(exc))
            return False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._connect_failed(paho.error_string(rc))
            return False
        return True

    def _loop_until_disconnected(self, client: paho.Client) -> None:
        timeout = self._connack_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            rc = client.loop(timeout=LOOP_TICK_S)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if not self._answered and not self._stop.is_set():  # TCP (and TLS) up, but no CONNACK
                    self._connect_failed(
                        f"connection closed before the broker answered ({paho.error_string(rc)})"
                    )
                return
            if not self._answered and deadline is not None and time.monotonic() > deadline:
                self._connect_failed(f"no CONNACK within {timeout:.0f} s")
                return
            if not self.face.session_tick():
                break
        self.face.session_goodbye(client)
        client.disconnect()
        client.loop_write()  # this thread writes the DISCONNECT; paho then closes the socket

    def _connect_failed(self, error: str) -> None:
        self.failures_in_row += 1
        if error != self.last_error:  # one line per change, not one per attempt
            self._log.warning(
                "%s %s: cannot connect: %s (retrying with backoff)", self._label, self.broker, error
            )
            self.last_error = error
        else:
            self._log.debug("%s %s: attempt %d failed: %s", self._label, self.broker, self.failures_in_row,
                            error)  # fmt: skip
        self.face.session_count("connect_failures")  # after the log line: whoever sees the count finds it
        self.notify()

    # --- paho callbacks (network thread) ----------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._answered = True
        if reason_code.is_failure:
            self._connect_failed(f"the broker refused the connection: {reason_code}")
            return
        detail = self.face.session_up(client)
        self._up = True
        self.face.session_count("connects")
        self._log.info(
            "%s %s: connected (after %d failed attempt(s), %.1f s offline)%s",
            self._label, self.broker, self.failures_in_row, self.offline_s(), detail,
        )  # fmt: skip
        self.failures_in_row = 0
        self.last_error = ""
        self._offline_since = None
        self._backoff.reset()
        self.notify()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_up, self._up = self._up, False
        self.face.session_down()
        self.notify()
        if was_up and not self._stop.is_set():
            self._offline_since = time.monotonic()
            self.face.session_count("disconnects")
            self._log.warning(
                "%s %s: connection lost (%s); reconnecting with backoff",
                self._label,
                self.broker,
                reason_code,
            )


def new_client(
    client_id: str,
    v5: bool,
    username: Optional[str],
    password: Optional[str],
    tls: Optional[TlsConfig],
    logger: logging.Logger,
) -> paho.Client:
    """A paho client for one face: MQTT 5 or 3.1.1 with a clean session, credentials, TLS.

    Only the network thread writes to the socket: without the write hook, paho writes from whichever thread
    publishes, and two threads' packets can interleave on the wire. Publishers only queue packets and wake
    the network thread's select() through paho's socket pair, as with loop_start().
    """
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.enable_logger(logger)
    if username is not None or password is not None:
        client.username_pw_set(username or "", password)
    if tls is not None:
        configure_tls(client, tls)
    client.on_socket_register_write = network_thread_writes
    return client


def command_filters(
    topics: Sequence[str], v5: bool, qos: int = 1
) -> Union[List[Tuple[str, int]], List[Tuple[str, SubscribeOptions]]]:
    """Subscription filters for command topics. On MQTT 5 with retain-as-published, so a retained command
    published while we are connected still carries its retain flag and the one retained-command guard
    (:class:`edge.commands.CommandDesk`) refuses it; MQTT 3.1.1 brokers clear the flag on live delivery, so
    only the retained copies delivered at subscribe time can be recognised there."""
    if not v5:
        return [(topic, qos) for topic in topics]
    return [(topic, SubscribeOptions(qos=qos, retainAsPublished=True)) for topic in topics]


def read_password(cfg: MqttConfig) -> Optional[str]:
    """The broker password from the config or its file (read here, at start, never in a validator)."""
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is None:
        return None
    try:
        return Path(cfg.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"mqtt.password_file: cannot read {cfg.password_file}: {exc.strerror or exc}"
        ) from exc


def configure_tls(client: paho.Client, tls: TlsConfig) -> None:
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"mqtt.tls.{name}: {path} does not exist or is not a file")
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"mqtt.tls: the TLS files cannot be used: {exc}") from exc
    client.tls_insecure_set(tls.insecure)


def network_thread_writes(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's external-loop hook, used only to stop it writing from publishing threads (see new_client)."""


def error_text(exc: BaseException) -> str:
    """``certificate verify failed: …`` or ``[Errno 111] Connection refused``, without paho's wrapping."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"
