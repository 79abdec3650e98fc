"""The composition root: :func:`build` turns a config into a running daemon; :class:`Daemon` owns shutdown.

Threads and how they talk:

    grabber thread per camera --(FrameSlot, newest frame wins, drops counted)--> inference stage (caller's
    thread)
    inference stage --(bounded queue, blocks when full: nothing dropped)--> publish stage (postprocess thread)
    publish stage --(DeviceApi: typed payloads)--> MqttTransport (network thread + bounded queue) --> broker
    network thread --(threshold/set)--> DeviceApi --> ThresholdBook <-- publish stage reads it per frame
    stats thread: stats topic every mqtt.stats_interval_s; watchdog thread: WATCHDOG=1 while frames flow

Nothing is started by :func:`build`; :meth:`Daemon.run_until_stopped` starts everything in order and always
shuts down in reverse order, publishing ``offline`` before it disconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import cv2

import edge
from edge.config import EdgeConfig
from edge.faces.mqtt_json.api import DeviceApi
from edge.faces.mqtt_json.topics import status_will
from edge.faces.mqtt_json.transport import MqttTransport
from edge.results.overlays import OverlaySaver
from edge.results.payloads import (
    CameraStats,
    EvidenceStats,
    Identity,
    StatsPayload,
    iso_utc,
    new_run_id,
)
from edge.results.thresholds import ThresholdBook, resolve_state_dir, threshold_range
from edge.scoring.backends import Backend
from edge.scoring.inference import Camera, InferenceStage
from edge.scoring.models import ModelBook, close_backend
from edge.service import opcua_face
from edge.service.changeover import Changeover
from edge.service.health import MetricsServer, SdNotifier, Watchdog, watchdog_interval_s
from edge.service.loader import StartupError, boot_models, load_model
from edge.service.parts import PartDesk
from edge.service.publish import PublishStage
from edge.service.regions import inspection_units
from edge.service.run_end import ended_line, every_camera_ended, final_line
from edge.service.web_face import WebFace
from edge.stores.evidence import EvidenceStore
from edge.stores.recipes import RecipeChoices, RecipeStore
from edge.trust.manifest import Manifest
from edge.util.stats import Stats

if TYPE_CHECKING:  # imported at run time only when [sparkplug] is enabled (it needs protobuf)
    from edge.faces.sparkplug.node import SparkplugNode

log = logging.getLogger("edge.daemon")

EXIT_UNDELIVERED = 4  # edge-run's exit status when results never reached the broker (README, "Exit status")

IDLE_WAIT_S = 0.2  # longest the loop sleeps without a frame, so stop() is noticed promptly
MQTT_DROP_KINDS = ("result", "mask", "heatmap", "stats", "availability")  # always in stats, 0 or not


class Daemon:
    """Runs the inference loop in the calling thread until :meth:`stop` (or a frame/time limit)."""

    def __init__(
        self,
        config: EdgeConfig,
        manifest: Manifest,
        backend: Backend,
        cameras: List[Camera],
        transport: MqttTransport,
        api: DeviceApi,
        stats: Stats,
        ready: threading.Event,
        notifier: SdNotifier,
        models: ModelBook,
        evidence: Optional[EvidenceStore] = None,
        changeover: Optional[Changeover] = None,
        sparkplug: Optional[SparkplugNode] = None,
        overlays: Optional[OverlaySaver] = None,
    ) -> None:
        self.config = config
        self.evidence = evidence
        self.changeover = changeover
        self.manifest = manifest
        self.cameras = cameras
        self.transport = transport
        self.api = api
        self.stats = stats
        self.notifier = notifier
        self.sparkplug = sparkplug
        self._ready = ready
        self._stop = threading.Event()
        self.undelivered_results = 0  # set at shutdown: results dropped or unacknowledged (non-zero exit)
        self.models = models
        self.publisher = PublishStage(
            api, api.thresholds, config, stats, config.model.helper_threads_nice, evidence, overlays
        )
        max_batch = max(1, min(config.model.max_batch or manifest.input.max_batch, backend.max_batch))
        self.inference = InferenceStage(models, cameras, stats, self.publisher.queue, max_batch, self._stop)
        self.parts: Optional[PartDesk] = None  # [[parts]]: set by build() (PartDesk.wired)
        self.faces: List[Any] = []  # faces with start()/stop() of their own ([web], [opcua]): set by build()
        self._threads: List[threading.Thread] = []
        self._watchdog: Optional[Watchdog] = None
        self._metrics: Optional[MetricsServer] = None
        self._frame_limit: Optional[int] = None
        self._submitted = 0  # frames handed to postprocess (the --max-frames count)
        self._started_mono = time.monotonic()  # run_until_stopped resets it: the final line's duration

    @property
    def max_batch(self) -> int:
        return self.inference.max_batch

    @property
    def backend(self) -> Backend:
        """The backend of the first camera's model."""
        return self.models.active(self.cameras[0].cfg.name).backend

    # --- lifecycle --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish; safe from signal handlers and any thread."""
        self._stop.set()
        self._ready.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config and the bundle store (safe from a signal handler)."""
        if self.changeover is not None:
            self.changeover.request_reload()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_until_stopped(
        self, max_frames: Optional[int] = None, duration_s: Optional[float] = None, until_ended: bool = False
    ) -> int:
        """Start everything, score frames until stopped or a limit is hit, shut down cleanly.

        ``until_ended``: also stop when every camera's stream has ended (video files without ``loop``;
        edge-run's default, see edge/service/run_end.py).

        Returns 0, or :data:`EXIT_UNDELIVERED` when results were lost on the way to the broker (dropped
        from the bounded queue during the run, or still unacknowledged at the stop): a supervisor or a
        script must not read a run whose results SCADA never saw as a success."""
        self._frame_limit = max_frames
        deadline = None if duration_s is None else time.monotonic() + duration_s
        self._started_mono = time.monotonic()
        failed = True  # until the loop ends without an exception: the last log line says which
        try:
            self._start()
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("duration of %.1f s reached; stopping", duration_s)
                    break
                if until_ended and every_camera_ended(self.cameras):
                    log.info("%s", ended_line(len(self.cameras), self._submitted))
                    break
                wait = (
                    IDLE_WAIT_S
                    if deadline is None
                    else max(0.0, min(IDLE_WAIT_S, deadline - time.monotonic()))
                )
                self.step(wait)
            failed = False
        finally:
            self._shutdown(failed)
        return EXIT_UNDELIVERED if self.undelivered_results else 0

    def _start(self) -> None:
        names = [c.cfg.name for c in self.cameras]
        self.api.announce()
        if self.changeover is not None:
            self.changeover.publish_all()
        if self.config.model.opencv_threads is not None:
            cv2.setNumThreads(self.config.model.opencv_threads)  # process-wide; set before any camera opens
        self.transport.start()
        if self.sparkplug is not None:
            self.sparkplug.start()
        for face in self.faces:
            face.start()
        self.stats.mark_started()
        for cam in self.cameras:
            cam.source.start()
        self._start_threads()
        self.notifier.notify(
            "READY=1", f"STATUS=running: {len(names)} camera(s), model {self.manifest.model_id()}"
        )
        log.info(
            "running: cameras %s, model %s (%s), run %s",
            ", ".join(names),
            self.manifest.model_id(),
            self.config.model.precision,
            self.api.identity.run_id,
        )

    def _start_threads(self) -> None:
        health = self.config.health
        if self.evidence is not None:
            self.evidence.start()
        if self.changeover is not None:
            self.changeover.start()
        self.publisher.start()
        if self.parts is not None:
            self.parts.start()
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

    def _shutdown(self, failed: bool = False) -> None:
        log.info("stopping: draining in-flight frames")
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self._stop.set()
        if self.changeover is not None:
            self.changeover.stop()
        for cam in self.cameras:
            cam.source.stop()
        self._drain()
        self.publisher.finish()
        if self.parts is not None:
            self.parts.stop()
        if self.evidence is not None:
            self.evidence.close()
        for cam in self.cameras:
            cam.slot.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._metrics is not None:
            self._metrics.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        for face in self.faces:
            face.stop()
        if self.sparkplug is not None:
            self.sparkplug.stop()  # NDEATH after the last DDATA
        left = self.transport.stop(final_retained=self.api.final_retained())
        dropped = int(self.transport.snapshot()["dropped"].get("result", 0))  # type: ignore[attr-defined]
        self.undelivered_results = dropped + left.get("result", 0)
        if self.undelivered_results:
            log.error(
                "%d result(s) never reached broker %s (%d dropped from the full queue during the run, %d "
                "undelivered at the stop); exiting with status %d",
                self.undelivered_results, self.transport.broker, dropped, left.get("result", 0),
                EXIT_UNDELIVERED,
            )  # fmt: skip
        for model in self.models.resident_models():
            close_backend(model.backend)
        self.notifier.close()
        # 1 is edge.service.cli's EXIT_ERROR
        code = 1 if failed else EXIT_UNDELIVERED if self.undelivered_results else 0
        seconds = time.monotonic() - self._started_mono
        log.log(*final_line(code, self._submitted, seconds, self.undelivered_results))

    def _drain(self) -> None:
        """Score the frames that were already read when the stop came (each slot holds at most one)."""
        while True:
            batch = self.inference.gather()
            if not batch:
                return
            self._submit(self.inference.score(batch))

    # --- the inference loop -----------------------------------------------------------------------------

    def step(self, wait_s: float = IDLE_WAIT_S) -> int:
        """Wait up to ``wait_s`` for frames, score one batch; returns how many frames were scored."""
        self._ready.wait(wait_s)
        self._ready.clear()
        batch = self.inference.gather()
        if not batch:
            return 0
        if len(batch) == self.max_batch:
            self._ready.set()  # other cameras may still hold a frame: do not wait for the next put
        n = self.inference.score(batch)
        self._submit(n)
        return n

    def _submit(self, n: int) -> None:
        self._submitted += n
        if self._frame_limit is not None and n and self._submitted >= self._frame_limit:
            log.info("scored %d frames (--max-frames); stopping", self._frame_limit)
            self.stop()

    # --- stats ------------------------------------------------------------------------------------------

    def snapshot(self, consumer: str = "stats") -> Dict[str, object]:
        """One document for the stats topic and /metrics (each ``consumer`` gets its own fps window)."""
        return self.stats_payload(consumer).model_dump(by_alias=True)

    def stats_payload(self, consumer: str = "stats") -> StatsPayload:
        base = self.stats.snapshot()
        counters: Dict[str, int] = dict(base["counters"])  # type: ignore[call-overload]
        per_cam: Dict[str, Dict[str, int]] = dict(base["cameras"])  # type: ignore[call-overload]
        mqtt = self.transport.snapshot()
        dropped: Dict[str, int] = dict(mqtt["dropped"])  # type: ignore[call-overload]
        cams: Dict[str, CameraStats] = {}
        for cam in self.cameras:
            src: Dict[str, Any] = dict(cam.source.stats)
            src.update(per_cam.get(cam.cfg.name, {}))
            cams[cam.cfg.name] = CameraStats(**src)
        now = time.time()
        identity = self.api.identity
        return StatsPayload(
            device_id=identity.device_id,
            run_id=identity.run_id,
            ts=round(now, 3),
            time=iso_utc(now),
            uptime_s=float(base["uptime_s"]),  # type: ignore[arg-type]
            fps=self.stats.fps(consumer),
            frames_scored=counters.get("frames_scored", 0),
            drops={
                "camera_slots": sum(cam.slot.dropped for cam in self.cameras),
                "roi": counters.get("drops_roi", 0),
                "undecodable": counters.get("drops_undecodable", 0),
                "inference": counters.get("drops_inference", 0),
                "postprocess": counters.get("drops_postprocess", 0),
                **{f"mqtt_{kind}": dropped.get(kind, 0) for kind in MQTT_DROP_KINDS},
                **{f"mqtt_{kind}": n for kind, n in dropped.items()},
                **(
                    {}
                    if self.sparkplug is None
                    else {"sparkplug_ddata": self.sparkplug.snapshot()["dropped_ddata"]}
                ),
            },
            errors={
                "inference": counters.get("inference_errors", 0),
                "postprocess": counters.get("postprocess_errors", 0),
                "stats": counters.get("stats_errors", 0),
                "mqtt_connect_failures": int(mqtt["connect_failures"]),  # type: ignore[call-overload]
            },
            commands={
                **self.api.command_counts(),
                **(self.sparkplug.command_counts() if self.sparkplug else {}),
            },
            queues={
                "mqtt_in_flight": int(mqtt["in_flight"]),  # type: ignore[call-overload]
                "mqtt_queued": int(mqtt["queued"]),  # type: ignore[call-overload]
                "mqtt_queue_max": int(mqtt["queue_max"]),  # type: ignore[call-overload]
            },
            latency_ms=base["latency_ms"],  # type: ignore[arg-type]
            mqtt=mqtt,  # type: ignore[arg-type]
            cameras=cams,
            warnings=self.transport.warnings() + (self.evidence.warnings() if self.evidence else []),
            evidence=None if self.evidence is None else EvidenceStats(**self.evidence.snapshot()),
            parts={} if self.parts is None else self.parts.counts(),
        )

    def _stats_loop(self) -> None:
        interval = self.config.mqtt.stats_interval_s
        while not self._stop.wait(interval):
            try:
                self.api.publish_stats(self.stats_payload())
            except Exception:  # keep reporting; count and back off one period
                self.stats.incr("stats_errors")
                log.exception("publishing stats failed")


def build(
    config: EdgeConfig, notifier: Optional[SdNotifier] = None, overlays: Optional[OverlaySaver] = None
) -> Daemon:
    """Config -> bundles (verified) -> backends -> thresholds -> MQTT face -> cameras. Starts nothing.

    ``overlays``: edge-run --save-overlays (the publish thread offers it every published frame)."""
    store = RecipeStore(config.model.store, config.model.bundle)
    choices = RecipeChoices(resolve_state_dir(config.state_dir) / f"recipes-{config.device_id}.json")
    faults: Dict[str, str] = {}  # regions whose recipe failed to load: they fault alone
    boot = boot_models(config, store, choices, faults)
    names = [cam.name for cam in config.enabled_cameras()]
    first = next(boot[name] for name in names if name in boot)
    manifest, backend = first.manifest, first.backend
    ready = threading.Event()
    thresholds = _thresholds(config, manifest, {cam: m.id for cam, m in boot.items()})
    for cam, model in boot.items():  # cameras that start on another recipe than the first camera
        if model.manifest is not manifest:
            thresholds.model_changed(cam, model.manifest.threshold.default, model.id, keep_live=True)
    identity = Identity(
        device_id=config.device_id,
        run_id=new_run_id(),
        started_at=time.time(),
        version=edge.__version__,
        model=first.ref,
    )
    mqtt = config.mqtt
    transport = MqttTransport(
        mqtt,
        config.topic_prefix,
        config.client_id,
        will=status_will(identity, names),
        network_thread_nice=config.model.helper_threads_nice,
    )
    api = DeviceApi(
        transport,
        identity,
        names,
        thresholds,
        qos_result=mqtt.qos_result,
        qos_mask=mqtt.qos_mask,
        queue_masks=mqtt.queue_masks,
    )
    cameras = inspection_units(config, ready, api, config.model.helper_threads_nice, faults)
    book = ModelBook(boot)
    evidence = None
    if config.evidence.enabled:
        folder = config.evidence.dir or resolve_state_dir(config.state_dir) / "evidence"
        evidence = EvidenceStore(folder, config.evidence)
        evidence.on_warnings = lambda found: api.set_warnings("evidence", found)  # a rebuilt index: status
    sparkplug = _sparkplug(config, api) if config.sparkplug.enabled else None
    changeover = Changeover(config, book, store, thresholds, api, load_model, choices)
    daemon = Daemon(
        config,
        manifest,
        backend,
        cameras,
        transport,
        api,
        Stats(names),
        ready,
        notifier if notifier is not None else SdNotifier(),
        book,
        evidence,
        changeover,
        sparkplug,
        overlays,
    )
    daemon.parts = PartDesk.wired(config, daemon, changeover.loading_recipe)
    faces = [WebFace.wired(config, daemon), opcua_face.wired(config, api, changeover)]
    daemon.faces = [face for face in faces if face is not None]
    return daemon


def _sparkplug(config: EdgeConfig, api: DeviceApi) -> SparkplugNode:
    """The Sparkplug B face, told everything the JSON face publishes (imported only when enabled)."""
    from edge.faces.sparkplug.node import SparkplugNode

    node = SparkplugNode(
        config.sparkplug,
        config.mqtt,
        node_id=config.sparkplug_node_id,
        client_id=config.sparkplug_client_id,
        api=api,
        json_prefix=config.topic_prefix,
        state_file=resolve_state_dir(config.state_dir) / f"sparkplug-{config.device_id}.json",
        tls=config.sparkplug_tls,
        network_thread_nice=config.model.helper_threads_nice,
    )
    api.observers.append(node)
    return node


def _thresholds(config: EdgeConfig, manifest: Manifest, models: Dict[str, str]) -> ThresholdBook:
    default = manifest.threshold.default
    try:
        lo, hi = threshold_range(default, config.postprocess.threshold_min, config.postprocess.threshold_max)
    except ValueError as exc:
        raise StartupError(f"postprocess: {exc}") from exc
    state_file = resolve_state_dir(config.state_dir) / f"thresholds-{config.device_id}.json"
    return ThresholdBook(
        default=default,
        fixed={cam.name: cam.threshold for cam in config.units()},
        lo=lo,
        hi=hi,
        state_file=Path(state_file),
        model_id=manifest.model_id(),
        models={cam: mid for cam, mid in models.items() if mid != manifest.model_id()},
        bounds=(config.postprocess.threshold_min, config.postprocess.threshold_max),
    )
