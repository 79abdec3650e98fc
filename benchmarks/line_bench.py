"""``edge-bench line``: a part line in front of the station, measured from the PLC's side.

One camera in one ``[[parts]]`` table. For each trigger kind (MQTT ``<prefix>/<camera>/trigger``, OPC UA
``Trigger`` method calls) a fresh daemon child runs (:mod:`benchmarks.daemon_process`) with its camera on
``trigger = "message"``, a looping video that offers ``CAMERA_FACTOR`` x the bare backend's rate (a
free-running camera: a frame is captured soon after every trigger), and the PLC
(:mod:`benchmarks.line_triggers`) sends part triggers at a steady rate (default ``DEFAULT_RATE_FACTOR`` x the
bare backend's rate at batch 1) and reads each part's verdict on ``<prefix>/part/<name>``:

- trigger -> verdict, the PLC's view: trigger sent -> verdict received (through the broker both ways, or the
  OPC UA method call then the broker), p50/p99 over every part's first verdict (``no_result`` ones
  included: that is when the PLC had its answer);
- the station's view: the verdict's ``elapsed_ms`` (trigger received -> verdict published);
- deadline misses: parts whose first verdict is ``no_result``, plus triggers never answered.

Bare-backend slices at batch 1 run in this process before each daemon run (the daemon is not running
then), so the backend p50/p99 beside them come from the same run. Last, two saturated pipeline runs, the
OPC UA face off and on (:func:`benchmarks.pipeline_bench._run_pipeline_once`, their windows interleaved with
bare slices), give pipeline / bare with and without that face serving every result.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.daemon_process import FIRST_RESULT_TIMEOUT_S, START_TIMEOUT_S, DaemonProcess, daemon_config
from benchmarks.line_triggers import MqttTrigger, OpcUaTrigger, Sent, VerdictSubscriber, send_paced
from benchmarks.model_bench import BenchSettings, Cell, Engine, latency_summary, run_for, subsample, warm_up
from benchmarks.pipeline_bench import (
    MAX_CAMERA_FPS,
    SATURATION,
    PipelineRun,
    _run_pipeline_once,
    bare_summary,
    engine_pool,
)
from tools.local_broker import Broker, free_port

DEFAULT_RATE_FACTOR = 0.8  # triggers per second, as a fraction of the bare backend's images per second
CAMERA_FACTOR = 1.5  # the free-running camera offers this x the bare rate
PART, CAMERA = "line", "cam0"
SETTLE_S = 1.0  # after the last trigger, past its deadline: verdicts still on the way
FIRST_TRIGGER_EVERY_S = 0.2  # until the daemon answers its first trigger
MODES = ("mqtt", "opcua", "frame")


@dataclass
class LineSettings:
    measure_s: float = 10.0  # triggers per mode
    warmup_s: float = 2.0  # triggers sent and not counted, after the first verdict
    trigger_rate: float | None = None  # per second; None: DEFAULT_RATE_FACTOR x the bare rate
    deadline_ms: float = 150.0
    camera_fps: float | None = None  # None: CAMERA_FACTOR x the bare rate
    modes: Sequence[str] = MODES
    slices: int = 5  # windows of each saturated run


def line_config(
    prefix_id: str,
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    camera_fps: float,
    model_options: dict[str, Any],
    deadline_ms: float,
    opcua_endpoint: str | None,
    trigger: str = "message",
) -> dict[str, Any]:
    """One camera in one part (``opcua_endpoint``: the OPC UA face on, there); ``trigger``: the camera's."""
    config = daemon_config(prefix_id, broker, bundle, backend, precision, video, 1, camera_fps, model_options)
    config["cameras"][0]["trigger"] = trigger
    config["parts"] = [{"name": PART, "cameras": [CAMERA], "deadline_ms": deadline_ms}]
    if opcua_endpoint is not None:
        config["opcua"] = {"enabled": True, "endpoint": opcua_endpoint}
    return config


def _first_verdict(sender: Any, sub: VerdictSubscriber, timeout: float) -> None:
    """Trigger every FIRST_TRIGGER_EVERY_S until a verdict comes back: the daemon is up and scoring."""
    t_end = time.monotonic() + timeout
    n = 0
    while sub.count() == 0:
        if time.monotonic() > t_end:
            raise RuntimeError(f"no part verdict arrived within {timeout:.0f} s of the daemon starting")
        sender.send(f"first-{n}")
        n += 1
        time.sleep(FIRST_TRIGGER_EVERY_S)


