"""The MQTT side of the daemon: one paho-mqtt 2 client, the public topics, and a bounded offline queue.

Topics (``<prefix>`` defaults to ``edge-anomaly/<device_id>``; the full list with payloads is in README):

    <prefix>/status                      retained, QoS 1, also the Last Will
    <prefix>/<camera>/availability       retained, QoS 1: "online", "offline" or "fault: <reason>"
    <prefix>/<camera>/result             JSON schema 1, QoS mqtt.qos_result
    <prefix>/<camera>/mask               PNG, QoS mqtt.qos_mask
    <prefix>/<camera>/heatmap            JPEG, QoS mqtt.qos_mask
    <prefix>/<camera>/threshold/set      subscribed: a number or {"threshold": x}
    <prefix>/<camera>/threshold/state    retained, QoS 1: {"threshold": x, "source": ...[, "error": ...]}
    <prefix>/stats                       QoS 0, every mqtt.stats_interval_s

While disconnected, QoS >= 1 messages wait in our own bounded queue (oldest dropped first, every drop
counted) and are sent in order after the reconnect; QoS 0 messages are dropped and counted. paho would queue
without bound on its own, so nothing is handed to paho while we know we are disconnected. Retained state
(status, availability, threshold state) is kept as "latest value per topic" and re-published on every
connect, because a broker restarted without persistence has forgotten it.

Locking: paho calls on_publish while holding its outgoing-message lock, and our publish path takes our lock
and then paho's, so callbacks that paho may call under its own locks must not take ``self._lock``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import ConfigError, MqttConfig, TlsConfig
from edge.priority import lower_current_thread_priority

log = logging.getLogger("edge.mqtt")

ThresholdHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class Outgoing:
    """One message waiting to be handed to paho."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    content_type: Optional[str] = None
    correlation: Optional[bytes] = None
    user_properties: Tuple[Tuple[str, str], ...] = ()
    raw_properties: Optional[Properties] = (
        None  # set for messages carried over from paho (see _carry_unacked)
    )


def _delivered(info: paho.MQTTMessageInfo) -> bool:
    """Whether paho finished with a message (acknowledged, or never queued so never will be)."""
    try:
        return info.is_published()
    except ValueError:  # refused by paho's own queue limit: not part of the backlog
        return True
    except RuntimeError:
        # rc says "not connected" at hand-over time; paho still resends it after reconnecting and marks
        # the info published on the ack, which is_published() cannot report once rc is set.
        return bool(getattr(info, "_published", False))


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


def _configure_tls(client: paho.Client, tls: TlsConfig) -> None:
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


