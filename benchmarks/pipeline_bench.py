"""The whole daemon, measured from the outside: video files -> edge daemon -> real mosquitto -> a subscriber.

The daemon runs as deployed (``edge.service.daemon.build(EdgeConfig(...))``) in a spawned child process, so
its
memory, threads and file descriptors are its own and the measuring side (subscriber, bookkeeping) only
shares the CPU. Cameras are looping video files; a result counts when the subscriber receives it.

Two loads per camera count:

- ``saturated``: each camera offers ``SATURATION`` x what the bare backend can take at the batch the daemon
  will use, so the pipeline is inference-bound; results per second received = pipeline throughput. Slot
  drops are expected here (the daemon keeps only the newest frame per camera, by design).
- ``paced``: the cameras together offer ``latency_load`` x that capacity, like a line camera that the model
  keeps up with; capture -> publish latency is read here (under saturation it also includes waiting for
  the batch in flight, which is reported too, separately).

Bare-backend slices at the same batch alternate with the saturated pipeline's measurement windows: the
daemon is frozen (SIGSTOP) for each bare slice and thawed after it, so pipeline / bare compares numbers taken
seconds apart on the same machine state, and the daemon's own start-up and warm-up are not repeated.

``soak`` runs one configuration for a long time and samples the daemon's RSS, threads and open fds.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.model_bench import BenchSettings, Cell, Engine, latency_summary, run_for, subsample, warm_up
from tools.local_broker import Broker

SATURATION = 1.5  # cameras offer this much more than the backend can take in "saturated" runs
MAX_CAMERA_FPS = 1000.0  # EdgeConfig's upper bound for cameras[].fps
START_TIMEOUT_S = 180.0  # spawn + imports + backend load (a TensorRT engine build can take minutes)
FIRST_RESULT_TIMEOUT_S = 120.0
SETTLE_S = 0.5  # after a thawed daemon resumes: the frame in flight at the freeze is published first
STOP_TIMEOUT_S = 60.0
LATENCY_FIELDS = ("capture_to_infer", "inference", "postprocess", "total")


class QuietBroker(Broker):
    """``Broker`` with error/warning logging only: per-message debug logging would cost CPU the daemon
    needs."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port, log_types=("error", "warning"), max_queued_messages=100000)


# --- video --------------------------------------------------------------------------------------------------


def generated_video(path: Path, frame_size: int, n_frames: int = 60, defect_every: int = 10) -> Path:
    """A looping clip of generated parts (every ``defect_every``-th defective), ``frame_size`` square."""
    from training.synthetic import part_sequence, write_video

    frames, _ = part_sequence(n_frames, defect_every, size=frame_size, seed=11)
    return write_video(path, frames, fps=25.0)


def dataset_video(path: Path, data: Path, max_frames: int = 200) -> Path:
    """The dataset's test images (good and defective, their own resolution) as one clip."""
    import cv2

    from training.data import MVTecCategory
    from training.synthetic import write_video

    items = MVTecCategory(data).test_items()[:max_frames]
    frames = []
    for item in items:
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"cannot read test image {item.path}; replace or remove it")
        if frames and image.shape != frames[0].shape:
            image = cv2.resize(image, (frames[0].shape[1], frames[0].shape[0]), interpolation=cv2.INTER_AREA)
        frames.append(image)
    return write_video(path, frames, fps=25.0)


def video_info(path: Path) -> dict[str, Any]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return {
            "path": str(path),
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "codec": "MJPG",
        }
    finally:
        cap.release()


# --- the subscriber -----------------------------------------------------------------------------------------


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


# --- the daemon in a child process --------------------------------------------------------------------------


class BatchCounter:
    """Wraps the daemon's backend to record when each batch ran and how big it was (no other effect)."""

    def __init__(self, backend: Any, keep: int = 500_000) -> None:
        self._backend = backend
        self.calls: deque[tuple[float, int]] = deque(maxlen=keep)
        self.histogram: Counter[int] = Counter()

    def run(self, images: np.ndarray) -> Any:
        out = self._backend.run(images)
        self.calls.append((time.monotonic(), len(images)))
        self.histogram[len(images)] += 1
        return out

    def __getattr__(self, name: str) -> Any:  # name, precision, max_batch, input_hw, close ...
        return getattr(self._backend, name)


