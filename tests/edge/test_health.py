"""Health: sd_notify over a real AF_UNIX socket, the flow-conditional watchdog, /metrics, log formats."""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest

from edge.service.cli import JsonFormatter, KeyValueFormatter
from edge.service.health import MetricsServer, SdNotifier, Watchdog, watchdog_interval_s
from edge.util.stats import LatencyWindow, Stats
from tests.helpers.broker import free_port


def datagram_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with datagram_socket(path) as sock:
        notifier = SdNotifier(path)
        assert notifier.notify("READY=1", "STATUS=running")
        assert sock.recv(4096) == b"READY=1\nSTATUS=running"
        notifier.close()


def test_notify_to_an_abstract_socket() -> None:
    name = f"edge-test-{uuid.uuid4().hex}"
    with datagram_socket("\0" + name) as sock:
        notifier = SdNotifier("@" + name)
        assert notifier.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled and notifier.notify("READY=1") is False and notifier.errors == 0
    gone = SdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert gone.notify("READY=1") is False and gone.errors == 1


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_pets_only_while_frames_flow(tmp_path: Path) -> None:
    """Driven tick by tick with a fake clock: no pets before the first inference or after a stall."""
    path = str(tmp_path / "wd.sock")
    now = [100.0]
    stats = Stats(["cam"], clock=lambda: now[0])
    with datagram_socket(path) as sock:
        sock.setblocking(False)
        dog = Watchdog(
            SdNotifier(path),
            interval_s=0.5,
            stall_after_s=2.0,
            seconds_since_inference=stats.seconds_since_inference,
        )

        def ticks(n: int, step: float) -> list[bytes]:
            out = []
            for _ in range(n):
                now[0] += step
                dog.tick()
                try:
                    while True:
                        out.append(sock.recv(4096))
                except BlockingIOError:
                    pass
            return out

        assert ticks(3, 0.5) == [b"STATUS=stalled: no inference yet"]
        stats.mark_inference()
        assert ticks(3, 0.5) == [b"STATUS=running", b"WATCHDOG=1", b"WATCHDOG=1", b"WATCHDOG=1"]
        got = ticks(4, 0.5)  # 2.0 s since the last inference: the fourth tick is past stall_after_s
        assert got == [b"WATCHDOG=1", b"STATUS=stalled: no inference for 2.5 s"]
        assert ticks(5, 0.5) == []  # silent while stalled: systemd's WatchdogSec will restart us
        stats.mark_inference()
        assert ticks(1, 0.5) == [b"STATUS=running", b"WATCHDOG=1"]
        assert dog.pets == 5


def test_latency_percentiles_and_fps() -> None:
    window = LatencyWindow(size=100)
    assert window.percentiles() == {"p50": None, "p99": None}
    for ms in range(1, 201):  # only the last 100 samples (101..200) count
        window.add(ms)
    pct = window.percentiles()
    assert pct["p50"] == pytest.approx(150.5) and pct["p99"] == pytest.approx(199.01)
    now = [0.0]
    stats = Stats(["a"], clock=lambda: now[0])
    for _ in range(30):
        stats.record_frame("a", False, {"total": 5.0})
    now[0] = 3.0
    assert stats.fps() == pytest.approx(10.0)
    now[0] = 4.0
    assert stats.fps() == 0.0


def test_metrics_endpoint_serves_the_snapshot() -> None:
    pytest.importorskip("prometheus_client")
    snapshot = {
        "fps": 12.5,
        "drops": {"camera_slots": 3, "mqtt_offline_queue": 7},
        "latency_ms": {"total": {"p50": 20.0, "p99": 45.0}},
        "cameras": {"line1": {"scored": 99}},
        "mqtt": {"in_flight": 2, "queued": 1},
    }
    port = free_port()
    server = MetricsServer("127.0.0.1", port, lambda: snapshot)
    server.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert "edge_fps 12.5" in body
    assert 'edge_drops_total{stage="mqtt_offline_queue"} 7.0' in body
    assert 'edge_latency_ms{quantile="p99",stage="total"} 45.0' in body
    assert 'edge_frames_scored_total{camera="line1"} 99.0' in body
    assert "edge_mqtt_backlog 3.0" in body


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("edge.test", logging.WARNING, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_log_formatters() -> None:
    line = KeyValueFormatter().format(_record('camera "a" lost', camera="a"))
    assert "level=WARNING" in line and "logger=edge.test" in line
    assert 'msg="camera \\"a\\" lost"' in line and "camera=a" in line
    doc = json.loads(JsonFormatter().format(_record("hello", frame_id=3)))
    assert doc["msg"] == "hello" and doc["level"] == "WARNING" and doc["frame_id"] == 3
