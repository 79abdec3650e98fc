"""MQTT transport: one paho-mqtt 2 client, its connection, and one bounded queue. No topic or payload here.

What to publish, on which topic and with which flags is :mod:`edge.faces.mqtt_json.api`'s business; this
module only guarantees how messages travel:

- **Bounded, in order, every drop counted.** Messages wait in our own queue and are handed to paho only while
  fewer than ``MAX_IN_FLIGHT`` are unfinished there (QoS >= 1 not yet acknowledged, QoS 0 not yet written).
  QoS >= 1 messages in flight and queued together never exceed ``mqtt.offline_queue_max`` (at least one),
  whether the broker is gone, refuses, never acknowledges or stops reading; the oldest
  queued message is dropped first and counted per kind (result, mask, stats, ...). paho's own queue is never
  used, so memory stays bounded. Retained state is "latest value per topic", sent before the queue and again
  at every connect (a broker restarted without persistence has forgotten it).
- **Own network thread and reconnect policy.** An :class:`edge.faces.mqtt_session.MqttSession` connects,
  runs ``client.loop()`` and reconnects this one client with a capped, jittered backoff, so the device is
  back within ``reconnect_max_s`` plus one connect of the broker's return. Each change of connection state
  is one log line naming ``host:port`` and, for a failed attempt, the real error (``certificate verify
  failed``, ``Connection refused``); every failed attempt is counted in ``connect_failures``.
- **A broker that stops acknowledging is reported.** When the oldest message in flight has waited
  ``mqtt.ack_stall_s``, a warning is logged and handed to ``on_warnings`` (the API puts it into ``status``
  and ``stats``), and taken back when acknowledgements flow again.

Subscriptions are registered with :meth:`subscribe` (paho's ``message_callback_add``) and renewed at every
connect.

Locking: paho calls on_publish while holding its outgoing-message lock, and our publish path takes our lock
and then paho's, so callbacks that paho may call under its own locks must not take ``self._lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig
from edge.faces.mqtt_json.messages import Handler, Inbound, Outgoing, WarningsHook, finished
from edge.faces.mqtt_session import LOOP_TICK_S, MqttSession, command_filters, new_client, read_password

log = logging.getLogger("edge.mqtt")

MAX_IN_FLIGHT = 20  # messages handed to paho and not finished; more wait in our queue


class MqttTransport:
    """Owns the paho client: connection (through its session), subscriptions, retained state, the bounded
    queue. The session's face (:class:`edge.faces.mqtt_session.SessionFace`): the ``session_*`` methods."""

    def __init__(
        self,
        cfg: MqttConfig,
        prefix: str,
        client_id: str,
        will: Optional[Tuple[str, bytes]] = None,
        network_thread_nice: int = 0,
    ) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.v5 = cfg.protocol == "5"
        self.broker = f"{cfg.host}:{cfg.port}"
        self.bound = max(1, cfg.offline_queue_max)  # QoS >= 1 in flight + queued
        self._max_in_flight = min(MAX_IN_FLIGHT, self.bound)
        self.on_warnings: Optional[WarningsHook] = None
        self._lock = threading.Lock()
        self._queue: Deque[Outgoing] = deque()
        self._retained: Dict[str, Outgoing] = {}
        self._retained_due: Dict[str, None] = {}  # topics whose latest value is not yet handed to paho
        # (info, handed over, qos, kind): what paho holds, so an unacknowledged result is still a result
        self._pending: Deque[Tuple[paho.MQTTMessageInfo, float, int, str]] = deque()
        self._pending_lock = threading.Lock()  # leaf lock: nothing else is taken while it is held
        self._counter_lock = threading.Lock()  # leaf lock too
        self._subscriptions: Dict[str, Handler] = {}
        self._connected = False
        self._stalled = False
        self.counters: Dict[str, int] = {
            "connects": 0,
            "disconnects": 0,
            "connect_failures": 0,
            "published": 0,
            "subscribe_failures": 0,
            "handler_errors": 0,
            "network_errors": 0,
        }
        self.dropped: Dict[str, int] = {}
        self.client = self._make_client(client_id, will)
        self.session = MqttSession(
            cfg,
            self,
            label="mqtt",
            logger=log,
            thread_name="edge-mqtt",
            network_thread_nice=network_thread_nice,
        )
        self._state = self.session.changed  # leaf: notified on connect, refusal and disconnect

    # --- setup ------------------------------------------------------------------------------------------

    def _make_client(self, client_id: str, will: Optional[Tuple[str, bytes]]) -> paho.Client:
        cfg = self.cfg
        client = new_client(
            client_id, self.v5, cfg.username, read_password(cfg), cfg.tls, logging.getLogger("edge.mqtt.paho")
        )
        client.max_inflight_messages_set(self._max_in_flight)
        if will is not None:
            client.will_set(self.topic(will[0]), will[1], qos=1, retain=True)
        client.on_subscribe = self._on_subscribe
        return client

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def subscribe(self, filter_suffix: str, handler: Handler) -> None:
        """Call ``handler`` for each message on ``<prefix>/<filter_suffix>`` (subscribed at every connect)."""
        full = self.topic(filter_suffix)
        self._subscriptions[full] = handler
        self.client.message_callback_add(full, self._dispatch(handler))

    def _dispatch(self, handler: Handler) -> Callable[[paho.Client, Any, paho.MQTTMessage], None]:
        head = self.prefix + "/"

        def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            msg = Inbound(
                message.topic, message.topic[len(head) :], bytes(message.payload), bool(message.retain)
            )
            try:
                handler(msg)
            except Exception:  # a bug must not kill the network thread; count it and keep the connection
                self._count("handler_errors")
                log.exception("handler for %s failed", message.topic)

        return on_message

    def _count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def _drop(self, kind: str, n: int = 1) -> None:
        with self._counter_lock:
            self.dropped[kind] = self.dropped.get(kind, 0) + n

    # --- the session's face (network thread) ----------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in our network thread; returns at once (the broker may be down)."""
        self.session.start()

    def session_client(self) -> paho.Client:
        return self.client  # one client, reconnected: paho keeps its unacknowledged messages for us to carry

    def session_up(self, client: paho.Client) -> str:
        if self._subscriptions:
            client.subscribe(command_filters(list(self._subscriptions), self.v5))
        with self._lock:
            carried = self._carry_unacked(client)
            self._queue.extendleft(reversed(carried))
            self._trim_queue()
            self._retained_due = dict.fromkeys(self._retained)
            queued = len(self._queue)
            self._connected = True
        return f"; sending {queued} queued messages"

    def session_down(self) -> None:
        # No self._lock here (see module docstring); a bool write is atomic.
        self._connected = False

    def session_tick(self) -> bool:
        if self._connected:
            self._pump()
        self._check_acks()
        return True

    def session_goodbye(self, client: paho.Client) -> None:
        """Nothing beyond DISCONNECT: the final retained states went out in :meth:`stop`."""

    def session_count(self, name: str) -> None:
        self._count(name)

    def _carry_unacked(self, client: paho.Client) -> List[Outgoing]:
        """Take back what paho would resend after this connect, to send it *before* our queue.

        paho resends its unacknowledged messages after on_connect returns, which would put them behind the
        newer messages we flush. They are older, so they go first; they get new message ids (QoS 1 is
        at-least-once anyway).
        """
        drop = getattr(client, "drop_out_messages", None)
        if drop is None:  # paho < 2.2 (JetPack's lock pins 2.1): paho resends them itself, after our queue
            return []
        leftovers = drop()
        with self._pending_lock:
            kinds = {info.mid: kind for info, _, _, kind in self._pending}
            self._pending.clear()  # everything paho held is either carried back here or was finished
        carried = [
            Outgoing(
                m.topic,
                bytes(m.payload),
                m.qos,
                bool(m.retain),
                kind=kinds.get(m.mid, "resent"),
                raw_properties=m.properties,
            )
            for m in leftovers
            # retained state is re-sent from self._retained with
            # its current value; an old copy would overwrite it
            if not (m.retain and m.topic in self._retained)
        ]
        if carried:
            log.info("mqtt %s: resending %d message(s) unacknowledged when the connection dropped",
                     self.broker, len(carried))  # fmt: skip
        return carried

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                self._count("subscribe_failures")
                log.error("mqtt %s: the broker refused a subscription: %s", self.broker, rc)

    # --- connection state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_for(self, predicate: Callable[[MqttTransport], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds, re-checked at every connect, failure and disconnect."""
        return self.session.wait_for(lambda: predicate(self), timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self.wait_for(lambda p: p.connected, timeout)

    # --- publishing (any thread) -------------------------------------------------------------------------

    def publish(
        self,
        suffix: str,
        payload: bytes,
        qos: int,
        *,
        kind: str = "other",
        queue: bool = True,
        content_type: Optional[str] = None,
        correlation: Optional[bytes] = None,
        user_properties: Sequence[Tuple[str, str]] = (),
        retain: bool = False,
    ) -> bool:
        """Send now when there is room in flight, else queue (bounded, oldest dropped) or drop.

        QoS 0 and ``queue=False`` messages are never queued: they go now or are dropped and counted.
        Returns False when this message was dropped at once (a queued one may still be dropped later,
        oldest first, and is counted then).
        """
        msg = Outgoing(
            self.topic(suffix), payload, qos, retain, kind, queue and qos > 0, content_type, correlation,
            tuple(user_properties),
        )  # fmt: skip
        with self._lock:
            if qos == 0:  # never queued, never behind the queue: stats still flow while results wait
                if self._connected and self._room(qos0=True):
                    self._send(msg)
                    return True
            elif self._connected and not self._queue and not self._retained_due and self._room():
                self._send(msg)
                return True
            elif msg.queue:
                self._queue.append(msg)
                self._trim_queue()
                self._pump_locked()
                return True
            self._drop(kind)
            return False

    def set_retained(
        self, suffix: str, payload: bytes, qos: int = 1, content_type: Optional[str] = None
    ) -> None:
        """Remember the latest retained value of a topic and send it (before the queue; again on connect)."""
        msg = Outgoing(self.topic(suffix), payload, qos, True, "state", True, content_type)
        with self._lock:
            self._retained[msg.topic] = msg
            self._retained_due[msg.topic] = None
            if self._connected:
                self._pump_locked()

    def clear_retained(self, suffix: str) -> None:
        """Delete the broker's retained message on a topic we do not own (e.g. a retained command)."""
        self.publish(suffix, b"", 1, kind="clear", retain=True, queue=False)

    def _room(self, qos0: bool = False) -> bool:
        return self.in_flight(qos0_only=qos0) < self._max_in_flight

    def _trim_queue(self) -> None:
        """Drop the oldest queued messages until in flight + queued fit the bound (caller holds the lock)."""
        limit = max(0, self.bound - self.in_flight())
        while len(self._queue) > limit:
            self._drop(self._queue.popleft().kind)

    def _pump(self) -> None:
        with self._lock:
            self._pump_locked()

    def _pump_locked(self) -> None:
        """Hand over retained state first, then the queue, while there is room in flight."""
        while self._connected and self._retained_due and self._room():
            topic = next(iter(self._retained_due))
            del self._retained_due[topic]
            self._send(self._retained[topic])
        while self._connected and self._queue and not self._retained_due and self._room():
            self._send(self._queue.popleft())

    def _send(self, msg: Outgoing) -> None:
        """Hand one message to paho (caller holds self._lock)."""
        info = self.client.publish(
            msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=self._props(msg)
        )
        self._count("published")
        with self._pending_lock:
            self._pending.append((info, time.monotonic(), msg.qos, msg.kind))

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

    # --- acknowledgements --------------------------------------------------------------------------------

    def in_flight(self, qos0_only: bool = False) -> int:
        """Messages handed to paho and not finished (QoS >= 1 unacknowledged, QoS 0 unwritten)."""
        with self._pending_lock:
            while self._pending and finished(self._pending[0][0]):
                self._pending.popleft()
            return sum(
                1 for info, _, qos, _ in self._pending if not (qos0_only and qos) and not finished(info)
            )

    def occupancy(self) -> Tuple[int, int, int]:
        """(QoS 0 in flight, QoS >= 1 in flight, queued), read under one lock: the numbers the bound is about.

        Separate calls can each be right and still add up to one too many, because a message may finish or
        move from the queue to paho between them."""
        with self._lock:
            with self._pending_lock:
                live = [qos for info, _, qos, _ in self._pending if not finished(info)]
            queued = len(self._queue)
        qos0 = live.count(0)
        return qos0, len(live) - qos0, queued

    def unacknowledged_s(self) -> float:
        """How long the oldest unfinished message has waited (0 when none waits)."""
        with self._pending_lock:
            while self._pending and finished(self._pending[0][0]):
                self._pending.popleft()
            return time.monotonic() - self._pending[0][1] if self._pending else 0.0

    def _stalled_for(self) -> float:
        """Seconds the oldest message has waited for its ack while connected (an outage is not a stall)."""
        return self.unacknowledged_s() if self._connected else 0.0

    def _check_acks(self) -> None:
        waited = self._stalled_for()
        stalled = waited >= self.cfg.ack_stall_s
        if stalled == self._stalled:
            return
        self._stalled = stalled
        if stalled:
            log.warning(
                "mqtt %s: broker not acknowledging for %.0f s (%d in flight, %d queued); the oldest queued "
                "messages are dropped once %d are waiting",
                self.broker,
                waited,
                self.in_flight(),
                len(self._queue),
                self.bound,
            )
        else:
            log.info("mqtt %s: broker acknowledging again", self.broker)
        hook = self.on_warnings
        if hook is not None:
            hook(self.warnings())

    def warnings(self) -> List[str]:
        waited = self._stalled_for()
        if waited >= self.cfg.ack_stall_s:
            return [f"broker {self.broker} not acknowledging for {waited:.0f} s"]
        return []

    # --- state for stats ---------------------------------------------------------------------------------

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            queued = len(self._queue)
        with self._counter_lock:
            counters = dict(self.counters)
            dropped = dict(self.dropped)
        return {
            "connected": self._connected,
            "broker": self.broker,
            "in_flight": self.in_flight(),
            "queued": queued,
            "queue_max": self.bound,
            "unacknowledged_s": round(self.unacknowledged_s(), 3),
            "dropped": dropped,
            **counters,
        }

    # --- shutdown ----------------------------------------------------------------------------------------

    def undelivered(self) -> Dict[str, int]:
        """Messages not delivered yet, by kind: queued here, or handed to paho and not acknowledged."""
        out: Dict[str, int] = {}
        with self._lock:
            kinds = [m.kind for m in self._queue] + [self._retained[t].kind for t in self._retained_due]
        with self._pending_lock:
            kinds += [kind for info, _, qos, kind in self._pending if qos and not finished(info)]
        for kind in kinds:
            out[kind] = out.get(kind, 0) + 1
        return out

    def stop(self, final_retained: Sequence[Tuple[str, bytes]] = (), timeout: float = 5.0) -> Dict[str, int]:
        """Publish the final retained states, wait for acks, disconnect cleanly, end the network thread.

        Returns what was still undelivered at the end, by kind (empty when everything was acknowledged)."""
        if self.session.thread is None:
            return {}
        for suffix, payload in final_retained:
            self.set_retained(suffix, payload)
        self._wait_flushed(timeout)
        left = self.undelivered()
        if left:
            log.warning(
                "mqtt %s: stopping with %d message(s) not delivered (%s)%s",
                self.broker,
                sum(left.values()),
                ", ".join(f"{n} {kind}" for kind, n in sorted(left.items())),
                ""
                if self._connected
                else f"; the broker is unreachable: {self.session.last_error or 'never connected'}",
            )
        self.session.stop(timeout)  # the network thread sends DISCONNECT and ends
        return left

    def _wait_flushed(self, timeout: float) -> None:
        """Until queue and flight are empty, the connection is lost or ``timeout`` passes."""

        def flushed(p: MqttTransport) -> bool:
            return not p.connected or (not p._queue and not p._retained_due and p.in_flight() == 0)

        deadline = time.monotonic() + timeout
        while not flushed(self):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("mqtt %s: stopping before the broker acknowledged every message", self.broker)
                return
            with self._state:
                self._state.wait(min(left, LOOP_TICK_S))
