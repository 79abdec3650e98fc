"""SIGTERM while frames flow: a clean exit 0 that leaves truthful retained state and loses no result.

- The real daemon in a subprocess, signalled while a looping video is being scored: exit code 0, STOPPING=1
  on the notify socket, retained status ``offline`` with reason ``shutdown`` (the clean message, not the
  Last Will's "connection lost"), availability ``offline``, each frame id published at most once, in order.
- The same signal during a broker outage: a prompt stop (no wait for acks that cannot come) with exit 4,
  because the results scored while the broker was away never reached it.
- The same signal delivered exactly while a frame is inside the backend (in-process: ``edge.service.cli.main``
in
  this thread with its real signal handlers, the backend wrapped so a run can be held open): the result of
  that frame, and of every frame scored, is published before the daemon exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import edge.service.loader
from edge.service.cli import main
from edge.service.daemon import EXIT_UNDELIVERED
from tests.faults.conftest import (
    WAIT,
    DaemonProcess,
    Media,
    NotifySocket,
    config_text,
    device_id,
    results,
    write_config,
)
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber


def test_sigterm_while_scoring_exits_0_with_clean_retained_state(
    broker: Broker,
    media: Media,
    tmp_path: Path,
    spawn: Callable[..., DaemonProcess],
    notify_socket: NotifySocket,
) -> None:
    dev = device_id("term")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 25, "publish_mask": "always"}]
    config = write_config(tmp_path, config_text(dev, broker, media.bundle, cams, mqtt={"qos_mask": 1}))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    daemon = spawn(config, env=notify_socket.env())
    try:
        ready = notify_socket.wait_for("READY=1")
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 8, WAIT), daemon.output()
        assert daemon.terminate() == 0, daemon.output()[-3000:]
        notify_socket.wait_for("STOPPING=1", after=ready)
        assert sub.wait_for(
            lambda m: m[-1].topic == f"{prefix}/status" and m[-1].json()["state"] == "offline"
        )
        sub.barrier()
    finally:
        sub.close()
    log = daemon.output()
    assert "received SIGTERM" in log and "stopped cleanly" in log and "Traceback" not in log

    ids = [r["frame_id"] for r in results(sub, prefix, "line")]
    assert len(ids) == len(set(ids)) and ids == sorted(ids), f"a result was repeated or reordered: {ids}"
    masks = [m.topic for m in sub.under(f"{prefix}/line/mask")]
    named = [r["mask"]["topic"] for r in results(sub, prefix, "line")]
    assert masks == named, "a result went out without its mask (or the other way round) at shutdown"

    late = Subscriber(broker.host, broker.port, [f"{prefix}/status", f"{prefix}/line/availability"])
    try:
        late.barrier()
    finally:
        late.close()
    status = late.on(f"{prefix}/status")[0]
    assert status.retain and status.json()["state"] == "offline" and status.json()["reason"] == "shutdown"
    assert status.json()["cameras"]["line"]["state"] == "offline"
    assert late.on(f"{prefix}/line/availability") == []  # availability is an event, never retained


def test_sigterm_while_the_broker_is_down_stops_promptly_and_says_results_were_lost(
    own_broker: Broker,
    media: Media,
    tmp_path: Path,
    spawn: Callable[..., DaemonProcess],
    notify_socket: NotifySocket,
) -> None:
    """Stopping the service during a broker outage must not hang on acknowledgements that cannot come, and
    must not call it a success either: the results scored while the broker was away never reached it."""
    dev = device_id("termdown")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 20, "publish_mask": "never"}]
    mqtt = {"reconnect_min_s": 1, "reconnect_max_s": 30}
    config = write_config(tmp_path, config_text(dev, own_broker, media.bundle, cams, mqtt=mqtt))
    sub = Subscriber(own_broker.host, own_broker.port, [f"{prefix}/line/result"])
    daemon = spawn(config, env=notify_socket.env())
    try:
        assert sub.wait_for(lambda m: len(m) >= 3, WAIT), daemon.output()
    finally:
        sub.close()
    own_broker.stop()
    # the first failed reconnect comes after reconnect_min_s, by which time frames were scored offline
    assert _wait_for_output(daemon, f"{own_broker.host}:{own_broker.port}: cannot connect"), daemon.output()
    assert daemon.terminate() == EXIT_UNDELIVERED, daemon.output()[-3000:]
    notify_socket.wait_for("STOPPING=1", after=notify_socket.wait_for("READY=1"))
    out = daemon.output()
    assert f"never reached broker {own_broker.host}:{own_broker.port}" in out
    assert (
        "stopped cleanly" not in out and "stopped with exit status 4" in out
    )  # the last line agrees (issue 30)


def _wait_for_output(daemon: DaemonProcess, text: str, timeout: float = WAIT) -> bool:
    """A log line that has no event of its own to wait on (the daemon writes it to a file), polled."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while text not in daemon.output():
        if time.monotonic() > deadline or not daemon.alive():
            return False
        tick.wait(0.05)
    return True


