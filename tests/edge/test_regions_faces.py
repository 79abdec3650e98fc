"""A region's name, <camera>/<region>, on the faces that put names into paths: the live view's URLs quote the
'/' and reach the region (an unknown region is 404)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp", reason="the live view needs edge-anomaly[web] (aiohttp)")

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from edge.faces.web.live import LiveView  # noqa: E402
from edge.faces.web.server import Access, make_app  # noqa: E402
from edge.results.payloads import CameraState  # noqa: E402
from tests.edge.test_web import FakeCommands, origin  # noqa: E402


def test_the_live_view_addresses_a_region_by_its_quoted_name() -> None:
    commands = FakeCommands()
    state = CameraState(state="online", reason="", since="2026-12-06T00:00:00.000Z")
    units = {"cam0/label": state, "cam0/cap": state}
    live = LiveView(units, dict.fromkeys(units, "0"), 4.0, 60.0)

    async def main() -> None:
        async with TestClient(TestServer(make_app(live, commands, Access(None)))) as client:
            doc = await (await client.get("/api/state")).json()
            assert set(doc["cameras"]) == {"cam0/label", "cam0/cap"}  # one tile per region
            assert (await client.get("/cam/cam0%2Flabel/latest")).status == 503  # known, nothing yet
            assert (await client.get("/cam/cam0%2Fnone/latest")).status == 404
            assert (await client.get("/cam/cam0/latest")).status == 404  # the camera itself is no unit
            head = {"Origin": origin(client), "X-Edge-Request": "1"}
            answer = await client.post("/api/threshold/cam0%2Fcap", data=b"1.5", headers=head)
            assert answer.status == 200 and commands.sets[-1][:2] == ("cam0/cap", b"1.5")

    asyncio.run(main())


def test_a_region_is_an_opc_ua_object_named_camera_colon_region() -> None:
    pytest.importorskip("asyncua", reason="the OPC UA face needs edge-anomaly[opcua] (asyncua)")
    from asyncua import Client, ua

    from edge.config import OpcUaConfig
    from edge.faces.opcua.server import OpcUaFace
    from tests.edge.test_opcua import FakeDevice, free_port

    class RegionDevice(FakeDevice):
        cameras = ["cam0/label"]

        def __init__(self) -> None:
            super().__init__()
            self.asked: list[str] = []

        def set_threshold(self, camera: str, value: float) -> str | None:
            self.asked.append(camera)
            return super().set_threshold(camera, value)

        def trigger(self, camera: str, part_id: str) -> str | None:
            self.asked.append(camera)
            return super().trigger(camera, part_id)

    device = RegionDevice()
    face = OpcUaFace(
        OpcUaConfig(enabled=True, endpoint=f"opc.tcp://127.0.0.1:{free_port()}"), device, "urn:edge-anomaly:t"
    )
    face.start()

    async def session() -> None:
        async with Client(face.config.endpoint) as client:
            idx = await client.get_namespace_index("urn:edge-anomaly")
            node = client.get_node(ua.NodeId("VisionSystem.Cameras.cam0:label.Threshold", idx))
            assert await node.read_value() == 0.5
            await node.write_value(ua.Variant(2.5, ua.VariantType.Double))
            vision = client.get_node(ua.NodeId("VisionSystem", idx))
            for name in ("cam0:label", "cam0/label"):
                await vision.call_method(ua.NodeId("VisionSystem.Trigger", idx), name, "P-1")

    try:
        asyncio.run(session())
    finally:
        face.stop()
    assert device.asked == ["cam0/label"] * 3  # the device always hears the unit's own name


def test_a_region_keeps_its_evidence_in_a_folder_camera_colon_region() -> None:
    from edge.stores.evidence_names import UnsafeName, camera_folder

    assert camera_folder("cam0/label") == "cam0:label" and camera_folder("cam0") == "cam0"
    for bad in ("../x", "cam0/../x", "a/b/c", "cam0/", "/label"):
        with pytest.raises(UnsafeName):
            camera_folder(bad)