def _daemon_child(conn: Any, stop: Any, config: dict[str, Any], max_s: float, log_level: str) -> None:
    """Child: build the daemon from ``config``, run until ``stop`` is set, send back stats and batch sizes."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from edge.config import EdgeConfig
        from edge.service.daemon import build

        daemon = build(EdgeConfig(**config))
    except Exception as exc:  # StartupError, ValidationError...: reported to the parent verbatim
        conn.send({"state": "error", "error": f"{type(exc).__name__}: {exc}"})
        conn.close()
        return
    counter = BatchCounter(daemon.backend)
    daemon.backend = counter
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
) -> dict[str, Any]:
    """An EdgeConfig as plain data: ``cameras`` looping copies of one video at ``camera_fps`` each
    (``sparkplug``: the Sparkplug B node publishes beside the JSON topics)."""
    model: dict[str, Any] = {"bundle": str(bundle), "backend": backend, "precision": precision}
    model.update(model_options)
    return {
        "sparkplug": {"enabled": sparkplug, "group_id": "edge-bench"},
        "device_id": prefix_id,
        "log_level": "WARNING",
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": stats_interval_s},
        "model": model,
        "health": {"watchdog": False},
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


# --- one pipeline run ---------------------------------------------------------------------------------------


@dataclass
class PipelineRun:
    cameras: int
    load: str  # "saturated" or "paced"
    camera_fps: float
    batch_expected: int


def _run_pipeline_once(
    run: PipelineRun,
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    model_options: dict[str, Any],
    warmup_s: float,
    measure_s: float,
    sparkplug: bool = False,
    between: Callable[[], dict[str, Any]] | None = None,
    slices: int = 1,
) -> dict[str, Any]:
    """Start the daemon, skip ``warmup_s`` after the first result, count results for ``measure_s``, stop.

    With ``between``, the measurement is cut into ``slices`` windows and after each one the daemon is frozen
    while ``between`` runs (a bare-backend slice), then thawed and given ``SETTLE_S`` before the next window.
    Pipeline and bare then alternate seconds apart, so a change of machine speed (a shared VM's neighbours,
    CPU frequency) lands on both sides of the ratio instead of on one.
    """
    prefix_id = f"bench-{uuid.uuid4().hex[:8]}"
    config = daemon_config(
        prefix_id,
        broker,
        bundle,
        backend,
        precision,
        video,
        run.cameras,
        run.camera_fps,
        model_options,
        sparkplug=sparkplug,
    )
    sub = ResultSubscriber(broker.host, broker.port, f"edge-anomaly/{prefix_id}")
    sub.start()
    max_s = START_TIMEOUT_S + FIRST_RESULT_TIMEOUT_S + warmup_s + 3 * measure_s + SETTLE_S * slices + 60
    daemon = DaemonProcess(config, max_s=max_s)
    windows: list[tuple[float, float]] = []
    interleaved: list[dict[str, Any]] = []
    try:
        daemon.start()
        if not sub.wait_first(FIRST_RESULT_TIMEOUT_S):
            raise RuntimeError(
                f"no result arrived within {FIRST_RESULT_TIMEOUT_S:.0f} s of the daemon starting"
            )
        time.sleep(warmup_s)  # warm-up window: results in it are not counted
        n = max(1, slices) if between is not None else 1
        for k in range(n):
            t0 = time.monotonic()
            time.sleep(measure_s / n)  # one measurement window
            windows.append((t0, time.monotonic()))
            if between is not None:
                daemon.pause()
                try:
                    interleaved.append(between())
                finally:
                    daemon.resume()
                if k < n - 1:
                    time.sleep(SETTLE_S)
        final = daemon.stop()
    finally:
        daemon.kill()
        sub.stop()
    if final.get("state") != "done":
        raise RuntimeError(f"the daemon did not stop cleanly: {final.get('error', final)}")
    per_window = [sub.window(t0, t1) for t0, t1 in windows]
    result = summarise_window(run, [r for got in per_window for r in got], windows, final, sub)
    if interleaved:
        result["interleaved"] = [
            {"pipeline_rps": len(got) / (t1 - t0), **bare}
            for got, (t0, t1), bare in zip(per_window, windows, interleaved, strict=True)
        ]
    return result


def summarise_window(
    run: PipelineRun,
    records: list[Received],
    windows: list[tuple[float, float]],
    final: dict[str, Any],
    sub: ResultSubscriber,
) -> dict[str, Any]:
    """Throughput, latencies and batch sizes of the results received in the windows ``[t0, t1)``."""
    seconds = sum(t1 - t0 for t0, t1 in windows)
    latency = {
        name: latency_summary([r.latency_ms[name] for r in records if name in r.latency_ms])
        for name in LATENCY_FIELDS
    }
    receive = [(r.recv_wall - r.capture_ts) * 1000.0 for r in records]
    batches = [n for (t, n) in final.get("batch_calls", []) if any(t0 <= t < t1 for t0, t1 in windows)]
    snapshot = final.get("snapshot", {})
    return {
        "cameras": run.cameras,
        "load": run.load,
        "camera_fps_offered": run.camera_fps,
        "batch_expected": run.batch_expected,
        "seconds": seconds,
        "results": len(records),
        "throughput_rps": len(records) / seconds,
        "per_camera_results": dict(Counter(r.camera for r in records)),
        "latency_ms": latency,
        "capture_to_receive_ms": latency_summary(receive),
        "batch_mean": float(np.mean(batches)) if batches else None,
        "batch_histogram": {str(k): v for k, v in sorted(Counter(batches).items())},
        "drops": snapshot.get("drops", {}),
        "errors": snapshot.get("errors", {}),
        "frames_scored_total": snapshot.get("frames_scored"),
        "evidence": snapshot.get("evidence"),  # written / dropped since the daemon started (--evidence)
        "bad_payloads": sub.bad_payloads,
        "samples_total_ms": subsample([r.latency_ms.get("total", float("nan")) for r in records]),
    }


# --- the interleaved pipeline benchmark ---------------------------------------------------------------------


@dataclass
class PipelineSettings:
    camera_counts: Sequence[int] = (1, 4)
    rounds: int = 2
    measure_s: float = 10.0  # per run (one camera count, one load, one round)
    warmup_s: float = 2.0
    latency_load: float = 0.5  # 0 disables the paced runs
    camera_fps: float | None = None  # fixed offered fps per camera for every run (overrides the rules above)
    sparkplug: bool = False  # the daemon also runs its Sparkplug B node (both faces on)
    slices: int = 5  # pipeline windows per saturated run, each followed by a bare slice of the same length


def pipeline_batch(cameras: int, max_batch: int) -> int:
    """The daemon gathers at most one (newest) frame per camera into a batch of at most max_batch."""
    return max(1, min(cameras, max_batch))


def offered_fps(bare_ips: float, cameras: int, factor: float) -> float:
    """Per-camera fps so that all cameras together offer ``factor`` x ``bare_ips``, within EdgeConfig's
    range."""
    return float(min(MAX_CAMERA_FPS, max(1.0, factor * bare_ips / cameras)))


def run_pipeline_bench(
    engine: Engine,
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    model_options: dict[str, Any],
    max_batch: int,
    settings: PipelineSettings,
    bare: BenchSettings,
    log_fn: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Pipeline runs and bare-backend slices, interleaved in rounds; returns the ``pipeline`` section."""
    batches = sorted({pipeline_batch(c, max_batch) for c in settings.camera_counts})
    pool = engine_pool(engine, max(batches))
    cells = {b: Cell(engine=engine, batch=b, inputs=pool[:b]) for b in batches}
    offered_basis: dict[int, float] = {}  # bare images/s the next run's offered fps is set from
    for b, cell in cells.items():
        warm_up(cell, bare)
        samples = run_for(engine, cell.inputs, bare.warmup_s, bare.min_calls)
        offered_basis[b] = b * len(samples) / (sum(samples) / 1000.0)
    slices = max(1, settings.slices)
    runs: list[dict[str, Any]] = []
    for r in range(settings.rounds):
        for cams in settings.camera_counts:
            b = pipeline_batch(cams, max_batch)
            cell = cells[b]
            round_samples: list[float] = []

            def bare_slice(cell: Cell = cell, into: list[float] = round_samples) -> dict[str, Any]:
                samples = run_for(engine, cell.inputs, settings.measure_s / slices, bare.min_calls)
                cell.samples_ms.extend(samples)
                into.extend(samples)
                return {"bare_ips": cell.batch * len(samples) / (sum(samples) / 1000.0)}

            loads = [("saturated", SATURATION)] + (
                [("paced", settings.latency_load)] if settings.latency_load > 0 else []
            )
            for load, factor in loads:
                fps = settings.camera_fps or offered_fps(offered_basis[b], cams, factor)
                log_fn(
                    f"pipeline round {r + 1}/{settings.rounds}: {cams} camera(s), {load}, {fps:.1f} fps each"
                )
                result = _run_pipeline_once(
                    PipelineRun(cams, load, fps, b),
                    broker,
                    bundle,
                    backend,
                    precision,
                    video,
                    model_options,
                    settings.warmup_s,
                    settings.measure_s,
                    sparkplug=settings.sparkplug,
                    between=bare_slice if load == "saturated" else None,
                    slices=slices,
                )
                result["round"] = r + 1
                runs.append(result)
                if load == "saturated":
                    ips = b * len(round_samples) / (sum(round_samples) / 1000.0)
                    cell.per_round_ips.append(ips)
                    offered_basis[b] = ips
    return {
        "method": (
            "per round and camera count: the daemon saturated, its measurement cut into windows with the "
            "daemon "
            "frozen between them for a bare-backend slice (pipeline and bare alternate), then the daemon "
            "paced"
        ),
        "slices_per_saturated_run": slices,
        "engine": engine.engine,
        "precision": precision,
        "saturation_factor": SATURATION,
        "latency_load": settings.latency_load,
        "rounds": settings.rounds,
        "measure_s_per_run": settings.measure_s,
        "warmup_s_per_run": settings.warmup_s,
        "sparkplug": settings.sparkplug,
        "bare": {str(b): bare_summary(c) for b, c in cells.items()},
        "runs": runs,
        "by_cameras": aggregate_runs(runs, settings.camera_counts),
    }


