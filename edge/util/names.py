"""The one rule for a name that becomes part of a file path or an MQTT topic (a camera name, a part of an
evidence file name): a letter or digit, then letters, digits, '_', '.' or '-', at most 64, never '..'.

May import: nothing of edge/."""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_safe_name(value: str) -> bool:
    return bool(SAFE_NAME.match(value)) and ".." not in value
