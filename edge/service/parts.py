"""The part desk: triggers in, part verdicts out, and the deadline thread that closes parts on time.

The tracker (:mod:`edge.results.parts`) holds the logic; this module wires it to the JSON face (triggers from
``<prefix>/<camera>/trigger``, verdicts to ``<prefix>/part/<name>``), to the publish thread (each published
result), to the camera slots of frame-triggered cameras (each capture opens its part) and to its own thread,
``edge-parts``, which sleeps until the next deadline and closes what is due. That thread never waits on the
inference or the publish thread, so a stalled inference, a model switch or a dead camera still produce
``no_result`` and the default action by the deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from edge.capture.frames import Frame
from edge.commands import parse_trigger
from edge.config import EdgeConfig
from edge.faces.mqtt_json.api import DeviceApi
from edge.results.parts import CameraResult, PartSpec, PartTracker, PartVerdict
from edge.results.payloads import PartCameraDoc, PartPayload, PartStats, ResultPayload, iso_utc
from edge.scoring.inference import SignallingSlot
from edge.util.stats import Stats

if TYPE_CHECKING:
    from edge.service.daemon import Daemon

log = logging.getLogger("edge.parts")

MAX_SLEEP_S = 0.05  # the deadline thread's longest sleep when no part is open (stop is noticed within it)
DROPPED_IN_SLOT = (
    "frame dropped unscored: a newer frame replaced it in the camera slot (the station is behind)"
)


def part_specs(config: EdgeConfig) -> List[PartSpec]:
    cams = {cam.name: cam for cam in config.units()}
    return [
        PartSpec(
            name=part.name,
            cameras=tuple(part.cameras),
            deadline_s=part.deadline_ms / 1000.0,
            default_action=part.default_action,
            trigger=cams[part.cameras[0]].trigger,
            warn_bands={cam: cams[cam].warn_band for cam in part.cameras},
        )
        for part in config.parts
    ]


class PartDesk:
    """Owns the tracker and the deadline thread; see the module docstring."""

    def __init__(
        self,
        config: EdgeConfig,
        api: DeviceApi,
        stats: Stats,
        loading: Callable[[str], Optional[str]] = lambda camera: None,
    ) -> None:
        self.api = api
        self.stats = stats
        self._loading = loading  # camera -> recipe being switched to, or None
        self.tracker = PartTracker(part_specs(config), explain=self.explain)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- inputs ------------------------------------------------------------------------------------------

    def on_trigger(self, camera: str, payload: bytes) -> Optional[str]:
        """The JSON face's trigger handler: None when the part opened, else why the trigger was refused."""
        try:
            part_id = parse_trigger(payload)
        except ValueError as exc:
            return str(exc)
        error = self.tracker.trigger(camera, part_id)
        self._wake.set()  # its deadline may be the next one
        return error

    def on_result(self, doc: ResultPayload, capture_mono: float) -> None:
        """The publish thread, after each result: the part it completes (or makes late) is published."""
        res = CameraResult(
            capture_mono=capture_mono, capture_ts=doc.capture_ts, score=doc.score, threshold=doc.threshold,
            anomalous=doc.anomalous, seq=doc.seq, frame_id=doc.frame_id, verdict=doc.verdict,
        )  # fmt: skip
        self._publish(self.tracker.result(doc.camera, res))
        self._wake.set()

    def explain(self, camera: str) -> str:
        """Why ``camera`` has no result for a part: what is known now, most specific first."""
        state = self.api.cameras_now().get(camera)
        if state is not None and state.state != "online":
            return f"camera {state.state}: {state.reason}"
        recipe = self._loading(camera)
        if recipe is not None:
            return f"model switch to {recipe} in progress"
        idle = self.stats.seconds_since_inference()
        spec = self.tracker.spec(camera)
        if idle is not None and spec is not None and idle >= spec.deadline_s:
            return f"inference stalled: no batch scored for {idle:.1f} s"
        return "no frame scored since the trigger"

    def counts(self) -> Dict[str, PartStats]:
        return {name: PartStats(**c) for name, c in self.tracker.counts().items()}

    def on_capture(self, camera: str) -> Callable[[Frame, Optional[Frame]], None]:
        """The camera slot's hook (grabber thread): a frame-triggered part opens when its frame is read, and
        a frame replaced in the slot before it was scored says so in its part's reason."""

        def captured(frame: Frame, replaced: Optional[Frame]) -> None:
            self.tracker.capture(camera, frame.frame_id, frame.capture_mono, frame.capture_ts)
            if replaced is not None:
                self.tracker.dropped(camera, replaced.frame_id, DROPPED_IN_SLOT)
            self._wake.set()  # its deadline may be the next one

        return captured

    @classmethod
    def wired(
        cls, config: EdgeConfig, daemon: Daemon, loading: Callable[[str], Optional[str]]
    ) -> Optional[PartDesk]:
        """The desk told every trigger, every frame-triggered capture and every published result; None when
        no [[parts]] are configured."""
        if not config.parts:
            return None
        desk = cls(config, daemon.api, daemon.stats, loading)
        daemon.api.on_trigger = desk.on_trigger
        daemon.publisher.parts = desk
        if daemon.sparkplug is not None:  # the verdicts are node metrics there: NBIRTH must name them
            daemon.sparkplug.part_metrics.add([part.name for part in config.parts])
        for cam in daemon.cameras:
            spec = desk.tracker.spec(cam.cfg.name)
            if spec is not None and spec.trigger == "frame" and isinstance(cam.slot, SignallingSlot):
                cam.slot.on_put = desk.on_capture(cam.cfg.name)
        return desk

    # --- the deadline thread -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-parts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            due = self.tracker.next_deadline()
            sleep = MAX_SLEEP_S if due is None else min(MAX_SLEEP_S, max(0.0, due - time.monotonic()))
            if self._wake.wait(sleep):
                self._wake.clear()
            try:
                self._publish(self.tracker.expire())
            except Exception:  # keep closing parts; count it, back off one sleep
                self.stats.incr("parts_errors")
                log.exception("closing parts at their deadline failed")
                self._stop.wait(MAX_SLEEP_S)

    # --- out ---------------------------------------------------------------------------------------------

    def _publish(self, verdicts: List[PartVerdict]) -> None:
        for verdict in verdicts:
            if verdict.verdict == "no_result" and not verdict.late:
                log.warning("part %s %s: no_result (%s), action %s", verdict.part, verdict.part_id,
                            verdict.reason, verdict.action)  # fmt: skip
            self.api.publish_part(self.payload(verdict))

    def payload(self, v: PartVerdict) -> PartPayload:
        identity = self.api.identity
        return PartPayload(
            device_id=identity.device_id, run_id=identity.run_id, part=v.part, part_id=v.part_id,
            verdict=v.verdict, action=v.action, reason=v.reason, late=v.late,
            trigger=v.trigger,  # type: ignore[arg-type]
            trigger_ts=round(v.trigger_ts, 6), trigger_time=iso_utc(v.trigger_ts),
            verdict_ts=round(v.verdict_ts, 6), verdict_time=iso_utc(v.verdict_ts),
            elapsed_ms=round((v.verdict_mono - v.trigger_mono) * 1000.0, 3),
            deadline_ms=round(v.deadline_s * 1000.0, 3),
            cameras={cam: PartCameraDoc(**vars(c)) for cam, c in v.cameras.items()},
        )  # fmt: skip
