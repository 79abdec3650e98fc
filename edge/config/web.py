"""[web]: the live-view web page (edge/faces/web/), off by default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

from pydantic import Field, model_validator

from edge.config.base import _Section

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebConfig(_Section):
    """The live view served by the daemon: frames with masks, scores, a timeline, a threshold control."""

    enabled: bool = Field(default=False, description="serve the live-view page (needs edge-anomaly[web])")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=255,
        description="address to bind; any address other than loopback needs token_file",
    )
    port: int = Field(default=8088, ge=0, le=65535, description="TCP port of the page (0: any free port)")
    token_file: Optional[Path] = Field(
        default=None,
        description="file holding the access token (one line); the page asks for it once and keeps a "
        "HttpOnly cookie; required when host is not loopback",
    )
    frame_fps: float = Field(
        default=4.0, gt=0, le=15, description="most frames per second encoded per camera for viewers"
    )
    timeline_s: float = Field(
        default=300.0, ge=10, le=3600, description="seconds of scores the timeline keeps and shows"
    )

    @model_validator(mode="after")
    def _remote_needs_token(self) -> WebConfig:
        if self.enabled and not is_loopback(self.host) and self.token_file is None:
            raise ValueError(
                f"web.host {self.host!r} is reachable from other machines: set web.token_file to a file "
                "holding an access token (or bind to 127.0.0.1)"
            )
        return self
