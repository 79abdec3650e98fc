"""Numbers as a payload shows them: float noise such as ``1.4999999999999996`` becomes ``1.5``.

Every JSON payload the device publishes is serialised by :func:`payload_json` (``_Payload.to_bytes`` in
edge/results/payloads.py), the one place floats are rounded: to :data:`SIGNIFICANT` significant digits, never
to fewer than :data:`MIN_DECIMALS` decimals, so epoch timestamps keep their microseconds and a raw score of
2e-7 keeps its digits. NaN and infinities become ``null``, as pydantic's own JSON writes them.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Set

SIGNIFICANT = 12  # far beyond any measurement here, far above the 1e-16 noise of float arithmetic
MIN_DECIMALS = 6  # timestamps (1.8e9 s) keep microseconds


def tidy_float(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    if value == 0.0:
        return 0.0
    exponent = math.floor(math.log10(abs(value)))
    return round(value, max(MIN_DECIMALS, SIGNIFICANT - 1 - exponent))


def tidy(value: Any) -> Any:
    """``value`` (JSON-ready: dicts, lists, str, int, float, bool, None) with every float tidied."""
    if isinstance(value, float):
        return tidy_float(value)
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tidy(v) for v in value]
    return value


def payload_json(doc: Any, exclude: Optional[Set[str]] = None) -> bytes:
    """A pydantic payload as compact UTF-8 JSON (as ``model_dump_json``), its floats tidied; ``exclude``:
    top-level fields left out (an optional block a payload omits when absent)."""
    data = tidy(doc.model_dump(mode="json", by_alias=True, exclude=exclude))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
