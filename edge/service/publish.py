"""The publish stage: scored frame -> verdict (threshold, mask, regions) -> images -> typed result on MQTT.

Its own thread, fed by the inference stage through a bounded queue; the postprocess of batch n overlaps the
inference of batch n+1. A failure on one frame is counted and logged and never stops later results.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Dict, Optional

from edge.config import EdgeConfig
from edge.faces.mqtt_json.api import DeviceApi
from edge.results.overlays import OverlaySaver
from edge.results.payloads import iso_utc
from edge.results.postprocess import Verdict, encode_heatmap_jpeg, encode_mask_png
from edge.results.thresholds import ThresholdBook
from edge.results.verdicts import camera_verdict
from edge.scoring.inference import ScoredBatch, ScoredFrame
from edge.stores.evidence import EvidenceStore
from edge.util.priority import lower_current_thread_priority
from edge.util.stats import Stats

if TYPE_CHECKING:
    from edge.faces.web.live import LiveView
    from edge.service.parts import PartDesk

log = logging.getLogger("edge.publish")

# Scored batches waiting for postprocess + publish. Two is enough to overlap the backend's CPU gaps, and a
# full queue makes the inference loop wait rather than drop a scored frame.
QUEUE_BATCHES = 2
DRAIN_TIMEOUT_S = 30.0


class PublishStage:
    """Owns the postprocess thread and the queue that feeds it."""

    def __init__(
        self,
        api: DeviceApi,
        thresholds: ThresholdBook,
        config: EdgeConfig,
        stats: Stats,
        helper_nice: int = 0,
        evidence: Optional[EvidenceStore] = None,
        overlays: Optional[OverlaySaver] = None,
    ) -> None:
        self.api = api
        self.thresholds = thresholds
        self.config = config
        self.stats = stats
        self.queue: queue.Queue[Optional[ScoredBatch]] = queue.Queue(QUEUE_BATCHES)
        self._nice = helper_nice
        self.evidence = evidence  # offered every published frame; keeps what its sampling rules ask for
        self.overlays = overlays  # edge-run --save-overlays: offered every published frame, saves a few
        self.parts: Optional[PartDesk] = None  # told every published result when [[parts]] are configured
        self.live: Optional[LiveView] = None  # [web]: the live view keeps a reference while a viewer watches
        self._model_of: Dict[str, str] = {}  # camera -> id of the model of its last published frame
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-post", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Publish every scored frame still queued, then end the thread."""
        if self._thread is None:
            return
        self.queue.put(None)
        self._thread.join(DRAIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.error("postprocess did not finish within %.0f s; results may be missing", DRAIN_TIMEOUT_S)

    def _loop(self) -> None:
        lower_current_thread_priority(self._nice)
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            for item in batch:
                try:
                    self.publish(item)
                except Exception:  # a bug here must not stop every later result
                    self.stats.incr("postprocess_errors")
                    log.exception("publishing %s frame %d failed", item.camera.cfg.name, item.frame.frame_id)

    def publish(self, item: ScoredFrame) -> None:
        t_post = time.monotonic()
        name = item.camera.cfg.name
        frame = item.frame
        model = item.model
        self._note_model(name, model.id, model.manifest.threshold.default)
        try:
            threshold, source = self.thresholds.get(name)
            verdict = model.post(item.raw_score, item.raw_map, threshold, frame.hw, item.roi)
            images = self._images(item, verdict)
        except Exception:
            self.stats.incr("postprocess_errors")
            self.stats.incr("drops_postprocess")
            log.exception("postprocess failed for %s frame %d", name, frame.frame_id)
            return
        now = time.monotonic()
        latency = {
            "capture_to_infer": round((item.t_infer - frame.capture_mono) * 1000.0, 3),
            "inference": round(item.inference_ms, 3),
            "postprocess": round((now - t_post) * 1000.0, 3),
            "total": round((now - frame.capture_mono) * 1000.0, 3),
        }
        fh, fw = verdict.frame_hw
        doc = self.api.publish_result(
            name,
            images,
            model=model.ref,
            frame_id=frame.frame_id,
            capture_ts=round(frame.capture_ts, 6),
            capture_time=iso_utc(frame.capture_ts),
            score=round(verdict.score, 6),
            raw_score=verdict.raw_score,
            threshold=verdict.threshold,
            threshold_source=source,
            anomalous=verdict.anomalous,
            verdict=camera_verdict(
                verdict.score, verdict.threshold, verdict.anomalous, item.camera.cfg.warn_band
            ),
            defect_area=round(verdict.defect_area, 6),
            regions=[r.to_json() for r in verdict.regions],
            regions_total=verdict.regions_total,
            roi=verdict.roi,
            frame_size=(fw, fh),
            latency_ms=latency,
            tiles=verdict.tiles_json(),
        )
        self.stats.record_frame(name, verdict.anomalous, latency)
        if self.parts is not None:
            self.parts.on_result(doc, frame.capture_mono)
        if self.evidence is not None:  # never blocks: a full writer queue drops (and counts) the frame
            self.evidence.offer(name, frame, verdict, doc, doc.model.id, images.get("mask"))
        if self.overlays is not None:  # edge-run --save-overlays: bounded, after the result is out
            self.overlays.offer(name, frame, verdict)
        if self.live is not None:
            self.live.offer(name, frame, verdict)

    def _note_model(self, camera: str, model_id: str, default_threshold: float) -> None:
        """The first frame of a camera's new model (after a changeover): the threshold follows the model,
        in publish order, so no frame of either model is judged with the other's threshold."""
        last = self._model_of.get(camera)
        self._model_of[camera] = model_id
        if last is not None and last != model_id:
            self.thresholds.model_changed(camera, default_threshold, model_id)
            self.api.threshold_changed(camera)

    def _images(self, item: ScoredFrame, verdict: Verdict) -> Dict[str, bytes]:
        images: Dict[str, bytes] = {}
        cfg = item.camera.cfg
        mode = cfg.publish_mask
        if mode == "always" or (mode == "anomalous" and verdict.anomalous):
            images["mask"] = encode_mask_png(verdict)
        if cfg.publish_heatmap:
            images["heatmap"] = encode_heatmap_jpeg(
                item.frame.full_image(), verdict, self.config.postprocess.heatmap_jpeg_quality
            )
        return images
