"""The evidence store's index: its file name, its SQLite schema, one row as a :class:`Record`, and the
read-only queries ``edge-evidence`` and the onboarding script use. :mod:`edge.stores.evidence` writes it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

INDEX_NAME = "index.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    camera TEXT NOT NULL,
    ts REAL NOT NULL,
    model_id TEXT NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    anomalous INTEGER NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    frame_id INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    image TEXT NOT NULL,
    mask TEXT,
    result TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_ts ON evidence (ts);
CREATE INDEX IF NOT EXISTS evidence_camera_ts ON evidence (camera, ts);
"""
COLUMNS = (
    "id, camera, ts, model_id, score, threshold, anomalous, reason, run_id, seq, frame_id, width, height, "
    "image, mask, result, bytes"
)


@dataclass(frozen=True)
class Record:
    """One row of the index; file names are relative to the store's folder."""

    id: int
    camera: str
    ts: float
    model_id: str
    score: float
    threshold: float
    anomalous: bool
    reason: str  # 'anomalous', 'near' (good, close to the threshold) or 'sample' (1 in N good)
    run_id: str
    seq: int
    frame_id: int
    width: int
    height: int
    image: str
    mask: Optional[str]
    result: str
    bytes: int

    @classmethod
    def from_row(cls, row: Tuple[Any, ...]) -> Record:
        values = list(row)
        values[6] = bool(values[6])
        return cls(*values)

    def to_json(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def open_index(root: Path) -> sqlite3.Connection:
    """The index, read-only; raises FileNotFoundError when ``root`` holds no store."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no evidence store at {root} (expected {path}); is evidence.enabled set?")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def query(
    root: Path,
    camera: Optional[str] = None,
    verdict: Optional[str] = None,
    model: Optional[str] = None,
    since: Optional[float] = None,
    until: Optional[float] = None,
    limit: Optional[int] = None,
    newest_first: bool = False,
) -> List[Record]:
    """Rows of the index, oldest first (``newest_first``: the other way), filtered; ``verdict`` is 'good' or
    'anomalous'."""
    where: List[str] = []
    args: List[object] = []
    if camera is not None:
        where.append("camera = ?")
        args.append(camera)
    if verdict is not None:
        if verdict not in ("good", "anomalous"):
            raise ValueError(f"verdict must be 'good' or 'anomalous', got {verdict!r}")
        where.append("anomalous = ?")
        args.append(1 if verdict == "anomalous" else 0)
    if model is not None:
        where.append("model_id = ?")
        args.append(model)
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if until is not None:
        where.append("ts < ?")
        args.append(until)
    sql = f"SELECT {COLUMNS} FROM evidence"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts DESC, id DESC" if newest_first else " ORDER BY ts, id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    db = open_index(root)
    try:
        return [Record.from_row(r) for r in db.execute(sql, args).fetchall()]
    finally:
        db.close()
