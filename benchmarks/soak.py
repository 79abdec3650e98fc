"""Soak: one daemon configuration for a long time, its process (RSS, threads, open fds) sampled at an
interval; growth is the last window's median RSS against the first window's."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.daemon_process import FIRST_RESULT_TIMEOUT_S, START_TIMEOUT_S, DaemonProcess, daemon_config
from benchmarks.model_bench import latency_summary
from benchmarks.subscriber import ResultSubscriber
from tools.local_broker import Broker


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