def engine_pool(engine: Engine, n: int) -> np.ndarray:
    from benchmarks.model_bench import batch_of, generated_inputs

    return batch_of(generated_inputs(min(n, 16), engine.input_hw, engine.color_order), n)


def bare_summary(cell: Cell) -> dict[str, Any]:
    seconds = sum(cell.samples_ms) / 1000.0
    images = cell.batch * len(cell.samples_ms)
    return {
        "batch": cell.batch,
        "calls": len(cell.samples_ms),
        "images": images,
        "seconds": seconds,
        "throughput_ips": images / seconds if seconds else None,
        "throughput_per_round_ips": cell.per_round_ips,
        "latency_ms": latency_summary(cell.samples_ms),
    }


def aggregate_runs(runs: list[dict[str, Any]], camera_counts: Sequence[int]) -> dict[str, Any]:
    """Per camera count: throughput over every saturated round (results / seconds summed), latency percentiles
    recomputed from the paced runs' samples (p99 of a union, not a mean of p99s)."""
    out: dict[str, Any] = {}
    for cams in camera_counts:
        sat = [r for r in runs if r["cameras"] == cams and r["load"] == "saturated"]
        paced = [r for r in runs if r["cameras"] == cams and r["load"] == "paced"]
        results = sum(r["results"] for r in sat)
        seconds = sum(r["seconds"] for r in sat)
        entry: dict[str, Any] = {
            "batch": sat[0]["batch_expected"] if sat else None,
            "results": results,
            "seconds": seconds,
            "throughput_rps": results / seconds if seconds else None,
            "saturated_latency_total_ms": latency_summary(_samples(sat)),
        }
        if paced:
            entry["paced_latency_total_ms"] = latency_summary(_samples(paced))
            entry["paced_throughput_rps"] = sum(r["results"] for r in paced) / sum(
                r["seconds"] for r in paced
            )
        out[str(cams)] = entry
    return out


