"""The daemon under measurement, as deployed (``edge.service.daemon.build(EdgeConfig(...))``), in a spawned
child process: its memory, threads and file descriptors are its own, and the measuring side only shares the
CPU. The parent starts, freezes (SIGSTOP), thaws and stops it through :class:`DaemonProcess`; the child
reports its final stats snapshot and the size and time of every backend batch (:class:`BatchCounter`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tools.local_broker import Broker

START_TIMEOUT_S = 180.0  # spawn + imports + backend load (a TensorRT engine build can take minutes)
FIRST_RESULT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
KEEP_CALLS = 500_000  # batch times and sizes a daemon child keeps (the newest)


class BatchCounter:
    """The configured backend, recording when each batch ran and how big it was (no other effect).

    The daemon loads it as it loads any backend: :func:`count_batches` points the backend's row in the table
    at this class, in the daemon's own (child) process, and this class loads the class the row named."""

    inner: ClassVar[Any] = None  # the backend class it runs, set by count_batches
    OPTIONS: ClassVar[tuple[str, ...]] = ()
    CACHE_OPTION: ClassVar[str] = ""

    def __init__(self, bundle_dir: Path, manifest: Any, precision: str, **options: Any) -> None:
        self._backend = self.inner(bundle_dir, manifest, precision, **options)
        self.calls: deque[tuple[float, int]] = deque(maxlen=KEEP_CALLS)
        self.histogram: Counter[int] = Counter()

    def run(self, images: np.ndarray) -> Any:
        out = self._backend.run(images)
        self.calls.append((time.monotonic(), len(images)))
        self.histogram[len(images)] += 1
        return out

    def __getattr__(self, name: str) -> Any:  # name, precision, max_batch, input_hw, close ...
        return getattr(self._backend, name)


def count_batches(backend: str) -> None:
    """From now on, this process loads backend ``backend`` inside a :class:`BatchCounter`."""
    from edge.scoring.backends import BACKENDS, backend_class

    inner = backend_class(backend)
    BatchCounter.inner = inner
    BatchCounter.OPTIONS = tuple(getattr(inner, "OPTIONS", ()))
    BatchCounter.CACHE_OPTION = inner.CACHE_OPTION
    BACKENDS[backend] = f"{__name__}:BatchCounter"


def _daemon_child(conn: Any, stop: Any, config: dict[str, Any], max_s: float, log_level: str) -> None:
    """Child: build the daemon from ``config``, run until ``stop`` is set, send back stats and batch sizes."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from edge.config import EdgeConfig
        from edge.service.daemon import build

        count_batches(config["model"]["backend"])
        daemon = build(EdgeConfig(**config))
        counter = daemon.backend
        if not isinstance(counter, BatchCounter):
            raise TypeError(f"the daemon runs {type(counter).__name__}, not the BatchCounter it was given")
    except Exception as exc:  # StartupError, ValidationError...: reported to the parent verbatim
        conn.send({"state": "error", "error": f"{type(exc).__name__}: {exc}"})
        conn.close()
        return
    final: dict[str, Any] = {}

    def watch() -> None:
        stop.wait()
        final["at_stop"] = daemon.snapshot()
        daemon.stop()

    threading.Thread(target=watch, name="bench-stop", daemon=True).start()
    conn.send({"state": "built"})
    try:
        daemon.run_until_stopped(duration_s=max_s)
    except Exception as exc:
        conn.send({"state": "error", "error": f"{type(exc).__name__}: {exc}"})
        conn.close()
        return
    try:  # after shutdown, so frames scored while draining are counted too
        snapshot = daemon.snapshot()
    except Exception:
        snapshot = final.get("at_stop", {})
    conn.send(
        {
            "state": "done",
            "snapshot": snapshot,
            "batch_histogram": dict(counter.histogram),
            "batch_calls": list(counter.calls),
        }
    )
    conn.close()


def daemon_config(
    prefix_id: str,
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    cameras: int,
    camera_fps: float,
    model_options: dict[str, Any],
    stats_interval_s: float = 1.0,
    sparkplug: bool = False,
    web_port: int | None = None,
) -> dict[str, Any]:
    """An EdgeConfig as plain data: ``cameras`` looping copies of one video at ``camera_fps`` each
    (``sparkplug``: the Sparkplug B node publishes beside the JSON topics; ``web_port``: the live-view page
    is served on 127.0.0.1 at that port)."""
    model: dict[str, Any] = {"bundle": str(bundle), "backend": backend, "precision": precision}
    model.update(model_options)
    return {
        "sparkplug": {"enabled": sparkplug, "group_id": "edge-bench"},
        "device_id": prefix_id,
        "log_level": "WARNING",
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": stats_interval_s},
        "model": model,
        "health": {"watchdog": False},
        "web": {"enabled": web_port is not None, "port": web_port or 0},
        "cameras": [
            {
                "name": f"cam{i}",
                "source": str(video),
                "loop": True,
                "fps": float(camera_fps),
                "fault_after_s": 30.0,
            }
            for i in range(cameras)
        ],
    }


@dataclass
class DaemonProcess:
    """A daemon child plus its pipe and stop event; ``start`` waits until it is built."""

    config: dict[str, Any]
    max_s: float
    log_level: str = "WARNING"
    proc: Any = None
    conn: Any = None
    stop_event: Any = None
    final: dict[str, Any] = field(default_factory=dict)
    _paused: bool = False

    def start(self) -> DaemonProcess:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=False)
        self.stop_event = ctx.Event()
        self.proc = ctx.Process(
            target=_daemon_child,
            args=(child, self.stop_event, self.config, self.max_s, self.log_level),
            name="edge-bench-daemon",
        )
        self.proc.start()
        child.close()
        reply = self._recv(START_TIMEOUT_S, "start")
        if reply.get("state") != "built":
            self.kill()
            raise RuntimeError(f"the daemon did not start: {reply.get('error', reply)}")
        return self

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _recv(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            if not self.conn.poll(timeout):
                return {
                    "state": "error",
                    "error": f"no answer from the daemon within {timeout:.0f} s ({what})",
                }
            return self.conn.recv()
        except EOFError:
            return {
                "state": "error",
                "error": f"the daemon process exited during {what} (code {self.proc.exitcode})",
            }

    def stop(self) -> dict[str, Any]:
        """Ask for a clean stop; returns the child's final report (snapshot, batch sizes) or an error."""
        self.stop_event.set()
        self.final = self._recv(STOP_TIMEOUT_S, "stop")
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.kill()
        return self.final

    def pause(self) -> None:
        """Freeze every thread of the daemon (SIGSTOP), so a bare slice can run on the cores it used."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            os.kill(self.pid, signal.SIGCONT)
            self._paused = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.resume()  # a stopped process would hold SIGTERM pending
            self.proc.terminate()
            self.proc.join(timeout=5)
