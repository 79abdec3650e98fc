"""The [[parts]] verdicts as Sparkplug node metrics ``Parts/<part>/...`` (docs/sparkplug.md): their
definitions, aliases and last values, so NBIRTH can carry them and each verdict becomes one NDATA."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from edge.faces.sparkplug import payload as spb
from edge.results.payloads import PartPayload


class PartMetrics:
    """Declared parts (:meth:`add`, before the node starts) and the newest value of each of their metrics.

    Not thread-safe on its own: the node calls it under its lock (``add`` before the node's threads run)."""

    def __init__(self) -> None:
        self._parts: Dict[str, List[Tuple[spb.MetricDef, int]]] = {}
        self._values: Dict[str, spb.Value] = {}  # metric name -> newest value (None until a verdict)

    def add(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self._parts:
                self._parts[name] = spb.part_metrics(name, len(self._parts))

    def birth(self, ts: int) -> List[spb.Entry]:
        """Every part metric with its newest value (NBIRTH)."""
        return [(d, a, self._values.get(d.name), ts) for metrics in self._parts.values() for d, a in metrics]

    def verdict(self, doc: PartPayload) -> Optional[List[spb.Entry]]:
        """The NDATA entries of one part verdict; None for a part that was never declared."""
        metrics = self._parts.get(doc.part)
        if metrics is None:
            return None
        values = (doc.verdict, doc.action, doc.part_id, doc.reason or "", doc.late, doc.elapsed_ms)
        ts = spb.now_ms(doc.verdict_ts)
        self._values.update({d.name: v for (d, _), v in zip(metrics, values)})
        return [(d, alias, v, ts) for (d, alias), v in zip(metrics, values)]
