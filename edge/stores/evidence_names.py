"""The evidence store owns its names, and its index is checked before it is trusted.

- Names are generated: ``<YYYY-MM-DD>/<camera>/<run_id>-<seq>.<ext>``, each part checked here
  (:func:`safe_part`), so no configured or published value can make the writer leave the store.
- Every name read back from the index (``image``, ``mask``, ``result``) is resolved and must stay inside the
  store (:func:`inside`): an index edited by the service account (``image='/etc/shadow'``,
  ``camera='../../x'``) makes the writer delete, and ``edge-evidence export`` copy, nothing outside it.
- A corrupt index (:func:`index_problem`: it does not open, or ``PRAGMA quick_check`` finds damage) is
  moved aside (:func:`move_aside`) and rebuilt from the result JSON kept beside every frame
  (:func:`rows_from_files`), so no kept frame is lost and evidence goes on.

May import: edge.util (edge.stores.evidence, edge.stores.evidence_cli and edge.service.checks use it).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

from edge.config.regions import flat_name, unit_of_flat
from edge.util.names import is_safe_name

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CORRUPT_MARKERS = ("malformed", "not a database", "corrupt")
MAX_RESULT_JSON = 1 << 20  # a kept result document is a few KiB


class UnsafeName(ValueError):
    """A name that would leave the evidence store (or its export folder)."""


def is_safe_part(value: str) -> bool:
    """A camera name (the config's rule, edge.util.names) or any other part of a stored name."""
    return is_safe_name(value)


def is_safe_camera(value: str) -> bool:
    """A camera name, or a region's ``<camera>/<region>`` (its folder ``<camera>:<region>``)."""
    sides = unit_of_flat(value).split("/")
    return len(sides) <= 2 and all(is_safe_part(side) for side in sides)


def camera_folder(camera: str) -> str:
    """The folder of a camera's (or a region's, ``cam0:label``) evidence; UnsafeName when it is neither."""
    if not is_safe_camera(camera):
        raise UnsafeName(f"camera {camera[:80]!r} is not a camera name")
    return flat_name(camera)


def safe_part(value: str, what: str) -> str:
    if not is_safe_part(value):
        raise UnsafeName(
            f"{what} {value[:80]!r} cannot be part of a file name: use 1-64 letters, digits, '_', '-' or "
            "'.', starting with a letter or digit, no '..'"
        )
    return value


def inside(root: Path, name: Optional[str]) -> Path:
    """``root / name`` resolved (links followed); UnsafeName unless it is a relative name that stays in
    root."""
    if not name or os.path.isabs(name) or "\0" in name or ".." in Path(name).parts:
        raise UnsafeName(f"{str(name)[:120]!r} is not a name inside the evidence store {root}")
    base = Path(os.path.realpath(root))
    path = Path(os.path.realpath(base / name))
    if os.path.commonpath([str(base), str(path)]) != str(base) or path == base:
        raise UnsafeName(f"{name[:120]!r} leads outside the evidence store {root} (to {path})")
    return path


def is_corruption(exc: BaseException) -> bool:
    """An SQLite error that says the index file itself is damaged (not busy, not full)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(m in str(exc).lower() for m in CORRUPT_MARKERS)


def index_problem(path: Path) -> Optional[str]:
    """None when the index at ``path`` opens and passes ``PRAGMA quick_check``; else what is wrong."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            return "; ".join(str(r[0]) for r in rows[:3])
        db.execute("SELECT COUNT(*) FROM evidence").fetchone()
    except sqlite3.OperationalError as exc:
        return None if "no such table" in str(exc) else str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        db.close()
    return None


def move_aside(root: Path, index_name: str) -> Path:
    """Rename the index (and its WAL files) to ``<index>.corrupt-<time>``; the frames stay where they are."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = root / f"{index_name}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        src = root / f"{index_name}{suffix}"
        if src.exists():
            os.replace(src, root / f"{aside.name}{suffix}")
    return aside


def rows_from_files(root: Path) -> List[Tuple[Any, ...]]:
    """Index rows rebuilt from the result JSON kept beside each frame, oldest first (the columns of
    ``edge.stores.evidence.COLUMNS`` after ``id``). Files that are not the store's own are skipped."""
    rows = []
    for day in sorted(p for p in root.iterdir() if p.is_dir() and DAY.match(p.name)):
        for cam in sorted(p for p in day.iterdir() if p.is_dir() and is_safe_camera(p.name)):
            for result in sorted(cam.glob("*.json")):
                row = _row(root, unit_of_flat(cam.name), result)
                if row is not None:
                    rows.append(row)
    rows.sort(key=lambda r: r[1])
    return rows


def _row(root: Path, camera: str, result: Path) -> Optional[Tuple[Any, ...]]:
    image, mask = result.with_suffix(".jpg"), result.with_name(f"{result.stem}_mask.png")
    if result.is_symlink() or not image.is_file() or image.is_symlink():
        return None
    try:
        if result.stat().st_size > MAX_RESULT_JSON:
            return None
        doc = json.loads(result.read_text(encoding="utf-8"))
        width, height = (int(v) for v in doc.get("frame_size", (0, 0)))
        anomalous = bool(doc.get("anomalous", mask.is_file()))
        names = [image] + ([mask] if mask.is_file() and not mask.is_symlink() else []) + [result]
        size = sum(p.stat().st_size for p in names)
        return (
            camera, float(doc.get("capture_ts", image.stat().st_mtime)),
            str((doc.get("model") or {}).get("id", "")), float(doc["score"]),
            float(doc.get("threshold", 0.0)), int(anomalous), "anomalous" if anomalous else "sample",
            str(doc.get("run_id", "")), int(doc.get("seq", 0)), int(doc.get("frame_id", 0)), width, height,
            str(image.relative_to(root)), str(mask.relative_to(root)) if mask in names else None,
            str(result.relative_to(root)), size,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