class HeldBackend:
    """Wraps the real backend; the ``hold_at``-th run blocks until released, every run is counted."""

    def __init__(self, inner: object, hold_at: int) -> None:
        self._inner = inner
        self.hold_at = hold_at
        self.calls = 0
        self.images_scored = 0
        self.held = threading.Event()
        self.release = threading.Event()

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls == self.hold_at:
            self.held.set()
            # Short waits, so the Python-level signal handler gets its turn in this (main) thread: CPython
            # runs handlers between bytecodes, and a signal caught just before a long lock wait would be
            # handled only after it (systemd's SIGTERM may land on any thread).
            deadline = time.monotonic() + WAIT
            while not self.release.wait(0.05):
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never released the held inference")
        out = self._inner.run(images)  # type: ignore[attr-defined]
        self.images_scored += len(images)
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class _Seen(logging.Handler):
    """Sets an event when a log message containing ``text`` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_sigterm_during_inference_publishes_that_frames_result(
    broker: Broker,
    media: Media,
    tmp_path: Path,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[HeldBackend] = []
    created = threading.Event()
    real_load = edge.service.loader.load_backend

    def load_held(*args: object, **kwargs: object) -> HeldBackend:
        held.append(HeldBackend(real_load(*args, **kwargs), hold_at=5))
        created.set()
        return held[-1]

    monkeypatch.setattr(edge.service.loader, "load_backend", load_held)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    dev = device_id("midframe")
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media.video), "loop": True, "fps": 20, "publish_mask": "never"}]
    config = write_config(tmp_path, config_text(dev, broker, media.bundle, cams))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/line/result", f"{prefix}/status"])
    seen = _Seen("received SIGTERM")
    logging.getLogger("edge.cli").addHandler(seen)
    failures: list[str] = []

    def terminate_mid_frame() -> None:
        try:
            if not (created.wait(WAIT) and held[0].held.wait(WAIT)):
                failures.append("no inference was held")
                return
            os.kill(os.getpid(), signal.SIGTERM)  # as systemd sends it, while the frame is inside the backend
            if not seen.event.wait(WAIT):
                failures.append("the SIGTERM handler did not run")
        finally:
            for backend in held:
                backend.release.set()

    helper = threading.Thread(target=terminate_mid_frame, daemon=True)
    helper.start()
    try:
        rc = main(["--config", str(config)])
    finally:
        logging.getLogger("edge.cli").removeHandler(seen)
        helper.join(WAIT)
    assert not failures, failures
    assert rc == 0
    backend = held[0]
    assert backend.calls >= backend.hold_at
    # Every frame the backend scored, the held one included, was published before the daemon exited.
    assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= backend.images_scored, WAIT)
    sub.barrier()
    sub.close()
    ids = [r["frame_id"] for r in results(sub, prefix, "line")]
    assert len(ids) == backend.images_scored and len(set(ids)) == len(ids)
    assert notify_socket.wait_for("STOPPING=1") > notify_socket.wait_for("READY=1")
    status = sub.on(f"{prefix}/status")[-1].json()
    assert status["state"] == "offline" and status["reason"] == "shutdown"
