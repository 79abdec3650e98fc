"""The whole daemon, measured from the outside: video files -> edge daemon -> real mosquitto -> a subscriber.

The daemon runs as deployed in a spawned child process (:mod:`benchmarks.daemon_process`); cameras are
looping video files (:mod:`benchmarks.videos`); a result counts when the subscriber receives it
(:mod:`benchmarks.subscriber`). The soak is :mod:`benchmarks.soak`.

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
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.daemon_process import FIRST_RESULT_TIMEOUT_S, START_TIMEOUT_S, DaemonProcess, daemon_config
from benchmarks.model_bench import BenchSettings, Cell, Engine, latency_summary, run_for, subsample, warm_up
from benchmarks.subscriber import Received, ResultSubscriber
from benchmarks.viewer import PageViewer
from tools.local_broker import Broker, free_port

SATURATION = 1.5  # cameras offer this much more than the backend can take in "saturated" runs
MAX_CAMERA_FPS = 1000.0  # EdgeConfig's upper bound for cameras[].fps
VIEWER_LOAD = "saturated+viewer"  # the windows of a saturated run in which one viewer polled the page
SETTLE_S = 0.5  # after a thawed daemon resumes: the frame in flight at the freeze is published first
LATENCY_FIELDS = ("capture_to_infer", "inference", "postprocess", "total")


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
    web: bool = False,
    viewer: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start the daemon, skip ``warmup_s`` after the first result, count results for ``measure_s``, stop.

    With ``between``, the measurement is cut into ``slices`` windows and after each one the daemon is frozen
    while ``between`` runs (a bare-backend slice), then thawed and given ``SETTLE_S`` before the next window.
    Pipeline and bare then alternate seconds apart, so a change of machine speed (a shared VM's neighbours,
    CPU frequency) lands on both sides of the ratio instead of on one.

    ``web``: the daemon serves its live-view page. ``viewer`` (with ``between``): twice the windows, and a
    :class:`PageViewer` polls the page in every second one (paused before the daemon is frozen); the windows
    without it make this run's result, those with it ``result["with_viewer"]``, so the page idle and the
    page watched are measured in one daemon, seconds apart, each beside its own bare slices.
    ``overrides``: config sections that replace the defaults (``edge-bench line``: ``opcua``).
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
        web_port=free_port() if web or viewer else None,
    )
    config.update(overrides or {})
    sub = ResultSubscriber(broker.host, broker.port, f"edge-anomaly/{prefix_id}")
    sub.start()
    n = max(1, slices) if between is not None else 1
    watched = [viewer and between is not None and k % 2 == 1 for k in range(2 * n if viewer else n)]
    measured_s = measure_s * len(watched) / n
    max_s = (
        START_TIMEOUT_S + FIRST_RESULT_TIMEOUT_S + warmup_s + 3 * measured_s + SETTLE_S * len(watched) + 60
    )
    daemon = DaemonProcess(config, max_s=max_s)
    windows: list[tuple[float, float]] = []
    interleaved: list[dict[str, Any]] = []
    page: PageViewer | None = None
    viewed: dict[str, int] | None = None
    try:
        daemon.start()
        if not sub.wait_first(FIRST_RESULT_TIMEOUT_S):
            raise RuntimeError(
                f"no result arrived within {FIRST_RESULT_TIMEOUT_S:.0f} s of the daemon starting"
            )
        if any(watched):
            cams = [c["name"] for c in config["cameras"]]
            page = PageViewer("127.0.0.1", config["web"]["port"], cams).start()  # paused until resumed
        time.sleep(warmup_s)  # warm-up window: results in it are not counted
        for k, with_page in enumerate(watched):
            if page is not None and with_page:
                page.resume()
            t0 = time.monotonic()
            time.sleep(measure_s / n)  # one measurement window
            windows.append((t0, time.monotonic()))
            if page is not None and with_page:
                page.pause()
            if between is not None:
                daemon.pause()
                try:
                    interleaved.append(between())
                finally:
                    daemon.resume()
                if k < len(watched) - 1:
                    time.sleep(SETTLE_S)
        if page is not None:
            viewed = page.stop()
        final = daemon.stop()
    finally:
        if page is not None and viewed is None:
            page.stop()
        daemon.kill()
        sub.stop()
    if final.get("state") != "done":
        raise RuntimeError(f"the daemon did not stop cleanly: {final.get('error', final)}")
    per_window = [sub.window(t0, t1) for t0, t1 in windows]

    def part(with_page: bool) -> dict[str, Any]:
        picked = [k for k, w in enumerate(watched) if w == with_page]
        got = [r for k in picked for r in per_window[k]]
        result = summarise_window(run, got, [windows[k] for k in picked], final, sub)
        if interleaved:
            result["interleaved"] = [
                {"pipeline_rps": len(per_window[k]) / (windows[k][1] - windows[k][0]), **interleaved[k]}
                for k in picked
            ]
        return result

    result = part(False)
    result["viewer"] = None
    if page is not None:  # requests, frames, bytes, errors of the polling viewer
        result["with_viewer"] = {**part(True), "load": VIEWER_LOAD, "viewer": viewed}
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
    viewer: bool = False  # page on in every run; saturated runs alternate windows without and with a viewer


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
                    web=settings.viewer,
                    viewer=settings.viewer and load == "saturated",
                )
                with_viewer = result.pop("with_viewer", None)
                for done in [result] + ([with_viewer] if with_viewer else []):
                    done["round"] = r + 1
                    runs.append(done)
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
        "viewer": settings.viewer,
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
        viewed = [r for r in runs if r["cameras"] == cams and r["load"] == VIEWER_LOAD]
        if viewed:  # --viewer: the same saturated runs with one viewer polling the page
            seconds_v = sum(r["seconds"] for r in viewed)
            entry["viewer_results"] = sum(r["results"] for r in viewed)
            entry["viewer_throughput_rps"] = entry["viewer_results"] / seconds_v if seconds_v else None
        if paced:
            entry["paced_latency_total_ms"] = latency_summary(_samples(paced))
            entry["paced_throughput_rps"] = sum(r["results"] for r in paced) / sum(
                r["seconds"] for r in paced
            )
        out[str(cams)] = entry
    return out


def _samples(runs: list[dict[str, Any]]) -> list[float]:
    return [v for r in runs for v in r["samples_total_ms"] if v == v]  # drop NaN
