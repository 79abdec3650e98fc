"""A real MQTT client for tests: records every message it receives and lets a test wait on conditions.

Tests never sleep to synchronise: they wait (with a timeout) until a predicate over the received messages
holds, and use :meth:`Subscriber.barrier` to prove a negative ("nothing else arrived"): the broker delivers
one subscriber's messages in order, so once a marker published after the event has come back, anything the
broker routed to this client before it has arrived too.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.contract import check

WAIT = 20.0  # upper bound for one wait; every wait ends as soon as its condition holds
SESSION_EXPIRY_S = 3600  # a persistent v5 session outlives a broker restart by this much


@dataclass
class Received:
    """One message as the subscriber saw it, with the wall-clock time it arrived."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_at: float
    properties: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed, after validating it against the published JSON Schema of its topic."""
        return check(self.topic, json.loads(self.payload))


def availability_text(msg: Received) -> str:
    """An availability event as one string: ``online``, ``offline``, ``fault: <reason>``, ``ended:
    <reason>``."""
    doc = msg.json()
    return doc["state"] if doc["state"] in ("online", "offline") else f"{doc['state']}: {doc['reason']}"


def has_availability(topic: str, text: str, startswith: bool = False) -> Callable[[list[Received]], bool]:
    """A wait_for predicate: an availability event on ``topic`` reading ``text`` (or starting with it)."""

    def check(msgs: list[Received]) -> bool:
        for m in msgs:
            if m.topic == topic and m.payload:
                got = availability_text(m)
                if got == text or (startswith and got.startswith(text)):
                    return True
        return False

    return check


class Subscriber:
    """Subscribes to ``topics`` at every connect (paho reconnects it) and records what arrives.

    ``persistent``: the broker keeps the session and queues QoS 1 messages while this client is away
    (MQTT 5 clean_start=False with a session expiry, or MQTT 3.1.1 clean_session=False).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: list[str],
        *,
        v5: bool = True,
        client_id: str | None = None,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = WAIT,
    ) -> None:
        self.messages: list[Received] = []
        self.connects = 0
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:12]}"
        self.barrier_topic = f"test-barrier/{self.client_id}"
        self.topics = [*topics, self.barrier_topic]
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = _client(self.client_id, v5, persistent)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        connect_kwargs: dict[str, Any] = {"keepalive": 30}
        if v5:
            connect_kwargs["clean_start"] = not persistent
            if persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                connect_kwargs["properties"] = props
        self.client.connect(host, port, **connect_kwargs)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"test subscriber could not subscribe to {host}:{port}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        with self._cond:
            self.connects += 1
            self._cond.notify_all()
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg) -> None:
        props: dict[str, Any] = {}
        if msg.properties is not None:
            for name in ("ContentType", "CorrelationData", "UserProperty"):
                if hasattr(msg.properties, name):
                    props[name] = getattr(msg.properties, name)
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.time(), props)
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    # --- reading -----------------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = WAIT) -> bool:
        """True once ``predicate(messages)`` holds, False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def on(self, topic: str, since: int = 0) -> list[Received]:
        """Messages on exactly ``topic``, from index ``since`` of the arrival order on."""
        with self._cond:
            return [m for m in self.messages[since:] if m.topic == topic]

    def under(self, prefix: str) -> list[Received]:
        """Messages on ``prefix`` or any topic below it."""
        with self._cond:
            return [m for m in self.messages if m.topic == prefix or m.topic.startswith(prefix + "/")]

    def count(self) -> int:
        with self._cond:
            return len(self.messages)

    # --- writing -----------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)

    def barrier(self, timeout: float = WAIT) -> None:
        """Return once a marker sent now has come back: everything routed here before it has arrived."""
        token = uuid.uuid4().hex.encode()
        self.publish(self.barrier_topic, token)
        if not self.wait_for(
            lambda m: any(x.topic == self.barrier_topic and x.payload == token for x in m), timeout
        ):
            raise AssertionError(f"barrier message did not come back within {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _client(client_id: str, v5: bool, persistent: bool) -> paho.Client:
    if v5:
        return paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
    return paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,
        clean_session=not persistent,
    )


def connect_reason(
    host: str, port: int, username: str | None = None, password: str | None = None, timeout: float = WAIT
) -> Any:
    """Try one MQTT 5 connect and return the broker's reason code (``.is_failure`` tells a refusal)."""
    got: list[Any] = []
    done = threading.Event()
    client = _client(f"probe-{uuid.uuid4().hex[:10]}", True, False)
    if username is not None:
        client.username_pw_set(username, password)

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        got.append(reason_code)
        done.set()

    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise AssertionError(f"no CONNACK from {host}:{port} within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]
