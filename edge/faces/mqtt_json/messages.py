"""What :mod:`edge.faces.mqtt_json.transport` carries: a message waiting to be handed to paho, a message that
arrived, and whether paho is done with one it was handed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Outgoing:
    """One message waiting to be handed to paho."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    kind: str = "other"  # what a drop is counted as: result, mask, heatmap, stats, status, ...
    queue: bool = True  # False: drop rather than wait when it cannot be sent at once
    content_type: Optional[str] = None
    correlation: Optional[bytes] = None
    user_properties: Tuple[Tuple[str, str], ...] = ()
    raw_properties: Optional[Properties] = None  # set for messages carried over from paho


@dataclass(frozen=True)
class Inbound:
    """A message that arrived on a subscribed topic."""

    topic: str
    suffix: str  # the topic below the prefix
    payload: bytes
    retain: bool


Handler = Callable[[Inbound], None]
WarningsHook = Callable[[List[str]], None]


def finished(info: paho.MQTTMessageInfo) -> bool:
    """Whether paho is done with a message (acknowledged / written, or never accepted so never will be)."""
    try:
        return info.is_published()
    except ValueError:  # refused by paho's own queue limit
        return True
    except RuntimeError:
        # rc said "not connected" at hand-over; paho marks it published on the ack after a reconnect
        return bool(getattr(info, "_published", False))
