"""The daemon's inspection units: one per camera, or one per region of a camera with ``regions``.

A camera without regions is one :class:`~edge.scoring.inference.Camera` with its own source and slot, as
always. A camera with regions opens one source; its frames fan out to one slot per region
(edge/capture/fanout.py), and each region is a ``Camera`` named ``<camera>/<region>`` with the region's
config (edge/config/regions.py), its own slot and a view of the shared source.
"""

from __future__ import annotations

import threading
from typing import Dict, List

from edge.capture.fanout import FanOutSlot, RegionSource, RegionStates
from edge.capture.frames import FrameSlot
from edge.capture.sources import CameraSource, StateCallback
from edge.config import CameraConfig, EdgeConfig
from edge.config.regions import units_of
from edge.faces.mqtt_json.api import DeviceApi
from edge.scoring.inference import Camera, SignallingSlot


def inspection_units(
    config: EdgeConfig, ready: threading.Event, api: DeviceApi, nice: int, faults: Dict[str, str]
) -> List[Camera]:
    """Every enabled camera's units, in config order (the order of ``config.enabled_cameras()``).

    ``faults``: regions that cannot be inspected at all (their recipe failed to load): no slot, never
    scored, in ``fault`` with that reason from the start (and again whenever their camera is online)."""
    units: List[Camera] = []
    for cfg in config.cameras:
        if not cfg.enabled:
            continue
        if not cfg.regions:
            slot = SignallingSlot(ready)
            units.append(Camera(cfg=cfg, slot=slot, source=_source(cfg, slot, api.camera_state, nice)))
            continue
        states = RegionStates([u.name for u in units_of(cfg)], api.camera_state)
        for name, reason in faults.items():
            if name in states.units:
                states.region_fault(name, reason)
                api.camera_state(name, "fault", reason)
        unit_cfgs = [u for u in units_of(cfg) if u.name not in faults]
        if not unit_cfgs:  # every region of this camera failed: nothing to read it for
            continue
        slots: List[FrameSlot] = [SignallingSlot(ready) for _ in unit_cfgs]
        shared = _source(cfg, FanOutSlot(slots), states.on_camera_state, nice)
        for unit, unit_slot in zip(unit_cfgs, slots):
            view = RegionSource(shared, unit.name, unit_slot, states)
            units.append(Camera(cfg=unit, slot=unit_slot, source=view))  # type: ignore[arg-type]
    return units


def _source(cfg: CameraConfig, slot: FrameSlot, on_state: StateCallback, nice: int) -> CameraSource:
    return CameraSource(
        cfg.name,
        cfg.source,
        slot,
        loop=cfg.loop,
        fps_cap=cfg.fps,
        fault_after_s=cfg.fault_after_s,
        on_state=on_state,
        decode_on_demand=cfg.decode_on_demand,
        thread_nice=nice,
    )
