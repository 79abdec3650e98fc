"""What a Sparkplug command may cost the node: bytes, metrics and rebirths.

A host (or anyone who can publish on the group's command topics) must not be able to make the node decode
70 MB, apply two million metrics or send an NBIRTH per message. So:

- On MQTT 5 the node asks the broker (CONNECT ``Maximum Packet Size``, :data:`MAX_PACKET_BYTES`) not to send
  it anything bigger: such a command never reaches the process. Whatever arrives (and everything on MQTT
  3.1.1, where the broker's ``message_size_limit`` is the only outer bound) is measured before it is decoded:
  more than :data:`MAX_COMMAND_BYTES` is refused unread.
- A decoded command with more than :data:`MAX_METRICS` metrics is refused whole (the node has a handful of
  writable metrics), before any of it is applied.
- Rebirth requests are coalesced: one is served at once, the ones that follow within
  :data:`REBIRTH_MIN_INTERVAL_S` become a single rebirth at the end of the interval (:class:`RebirthGate`).

Every refusal is counted (``sparkplug`` in the stats) and logged at most once per interval
(:class:`edge.util.ratelog.RateLimitedLog`).
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional, Tuple, Union

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.faces.sparkplug import payload as spb

MAX_COMMAND_BYTES = 64 * 1024  # an NCMD/DCMD this node understands is well under 1 KiB
MAX_PACKET_BYTES = 256 * 1024  # asked of the broker (MQTT 5): bigger packets are not sent to the node
MAX_METRICS = 32  # metrics in one NCMD/DCMD
REBIRTH_MIN_INTERVAL_S = 1.0


def oversize(size: int) -> Optional[str]:
    """Why a command of ``size`` bytes is refused unread, or None."""
    if size > MAX_COMMAND_BYTES:
        return f"{size} bytes; at most {MAX_COMMAND_BYTES} are decoded"
    return None


def too_many_metrics(count: int) -> Optional[str]:
    if count > MAX_METRICS:
        return f"{count} metrics; at most {MAX_METRICS} per command"
    return None


def decode_commands(data: Union[bytes, bytearray]) -> Tuple[Optional[List[spb.Command]], str, str]:
    """(commands, "", "") or (None, why, counter): the size is checked before anything is decoded, the
    metric count before anything is applied."""
    why = oversize(len(data))
    if why is not None:
        return None, why, "commands_too_large"
    try:
        commands = spb.decode_commands(bytes(data))
    except spb.PayloadError as exc:
        return None, str(exc), ""
    why = too_many_metrics(len(commands))
    if why is not None:
        return None, why, "commands_too_many_metrics"
    return commands, "", ""


def connect_properties() -> Properties:
    """MQTT 5 CONNECT properties: the largest packet the broker may send to the node."""
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_PACKET_BYTES
    return props


class RebirthGate:
    """One rebirth at once, then at most one per ``interval_s``; requests in between are coalesced into the
    next one. The caller holds the node's lock."""

    def __init__(
        self, interval_s: float = REBIRTH_MIN_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -float("inf")
        self.pending = False

    def request(self) -> bool:
        """True: rebirth now. False: coalesced (served by :meth:`due` when the interval has passed)."""
        now = self._clock()
        if not self.pending and now - self._last >= self.interval_s:
            self._last = now
            return True
        self.pending = True
        return False

    def due(self) -> bool:
        """True once for the coalesced requests, when the interval since the last rebirth has passed."""
        now = self._clock()
        if self.pending and now - self._last >= self.interval_s:
            self.pending, self._last = False, now
            return True
        return False
