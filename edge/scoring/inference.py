"""The inference stage: newest frame of each camera -> one backend batch -> scored frames for postprocess.

Runs in the daemon's main thread. Cameras hand over through latest-frame slots (an unread frame is replaced
and counted); scored frames go on to the publish stage through a bounded queue that blocks when full, so a
scored frame is never dropped for lack of room. The stage never calls back into a source except to say
whether a compressed frame it delivered was usable (``accept_frame`` / ``reject_frame``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, Tuple

import numpy as np

from edge.capture.fanout import region_source
from edge.capture.frames import Frame, FrameSlot, UnusableFrame
from edge.capture.preprocess import Preprocess
from edge.capture.sources import CameraSource
from edge.config import CameraConfig
from edge.results.postprocess import Box, clip_roi
from edge.util.backoff import Backoff
from edge.util.stats import Stats

if TYPE_CHECKING:  # edge.service.changeover imports the API and the backends; only its types are needed here
    from edge.scoring.models import LoadedModel, ModelBook

log = logging.getLogger("edge.inference")

ERROR_BACKOFF_S = (0.2, 5.0)  # first and longest wait after a failed backend call


class SignallingSlot(FrameSlot):
    """A FrameSlot that also wakes the inference loop, so one wait covers every camera."""

    def __init__(self, ready: threading.Event) -> None:
        super().__init__()
        self._ready = ready
        # told each frame at capture and the unread one it replaces: the part desk opens frame-triggered parts
        self.on_put: Optional[Callable[[Frame, Optional[Frame]], None]] = None

    def put(self, frame: Frame) -> None:
        if self.on_put is not None:
            with self._cond:
                replaced = None if self._closed else self._frame
            self.on_put(frame, replaced)
        super().put(frame)
        self._ready.set()


@dataclass
class Camera:
    cfg: CameraConfig
    slot: FrameSlot
    source: CameraSource


@dataclass
class ScoredFrame:
    """One frame the backend has scored, on its way to postprocess and MQTT."""

    camera: Camera
    frame: Frame
    roi: Box  # the inspected area in camera pixels, clipped to the frame
    raw_score: float  # a tiled bundle: the highest tile score (postprocess scores the stitched map)
    raw_map: np.ndarray  # (H, W) float32 at the model's input size, raw units; tiled: (tiles, H, W)
    t_infer: float  # time.monotonic() when the batch went into the backend
    inference_ms: float  # the whole batch's backend time
    model: LoadedModel  # the model that scored it (its post, threshold default and id)


ScoredBatch = List[ScoredFrame]


class InferenceStage:
    """Gathers, prepares and scores batches; hands each scored batch to ``out``."""

    def __init__(
        self,
        models: ModelBook,
        cameras: List[Camera],
        stats: Stats,
        out: queue.Queue[Optional[ScoredBatch]],
        max_batch: int,
        stopping: threading.Event,
    ) -> None:
        self.models = models
        self.cameras = cameras
        self.stats = stats
        self.out = out
        self.max_batch = max_batch
        self._stopping = stopping
        self._rr = 0  # round-robin start, so no camera is always last when a batch is full
        self._error_streak = 0
        self._error_backoff = Backoff(*ERROR_BACKOFF_S)
        self._roi_warned: Set[str] = set()

    def gather(self) -> List[Tuple[Camera, Frame]]:
        """The newest unread frame of each camera that has one, up to max_batch, fair across cameras.

        Staged model switches are applied first: this is the point between two batches where a camera
        changes model, so each frame is scored once, by the old model or by the new one."""
        self.models.apply_pending()
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

    def score(self, batch: List[Tuple[Camera, Frame]]) -> int:
        """Score one gathered batch and queue it for publishing (blocks while publish is behind).

        Cameras on different models (recipes) are scored as one backend call per model."""
        groups: Dict[int, List[Tuple[Camera, Frame]]] = {}
        for cam, frame in batch:
            groups.setdefault(id(self.models.active(cam.cfg.name)), []).append((cam, frame))
        return sum(self._score_group(group) for group in groups.values())

    def _score_group(self, batch: List[Tuple[Camera, Frame]]) -> int:
        model = self.models.active(batch[0][0].cfg.name)
        prepared = self._prepare(batch)
        if not prepared:
            return 0
        t_infer = time.monotonic()
        try:  # a tiled frame brings all its tiles; the backend runs max_batch at a time
            scores, maps = model.backend.run(np.concatenate([inp for _, _, _, inp in prepared]))
        except Exception:
            self._inference_failed(len(prepared))
            return 0
        inference_ms = (time.monotonic() - t_infer) * 1000.0
        if self._error_streak:
            self._error_streak = 0
            self._error_backoff.reset()
        self.stats.mark_inference()
        scored, start = [], 0
        for cam, frame, roi, inp in prepared:
            end = start + len(inp)
            raw_map = maps[start] if model.pre.tiling is None else maps[start:end]
            score = float(scores[start:end].max())
            scored.append(ScoredFrame(cam, frame, roi, score, raw_map, t_infer, inference_ms, model))
            start = end
        self.out.put(scored)
        return len(scored)

    def _prepare(self, batch: List[Tuple[Camera, Frame]]) -> List[Tuple[Camera, Frame, Box, np.ndarray]]:
        """Each frame's model inputs, (1, H, W, 3), or (tiles, H, W, 3) for a tiled bundle."""
        out = []
        for cam, frame in batch:
            pre: Preprocess = self.models.active(cam.cfg.name).pre
            input_hw = (pre.height, pre.width)
            roi = clip_roi(cam.cfg.roi, frame.hw)
            region = region_source(cam.source)  # a region's roi must fit whole: no silent clipping
            if roi is None or (region is not None and roi != tuple(cam.cfg.roi or ())):
                self._roi_outside(cam, frame)
                continue
            if region is not None:
                region.roi_fits()
            if pre.tiling is not None:  # the region is needed at the tiling's scale, not the input's
                input_hw = pre.tiling.scaled_hw(roi[3], roi[2])
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
            if pre.tiling is not None:
                out.append((cam, frame, roi, pre.tiles_of(image, (roi[3], roi[2]))[1]))
            else:
                out.append((cam, frame, roi, pre.frame_to_input(image, prefiltered)[None]))
        return out

    def _roi_outside(self, cam: Camera, frame: Frame) -> None:
        self.stats.incr("drops_roi")
        region = region_source(cam.source)
        if region is not None:  # a region faults alone; its camera's other regions go on
            fh, fw = frame.hw
            region.roi_outside(f"roi {list(cam.cfg.roi or ())} does not fit the {fw}x{fh} frame")
        if cam.cfg.name in self._roi_warned:
            return
        self._roi_warned.add(cam.cfg.name)
        log.error(
            "camera %s: roi %s lies outside the %dx%d frame; frames are skipped",
            cam.cfg.name,
            list(cam.cfg.roi or ()),
            frame.hw[1],
            frame.hw[0],
        )

    def _inference_failed(self, n: int) -> None:
        self._error_streak += 1
        self.stats.incr("inference_errors")
        self.stats.incr("drops_inference", n)
        delay = self._error_backoff.next_delay()
        log.exception(
            "inference failed (%d in a row); %d frame(s) dropped, retrying in %.1f s",
            self._error_streak,
            n,
            delay,
        )
        self._stopping.wait(delay)
