"""The Sparkplug bdSeq: one per connection, 0-255, kept in ``state_dir`` so it survives restarts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from edge.util.atomic import write_json_atomically

log = logging.getLogger("edge.sparkplug")

STATE_FORMAT = 1


class BdSeqStore:
    """bdSeq per connection, 0-255, remembered in a file so a restart continues the sequence.

    A value is written once, when it is first taken; connection attempts that never got a CONNACK reuse it
    (no Will was registered with it), so a long broker outage does not rewrite the file every few seconds.
    """

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self._last = self._load()
        self._pending: Optional[int] = None

    def _load(self) -> int:
        if self.path is None:
            return -1
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            value = int(doc["bdSeq"])
        except FileNotFoundError:
            return -1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring the Sparkplug state file %s (%s); bdSeq starts at 0", self.path, exc)
            return -1
        return value if 0 <= value <= 255 else -1

    def take(self) -> int:
        """The bdSeq of the next connection attempt."""
        if self._pending is None:
            self._pending = (self._last + 1) % 256
            self._last = self._pending
            if self.path is not None:
                try:
                    write_json_atomically(self.path, {"format": STATE_FORMAT, "bdSeq": self._pending})
                except OSError as exc:  # the session still works; a restart may repeat this bdSeq
                    log.error("cannot record the Sparkplug bdSeq in %s: %s", self.path, exc)
        return self._pending

    def connected(self) -> None:
        """The broker accepted a connection with the pending bdSeq: the next attempt takes a new one."""
        self._pending = None
