"""The measuring side of MQTT: a broker that stays quiet and a subscriber that records each result as it
arrives (with its receive time), parsed by the published payload contract."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.local_broker import Broker


class QuietBroker(Broker):
    """``Broker`` with error/warning logging only: per-message debug logging would cost CPU the daemon
    needs."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port, log_types=("error", "warning"), max_queued_messages=100000)


@dataclass
class Received:
    recv_mono: float
    recv_wall: float
    camera: str
    frame_id: int
    capture_ts: float
    latency_ms: dict[str, float]


class ResultSubscriber:
    """Subscribes to ``<prefix>/+/result`` (QoS 1) and records what arrives, with its receive time.

    ``keep`` False (soak): only counts and a bounded window of latencies are kept, so the measuring side
    does not grow over a long run.
    """

    def __init__(self, host: str, port: int, prefix: str, keep: bool = True) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefix = prefix
        self.keep = keep
        self.records: list[Received] = []
        self.count = 0
        self._unparsed: list[tuple[float, float, bytes]] = []
        self.bad_payloads = 0
        self.recent_total_ms: deque[float] = deque(maxlen=20000)
        self.recent_receive_ms: deque[float] = deque(maxlen=20000)
        self.last_stats: dict[str, Any] | None = None
        self._lock = threading.Condition()
        self._first = threading.Event()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edge-bench-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self, timeout: float = 15.0) -> None:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"the benchmark subscriber could not subscribe at {self._host}:{self._port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(f"{self.prefix}/+/result", 1), (f"{self.prefix}/stats", 0)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        if message.topic.endswith("/stats"):
            doc = self._parse(message.payload, stats=True)
            if doc is not None:
                self.last_stats = doc.model_dump(by_alias=True)
            return
        if self.keep:  # parsed after the run (``window``): the subscriber shares the daemon's cores
            with self._lock:
                self._unparsed.append((now_mono, now_wall, message.payload))
                self.count += 1
                self._lock.notify_all()
            self._first.set()
            return
        rec = self._received(now_mono, now_wall, message.payload)
        with self._lock:
            self.count += 1
            self._lock.notify_all()
            if rec is not None:
                self.recent_total_ms.append(rec.latency_ms.get("total", float("nan")))
                self.recent_receive_ms.append((rec.recv_wall - rec.capture_ts) * 1000.0)
        self._first.set()

    def _parse(self, payload: bytes, stats: bool = False) -> Any:
        """The payload parsed by the published contract (what SCADA would parse); None, counted, if it
        fails."""
        from pydantic import ValidationError

        from edge.results.payloads import ResultPayload, StatsPayload

        try:
            return (StatsPayload if stats else ResultPayload).model_validate_json(payload)
        except (ValidationError, ValueError, UnicodeDecodeError):
            with self._lock:
                self.bad_payloads += 1
            return None

    def _received(self, recv_mono: float, recv_wall: float, payload: bytes) -> Received | None:
        doc = self._parse(payload)
        if doc is None:
            return None
        latency = doc.latency_ms.model_dump()
        return Received(recv_mono, recv_wall, doc.camera, doc.frame_id, doc.capture_ts, latency)

    def wait_first(self, timeout: float) -> bool:
        return self._first.wait(timeout)

    def wait_count(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` results have arrived (messages still in flight after the daemon stopped)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.count >= n, timeout)

    def window(self, t0: float, t1: float) -> list[Received]:
        """The results received in [t0, t1); parses what arrived so far (bad payloads are counted then)."""
        with self._lock:
            unparsed, self._unparsed = self._unparsed, []
        parsed = [self._received(*item) for item in unparsed]
        with self._lock:
            self.records.extend(r for r in parsed if r is not None)
            return [r for r in self.records if t0 <= r.recv_mono < t1]
