"""The composition root: :func:`build` turns a config into a running daemon; :class:`Daemon` owns shutdown.

Threads and how they talk:

    grabber thread per camera --(FrameSlot, newest frame wins, drops counted)--> inference loop (caller's thread)
    inference loop --(bounded queue, blocks when full: nothing dropped)--> postprocess thread
    postprocess thread --(MqttPublisher: paho thread + bounded offline queue)--> broker
    paho thread --(threshold/set)--> ThresholdBook <-- inference loop reads it per frame
    stats thread: stats topic every mqtt.stats_interval_s; watchdog thread: WATCHDOG=1 while frames flow

Nothing is started by :func:`build`; :meth:`Daemon.run_until_stopped` starts everything in order and always
shuts down in reverse order, publishing ``offline`` before it disconnects.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

import edge
from edge.backends import load_backend
from edge.checks import verified_manifest
from edge.config import CameraConfig, EdgeConfig
from edge.frames import Frame, FrameSlot, UnusableFrame
from edge.health import MetricsServer, SdNotifier, Watchdog, watchdog_interval_s
from edge.manifest import BundleError, Manifest
from edge.mqtt import MqttPublisher
from edge.postprocess import (
    Postprocessor,
    ThresholdBook,
    Verdict,
    clip_roi,
    encode_heatmap_jpeg,
    encode_mask_png,
)
from edge.priority import lower_current_thread_priority
from edge.sources import CameraSource
from edge.stats import Stats

log = logging.getLogger("edge.daemon")

RESULT_SCHEMA = 1
IDLE_WAIT_S = 0.2  # longest the loop sleeps without a frame, so stop() is noticed promptly
ERROR_BACKOFF_MAX_S = 5.0
# Scored batches waiting for postprocess + publish. The postprocess of batch n overlaps the inference of
# batch n+1 (the backend leaves CPU gaps between its own threads' work); two is enough for that, and a
# full queue makes the inference loop wait rather than drop a scored frame.
POSTPROCESS_QUEUE_BATCHES = 2
POSTPROCESS_DRAIN_TIMEOUT_S = 30.0


class StartupError(RuntimeError):
    """The daemon cannot start (bundle, backend or camera set-up); the message says what to fix."""


class _SignallingSlot(FrameSlot):
    """A FrameSlot that also wakes the inference loop, so one wait covers every camera."""

    def __init__(self, ready: threading.Event) -> None:
        super().__init__()
        self._ready = ready

    def put(self, frame: Frame) -> None:
        super().put(frame)
        self._ready.set()


@dataclass
class Camera:
    cfg: CameraConfig
    slot: FrameSlot
    source: CameraSource


# One scored frame on its way to postprocess: camera, frame, roi, raw score, raw map, t_infer, inference ms.
_Scored = Tuple[Camera, Frame, Tuple[int, int, int, int], float, np.ndarray, float, float]


def availability_payload(state: str, reason: str) -> bytes:
    """``online``, ``offline`` or ``fault: <reason>`` (plain text so simple availability checks work)."""
    if state == "fault":
        return f"fault: {reason}".encode()
    return state.encode()


class Daemon:
    """Runs the inference loop in the calling thread until :meth:`stop` (or a frame/time limit)."""

    def __init__(
        self,
        config: EdgeConfig,
        manifest: Manifest,
        backend: object,
        cameras: List[Camera],
        publisher: MqttPublisher,
        thresholds: ThresholdBook,
        stats: Stats,
        ready: threading.Event,
        notifier: SdNotifier,
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.backend = backend
        self.cameras = cameras
        self.publisher = publisher
        self.thresholds = thresholds
        self.stats = stats
        self.notifier = notifier
        self.pre = manifest.input.preprocess()
        self.post = Postprocessor(
            manifest.normalization,
            config.postprocess.min_region_area,
            config.postprocess.max_regions,
            pre=self.pre,
        )
        self.max_batch = max(
            1, min(config.model.max_batch or manifest.input.max_batch, _backend_max_batch(backend))
        )
        self._ready = ready
        self._stop = threading.Event()
        self._rr = 0  # round-robin start, so no camera is always last when a batch is full
        self._error_streak = 0
        self._roi_warned: Dict[str, bool] = {}
        self._threads: List[threading.Thread] = []
        self._watchdog: Optional[Watchdog] = None
        self._metrics: Optional[MetricsServer] = None
        self._frame_limit: Optional[int] = None
        self._submitted = 0  # frames handed to postprocess (the --max-frames count)
        self._post_queue: queue.Queue[Optional[List[_Scored]]] = queue.Queue(POSTPROCESS_QUEUE_BATCHES)
        self._post_thread: Optional[threading.Thread] = None

    # --- callbacks from other threads -------------------------------------------------------------------

    def on_source_state(self, camera: str, state: str, reason: str) -> None:
        self.publisher.set_retained(f"{camera}/availability", availability_payload(state, reason))

    def on_threshold_set(self, camera: str, payload: bytes) -> None:
        if camera not in {c.cfg.name for c in self.cameras}:
            self.stats.incr("threshold_set_unknown_camera")
            log.warning("threshold/set for unknown camera %r ignored", camera)
            return
        state = self.thresholds.set_from_payload(camera, payload)
        if "error" in state:
            log.warning("threshold/set for %s refused: %s", camera, state["error"])
        else:
            log.info("threshold for %s is now %s (from MQTT)", camera, state["threshold"])
        self.publisher.set_retained(f"{camera}/threshold/state", json.dumps(state).encode())

    # --- lifecycle --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish; safe from signal handlers and any thread."""
        self._stop.set()
        self._ready.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_until_stopped(self, max_frames: Optional[int] = None, duration_s: Optional[float] = None) -> int:
        """Start everything, score frames until stopped or a limit is hit, shut down cleanly; returns 0."""
        self._frame_limit = max_frames
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            self._start()
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("duration of %.1f s reached; stopping", duration_s)
                    break
                wait = (
                    IDLE_WAIT_S
                    if deadline is None
                    else max(0.0, min(IDLE_WAIT_S, deadline - time.monotonic()))
                )
                self.step(wait)
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        names = [c.cfg.name for c in self.cameras]
        for cam in self.config.cameras:
            self.publisher.set_retained(f"{cam.name}/availability", b"offline")
            self.publisher.set_retained(
                f"{cam.name}/threshold/state", json.dumps(self.thresholds.state(cam.name)).encode()
            )
        if self.config.model.opencv_threads is not None:
            cv2.setNumThreads(self.config.model.opencv_threads)  # process-wide; set before any camera opens
        self.publisher.start()
        self.stats.mark_started()
        for cam in self.cameras:
            cam.source.start()
        self._start_threads()
        self.notifier.notify(
            "READY=1", f"STATUS=running: {len(names)} camera(s), model {self.manifest.model_id()}"
        )
        log.info(
            "running: cameras %s, model %s (%s)",
            ", ".join(names),
            self.manifest.model_id(),
            self.config.model.precision,
        )

    def _start_threads(self) -> None:
        health = self.config.health
        self._post_thread = threading.Thread(target=self._postprocess_loop, name="edge-post", daemon=True)
        self._post_thread.start()
        stats_thread = threading.Thread(target=self._stats_loop, name="edge-stats", daemon=True)
        stats_thread.start()
        self._threads.append(stats_thread)
        interval = watchdog_interval_s()
        if health.watchdog and interval is not None:
            self._watchdog = Watchdog(
                self.notifier, interval, health.stall_after_s, self.stats.seconds_since_inference
            )
            self._watchdog.start()
        if health.metrics_port is not None:
            self._metrics = MetricsServer(
                health.metrics_host, health.metrics_port, lambda: self.snapshot("metrics")
            )
            self._metrics.start()

    def _shutdown(self) -> None:
        log.info("stopping: draining in-flight frames")
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self._stop.set()
        for cam in self.cameras:
            cam.source.stop()
        self._drain()
        self._finish_postprocess()
        for cam in self.cameras:
            cam.slot.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._metrics is not None:
            self._metrics.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        offline = [(f"{cam.name}/availability", b"offline") for cam in self.config.cameras]
        self.publisher.stop(offline_retained=offline)
        _close(self.backend)
        self.notifier.close()
        log.info("stopped cleanly")

    def _finish_postprocess(self) -> None:
        """Publish every scored frame still queued, then end the postprocess thread."""
        if self._post_thread is None:
            return
        self._post_queue.put(None)
        self._post_thread.join(POSTPROCESS_DRAIN_TIMEOUT_S)
        if self._post_thread.is_alive():
            log.error(
                "postprocess did not finish within %.0f s; results may be missing",
                POSTPROCESS_DRAIN_TIMEOUT_S,
            )

    def _postprocess_loop(self) -> None:
        lower_current_thread_priority(self.config.model.helper_threads_nice)
        while True:
            batch = self._post_queue.get()
            if batch is None:
                return
            for item in batch:
                try:
                    self._finish_frame(*item)
                except Exception:  # a bug here must not stop every later result
                    self.stats.incr("postprocess_errors")
                    log.exception("publishing %s frame %d failed", item[0].cfg.name, item[1].frame_id)

    def _drain(self) -> None:
        """Score the frames that were already read when the stop came (each slot holds at most one)."""
        while True:
            batch = self._gather()
            if not batch:
                return
            self._score(batch)

    # --- the inference loop -----------------------------------------------------------------------------

    def step(self, wait_s: float = IDLE_WAIT_S) -> int:
        """Wait up to ``wait_s`` for frames, score one batch; returns how many frames were scored."""
        self._ready.wait(wait_s)
        self._ready.clear()
        batch = self._gather()
        if not batch:
            return 0
        if len(batch) == self.max_batch:
            self._ready.set()  # other cameras may still hold a frame: do not wait for the next put
        return self._score(batch)

    def _gather(self) -> List[Tuple[Camera, Frame]]:
        """The newest unread frame of each camera that has one, up to max_batch, fair across cameras."""
        n = len(self.cameras)
        batch: List[Tuple[Camera, Frame]] = []
        for k in range(n):
            if len(batch) >= self.max_batch:
                break
            cam = self.cameras[(self._rr + k) % n]
            frame = cam.slot.get_nowait()
            if frame is not None:
                batch.append((cam, frame))
        self._rr = (self._rr + 1) % max(1, n)
        return batch

    def _score(self, batch: List[Tuple[Camera, Frame]]) -> int:
        prepared = self._prepare(batch)
        if not prepared:
            return 0
        t_infer = time.monotonic()
        try:
            scores, maps = self.backend.run(np.stack([inp for _, _, _, inp in prepared]))  # type: ignore[attr-defined]
        except Exception:
            self._inference_failed(len(prepared))
            return 0
        t_done = time.monotonic()
        self._error_streak = 0
        self.stats.mark_inference()
        inference_ms = (t_done - t_infer) * 1000.0
        scored: List[_Scored] = [
            (cam, frame, roi, float(scores[i]), maps[i], t_infer, inference_ms)
            for i, (cam, frame, roi, _) in enumerate(prepared)
        ]
        self._post_queue.put(scored)  # blocks while postprocess is two batches behind
        self._submitted += len(scored)
        if self._frame_limit is not None and self._submitted >= self._frame_limit:
            log.info("scored %d frames (--max-frames); stopping", self._frame_limit)
            self.stop()
        return len(scored)

    def _prepare(
        self, batch: List[Tuple[Camera, Frame]]
    ) -> List[Tuple[Camera, Frame, Tuple[int, int, int, int], np.ndarray]]:
        out = []
        input_hw = (self.pre.height, self.pre.width)
        for cam, frame in batch:
            roi = clip_roi(cam.cfg.roi, frame.hw)
            if roi is None:
                self.stats.incr("drops_roi")
                if not self._roi_warned.get(cam.cfg.name):
                    self._roi_warned[cam.cfg.name] = True
                    log.error(
                        "camera %s: roi %s lies outside the %dx%d frame; frames are skipped",
                        cam.cfg.name,
                        list(cam.cfg.roi or ()),
                        frame.hw[1],
                        frame.hw[0],
                    )
                continue
            prefiltered = frame.reduction_for(roi, input_hw) > 1
            try:
                image = frame.image_for(roi, input_hw)
            except UnusableFrame as exc:  # a compressed frame, checked only now that it is scored
                cam.source.reject_frame(exc.reason)
                if exc.reason == "undecodable":
                    self.stats.incr("drops_undecodable")
                    log.warning("%s; skipped", exc)
                continue
            cam.source.accept_frame()
            out.append((cam, frame, roi, self.pre.frame_to_input(image, prefiltered)))
        return out

    def _inference_failed(self, n: int) -> None:
        self._error_streak += 1
        self.stats.incr("inference_errors")
        self.stats.incr("drops_inference", n)
        delay = min(ERROR_BACKOFF_MAX_S, 0.1 * 2 ** min(self._error_streak, 10))
        log.exception(
            "inference failed (%d in a row); %d frame(s) dropped, retrying in %.1f s",
            self._error_streak,
            n,
            delay,
        )
        self._stop.wait(delay)

    def _finish_frame(
        self,
        cam: Camera,
        frame: Frame,
        roi: Tuple[int, int, int, int],
        raw_score: float,
        raw_map: np.ndarray,
        t_infer: float,
        inference_ms: float,
    ) -> None:
        t_post = time.monotonic()
        name = cam.cfg.name
        try:
            threshold, source = self.thresholds.get(name)
            verdict = self.post(raw_score, raw_map, threshold, frame.hw, roi)
            images = self._images(cam, frame, verdict)
        except Exception:
            self.stats.incr("postprocess_errors")
            self.stats.incr("drops_postprocess")
            log.exception("postprocess failed for %s frame %d", name, frame.frame_id)
            return
        now = time.monotonic()
        latency = {
            "capture_to_infer": (t_infer - frame.capture_mono) * 1000.0,
            "inference": inference_ms,
            "postprocess": (now - t_post) * 1000.0,
            "total": (now - frame.capture_mono) * 1000.0,
        }
        self._publish(cam, frame, verdict, source, latency, images)
        self.stats.record_frame(name, verdict.anomalous, latency)

    def _images(self, cam: Camera, frame: Frame, verdict: Verdict) -> Dict[str, bytes]:
        images: Dict[str, bytes] = {}
        mode = cam.cfg.publish_mask
        if mode == "always" or (mode == "anomalous" and verdict.anomalous):
            images["mask"] = encode_mask_png(verdict)
        if cam.cfg.publish_heatmap:
            images["heatmap"] = encode_heatmap_jpeg(
                frame.full_image(), verdict, self.config.postprocess.heatmap_jpeg_quality
            )
        return images

    def _publish(
        self,
        cam: Camera,
        frame: Frame,
        verdict: Verdict,
        source: str,
        latency: Dict[str, float],
        images: Dict[str, bytes],
    ) -> None:
        name = cam.cfg.name
        doc = result_document(name, frame, verdict, source, latency, self.manifest, self.config, self.backend)
        fid = str(frame.frame_id)
        mqtt = self.config.mqtt
        self.publisher.publish(
            f"{name}/result",
            json.dumps(doc).encode(),
            mqtt.qos_result,
            content_type="application/json",
            correlation=fid.encode(),
        )
        content_types = {"mask": "image/png", "heatmap": "image/jpeg"}
        for kind, data in images.items():
            self.publisher.publish(
                f"{name}/{kind}",
                data,
                mqtt.qos_mask,
                content_type=content_types[kind],
                correlation=fid.encode(),
                user_properties=(("frame_id", fid), ("camera", name)),
            )

    # --- stats ------------------------------------------------------------------------------------------

    def snapshot(self, consumer: str = "stats") -> Dict[str, object]:
        """One document for the stats topic and /metrics (each ``consumer`` gets its own fps window)."""
        base = self.stats.snapshot()
        counters = dict(base.pop("counters"))  # type: ignore[arg-type]
        mqtt = self.publisher.snapshot()
        cams: Dict[str, object] = {}
        per_cam = dict(base.pop("cameras"))  # type: ignore[arg-type]
        for cam in self.cameras:
            src = dict(cam.source.stats)
            src.update(per_cam.get(cam.cfg.name, {}))
            cams[cam.cfg.name] = src
        slot_drops = sum(cam.slot.dropped for cam in self.cameras)
        return {
            "schema": 1,
            "ts": round(time.time(), 3),
            "fps": self.stats.fps(consumer),
            "frames_scored": counters.get("frames_scored", 0),
            "drops": {
                "camera_slots": slot_drops,
                "roi": counters.get("drops_roi", 0),
                "undecodable": counters.get("drops_undecodable", 0),
                "inference": counters.get("drops_inference", 0),
                "postprocess": counters.get("drops_postprocess", 0),
                "mqtt_offline_queue": mqtt["offline_dropped"],
                "mqtt_qos0_offline": mqtt["qos0_dropped_offline"],
            },
            "errors": {
                "inference": counters.get("inference_errors", 0),
                "postprocess": counters.get("postprocess_errors", 0),
                "stats": counters.get("stats_errors", 0),
                "threshold_set_unknown_camera": counters.get("threshold_set_unknown_camera", 0),
                "mqtt_connect_failures": mqtt["connect_failures"],
            },
            "queues": {
                "mqtt_offline": mqtt["offline_queue"],
                "mqtt_offline_max": mqtt["offline_queue_max"],
                "broker_backlog": mqtt["backlog"],
            },
            "mqtt": mqtt,
            "cameras": cams,
            **base,
        }

    def _stats_loop(self) -> None:
        interval = self.config.mqtt.stats_interval_s
        while not self._stop.wait(interval):
            try:
                self.publisher.publish(
                    "stats", json.dumps(self.snapshot()).encode(), 0, content_type="application/json"
                )
            except Exception:  # keep reporting; count and back off one period
                self.stats.incr("stats_errors")
                log.exception("publishing stats failed")