class MqttPublisher:
    """Owns the paho client: connection, retained state, offline queue, threshold/set subscription."""

    def __init__(
        self,
        cfg: MqttConfig,
        prefix: str,
        client_id: str,
        status: Dict[str, object],
        on_threshold_set: Optional[ThresholdHandler] = None,
        network_thread_nice: int = 0,
    ) -> None:
        self.cfg = cfg
        self._network_thread_nice = network_thread_nice  # applied by paho's thread to itself, once
        self.prefix = prefix
        self.v5 = cfg.protocol == "5"
        self._status = dict(status)
        self._on_threshold_set = on_threshold_set
        self._lock = threading.Lock()
        self._queue: Deque[Outgoing] = deque()
        self._retained: Dict[str, Outgoing] = {}
        self._pending: Deque[paho.MQTTMessageInfo] = deque()
        self._pending_lock = threading.Lock()  # leaf lock: nothing else is taken while it is held
        self._counter_lock = threading.Lock()  # leaf lock too
        self._connected = False
        self._state = threading.Condition()  # leaf: notified on connect, refusal and disconnect
        self._started = False
        self._stopping = False
        self.counters: Dict[str, int] = {
            "connects": 0,
            "disconnects": 0,
            "connect_failures": 0,
            "published": 0,
            "offline_dropped": 0,
            "qos0_dropped_offline": 0,
            "threshold_handler_errors": 0,
            "subscribe_failures": 0,
        }
        self.client = self._make_client(client_id)
        self.set_retained("status", json.dumps({"state": "online", **self._status}).encode())

    # --- setup ------------------------------------------------------------------------------------------

    def _make_client(self, client_id: str) -> paho.Client:
        cfg = self.cfg
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else True,
        )
        client.enable_logger(logging.getLogger("edge.mqtt.paho"))
        will = json.dumps({"state": "offline", "reason": "connection lost", **self._status})
        client.will_set(self.topic("status"), will, qos=1, retain=True)
        password = read_password(cfg)
        if cfg.username is not None or password is not None:
            client.username_pw_set(cfg.username or "", password)
        if cfg.tls is not None:
            _configure_tls(client, cfg.tls)
        client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _count(self, name: str) -> None:
        with self._counter_lock:
            self.counters[name] = self.counters.get(name, 0) + 1

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def start(self) -> None:
        """Begin connecting in paho's network thread; returns at once (the broker may be down)."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self._started = True

    @property
    def connected(self) -> bool:
        return self._connected

    def _notify_state(self) -> None:
        with self._state:
            self._state.notify_all()

    def wait_for(self, predicate: Callable[[MqttPublisher], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds, re-checked at every connect, refusal and disconnect."""
        with self._state:
            return self._state.wait_for(lambda: predicate(self), timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self.wait_for(lambda p: p.connected, timeout)

    # --- paho callbacks (paho's network thread) ----------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._count("connect_failures")
            log.error("broker %s:%s refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            self._notify_state()
            return
        if self._network_thread_nice:  # only paho's network thread runs this; see edge/priority.py for why
            lower_current_thread_priority(self._network_thread_nice)
            self._network_thread_nice = 0
        client.subscribe(self.topic("+/threshold/set"), qos=1)
        with self._lock:
            carried = self._carry_unacked(client)
            for msg in list(self._retained.values()):
                self._send(msg)
            for msg in carried:
                self._send(msg)
            flushed = len(self._queue)
            while self._queue:
                self._send(self._queue.popleft())
            self._connected = True
            self._count("connects")
        self._notify_state()
        log.info("connected to %s:%s, sent %d queued messages", self.cfg.host, self.cfg.port, flushed)

    def _carry_unacked(self, client: paho.Client) -> List[Outgoing]:
        """Take back what paho would resend after this connect, to send it *before* our offline queue.

        paho resends its unacknowledged messages after on_connect returns, which would put them behind the
        newer messages we flush here. They are older, so they go first; they get new message ids (QoS 1 is
        at-least-once anyway; a QoS 2 message caught mid-handshake may be delivered twice).
        """
        drop = getattr(client, "drop_out_messages", None)
        if drop is None:  # older paho 2.x: paho resends them itself (order across a reconnect not kept)
            return []
        leftovers = drop()
        if not leftovers:
            return []
        gone = {id(m.info) for m in leftovers}
        with self._pending_lock:
            self._pending = deque(i for i in self._pending if id(i) not in gone)
        carried = [
            Outgoing(m.topic, bytes(m.payload), m.qos, bool(m.retain), raw_properties=m.properties)
            for m in leftovers
            # retained state is re-published from self._retained with its current value; an old copy would
            # overwrite it
            if not (m.retain and m.topic in self._retained)
        ]
        log.info("resending %d message(s) unacknowledged when the connection dropped", len(carried))
        return carried

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        # No self._lock here (see module docstring); a bool write is atomic and a message handed to paho
        # in the meantime is kept and resent by paho itself.
        was_connected = self._connected
        self._connected = False
        self._notify_state()
        if was_connected and not self._stopping:
            self._count("disconnects")
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason_code)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                self._count("subscribe_failures")
                log.error("broker refused the subscription to %s: %s", self.topic("+/threshold/set"), rc)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        camera = self._threshold_camera(message.topic)
        if camera is None or self._on_threshold_set is None:
            return
        try:
            self._on_threshold_set(camera, bytes(message.payload))
        except Exception:  # a bug must not kill paho's thread; count it and keep the connection
            self._count("threshold_handler_errors")
            log.exception("threshold/set handler failed for camera %s", camera)

    def _threshold_camera(self, topic: str) -> Optional[str]:
        head, tail = self.prefix + "/", "/threshold/set"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        camera = topic[len(head) : -len(tail)]
        return camera if camera and "/" not in camera else None

    # --- publishing (any thread) -------------------------------------------------------------------------

    def publish(
        self,
        suffix: str,
        payload: bytes,
        qos: int,
        *,
        content_type: Optional[str] = None,
        correlation: Optional[bytes] = None,
        user_properties: Sequence[Tuple[str, str]] = (),
    ) -> None:
        """Send now if connected; else queue (QoS >= 1, bounded, oldest dropped) or drop (QoS 0)."""
        msg = Outgoing(
            self.topic(suffix), payload, qos, False, content_type, correlation, tuple(user_properties)
        )
        with self._lock:
            if self._connected:
                self._send(msg)
            elif qos == 0:
                self._count("qos0_dropped_offline")
            else:
                self._enqueue(msg)

    def set_retained(self, suffix: str, payload: bytes, qos: int = 1) -> None:
        """Remember the latest retained value of a topic and publish it (now if connected, else on connect)."""
        msg = Outgoing(
            self.topic(suffix), payload, qos, True, "application/json" if payload[:1] == b"{" else None
        )
        with self._lock:
            self._retained[msg.topic] = msg
            if self._connected:
                self._send(msg)

    def _enqueue(self, msg: Outgoing) -> None:
        if self.cfg.offline_queue_max == 0:
            self._count("offline_dropped")
            return
        while len(self._queue) >= self.cfg.offline_queue_max:
            self._queue.popleft()
            self._count("offline_dropped")
        self._queue.append(msg)

    def _send(self, msg: Outgoing) -> None:
        """Hand one message to paho (caller holds self._lock)."""
        info = self.client.publish(
            msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=self._props(msg)
        )
        self._count("published")
        if msg.qos > 0:
            with self._pending_lock:
                self._pending.append(info)

    def _props(self, msg: Outgoing) -> Optional[Properties]:
        if msg.raw_properties is not None:
            return msg.raw_properties if self.v5 else None
        if not self.v5 or (msg.content_type is None and msg.correlation is None and not msg.user_properties):
            return None
        props = Properties(PacketTypes.PUBLISH)
        if msg.content_type is not None:
            props.ContentType = msg.content_type
        if msg.correlation is not None:
            props.CorrelationData = msg.correlation
        if msg.user_properties:
            props.UserProperty = list(msg.user_properties)
        return props

    # --- state for stats ---------------------------------------------------------------------------------

    def backlog(self) -> int:
        """QoS >= 1 messages handed to paho and not yet acknowledged by the broker."""
        with self._pending_lock:
            while self._pending and _delivered(self._pending[0]):
                self._pending.popleft()
            return sum(1 for info in self._pending if not _delivered(info))

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            queued = len(self._queue)
        with self._counter_lock:
            counters = dict(self.counters)
        return {
            "connected": self._connected,
            "offline_queue": queued,
            "offline_queue_max": self.cfg.offline_queue_max,
            "backlog": self.backlog(),
            **counters,
        }

    # --- shutdown ----------------------------------------------------------------------------------------

    def stop(self, offline_retained: Sequence[Tuple[str, bytes]] = (), timeout: float = 5.0) -> None:
        """Publish the final retained states and status offline, wait for acks, disconnect cleanly."""
        if not self._started:
            return
        for suffix, payload in offline_retained:
            with self._lock:
                known = self._retained.get(self.topic(suffix))
            if known is None or known.payload != payload:  # a camera that stopped said it already
                self.set_retained(suffix, payload)
        self.set_retained(
            "status", json.dumps({"state": "offline", "reason": "shutdown", **self._status}).encode()
        )
        self._wait_acks(timeout)
        with self._lock:
            lost = len(self._queue)
        self._stopping = True
        if lost:
            log.warning("stopping while disconnected: %d queued messages were not delivered", lost)
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False

    def _wait_acks(self, timeout: float) -> None:
        if not self._connected:
            return
        deadline = time.monotonic() + timeout
        with self._pending_lock:
            infos: List[paho.MQTTMessageInfo] = list(self._pending)
        for info in infos:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("stopping before the broker acknowledged every message")
                return
            if not _delivered(info):
                try:
                    info.wait_for_publish(left)
                except (ValueError, RuntimeError):
                    continue
