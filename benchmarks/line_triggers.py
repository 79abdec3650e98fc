"""The PLC's side of ``edge-bench line``: triggers sent at a steady rate (over MQTT, or as OPC UA ``Trigger``
method calls with asyncua's client) and the part verdicts received on ``<prefix>/part/<name>``, each with
its time on this machine's monotonic clock, parsed after the run by the published payload contract."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPCUA_NAMESPACE = "urn:edge-anomaly"


@dataclass
class Sent:
    part_id: str
    mono: float  # just before the trigger left
    error: str | None = None  # the trigger was refused (OPC UA's Message output), or the call failed


def _paho(client_id: str) -> Any:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    return paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
    )


class VerdictSubscriber:
    """Records every message on ``<prefix>/part/+`` with its receive time; parsed by :meth:`verdicts`."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.prefix = prefix
        self._raw: list[tuple[float, float, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = _paho(f"edge-bench-parts-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = lambda c, u, f, rc, p: (
            None if rc.is_failure else c.subscribe(f"{prefix}/part/+", 1)
        )
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self, timeout: float = 15.0) -> VerdictSubscriber:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"the verdict subscriber could not subscribe at {self._host}:{self._port}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now, wall = time.monotonic(), time.time()
        with self._lock:
            self._raw.append((now, wall, message.payload))

    def count(self) -> int:
        with self._lock:
            return len(self._raw)

    def verdicts(self) -> tuple[list[tuple[float, float, Any]], int]:
        """(receive time, its wall-clock time, PartPayload) of everything received so far, and how many did
        not parse."""
        from pydantic import ValidationError

        from edge.results.payloads import PartPayload

        with self._lock:
            raw = list(self._raw)
        out, bad = [], 0
        for mono, wall, payload in raw:
            try:
                out.append((mono, wall, PartPayload.model_validate_json(payload)))
            except (ValidationError, ValueError):
                bad += 1
        return out, bad


class MqttTrigger:
    """``<prefix>/<camera>/trigger`` with the part id as the payload (QoS 1, never retained)."""

    kind = "mqtt"

    def __init__(self, host: str, port: int, prefix: str, camera: str) -> None:
        self._topic = f"{prefix}/{camera}/trigger"
        self._client = _paho(f"edge-bench-plc-{uuid.uuid4().hex[:8]}")
        self._connected = threading.Event()
        self._client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else self._connected.set()
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(15.0):
            raise RuntimeError(f"the trigger client could not connect to {host}:{port}")

    def send(self, part_id: str) -> str | None:
        self._client.publish(self._topic, part_id.encode("utf-8"), qos=1)
        return None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class OpcUaTrigger:
    """``VisionSystem.Trigger(cameraName, partId)`` called with asyncua's client, one call at a time (a PLC
    waits for the method's answer); the client's event loop runs in a thread of its own."""

    kind = "opcua"

    def __init__(self, endpoint: str, camera: str, timeout_s: float = 30.0) -> None:
        from asyncua import Client

        self._camera = camera
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-opcua", daemon=True)
        self._thread.start()
        self._client = Client(endpoint, timeout=10)
        t_end = time.monotonic() + timeout_s
        while True:  # the daemon opens its OPC UA server when it starts running, after it is built
            try:
                self._call(self._connect(), timeout_s)
                return
            except OSError:
                if time.monotonic() > t_end:
                    raise
                time.sleep(0.2)

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self) -> None:
        from asyncua import ua

        await self._client.connect()
        idx = await self._client.get_namespace_index(OPCUA_NAMESPACE)
        self._vision = self._client.get_node(ua.NodeId("VisionSystem", idx))
        self._method = ua.NodeId("VisionSystem.Trigger", idx)

    async def _trigger(self, part_id: str) -> Any:
        return await self._vision.call_method(self._method, self._camera, part_id)

    def send(self, part_id: str) -> str | None:
        try:
            message = self._call(self._trigger(part_id))
        except Exception as exc:  # a refused trigger answers with a Bad status: the part never opened
            return f"{type(exc).__name__}: {exc}"
        return message or None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the server may be gone already
            self._call(self._client.disconnect())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def send_paced(
    send: Callable[[str], str | None], rate_hz: float, seconds: float, prefix: str, stop: threading.Event
) -> list[Sent]:
    """Triggers at ``rate_hz`` for ``seconds`` on a fixed schedule (a late one is sent at once, the schedule
    is kept, so the rate offered stays the rate asked); part ids ``<prefix>-<n>``."""
    sent: list[Sent] = []
    period = 1.0 / rate_hz
    t0 = time.monotonic()
    n = 0
    while not stop.is_set():
        due = t0 + n * period
        if due - t0 >= seconds:
            break
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        part_id = f"{prefix}-{n}"
        mono = time.monotonic()
        sent.append(Sent(part_id, mono, send(part_id)))
        n += 1
    return sent
