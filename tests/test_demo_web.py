"""edge-demo turns the live view on, on loopback, and says where it is: the config it writes loads with
``[web]`` enabled on 127.0.0.1 at the port it prints (without aiohttp it writes no ``[web]`` at all)."""

from __future__ import annotations

from pathlib import Path

from edge.config import load_config
from tools.demo import free_loopback_port, live_view_url, write_config
from tools.local_broker import Broker


def test_demo_config_serves_the_live_view_on_loopback_at_the_printed_url(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")  # not started: only its host and port go into the config
    bundle, pub, video = tmp_path / "bundle", tmp_path / "demo.pub", tmp_path / "line1.avi"
    port = free_loopback_port()
    config = load_config(write_config(tmp_path, bundle, pub, video, broker, "fp32", port))
    assert config.web.enabled and config.web.host == "127.0.0.1" and config.web.port == port
    assert config.web.token_file is None
    assert live_view_url(port) == f"http://127.0.0.1:{port}/"
    off = load_config(write_config(tmp_path, bundle, pub, video, broker, "fp32", None))
    assert not off.web.enabled
