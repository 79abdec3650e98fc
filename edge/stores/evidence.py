"""The evidence store: what the station saw, kept on disk, bounded and indexed, for review and retraining.

What is kept: every anomalous frame (full camera resolution), its mask PNG and its result JSON, and a
sample of good frames (1 in ``good_every`` per camera, plus every good frame within ``near_threshold`` of
the threshold, the ones a retrained model most needs). Frames that arrived as JPEG are stored as they came
(no second loss); decoded frames are encoded at ``jpeg_quality``.

Layout under the store's folder::

    index.sqlite                          one row per kept frame (camera, time, model, score, verdict, files)
    <YYYY-MM-DD>/<camera>/<id>.jpg        the frame
    <YYYY-MM-DD>/<camera>/<id>_mask.png   its defect mask (anomalous frames only)
    <YYYY-MM-DD>/<camera>/<id>.json       its result, as published

Rules it keeps:

- It never slows scoring: the publish stage :meth:`offers <EvidenceStore.offer>` a frame and returns at once;
  a writer thread of its own encodes and writes. A full queue drops the frame (counted, ``dropped_queue``).
- It stays bounded: before each write the oldest rows go until the new files fit ``max_bytes``; rows older
than
  ``max_age_s`` go too. Every deletion is counted (``evicted_size``, ``evicted_age``).
- A full disk (ENOSPC/EDQUOT, or SQLite's "disk is full") stops writing, is reported (``disk_full`` in the
  stats, a warning, one ERROR line in the log) and retried after ``RETRY_FULL_S``; scoring goes on and the
  frames offered meanwhile are counted as ``dropped_disk_full``.

- It owns its names (:mod:`edge.stores.evidence_names`): file names are generated from checked parts, every
  name read back from the index must stay inside the store, and a corrupt index (found at start, or when a
  write says so) is moved aside and rebuilt from the files, reported in the stats (``index_rebuilt``) and
  as a warning on ``status``.

``edge-evidence list|export`` reads the index (see :mod:`edge.stores.evidence_cli`), through
:mod:`edge.stores.evidence_index` (its schema, :class:`Record`, :func:`query`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edge.capture.frames import Frame
from edge.config import EvidenceConfig
from edge.results.postprocess import Verdict, encode_mask_png
from edge.stores.evidence_index import COLUMNS, INDEX_NAME, SCHEMA, Record
from edge.stores.evidence_names import (
    UnsafeName,
    camera_folder,
    index_problem,
    inside,
    is_corruption,
    move_aside,
    rows_from_files,
    safe_part,
)
from edge.util.priority import idle_current_thread, lower_current_thread_priority

log = logging.getLogger("edge.evidence")

RETRY_FULL_S = 30.0  # a full disk is tried again this long after it was found full
AGE_SWEEP_S = 10.0  # rows past max_age_s are looked for at most this often
ERROR_BACKOFF_S = 1.0  # after an unexpected write error, the writer waits this long
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """The store's disk (or quota) is full."""


@dataclass
class _Item:
    camera: str
    frame: Frame
    verdict: Verdict
    result: Any  # the ResultPayload as published (serialised by the writer)
    model_id: str
    reason: str
    mask_png: Optional[bytes] = None  # the mask as already encoded for MQTT: not encoded a second time
    nbytes: int = 0  # what the item holds in memory while it waits (counted against queue_max_mb)


def _held_bytes(frame: Frame, verdict: Verdict, mask_png: Optional[bytes]) -> int:
    """Memory a queued item keeps alive: the frame (decoded or JPEG), the model-size maps, the mask PNG."""
    total = len(mask_png or b"")
    for arr in (frame.image, frame.jpeg, verdict.norm_map, verdict.mask_model):
        total += 0 if arr is None else int(arr.nbytes)
    return total


