"""Fixtures for the fault-injection tests: the real daemon (``python -m edge.service.cli``) in a subprocess, a
real
mosquitto, a real ONNX bundle, real video files and a real sd_notify socket.

Nothing here sleeps to synchronise: processes are waited on, notify datagrams are read with timeouts and
MQTT messages are waited for with :class:`tests.helpers.mqtt.Subscriber`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.mqtt import Received, Subscriber, availability_text
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0  # upper bound of one wait on a shared, busy machine; waits end as soon as their condition holds
SIZE = 128
LOOP_FRAMES = 20


@pytest.fixture(autouse=True)
def _no_caller_env(clean_env: None) -> None:
    """Every fault test: the caller's EDGE_* variables must not change the configs written here."""


@dataclass(frozen=True)
class Media:
    bundle: Path
    video: Path  # LOOP_FRAMES generated parts, every 4th defective, SIZE x SIZE
    frames: int


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    root = tmp_path_factory.mktemp("faults-media")
    bundle = make_tiny_bundle(root / "bundle", size=SIZE)
    frames, _ = part_sequence(LOOP_FRAMES, 4, size=SIZE, seed=21)
    return Media(bundle, write_video(root / "parts.avi", frames, fps=10), LOOP_FRAMES)


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test alone that keeps sessions, queued messages and retained ones across a restart."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Broker(workdir, extra_conf=f"persistence true\npersistence_location {workdir}/\n").start()
    yield broker
    broker.stop()


def device_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def config_text(
    dev: str,
    broker: Broker,
    bundle: Path,
    cameras: list[dict],
    *,
    log_level: str = "INFO",
    **sections: dict,
) -> str:
    """A config file as an operator would write it (values as JSON literals, which TOML reads alike).

    A value of None leaves the key out (e.g. ``model={"intra_op_threads": None}`` for a backend without it).
    """
    mqtt = {"host": broker.host, "port": broker.port, "stats_interval_s": 0.3, **sections.pop("mqtt", {})}
    model = {"bundle": str(bundle), "intra_op_threads": 1, **sections.pop("model", {})}
    lines = [f'device_id = "{dev}"', f'log_level = "{log_level}"']
    for name, values in {"mqtt": mqtt, "model": model, **sections}.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
    for cam in cameras:
        lines.append("[[cameras]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in cam.items()]
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without EDGE_* (they would override the config file) plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(extra or {})
    return env


class DaemonProcess:
    """``python -m edge.service.cli --config …`` with stdout and stderr going to a file (no pipe to fill
    up)."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.service.cli", "--config", str(config), *args],
            cwd=REPO,
            env=daemon_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = WAIT) -> int:
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc

    def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM, as systemd sends it, and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons; any still running when the test ends is killed (its log stays in tmp_path)."""
    made: list[DaemonProcess] = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        proc = DaemonProcess(config, *args, env=env, log=tmp_path / f"daemon-{len(made)}.log")
        made.append(proc)
        return proc

    yield start
    for proc in made:
        proc.kill()


class NotifySocket:
    """The AF_UNIX datagram socket systemd listens on for sd_notify; records every line in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        self.lines.extend(data.decode("utf-8").split("\n"))
        return True

    def wait_for(self, prefix: str, after: int = 0, timeout: float = WAIT) -> int:
        """Index of the first line from index ``after`` on that starts with ``prefix``; fails on timeout."""
        deadline = _deadline(timeout)
        while True:
            for i in range(after, len(self.lines)):
                if self.lines[i].startswith(prefix):
                    return i
            left = deadline()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{prefix!r} not notified within {timeout} s; got {self.lines[after:]}")

    def collect(self, duration: float) -> list[str]:
        """Every line that arrives within ``duration`` seconds (to show that something does *not* come)."""
        start = len(self.lines)
        deadline = _deadline(duration)
        while (left := deadline()) > 0:
            self._read(left)
        return self.lines[start:]

    def close(self) -> None:
        self.sock.close()


def _deadline(timeout: float) -> Callable[[], float]:
    end = time.monotonic() + timeout
    return lambda: end - time.monotonic()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short path: AF_UNIX addresses are limited to 108 bytes, pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="edge-notify-"))
    sock = NotifySocket(folder / "notify.sock")
    yield sock
    sock.close()
    (folder / "notify.sock").unlink(missing_ok=True)
    folder.rmdir()


# --- reading what the daemon published ------------------------------------------------------------------


def results(sub: Subscriber, prefix: str, camera: str, since: int = 0) -> list[dict]:
    return [m.json() for m in sub.on(f"{prefix}/{camera}/result", since)]


def stats(sub: Subscriber, prefix: str, since: int = 0) -> list[dict]:
    return [m.json() for m in sub.on(f"{prefix}/stats", since)]


def first_arrivals(ids: list[int]) -> list[int]:
    """Frame ids in order of first arrival (QoS 1 is at-least-once: a message in flight may come twice)."""
    return list(dict.fromkeys(ids))


def wait_index(
    sub: Subscriber, predicate: Callable[[Received], bool], since: int = 0, timeout: float = WAIT
) -> int:
    """Wait for a matching message from index ``since`` on and return its arrival index."""
    found: list[int] = []

    def check(msgs: list[Received]) -> bool:
        for i in range(since, len(msgs)):
            if predicate(msgs[i]):
                found.append(i)
                return True
        return False

    assert sub.wait_for(check, timeout), f"no matching message within {timeout} s"
    return found[0]


def is_msg(
    topic: str, payload: bytes | None = None, startswith: bytes | None = None
) -> Callable[[Received], bool]:
    def check(msg: Received) -> bool:
        if msg.topic != topic:
            return False
        # availability events are JSON; they compare as their one-line text ("fault: <reason>")
        text = (
            availability_text(msg).encode()
            if topic.endswith("/availability") and msg.payload
            else msg.payload
        )
        if payload is not None and text != payload:
            return False
        return startswith is None or text.startswith(startswith)

    return check
