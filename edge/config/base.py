"""What every config section shares: the error, the strict base model, topic-safe names."""

from __future__ import annotations

import math
import re
import socket
from typing import Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict

TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MASK = "***"
PublishMask = Literal["anomalous", "always", "never"]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _topic_safe(value: str, what: str) -> str:
    if not TOPIC_SAFE.match(value):
        raise ValueError(
            f"{what} {value!r} is not topic-safe: use 1-64 letters, digits, '_', '-' or '.' "
            "(no '/', '+', '#' or spaces, because it becomes part of MQTT topics)"
        )
    return value


def _roi_ok(value: Optional[Tuple[int, int, int, int]]) -> Optional[Tuple[int, int, int, int]]:
    """A camera's or a region's ``roi`` [x, y, w, h]: inside the frame's first quadrant, not empty."""
    if value is not None:
        x, y, w, h = value
        if x < 0 or y < 0 or w < 1 or h < 1:
            raise ValueError(f"roi [x, y, w, h] needs x, y >= 0 and w, h >= 1, got {list(value)}")
    return value


def _finite_threshold(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):
        raise ValueError("threshold must be a finite number")
    return value


def _default_device_id() -> str:
    """The host name with anything that is not topic-safe replaced, so the default prefix is valid."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name or "edge"
