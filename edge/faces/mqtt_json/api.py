"""The public MQTT API of a device, schema 2: publishing and command routing.

This module is the contract SCADA programs against (README "MQTT API" documents it for people). Everything
that decides what a subscriber sees lives here: which topics exist, their QoS and retain flags, the typed
payloads, and which handler acts on which command topic. :mod:`edge.faces.mqtt_json.transport` only moves
bytes;
:mod:`edge.service.daemon` wires the two together.

The rules the contract keeps (each has an end-to-end test):

- After the daemon dies, no retained topic says the device or a camera is online: camera states live inside
  the retained ``status`` document, whose Last Will marks the device and every camera offline. The per-camera
  ``availability`` topic carries state *changes* only and is never retained (and a retained copy left by
  schema 1 is cleared at connect).
- Commands act once: a retained command is never applied (it is cleared and counted); errors are answered
  without retain, so the retained ``threshold/state`` is always the threshold in force.
- Every result names its device, run, camera and per-camera sequence number, so ``(device_id, run_id,
  camera, seq)`` is unique across restarts; masks are paired through a frame key in their topic, which works
  on MQTT 3.1.1 as well as 5.

The topic table is :mod:`edge.faces.mqtt_json.topics`, the payloads :mod:`edge.results.payloads`, the
command parsers :mod:`edge.commands`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from edge.commands import CommandDesk, ThresholdError
from edge.faces.mqtt_json.topics import TOPICS, camera_of, region_filter, status_doc
from edge.faces.mqtt_json.transport import Inbound
from edge.results.payloads import (
    AvailabilityPayload,
    CameraState,
    Identity,
    ImageRef,
    ModelRef,
    ModelStatePayload,
    PartPayload,
    ResultPayload,
    StatsPayload,
    ThresholdStatePayload,
    iso_utc,
)
from edge.results.thresholds import ThresholdBook

log = logging.getLogger("edge.api")


class Transport(Protocol):
    """What the API needs from :class:`edge.faces.mqtt_json.transport.MqttTransport` (a fake can stand in
    for it)."""

    on_warnings: Optional[Callable[[List[str]], None]]

    def topic(self, suffix: str) -> str: ...

    def subscribe(self, filter_suffix: str, handler: Callable[[Inbound], None]) -> None: ...

    def publish(
        self,
        suffix: str,
        payload: bytes,
        qos: int,
        *,
        kind: str = ...,
        queue: bool = ...,
        content_type: Optional[str] = ...,
        correlation: Optional[bytes] = ...,
        user_properties: Sequence[Tuple[str, str]] = ...,
        retain: bool = ...,
    ) -> bool: ...

    def set_retained(
        self, suffix: str, payload: bytes, qos: int = ..., content_type: Optional[str] = ...
    ) -> None: ...

    def clear_retained(self, suffix: str) -> None: ...


class ApiObserver(Protocol):
    """Another face of the same API (the Sparkplug B node): told every result, camera change and threshold
    change after the JSON face has published it. Called from the thread that made the change; must not block.
    """

    def result(self, doc: ResultPayload) -> None: ...

    def camera_state(self, camera: str, state: CameraState) -> None: ...

    def threshold(self, camera: str) -> None: ...

    def part(self, doc: PartPayload) -> None: ...


class DeviceApi:
    """Publishes the typed payloads of one device and acts on its commands (the MQTT face of the daemon).

    Thread use: camera states arrive from grabber threads, results from the postprocess thread, commands
    from the network thread; one small lock guards the camera table and the counters.
    """

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        cameras: Sequence[str],
        thresholds: ThresholdBook,
        *,
        qos_result: int = 1,
        qos_mask: int = 1,
        queue_masks: bool = True,
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.thresholds = thresholds
        self.qos_result = qos_result
        self.qos_mask = qos_mask
        self.queue_masks = queue_masks
        self._lock = threading.Lock()
        since = iso_utc(identity.started_at)
        self._cameras: Dict[str, CameraState] = {
            cam: CameraState(state="offline", reason="starting", since=since) for cam in cameras
        }
        self._seq: Dict[str, int] = dict.fromkeys(cameras, 0)
        self._warnings: List[str] = []
        self._warning_sources: Dict[str, List[str]] = {}
        self.commands = CommandDesk(transport.clear_retained)  # every face's commands are counted here
        # model/set goes to the changeover (edge.service.changeover);
        # it answers on model/state. None: refused.
        self.on_model_set: Optional[Callable[[str, bytes], Optional[str]]] = None
        # trigger goes to the part desk (edge.service.parts); None when refused, else why. None: no parts.
        self.on_trigger: Optional[Callable[[str, bytes], Optional[str]]] = None
        self.observers: List[ApiObserver] = []
        transport.on_warnings = self._on_warnings
        commands = (("threshold_set", self._on_threshold_set), ("model_set", self._on_model_set),
                    ("trigger", self._on_trigger))  # fmt: skip
        for name, handler in commands:
            transport.subscribe(TOPICS[name].filter, handler)
            if any("/" in cam for cam in cameras):  # regions, <camera>/<region>: one level more
                transport.subscribe(region_filter(TOPICS[name]), handler)

    # --- retained state ------------------------------------------------------------------------------------

    def announce(self) -> None:
        """Before connecting: status online, each camera's threshold in force; clear schema 1's retained
        availability, which would otherwise say ``online`` for ever after a crash."""
        self._publish_status()
        for cam in self._cameras:
            self.transport.set_retained(TOPICS["availability"].filled(cam), b"")
            self._publish_threshold_state(cam)

    def final_retained(self, reason: str = "shutdown") -> List[Tuple[str, bytes]]:
        """The retained documents of a clean stop: status offline with every camera offline."""
        since = iso_utc(time.time())
        with self._lock:
            cams = {
                cam: (
                    s if s.state == "ended" else CameraState(state="offline", reason="stopped", since=since)
                )
                for cam, s in self._cameras.items()
            }
            doc = status_doc(self.identity, "offline", reason, cams, [])
        return [(TOPICS["status"].filled(), doc.to_bytes())]

    def _publish_status(self) -> None:
        with self._lock:
            doc = status_doc(self.identity, "online", None, dict(self._cameras), list(self._warnings))
        self.transport.set_retained(
            TOPICS["status"].filled(), doc.to_bytes(), content_type="application/json"
        )

    def camera_state(self, camera: str, state: str, reason: str) -> None:
        """A camera changed state: one availability event, and the retained status updated."""
        since = iso_utc(time.time())
        doc = CameraState(state=state, reason=reason, since=since)  # type: ignore[arg-type]
        with self._lock:
            self._cameras[camera] = doc
        event = AvailabilityPayload(camera=camera, state=state, reason=reason, since=since)  # type: ignore[arg-type]
        self.transport.publish(
            TOPICS["availability"].filled(camera), event.to_bytes(), 1, kind="availability",
            content_type="application/json",
        )  # fmt: skip
        self._publish_status()
        self._notify(lambda o: o.camera_state(camera, doc))

    def cameras_now(self) -> Dict[str, CameraState]:
        with self._lock:
            return dict(self._cameras)

    def _notify(self, call: Callable[[ApiObserver], None]) -> None:
        """Tell every other face; a failing one is logged and counted and never stops the JSON face."""
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                log.exception("%s failed to take an update", type(observer).__name__)

    def _on_warnings(self, warnings: List[str]) -> None:
        self.set_warnings("mqtt", warnings)

    def set_warnings(self, source: str, warnings: List[str]) -> None:
        """The current warnings of one part of the device (``mqtt``, ``evidence``), shown in ``status``."""
        with self._lock:
            self._warning_sources[source] = list(warnings)
            self._warnings = [w for found in self._warning_sources.values() for w in found]
        self._publish_status()

    def warnings(self) -> List[str]:
        with self._lock:
            return list(self._warnings)

    # --- results -------------------------------------------------------------------------------------------

    def publish_result(
        self, camera: str, images: Dict[str, bytes], model: Optional[ModelRef] = None, **fields: Any
    ) -> ResultPayload:
        """Images first (each under the frame key), then the result that names them.

        ``fields`` are the frame's own ResultPayload fields (score, regions, latency_ms, ...); identity,
        sequence, key and image references are added here. ``model``: the model that scored the frame
        (default: the device's), which after a changeover may differ from camera to camera.
        """
        with self._lock:
            seq = self._seq.get(camera, 0)
            self._seq[camera] = seq + 1
        key = f"{self.identity.run_id}-{seq}"
        refs: Dict[str, ImageRef] = {}
        for kind, data in images.items():
            topic = TOPICS[kind]
            suffix = topic.filled(camera, key)
            sent = self.transport.publish(
                suffix, data, self.qos_mask, kind=kind, queue=self.queue_masks,
                content_type=topic.content_type, correlation=key.encode(),
                user_properties=(("frame_key", key), ("camera", camera)),
            )  # fmt: skip
            if sent:
                refs[kind] = ImageRef(
                    topic=self.transport.topic(suffix), content_type=topic.content_type, qos=self.qos_mask
                )
        doc = ResultPayload(
            device_id=self.identity.device_id,
            run_id=self.identity.run_id,
            camera=camera,
            seq=seq,
            frame_key=key,
            mask=refs.get("mask"),
            heatmap=refs.get("heatmap"),
            model=model or self.identity.model,
            **fields,
        )
        self.transport.publish(
            TOPICS["result"].filled(camera), doc.to_bytes(), self.qos_result, kind="result",
            content_type="application/json", correlation=key.encode(),
        )  # fmt: skip
        self._notify(lambda o: o.result(doc))
        return doc

    def publish_part(self, doc: PartPayload) -> None:
        """One part's verdict (QoS 1, never retained: a gate must not act on an old one)."""
        self.transport.publish(
            TOPICS["part"].filled(key=doc.part),
            doc.to_bytes(),
            1,
            kind="part",
            content_type="application/json",
        )
        self._notify(lambda o: o.part(doc))

    def publish_stats(self, doc: StatsPayload) -> None:
        self.transport.publish(
            TOPICS["stats"].filled(), doc.to_bytes(), 0, kind="stats", content_type="application/json"
        )

    # --- commands ------------------------------------------------------------------------------------------

    def command_counts(self) -> Dict[str, int]:
        return self.commands.snapshot()

    def _on_threshold_set(self, msg: Inbound) -> None:
        if not self.commands.admit(msg.suffix, msg.topic, msg.payload, msg.retain):
            return
        camera = camera_of(msg.suffix, TOPICS["threshold_set"])
        if camera is None or camera not in self._cameras:
            self.commands.count("rejected_unknown_camera")
            log.warning("threshold/set for unknown camera %r ignored", camera)
            return
        self.set_threshold(camera, msg.payload)

    def set_threshold(
        self, camera: str, payload: bytes, origin: str = "MQTT", source: str = "mqtt"
    ) -> Optional[str]:
        """The threshold command of every face: validate, record, answer on threshold/state (``source``:
        mqtt, or web for the live-view page), tell the other faces. Returns None when accepted, else why it
        was refused (nothing changed then)."""
        try:
            self.thresholds.set_from_payload(camera, payload, source=source)
        except ThresholdError as exc:
            self.commands.count("rejected_invalid")
            log.warning("threshold set for %s (%s) refused: %s", camera, origin, exc)
            self._publish_threshold_state(camera, error=str(exc))
            return str(exc)
        self.commands.count("accepted")
        log.info("threshold for %s is now %s (from %s)", camera, self.thresholds.get(camera)[0], origin)
        self._publish_threshold_state(camera)
        self._notify(lambda o: o.threshold(camera))
        return None

    def _on_model_set(self, msg: Inbound) -> None:
        """Commands act once, as for threshold/set; the changeover answers on the retained model/state."""
        if not self.commands.admit(msg.suffix, msg.topic, msg.payload, msg.retain):
            return
        self.select_model(camera_of(msg.suffix, TOPICS["model_set"]), msg.payload)

    def select_model(self, camera: Optional[str], payload: bytes, origin: str = "MQTT") -> Optional[str]:
        """The model/set command of every face (counted here; the changeover answers on model/state)."""
        if camera is None or camera not in self._cameras or self.on_model_set is None:
            self.commands.count("rejected_unknown_camera")
            log.warning("model/set for unknown camera %r ignored (%s)", camera, origin)
            return f"no camera {camera!r}, or recipes are not configured"
        error = self.on_model_set(camera, payload)
        self.commands.count("accepted" if error is None else "rejected_invalid")
        return error

    def _on_trigger(self, msg: Inbound) -> None:
        """A part in front of a camera; commands act once, as for threshold/set (retained: refused)."""
        if not self.commands.admit(msg.suffix, msg.topic, msg.payload, msg.retain):
            return
        self.trigger(camera_of(msg.suffix, TOPICS["trigger"]), msg.payload)

    def trigger(self, camera: Optional[str], payload: bytes, origin: str = "MQTT") -> Optional[str]:
        """The trigger command of every face: None when the part opened, else why not (counted here)."""
        if camera is None or camera not in self._cameras or self.on_trigger is None:
            self.commands.count("rejected_unknown_camera")
            log.warning("trigger for camera %r ignored: no such camera, or no [[parts]] configured", camera)
            return f"no camera {camera!r}, or no [[parts]] configured"
        error = self.on_trigger(camera, payload)
        self.commands.count("accepted" if error is None else "rejected_invalid")
        if error is not None:
            log.warning("trigger for %s (%s) refused: %s", camera, origin, error)
        return error

    def publish_model_state(self, doc: ModelStatePayload) -> None:
        self.transport.set_retained(
            TOPICS["model_state"].filled(doc.camera), doc.to_bytes(), content_type="application/json"
        )

    def set_model(self, model: ModelRef) -> None:
        """The device's model changed (every camera now runs ``model``): status says so."""
        with self._lock:
            if self.identity.model == model:
                return
            self.identity = replace(self.identity, model=model)
        self._publish_status()

    def threshold_state(self, camera: str, error: Optional[str] = None) -> ThresholdStatePayload:
        state = self.thresholds.in_force(camera)
        return ThresholdStatePayload(
            camera=camera,
            threshold=state.value,
            source=state.source,  # type: ignore[arg-type]
            set_at=None if state.set_at is None else iso_utc(state.set_at),
            range=self.thresholds.range(camera),
            error=error,
        )

    def threshold_changed(self, camera: str) -> None:
        """The threshold in force changed outside a command (a changeover to another bundle)."""
        self._publish_threshold_state(camera)

    def _publish_threshold_state(self, camera: str, error: Optional[str] = None) -> None:
        """The state in force is retained; an error answer is not, so it never outlives the moment."""
        doc = self.threshold_state(camera, error)
        suffix = TOPICS["threshold_state"].filled(camera)
        if error is None:
            self.transport.set_retained(suffix, doc.to_bytes(), content_type="application/json")
        else:
            self.transport.publish(
                suffix, doc.to_bytes(), 1, kind="threshold_state", content_type="application/json"
            )
