"""Health: systemd notifications, a watchdog that only pets while frames really flow, optional /metrics.

systemd restarts the service when WATCHDOG=1 stops arriving (``WatchdogSec=`` in the unit). Petting from a
timer alone would hide the failure that matters on a line: a daemon that is alive but scores nothing (stuck
backend, all cameras gone). So the pet is conditional on the last successful inference being recent.

``sd_notify`` is written here (a datagram to ``$NOTIFY_SOCKET``) rather than taken from libsystemd, so the
device needs no extra package.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable, Dict, Optional

from edge.util.deps import require

log = logging.getLogger("edge.health")


class SdNotifier:
    """Sends ``KEY=VALUE`` lines to systemd; a no-op when not started by systemd (no $NOTIFY_SOCKET)."""

    def __init__(self, address: Optional[str] = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: Optional[str] = None
        if address:
            # '@' names a socket in the abstract namespace (Linux), spelled with a leading NUL byte.
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.errors = 0
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram with ``lines``; False (and a counted error) if it could not be sent."""
        if self.address is None:
            return False
        data = "\n".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, self.address)
                return True
            except OSError as exc:
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("sd_notify to %r failed (%d so far): %s", self.address, self.errors, exc)
                return False

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval_s(environ: Optional[Dict[str, str]] = None) -> Optional[float]:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None if systemd asked for no watchdog (for this process)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (e.g. a wrapper script)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """A thread that sends WATCHDOG=1 every ``interval_s`` while ``seconds_since_inference`` <
    ``stall_after_s``.

    When the flow stops it sends one STATUS= line saying so and stays silent, so systemd restarts the service
    after WatchdogSec; when frames flow again it resumes petting.
    """

    def __init__(
        self,
        notifier: SdNotifier,
        interval_s: float,
        stall_after_s: float,
        seconds_since_inference: Callable[[], Optional[float]],
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.stall_after_s = stall_after_s
        self._since = seconds_since_inference
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.pets = 0
        self.stalled = False

    def flowing(self) -> bool:
        since = self._since()
        return since is not None and since <= self.stall_after_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        if self.flowing():
            if self.stalled:
                self.stalled = False
                log.info("frames flow again; watchdog resumed")
                self.notifier.notify("STATUS=running")
            if self.notifier.notify("WATCHDOG=1"):
                self.pets += 1
        elif not self.stalled:
            self.stalled = True
            since = self._since()
            what = "no inference yet" if since is None else f"no inference for {since:.1f} s"
            log.error("stall: %s (stall_after_s=%.1f); watchdog pings stop", what, self.stall_after_s)
            self.notifier.notify(f"STATUS=stalled: {what}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class MetricsServer:
    """Prometheus /metrics from the same snapshot the stats topic uses (prometheus-client imported lazily)."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Dict[str, object]]) -> None:
        self.host, self.port = host, port
        self._snapshot = snapshot
        self._server = None

    def start(self) -> None:
        purpose = "the Prometheus /metrics endpoint (health.metrics_port)"
        prom = require("prometheus_client", "metrics", purpose)
        core = require("prometheus_client.core", "metrics", purpose)
        registry = prom.CollectorRegistry()
        registry.register(_SnapshotCollector(self._snapshot, core))
        result = prom.start_http_server(self.port, addr=self.host, registry=registry)
        # prometheus-client >= 0.17 returns (server, thread); older versions return None.
        self._server = result[0] if isinstance(result, tuple) else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class _SnapshotCollector:
    """Turns the stats snapshot into gauges/counters at scrape time (no second set of counters to keep)."""

    def __init__(self, snapshot: Callable[[], Dict[str, object]], core: Any) -> None:
        self._snapshot = snapshot
        self._core = core

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        core = self._core
        snap: Dict[str, Any] = self._snapshot()
        fps = core.GaugeMetricFamily("edge_fps", "frames scored per second over the last stats period")
        fps.add_metric([], float(snap.get("fps", 0.0) or 0.0))
        yield fps
        drops = core.CounterMetricFamily(
            "edge_drops", "frames or messages dropped, per stage", labels=["stage"]
        )
        for stage, n in dict(snap.get("drops", {})).items():
            drops.add_metric([stage], float(n))
        yield drops
        lat = core.GaugeMetricFamily(
            "edge_latency_ms", "latency percentiles per stage", labels=["stage", "quantile"]
        )
        for stage, pct in dict(snap.get("latency_ms", {})).items():
            for q, value in dict(pct).items():
                if value is not None:
                    lat.add_metric([stage, q], float(value))
        yield lat
        scored = core.CounterMetricFamily("edge_frames_scored", "frames scored per camera", labels=["camera"])
        for cam, info in dict(snap.get("cameras", {})).items():
            scored.add_metric([cam], float(dict(info).get("scored", 0)))
        yield scored
        backlog = core.GaugeMetricFamily(
            "edge_mqtt_backlog", "MQTT messages not yet acknowledged or still queued"
        )
        mqtt = dict(snap.get("mqtt", {}))
        backlog.add_metric([], float(mqtt.get("in_flight", 0)) + float(mqtt.get("queued", 0)))
        yield backlog