def run_triggered(
    mode: str,
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    model_options: dict[str, Any],
    rate_hz: float,
    camera_fps: float,
    settings: LineSettings,
) -> dict[str, Any]:
    """One daemon, triggers of one kind at ``rate_hz`` for ``settings.measure_s``; the mode's section.

    ``frame``: no PLC; the camera itself is the trigger (a hardware-triggered camera, one frame one part) at
    ``rate_hz`` fps, and a part's trigger time is its frame's capture time."""
    if mode == "frame":
        return run_frame_triggered(
            broker, bundle, backend, precision, video, model_options, rate_hz, settings
        )
    prefix_id = f"line-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{prefix_id}"
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}" if mode == "opcua" else None
    config = line_config(
        prefix_id, broker, bundle, backend, precision, video, camera_fps, model_options,
        settings.deadline_ms, endpoint,
    )  # fmt: skip
    sub = VerdictSubscriber(broker.host, broker.port, prefix).start()
    max_s = START_TIMEOUT_S + FIRST_RESULT_TIMEOUT_S + settings.warmup_s + 2 * settings.measure_s + 60
    daemon = DaemonProcess(config, max_s=max_s)
    sender: Any = None
    stop = threading.Event()
    try:
        daemon.start()
        if endpoint is not None:
            sender = OpcUaTrigger(endpoint, CAMERA)
        else:
            sender = MqttTrigger(broker.host, broker.port, prefix, CAMERA)
        _first_verdict(sender, sub, FIRST_RESULT_TIMEOUT_S)
        send_paced(sender.send, rate_hz, settings.warmup_s, "warm", stop)
        sent = send_paced(sender.send, rate_hz, settings.measure_s, "P", stop)
        time.sleep(settings.deadline_ms / 1000.0 + SETTLE_S)
        final = daemon.stop()
    finally:
        stop.set()
        if sender is not None:
            sender.close()
        daemon.kill()
        sub.stop()
    if final.get("state") != "done":
        raise RuntimeError(f"the daemon did not stop cleanly: {final.get('error', final)}")
    received, bad = sub.verdicts()
    got = [(mono, doc) for mono, _, doc in received]
    return summarise_mode(mode, sent, got, bad, final, rate_hz, camera_fps, settings.deadline_ms)


def run_frame_triggered(
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    model_options: dict[str, Any],
    rate_hz: float,
    settings: LineSettings,
) -> dict[str, Any]:
    """The camera at ``rate_hz`` fps with ``trigger = "frame"``: each frame read opens its part. The parts
    triggered (captured) inside the measurement window are counted; trigger -> verdict is capture -> verdict
    received (the wall clocks of one machine)."""
    prefix_id = f"line-{uuid.uuid4().hex[:8]}"
    config = line_config(
        prefix_id, broker, bundle, backend, precision, video, rate_hz, model_options, settings.deadline_ms,
        None, trigger="frame",
    )  # fmt: skip
    sub = VerdictSubscriber(broker.host, broker.port, f"edge-anomaly/{prefix_id}").start()
    daemon = DaemonProcess(
        config, max_s=START_TIMEOUT_S + FIRST_RESULT_TIMEOUT_S + 2 * settings.measure_s + 60
    )
    try:
        daemon.start()
        t_end = time.monotonic() + FIRST_RESULT_TIMEOUT_S
        while sub.count() == 0 and time.monotonic() < t_end:
            time.sleep(0.05)
        time.sleep(settings.warmup_s)
        t0 = time.time()
        time.sleep(settings.measure_s)
        t1 = time.time()
        time.sleep(settings.deadline_ms / 1000.0 + SETTLE_S)
        final = daemon.stop()
    finally:
        daemon.kill()
        sub.stop()
    if final.get("state") != "done":
        raise RuntimeError(f"the daemon did not stop cleanly: {final.get('error', final)}")
    received, bad = sub.verdicts()
    # the trigger on this process's monotonic clock: received (mono) - (received - captured) (wall clock)
    sent = sorted(
        {doc.part_id: Sent(doc.part_id, mono - (wall - doc.trigger_ts)) for mono, wall, doc in received
         if t0 <= doc.trigger_ts < t1}.values(),
        key=lambda s: s.mono,
    )  # fmt: skip
    got = [(mono, doc) for mono, _, doc in received]
    return summarise_mode("frame", sent, got, bad, final, rate_hz, rate_hz, settings.deadline_ms)


