"""The daemon's side of the OPC UA face: its commands go down the JSON face's own command paths.

``VisionSystem/Cameras/<camera>/Threshold`` writes become :meth:`DeviceApi.set_threshold` (one parser, one
error text, the ``threshold/state`` answer), ``RecipeId`` writes :meth:`DeviceApi.select_model` (the
changeover, answering on ``model/state``) and ``Trigger(cameraName, partId)`` :meth:`DeviceApi.trigger` (the
part desk), each counted in the stats' ``commands`` like the MQTT command. The face is told every result,
part verdict, camera and threshold change as an observer of the JSON face. asyncua is imported only here,
only when ``[opcua] enabled = true``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional, Sequence

from edge.commands import ThresholdError, threshold_payload_of
from edge.config import EdgeConfig
from edge.faces.mqtt_json.api import DeviceApi
from edge.service.changeover import Changeover
from edge.service.loader import StartupError
from edge.util.deps import MissingDependency

if TYPE_CHECKING:
    from edge.faces.opcua.server import OpcUaFace

ORIGIN = "OPC UA"


class DaemonDevice:
    """:class:`edge.faces.opcua.server.Device` over the JSON face and the changeover."""

    def __init__(self, config: EdgeConfig, api: DeviceApi, changeover: Changeover) -> None:
        self.api = api
        self.changeover = changeover
        self.cameras: Sequence[str] = [cam.name for cam in config.enabled_cameras()]
        self.parts: Sequence[str] = [part.name for part in config.parts]

    def set_threshold(self, camera: str, value: float) -> Optional[str]:
        try:
            payload = threshold_payload_of(value)
        except ThresholdError as exc:
            return str(exc)
        return self.api.set_threshold(camera, payload, origin=ORIGIN)

    def select_recipe(self, camera: str, recipe: str) -> Optional[str]:
        return self.api.select_model(camera, recipe.encode("utf-8"), origin=ORIGIN)

    def trigger(self, camera: str, part_id: str) -> Optional[str]:
        return self.api.trigger(camera, json.dumps({"part_id": part_id}).encode("utf-8"), origin=ORIGIN)

    def threshold(self, camera: str) -> float:
        return self.api.thresholds.get(camera)[0]

    def recipe(self, camera: str) -> str:
        book = self.changeover.book  # not state(): that lists the store on disk
        return book.active(camera).recipe if book.runs(camera) else ""  # "": a region that failed to load

    def camera_state(self, camera: str) -> str:
        state = self.api.cameras_now().get(camera)
        return "offline" if state is None else state.state


def wired(config: EdgeConfig, api: DeviceApi, changeover: Changeover) -> Optional[OpcUaFace]:
    """The OPC UA face told everything the JSON face publishes; None when ``[opcua]`` is off."""
    if not config.opcua.enabled:
        return None
    from edge.faces.opcua.server import OpcUaFace
    from edge.faces.opcua.users import UsersFileError

    try:
        face = OpcUaFace(
            config.opcua, DaemonDevice(config, api, changeover), f"urn:edge-anomaly:{config.device_id}"
        )
    except (MissingDependency, UsersFileError) as exc:
        raise StartupError(f"opcua: {exc}") from exc
    api.observers.append(face)
    return face
