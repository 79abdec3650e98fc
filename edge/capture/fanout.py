"""One camera, several regions: the source is opened and read once, each region gets every frame.

A camera with ``regions`` (edge/config/regions.py) has one :class:`~edge.capture.sources.CameraSource`
whose slot is a :class:`FanOutSlot`: every frame the grabber hands over goes into each region's own
latest-frame slot. A region whose model is slow only has its own unread frames replaced (and counted in its
own ``frames_dropped``); the other regions' slots, and the grabber, never wait for it. The frame object is
shared, so a compressed frame decoded at full size for one region is not decoded again for another.

Each region sees the source through a :class:`RegionSource`: the camera's state, except that a fault of
the region alone (its ROI outside the frame) shows as that region's ``fault`` while the camera is online.
:class:`RegionStates` fans the camera's state changes out to its regions.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional

from edge.capture.frames import Frame, FrameSlot
from edge.capture.sources import CameraSource

log = logging.getLogger(__name__)

StateSink = Callable[[str, str, str], None]  # (unit, state, reason): DeviceApi.camera_state


class FanOutSlot(FrameSlot):
    """Hands each frame to every region's slot at once; holds nothing itself (so it never drops)."""

    def __init__(self, slots: List[FrameSlot]) -> None:
        super().__init__()
        self.slots = slots

    def put(self, frame: Frame) -> None:
        for slot in self.slots:
            slot.put(frame)

    def close(self) -> None:
        super().close()
        for slot in self.slots:
            slot.close()


class RegionStates:
    """The camera's state changes, told to each of its regions, and each region's own fault."""

    def __init__(self, units: List[str], sink: StateSink) -> None:
        self.units = units
        self._sink = sink
        self._lock = threading.Lock()  # a camera change (grabber thread) and a region fault (inference)
        self._camera = ("offline", "not started")
        self._faults: Dict[str, str] = {}  # unit -> reason of its own fault

    def on_camera_state(self, camera: str, state: str, reason: str) -> None:
        """The source's ``on_state``: a region in a fault of its own is in that fault while the camera is
        online; every other change (fault, ended, offline) reaches every region."""
        with self._lock:
            self._camera = (state, reason)
            for unit in self.units:
                fault = self._faults.get(unit) if state == "online" else None
                self._tell(unit, "fault" if fault else state, fault or reason)

    def region_fault(self, unit: str, reason: str) -> None:
        with self._lock:
            if self._faults.get(unit) == reason:
                return
            self._faults[unit] = reason
            log.error("region %s: %s", unit, reason)
            if self._camera[0] == "online":
                self._tell(unit, "fault", reason)

    def region_ok(self, unit: str) -> None:
        with self._lock:
            if self._faults.pop(unit, None) is None:
                return
            if self._camera[0] == "online":
                self._tell(unit, *self._camera)

    def state_of(self, unit: str, camera_state: str, camera_reason: str) -> tuple[str, str]:
        with self._lock:
            fault = self._faults.get(unit)
        return (
            ("fault", fault)
            if fault is not None and camera_state == "online"
            else (camera_state, camera_reason)
        )

    def _tell(self, unit: str, state: str, reason: str) -> None:
        try:
            self._sink(unit, state, reason)
        except Exception:  # a broken subscriber must not kill the grabber or the inference loop
            log.exception("region %s: state callback failed", unit)


class RegionSource:
    """One region's view of the shared camera source: what the daemon and the inference stage use as a
    camera's ``source`` (start/stop act once on the shared source)."""

    def __init__(self, shared: CameraSource, unit: str, slot: FrameSlot, states: RegionStates) -> None:
        self.shared = shared
        self.unit = unit
        self.slot = slot
        self.states = states

    def start(self) -> None:
        with _START_LOCK:
            if not self.shared._threads:  # the first region starts the camera; the others find it running
                self.shared.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.shared.stop(timeout)  # stopping twice is harmless: the state is already offline

    @property
    def state(self) -> str:
        return self.states.state_of(self.unit, self.shared.state, self.shared.reason)[0]

    @property
    def reason(self) -> str:
        return self.states.state_of(self.unit, self.shared.state, self.shared.reason)[1]

    @property
    def stats(self) -> Dict[str, Any]:
        """The camera's counters with this region's own drops, state and reason."""
        out = dict(self.shared.stats)
        out["frames_dropped"] = self.slot.dropped
        out["state"], out["reason"] = self.states.state_of(self.unit, out["state"], out["reason"])
        return out

    def reject_frame(self, reason: str) -> None:
        self.shared.reject_frame(reason)

    def accept_frame(self) -> None:
        self.shared.accept_frame()

    def roi_outside(self, reason: str) -> None:
        self.states.region_fault(self.unit, reason)

    def roi_fits(self) -> None:
        self.states.region_ok(self.unit)

    def __getattr__(self, name: str) -> Any:  # name, uri, display, kind, ...: the camera's
        return getattr(self.shared, name)


_START_LOCK = threading.Lock()


def region_source(source: Optional[Any]) -> Optional[RegionSource]:
    """``source`` when it is a region's view, else None (a camera of its own)."""
    return source if isinstance(source, RegionSource) else None