def summarise_mode(
    mode: str,
    sent: list[Sent],
    received: list[tuple[float, Any]],
    bad_payloads: int,
    final: dict[str, Any],
    rate_hz: float,
    camera_fps: float,
    deadline_ms: float,
) -> dict[str, Any]:
    """Latency and deadline misses of the measured triggers (warm-up ones are not in ``sent``)."""
    when = {s.part_id: s.mono for s in sent if s.error is None}
    first: dict[str, tuple[float, Any]] = {}
    late: set[str] = set()
    for mono, doc in received:
        if doc.part_id not in when:
            continue
        if doc.late:
            late.add(doc.part_id)
        elif doc.part_id not in first:
            first[doc.part_id] = (mono, doc)
    verdicts = Counter(doc.verdict for _, doc in first.values())
    missing = sorted(set(when) - set(first))
    plc_ms = [(mono - when[pid]) * 1000.0 for pid, (mono, _) in first.items()]
    station_ms = [doc.elapsed_ms for _, doc in first.values()]
    reasons = Counter(doc.reason for _, doc in first.values() if doc.verdict == "no_result")
    snapshot = final.get("snapshot", {})
    seconds = sent[-1].mono - sent[0].mono if len(sent) > 1 else 0.0
    return {
        "mode": mode,
        "trigger_rate_hz": rate_hz,
        "trigger_rate_achieved_hz": (len(sent) - 1) / seconds if seconds else None,
        "camera_fps_offered": camera_fps,
        "deadline_ms": deadline_ms,
        "triggers_sent": len(sent),
        "triggers_refused": sum(1 for s in sent if s.error is not None),
        "refusals": sorted({s.error for s in sent if s.error is not None})[:5],
        "verdicts": dict(verdicts),
        "on_time": sum(n for v, n in verdicts.items() if v != "no_result"),
        "no_result": verdicts.get("no_result", 0),
        "unanswered": len(missing),
        "deadline_misses": verdicts.get("no_result", 0) + len(missing),
        "late": len(late),
        "no_result_reasons": dict(reasons.most_common(5)),
        "trigger_to_verdict_ms": latency_summary(plc_ms),
        "station_elapsed_ms": latency_summary(station_ms),
        "samples_trigger_to_verdict_ms": subsample(plc_ms),
        "daemon_parts": snapshot.get("parts", {}),
        "drops": snapshot.get("drops", {}),
        "bad_payloads": bad_payloads,
    }


def run_line_bench(
    engine: Engine,
    broker: Broker,
    bundle: Path,
    backend: str,
    precision: str,
    video: Path,
    model_options: dict[str, Any],
    settings: LineSettings,
    bare: BenchSettings,
    log_fn: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Bare slices, one triggered run per mode, the saturated OPC UA run; returns the ``line`` section."""
    cell = Cell(engine=engine, batch=1, inputs=engine_pool(engine, 1))
    warm_up(cell, bare)
    first = run_for(engine, cell.inputs, max(1.0, bare.warmup_s), bare.min_calls)
    bare_rate = len(first) / (sum(first) / 1000.0)
    rate = settings.trigger_rate or DEFAULT_RATE_FACTOR * bare_rate
    camera_fps = settings.camera_fps or min(MAX_CAMERA_FPS, CAMERA_FACTOR * bare_rate)
    slice_s = settings.measure_s / 2

    def bare_slice(into: list[float] | None = None, seconds: float = slice_s) -> dict[str, Any]:
        samples = run_for(engine, cell.inputs, seconds, bare.min_calls)
        cell.samples_ms.extend(samples)
        if into is not None:
            into.extend(samples)
        return {"bare_ips": len(samples) / (sum(samples) / 1000.0)}

    modes: dict[str, Any] = {}
    for mode in settings.modes:
        bare_slice()
        log_fn(f"line: {mode} triggers at {rate:.1f}/s, camera {camera_fps:.1f} fps, {settings.measure_s} s")
        modes[mode] = run_triggered(
            mode, broker, bundle, backend, precision, video, model_options, rate, camera_fps, settings
        )
    bare_slice()
    saturated: dict[str, Any] = {}
    seen = len(cell.samples_ms) / (sum(cell.samples_ms) / 1000.0)  # every bare slice so far, not one dip
    fps = min(MAX_CAMERA_FPS, SATURATION * max(bare_rate, seen))
    for face in ("plain", "opcua"):  # the same saturated run without, then with the OPC UA face
        samples: list[float] = []
        log_fn(f"line: saturated at {fps:.1f} fps, OPC UA face {'on' if face == 'opcua' else 'off'}")
        endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
        run = _run_pipeline_once(
            PipelineRun(1, "saturated", fps, 1), broker, bundle, backend, precision, video, model_options,
            settings.warmup_s, settings.measure_s, slices=settings.slices,
            between=lambda into=samples: bare_slice(into, slice_s / settings.slices),
            overrides={"opcua": {"enabled": True, "endpoint": endpoint}} if face == "opcua" else None,
        )  # fmt: skip
        run["bare_ips"] = len(samples) / (sum(samples) / 1000.0)
        run.pop("samples_total_ms", None)
        saturated[face] = run
    return {
        "method": (
            "one camera in one part; per trigger kind a fresh daemon (trigger = 'message', free-running "
            "camera) and a PLC sending triggers at a steady rate; bare batch-1 slices before each run; "
            "then two saturated runs, the OPC UA face off and on, their windows interleaved with bare slices"
        ),
        "engine": engine.engine,
        "precision": precision,
        "part": PART,
        "deadline_ms": settings.deadline_ms,
        "bare_rate_at_start_ips": bare_rate,
        "trigger_rate_hz": rate,
        "trigger_rate_basis": (
            f"{DEFAULT_RATE_FACTOR:g} x the bare rate at start"
            if settings.trigger_rate is None
            else "--trigger-rate"
        ),
        "camera_fps": camera_fps,
        "measure_s_per_mode": settings.measure_s,
        "warmup_s_per_mode": settings.warmup_s,
        "bare": bare_summary(cell),
        "modes": modes,
        "plain_saturated": saturated["plain"],
        "opcua_saturated": saturated["opcua"],
    }