def result_document(
    camera: str,
    frame: Frame,
    verdict: Verdict,
    threshold_source: str,
    latency: Dict[str, float],
    manifest: Manifest,
    config: EdgeConfig,
    backend: object,
) -> Dict[str, object]:
    """The ``result`` payload, schema 1 (documented in README; change the schema number when it changes)."""
    fh, fw = verdict.frame_hw
    return {
        "schema": RESULT_SCHEMA,
        "camera": camera,
        "frame_id": frame.frame_id,
        "capture_ts": round(frame.capture_ts, 6),
        "score": round(verdict.score, 6),
        "raw_score": verdict.raw_score,
        "threshold": verdict.threshold,
        "threshold_source": threshold_source,
        "anomalous": verdict.anomalous,
        "defect_area": round(verdict.defect_area, 6),
        "regions": [r.to_json() for r in verdict.regions],
        "regions_total": verdict.regions_total,
        "roi": list(verdict.roi),
        "frame_size": [fw, fh],
        "model": {
            "id": manifest.model_id(),
            # what the backend loaded: the verified manifest entry, not the config's wish
            "precision": getattr(backend, "precision", config.model.precision),
            "backend": getattr(backend, "name", config.model.backend),
            "signer": getattr(manifest, "signer", None),  # trusted key fingerprint, None when unsigned
        },
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
    }


