"""The evidence store as the live view reads it: its index, read-only, through
:func:`edge.stores.evidence_index.query`, and file names checked by :func:`edge.stores.evidence_names.inside`
(the page's module may not import the store; this adapter is what the daemon hands it)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Dict, List, Optional

from edge.faces.web.evidence_routes import LIMIT, EvidenceEntry
from edge.stores.evidence_index import Record, query
from edge.stores.evidence_names import UnsafeName, inside

log = logging.getLogger("edge.web")


class StoreEvidence:
    """Lists the newest anomalous frames; serves only the frames of its last listing (the page's)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._known: Dict[int, EvidenceEntry] = {}

    def latest(self, limit: int) -> List[EvidenceEntry]:
        try:
            records = query(self.root, verdict="anomalous", limit=limit, newest_first=True)
        except FileNotFoundError:
            return []  # no frame kept yet: the store makes its index with the first one
        except sqlite3.Error as exc:
            log.warning("web: cannot read the evidence index in %s: %s", self.root, exc)
            return []
        entries = [e for e in (self._entry(r) for r in records) if e is not None]
        self._known = {e.id: e for e in entries}
        return entries

    def entry(self, item_id: int) -> Optional[EvidenceEntry]:
        if item_id not in self._known:
            self.latest(LIMIT)
        return self._known.get(item_id)

    def _entry(self, rec: Record) -> Optional[EvidenceEntry]:
        try:
            image = inside(self.root, rec.image)
            mask = inside(self.root, rec.mask) if rec.mask else None
        except UnsafeName as exc:
            log.warning("web: evidence row %d skipped: %s", rec.id, exc)
            return None
        return EvidenceEntry(
            id=rec.id, camera=rec.camera, ts=rec.ts, score=rec.score, threshold=rec.threshold,
            frame_id=rec.frame_id, width=rec.width, height=rec.height, image=image, mask=mask,
        )  # fmt: skip
