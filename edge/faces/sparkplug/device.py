"""What the Sparkplug node knows of the device: the JSON face it serves (:class:`Device`), each camera as a
Sparkplug device (:class:`Camera`), and the node metrics' first values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Protocol

from edge.faces.sparkplug import payload as spb
from edge.results.payloads import CameraState, Identity
from edge.results.thresholds import ThresholdBook


class Device(Protocol):
    """What the node needs of the device's JSON face (:class:`edge.faces.mqtt_json.api.DeviceApi`): who it is,
    its cameras, the thresholds in force, and the threshold command every face shares."""

    identity: Identity
    thresholds: ThresholdBook

    def cameras_now(self) -> Dict[str, CameraState]: ...

    def set_threshold(self, camera: str, payload: bytes, origin: str = ...) -> Optional[str]: ...


@dataclass
class Camera:
    """One camera as a Sparkplug device: its metrics now, what was last sent, whether it is born."""

    index: int
    values: Dict[str, spb.Value]  # current value of every device metric (what a DBIRTH carries)
    sent: Dict[str, spb.Value] = field(default_factory=dict)  # last value sent since the last DBIRTH
    alive: bool = False  # DBIRTH sent on this connection and no DDEATH since


def node_values(identity: Identity, json_prefix: str) -> Dict[str, spb.Value]:
    """The node metrics' first values (an NBIRTH carries them all)."""
    return {
        "bdSeq": 0,
        "Node Control/Rebirth": False,
        "Properties/Device ID": identity.device_id,
        "Properties/Version": identity.version,
        "Properties/Run ID": identity.run_id,
        "Properties/Model": identity.model.id,
        "Properties/Precision": identity.model.precision,
        "Properties/Backend": identity.model.backend,
        "Properties/JSON Prefix": json_prefix,
    }