def _backend_max_batch(backend: object) -> int:
    value = getattr(backend, "max_batch", 1)
    return int(value) if isinstance(value, int) and value > 0 else 1


def _close(backend: object) -> None:
    close = getattr(backend, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # shutting down anyway; say so and carry on
        log.exception("closing the backend failed")


def build(config: EdgeConfig, notifier: Optional[SdNotifier] = None) -> Daemon:
    """Config -> bundle (verified) -> backend -> cameras -> publisher -> health. Starts nothing."""
    manifest = _verified_manifest(config)
    backend = _load_backend(config, manifest)
    ready = threading.Event()
    enabled = config.enabled_cameras()
    stats = Stats([cam.name for cam in enabled])
    thresholds = ThresholdBook(
        default=manifest.threshold.default,
        fixed={cam.name: cam.threshold for cam in config.cameras},
        lo=config.postprocess.threshold_min,
        hi=config.postprocess.threshold_max,
    )
    status = {
        "version": edge.__version__,
        "model": manifest.model_id(),
        "precision": getattr(backend, "precision", config.model.precision),
        "backend": config.model.backend,
        "signer": getattr(manifest, "signer", None),
        "cameras": [cam.name for cam in enabled],
    }
    # The daemon's callbacks are bound after the Daemon exists; the sources and the publisher only need a
    # callable at construction, so a small forwarding holder keeps build() linear.
    hooks = _Hooks()
    nice = config.model.helper_threads_nice
    publisher = MqttPublisher(
        config.mqtt, config.topic_prefix, config.client_id, status, hooks.on_threshold_set, nice
    )
    cameras = [_camera(cam, ready, hooks, nice) for cam in enabled]
    daemon = Daemon(
        config,
        manifest,
        backend,
        cameras,
        publisher,
        thresholds,
        stats,
        ready,
        notifier if notifier is not None else SdNotifier(),
    )
    hooks.daemon = daemon
    return daemon


class _Hooks:
    """Forwards callbacks to the Daemon once it exists (they cannot fire before run_until_stopped)."""

    def __init__(self) -> None:
        self.daemon: Optional[Daemon] = None

    def on_state(self, camera: str, state: str, reason: str) -> None:
        if self.daemon is not None:
            self.daemon.on_source_state(camera, state, reason)

    def on_threshold_set(self, camera: str, payload: bytes) -> None:
        if self.daemon is not None:
            self.daemon.on_threshold_set(camera, payload)


def _camera(cfg: CameraConfig, ready: threading.Event, hooks: _Hooks, nice: int) -> Camera:
    slot = _SignallingSlot(ready)
    source = CameraSource(
        cfg.name,
        cfg.source,
        slot,
        loop=cfg.loop,
        fps_cap=cfg.fps,
        fault_after_s=cfg.fault_after_s,
        on_state=hooks.on_state,
        decode_on_demand=cfg.decode_on_demand,
        thread_nice=nice,
    )
    return Camera(cfg=cfg, slot=slot, source=source)


def _verified_manifest(config: EdgeConfig) -> Manifest:
    try:
        return verified_manifest(config.model)  # the same checks as --check-config
    except BundleError as exc:
        raise StartupError(f"model.bundle: {exc}") from exc


def _load_backend(config: EdgeConfig, manifest: Manifest) -> object:
    # Only options the user set are passed, so a backend that does not take one is not bothered by it.
    options: Dict[str, object] = {}
    if config.model.providers is not None:
        options["providers"] = list(config.model.providers)
    if config.model.intra_op_threads is not None:
        options["intra_op_threads"] = config.model.intra_op_threads
    if config.model.max_batch is not None:
        options["max_batch"] = config.model.max_batch
    if config.model.engine_cache_dir is not None:  # outside the root-owned bundle (deploy/install.sh)
        key = "engine_cache_dir" if config.model.backend == "tensorrt" else "trt_cache_dir"
        options[key] = config.model.engine_cache_dir
    try:
        return load_backend(
            config.model.backend, config.model.bundle, manifest, config.model.precision, **options
        )
    except StartupError:
        raise
    except Exception as exc:  # missing runtime, unsupported provider, engine build failure...
        raise StartupError(
            f"model.backend {config.model.backend!r} could not load the bundle: {exc}"
        ) from exc