def _samples(runs: list[dict[str, Any]]) -> list[float]:
    return [v for r in runs for v in r["samples_total_ms"] if v == v]  # drop NaN


# --- soak ---------------------------------------------------------------------------------------------------


def process_sample(pid: int) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(pid)
    with proc.oneshot():
        sample = {"rss_mb": proc.memory_info().rss / 2**20, "threads": proc.num_threads()}
        try:
            sample["fds"] = proc.num_fds()
        except (AttributeError, psutil.Error):  # not on Windows
            sample["fds"] = None
    return sample


def growth(samples: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    """RSS growth in % from the first window's median to the last window's median; threads/fds first vs
    last."""
    if not samples:
        return {"rss_growth_pct": None}
    t_end = samples[-1]["t_s"]
    first = [s["rss_mb"] for s in samples if s["t_s"] <= samples[0]["t_s"] + window_s]
    last = [s["rss_mb"] for s in samples if s["t_s"] >= t_end - window_s]
    m_first, m_last = float(np.median(first)), float(np.median(last))
    return {
        "window_s": window_s,
        "rss_first_median_mb": m_first,
        "rss_last_median_mb": m_last,
        "rss_growth_pct": (m_last - m_first) / m_first * 100.0,
        "threads_first": samples[0]["threads"],
        "threads_last": samples[-1]["threads"],
        "fds_first": samples[0]["fds"],
        "fds_last": samples[-1]["fds"],
    }


def run_soak(
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    model_options: dict[str, Any],
    cameras: int,
    camera_fps: float,
    duration_s: float,
    interval_s: float,
    log_fn: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run the daemon for ``duration_s`` (after its first result) and sample its process every
    ``interval_s``."""
    prefix_id = f"soak-{uuid.uuid4().hex[:8]}"
    config = daemon_config(
        prefix_id,
        broker,
        bundle,
        backend,
        precision,
        video,
        cameras,
        camera_fps,
        model_options,
        stats_interval_s=max(1.0, interval_s),
    )
    sub = ResultSubscriber(broker.host, broker.port, f"edge-anomaly/{prefix_id}", keep=False)
    sub.start()
    daemon = DaemonProcess(config, max_s=START_TIMEOUT_S + FIRST_RESULT_TIMEOUT_S + duration_s + 60)
    samples: list[dict[str, Any]] = []
    evidence_dir = os.environ.get("EDGE_EVIDENCE__DIR")
    try:
        daemon.start()
        if not sub.wait_first(FIRST_RESULT_TIMEOUT_S):
            raise RuntimeError(
                f"no result arrived within {FIRST_RESULT_TIMEOUT_S:.0f} s of the daemon starting"
            )
        t0 = time.monotonic()
        next_at = t0
        while True:
            now = time.monotonic()
            if now - t0 > duration_s:
                break
            sample = process_sample(daemon.pid)
            sample.update({"t_s": now - t0, "results": sub.count})
            if evidence_dir is not None:  # edge-bench --evidence: the store's files on disk, index excluded
                sample["evidence_mb"] = folder_mb(evidence_dir)
            samples.append(sample)
            log_fn(
                f"soak t={sample['t_s']:.0f}s rss={sample['rss_mb']:.1f} MiB threads={sample['threads']} "
                f"fds={sample['fds']} results={sample['results']}"
            )
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        final = daemon.stop()
        if final.get("state") == "done":
            sub.wait_count(int(final["snapshot"].get("frames_scored") or 0), timeout=10.0)
    finally:
        daemon.kill()
        sub.stop()
    if final.get("state") != "done":
        raise RuntimeError(f"the daemon did not stop cleanly: {final.get('error', final)}")
    snapshot = final.get("snapshot", {})
    window = min(60.0, max(interval_s, duration_s / 4.0))
    return {
        "cameras": cameras,
        "camera_fps_offered": camera_fps,
        "duration_s": duration_s,
        "interval_s": interval_s,
        "samples": samples,
        "growth": growth(samples, window),
        "results_received": sub.count,
        "frames_scored": snapshot.get("frames_scored"),
        "results_missing": (snapshot.get("frames_scored") or 0) - sub.count,
        "drops": snapshot.get("drops", {}),
        "errors": snapshot.get("errors", {}),
        "latency_total_ms": latency_summary([v for v in sub.recent_total_ms if v == v]),
        "capture_to_receive_ms": latency_summary(list(sub.recent_receive_ms)),
        "batch_histogram": {str(k): v for k, v in sorted(final.get("batch_histogram", {}).items())},
        "evidence": snapshot.get("evidence"),
        "evidence_mb_max": max((s.get("evidence_mb", 0.0) for s in samples), default=None),
    }


def folder_mb(folder: str) -> float:
    """MiB of the evidence store's frames, masks and results (what its cap bounds)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file() and not path.name.startswith("index.sqlite"):
                total += path.stat().st_size
        except OSError:  # evicted while we looked
            continue
    return total / (1024 * 1024)