class EvidenceStore:
    """Bounded, indexed, written by its own thread; :meth:`offer` is all the publish stage calls."""

    def __init__(self, root: Path, cfg: EvidenceConfig) -> None:
        self.root = Path(root)
        self.cfg = cfg
        self._queue: queue.Queue[Optional[_Item]] = queue.Queue(cfg.queue_max)
        self._lock = threading.Lock()
        self._good_seen: Dict[str, int] = {}
        self._counts: Dict[str, int] = dict.fromkeys(
            ("offered", "written", "dropped_queue", "dropped_disk_full", "write_errors", "evicted_size",
             "evicted_age", "index_rebuilt", "unsafe_names"), 0,
        )  # fmt: skip
        self._bytes = 0
        self._queued_bytes = 0  # memory held by items waiting for the writer (queue_max_mb)
        self._rows = 0
        self._full_until: Optional[float] = None  # monotonic time until which a full disk is not retried
        self._full_reason = ""
        self._thread: Optional[threading.Thread] = None
        self._db: Optional[sqlite3.Connection] = None
        self._last_sweep = 0.0
        self._index_note = ""  # why the index was rebuilt, for warnings() (status) during this run
        self.on_warnings: Optional[Callable[[List[str]], None]] = None  # the daemon puts them on status

    # --- the publish stage's side (must never block) ------------------------------------------------------

    def reason(self, camera: str, score: float, threshold: float, anomalous: bool) -> Optional[str]:
        """Why this frame would be kept ('anomalous', 'near', 'sample'), or None."""
        if anomalous:
            return "anomalous"
        if self.cfg.near_threshold > 0 and threshold - score <= self.cfg.near_threshold:
            return "near"
        if self.cfg.good_every <= 0:
            return None
        with self._lock:
            n = self._good_seen.get(camera, 0)
            self._good_seen[camera] = n + 1
        return "sample" if n % self.cfg.good_every == 0 else None

    def offer(
        self,
        camera: str,
        frame: Frame,
        verdict: Verdict,
        result: Any,
        model_id: str,
        mask_png: Optional[bytes] = None,
    ) -> bool:
        """Queue the frame if it is to be kept; False when it is not kept or was dropped (counted).

        ``mask_png``: the mask's PNG when the publish stage already made one, so the writer's CPU (which the
        backend would otherwise lose) goes to the frame's JPEG only."""
        why = self.reason(camera, verdict.score, verdict.threshold, verdict.anomalous)
        if why is None:
            return False
        with self._lock:
            self._counts["offered"] += 1
            full = self._full_until is not None and time.monotonic() < self._full_until
            if full:
                self._counts["dropped_disk_full"] += 1
                return False
        nbytes = _held_bytes(frame, verdict, mask_png)
        with self._lock:  # the byte bound: full-resolution frames add up fast, whatever queue_max says
            if self._queued_bytes + nbytes > self.cfg.queue_max_mb * 2**20 and self._queued_bytes > 0:
                self._counts["dropped_queue"] += 1
                return False
            self._queued_bytes += nbytes
        try:
            self._queue.put_nowait(_Item(camera, frame, verdict, result, model_id, why, mask_png, nbytes))
        except queue.Full:
            with self._lock:
                self._queued_bytes -= nbytes
                self._counts["dropped_queue"] += 1
            return False
        return True

    def snapshot(self) -> Dict[str, Any]:
        """Counters for the stats topic: written, dropped, evicted, bytes, rows, disk_full, queue depth."""
        with self._lock:
            doc: Dict[str, Any] = dict(self._counts)
            doc.update(
                bytes=self._bytes,
                rows=self._rows,
                max_bytes=self.cfg.max_bytes,
                queued=self._queue.qsize(),
                disk_full=self._full_until is not None,
            )
        return doc

    def warnings(self) -> List[str]:
        with self._lock:
            found = [self._index_note] if self._index_note else []
            if self._full_until is None:
                return found
            return found + [
                f"evidence store {self.root}: disk full ({self._full_reason}); not writing, scoring goes on"
            ]

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-evidence", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then stop the writer."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("evidence writer did not drain within %.0f s; queued frames are lost", timeout)
            return
        self._thread.join(timeout)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and written (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # --- the writer thread -------------------------------------------------------------------------------

    def _loop(self) -> None:
        lower_current_thread_priority(self.cfg.writer_nice)
        if self.cfg.writer_idle:
            idle_current_thread()
        try:
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            log.error("evidence store %s cannot be opened (%s); nothing will be kept", self.root, exc)
            self._disk_full_or_error(exc)
            self._db = None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(item)
            finally:
                if item is not None:
                    with self._lock:
                        self._queued_bytes -= item.nbytes
                self._queue.task_done()
                if item is None and self._db is not None:
                    self._db.close()

    def _open(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.root / INDEX_NAME
        problem = index_problem(index) if index.exists() else None
        if problem is not None:
            self._move_aside(problem)
        db = sqlite3.connect(str(self.root / INDEX_NAME), timeout=5.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # edge-evidence can read while the daemon writes
        # No fsync per row: a power cut may lose the last rows (their files are then unindexed orphans),
        # never corrupt the index; an fsync per frame made the writer fall behind on a busy device.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        if problem is not None:  # the frames are still on disk: index them again
            db.executemany(
                f"INSERT INTO evidence ({COLUMNS.partition(', ')[2]}) VALUES ({', '.join('?' * 16)})",
                rows_from_files(self.root),
            )
        total, rows = db.execute("SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM evidence").fetchone()
        with self._lock:
            self._bytes, self._rows = int(total), int(rows)
        return db

    def _move_aside(self, problem: str) -> None:
        aside = move_aside(self.root, INDEX_NAME)
        note = (
            f"evidence store {self.root}: the index was corrupt ({problem}); moved aside to {aside.name} and "
            "rebuilt from the kept files"
        )
        log.error("%s", note)
        with self._lock:
            self._counts["index_rebuilt"] += 1
            self._index_note = note
        if self.on_warnings is not None:
            self.on_warnings(self.warnings())

    def _handle(self, item: _Item) -> None:
        with self._lock:
            if self._full_until is not None:
                if time.monotonic() < self._full_until:
                    self._counts["dropped_disk_full"] += 1
                    return
                self._full_until = None  # try again
        try:
            if self._db is None:
                self._db = self._open()
            self._write(self._db, item)
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc) and self._db is not None:  # checked, moved aside, rebuilt on reopen
                self._db.close()
                self._db = None
            self._disk_full_or_error(exc)
        except OSError as exc:
            self._disk_full_or_error(exc)
        except Exception:  # a bug must not end the writer: count, log, back off
            with self._lock:
                self._counts["write_errors"] += 1
            log.exception("writing evidence for %s frame %d failed", item.camera, item.frame.frame_id)
            time.sleep(ERROR_BACKOFF_S)

    def _disk_full_or_error(self, exc: BaseException) -> None:
        full = isinstance(exc, OSError) and exc.errno in FULL_ERRNOS
        full = full or (isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower())
        was_full = False
        with self._lock:
            if full:
                self._counts["dropped_disk_full"] += 1
                was_full = self._full_until is not None
                self._full_until = time.monotonic() + RETRY_FULL_S
                self._full_reason = str(exc)
            else:
                self._counts["write_errors"] += 1
        if full and not was_full:
            log.error(
                "evidence store %s: disk full (%s); writing stops (scoring goes on) and is retried every "
                "%.0f s",
                self.root, exc, RETRY_FULL_S,
            )  # fmt: skip
        elif not full:
            log.error("evidence store %s: write failed: %s", self.root, exc)
            time.sleep(ERROR_BACKOFF_S)

    def _write(self, db: sqlite3.Connection, item: _Item) -> None:
        result = item.result
        doc = result.model_dump(by_alias=True, mode="json") if hasattr(result, "model_dump") else dict(result)
        ts = float(doc.get("capture_ts", item.frame.capture_ts))
        day = time.strftime("%Y-%m-%d", time.gmtime(ts))
        folder = Path(day) / camera_folder(item.camera)  # a region's: <camera>:<region>
        run_id = safe_part(str(doc.get("run_id", "run")), "run id")
        stem = f"{run_id}-{int(doc.get('seq', item.frame.frame_id)):08d}"
        files: List[Tuple[str, bytes]] = [(str(folder / f"{stem}.jpg"), self._jpeg(item.frame))]
        mask_name: Optional[str] = None
        if item.verdict.anomalous:
            mask_name = str(folder / f"{stem}_mask.png")
            files.append((mask_name, item.mask_png or encode_mask_png(item.verdict)))
        files.append((str(folder / f"{stem}.json"), json.dumps(doc, sort_keys=True).encode()))
        size = sum(len(data) for _, data in files)
        self._enforce_bounds(db, incoming=size)  # room first, so the files on disk never exceed the cap
        written: List[Path] = []
        try:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
            for name, data in files:
                path = self.root / name
                written.append(path)
                with open(path, "wb") as fh:
                    fh.write(data)
            h, w = item.frame.hw
            db.execute(
                f"INSERT INTO evidence ({COLUMNS.partition(', ')[2]}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item.camera, ts, item.model_id, float(doc.get("score", item.verdict.score)),
                 float(doc.get("threshold", item.verdict.threshold)),
                 int(item.verdict.anomalous), item.reason, str(doc.get("run_id", "")), int(doc.get("seq", 0)),
                 int(item.frame.frame_id), int(w), int(h), files[0][0], mask_name, files[-1][0], size),
            )  # fmt: skip
        except BaseException:
            for path in written:  # no half-written evidence without a row, nor a row without its files
                _unlink(path)
            raise
        with self._lock:
            self._bytes += size
            self._rows += 1
            self._counts["written"] += 1

    def _jpeg(self, frame: Frame) -> bytes:
        if frame.image is None and frame.jpeg is not None:
            return bytes(frame.jpeg.tobytes())  # the camera's own JPEG: no second loss, no CPU
        ok, buf = cv2.imencode(".jpg", frame.full_image(), [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode the frame as JPEG")
        return bytes(np.asarray(buf).tobytes())

    # --- bounds ------------------------------------------------------------------------------------------

    def _enforce_bounds(self, db: sqlite3.Connection, incoming: int = 0) -> None:
        """Delete rows past the retention age, then the oldest until ``incoming`` more bytes fit the cap."""
        now_mono = time.monotonic()
        if now_mono - self._last_sweep >= AGE_SWEEP_S:
            self._last_sweep = now_mono
            cutoff = time.time() - self.cfg.max_age_s
            old = db.execute(
                f"SELECT {COLUMNS} FROM evidence WHERE ts < ? ORDER BY ts, id", (cutoff,)
            ).fetchall()
            self._delete(db, [Record.from_row(r) for r in old], "evicted_age")
        while True:
            with self._lock:
                over = self._bytes + incoming - self.cfg.max_bytes
            if over <= 0:
                return
            oldest = db.execute(f"SELECT {COLUMNS} FROM evidence ORDER BY ts, id LIMIT 32").fetchall()
            if not oldest:
                return
            victims, freed = [], 0
            for row in oldest:
                rec = Record.from_row(row)
                victims.append(rec)
                freed += rec.bytes
                if freed >= over:
                    break
            self._delete(db, victims, "evicted_size")

    def _delete(self, db: sqlite3.Connection, records: List[Record], counter: str) -> None:
        if not records:
            return
        db.executemany("DELETE FROM evidence WHERE id = ?", [(r.id,) for r in records])
        for rec in records:
            for name in (rec.image, rec.mask, rec.result):
                if name:
                    self._unlink_inside(name)
        with self._lock:
            self._bytes -= sum(r.bytes for r in records)
            self._rows -= len(records)
            self._counts[counter] += len(records)

    def _unlink_inside(self, name: str) -> None:
        """Delete a file the index names, only when the name stays inside the store."""
        try:
            path = inside(self.root, name)
        except UnsafeName as exc:
            with self._lock:
                self._counts["unsafe_names"] += 1
            log.error("evidence index row names a file outside the store; not deleting it: %s", exc)
            return
        _unlink(path)

    def sweep_age(self) -> None:
        """Make the next write check retention at once (tests, benchmarks)."""
        self._last_sweep = 0.0


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # deleting frees space; failing to delete is worth a line, not a crash
        log.warning("could not delete %s: %s", path, exc)
    parent = path.parent
    try:
        parent.rmdir()  # only succeeds when empty: day/camera folders disappear with their last file
        parent.parent.rmdir()
    except OSError:
        pass
