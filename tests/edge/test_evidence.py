"""The evidence store: what it keeps, its bounds (size, age), a full disk, a slow disk, and the export.

Frames and verdicts are built directly (no model); the daemon-level promise (a full disk never stops scoring)
is in tests/edge/test_evidence_e2e.py.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.frames import Frame
from edge.config import EvidenceConfig
from edge.results.postprocess import Verdict
from edge.stores import evidence as ev
from edge.stores.evidence import EvidenceStore
from edge.stores.evidence_cli import main as evidence_main
from edge.stores.evidence_index import query

REPO = Path(__file__).resolve().parents[2]
SIZE = 96
TMPFS_SIZE = "128k"  # the real small disk, where mounting a tmpfs is allowed (root, no container limits)
SIMULATED_LIMIT = 60_000  # elsewhere: bytes the store may write before ENOSPC


def frame(i: int, ts: float | None = None, camera: str = "line") -> Frame:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)  # noise: JPEGs of a known-ish size
    now = time.time() if ts is None else ts
    return Frame(camera=camera, frame_id=i, capture_ts=now, capture_mono=time.monotonic(), image=image)


def verdict(score: float, threshold: float = 4.0) -> Verdict:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if score > threshold:
        mask[10:30, 10:30] = 255
    return Verdict(
        score=score, raw_score=score, threshold=threshold, anomalous=score > threshold, defect_area=0.0,
        regions=[], regions_total=0, mask_model=mask, norm_map=np.zeros((SIZE, SIZE), np.float32),
        roi=(0, 0, SIZE, SIZE), frame_hw=(SIZE, SIZE),
    )  # fmt: skip


def offer(store: EvidenceStore, i: int, score: float, ts: float | None = None, camera: str = "line") -> bool:
    f = frame(i, ts, camera)
    doc = {"run_id": "r1", "seq": i, "capture_ts": f.capture_ts, "score": score, "camera": camera}
    return store.offer(camera, f, verdict(score), doc, "tiny@abc")


@pytest.fixture
def store_factory(tmp_path: Path) -> Iterator:
    made: list[EvidenceStore] = []

    def make(root: Path | None = None, **cfg: object) -> EvidenceStore:
        store = EvidenceStore(root or tmp_path / "evidence", EvidenceConfig(enabled=True, **cfg))  # type: ignore[arg-type]
        store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_keeps_anomalous_near_threshold_and_one_in_n_good(store_factory, tmp_path: Path) -> None:
    store = store_factory(good_every=5, near_threshold=0.5)
    scores = [0.1] * 10 + [3.8, 5.0, 9.0] + [0.2] * 5  # 10 plain good, 1 near, 2 anomalous, 5 plain good
    kept = [offer(store, i, s) for i, s in enumerate(scores)]
    assert store.drain()
    # good frames 0, 5 of the plain ones seen (1 in 5 per camera), the near one, both anomalous ones
    assert sum(kept) == 3 + 1 + 2
    rows = query(tmp_path / "evidence")
    assert [r.reason for r in rows] == ["sample", "sample", "near", "anomalous", "anomalous", "sample"]
    assert [r.anomalous for r in rows] == [False, False, False, True, True, False]
    assert all(r.model_id == "tiny@abc" and r.camera == "line" for r in rows)
    root = tmp_path / "evidence"
    for r in rows:
        image = cv2.imread(str(root / r.image))
        assert image.shape == (SIZE, SIZE, 3)  # full camera resolution
        assert json.loads((root / r.result).read_text())["seq"] == r.seq
        if r.anomalous:
            mask = cv2.imread(str(root / r.mask), cv2.IMREAD_GRAYSCALE)
            assert mask.shape == (SIZE, SIZE) and mask[20, 20] == 255 and mask[50, 50] == 0
        else:
            assert r.mask is None
    snap = store.snapshot()
    assert snap["written"] == 6 and snap["rows"] == 6 and snap["bytes"] == sum(r.bytes for r in rows)


def test_a_mask_already_encoded_for_mqtt_is_stored_as_it_is(store_factory, tmp_path: Path) -> None:
    from edge.results.postprocess import encode_mask_png

    store = store_factory()
    f, v = frame(1), verdict(9.0)
    published = encode_mask_png(v) + b""  # the bytes the publish stage sent on the mask topic
    assert store.offer("line", f, v, {"run_id": "r1", "seq": 1, "capture_ts": f.capture_ts}, "m@1", published)
    assert store.offer("line", frame(2), verdict(9.0), {"run_id": "r1", "seq": 2}, "m@1")  # none published
    assert store.drain()
    rows = query(tmp_path / "evidence")
    root = tmp_path / "evidence"
    assert (root / rows[0].mask).read_bytes() == published
    own = cv2.imread(str(root / rows[1].mask), cv2.IMREAD_GRAYSCALE)
    assert own[20, 20] == 255 and own[50, 50] == 0  # encoded by the writer when nothing was handed over


def test_the_writer_thread_runs_at_the_configured_priority(store_factory) -> None:
    import os

    if not hasattr(os, "getpriority"):
        pytest.skip("per-thread nice is Linux-only")
    store = store_factory(writer_nice=7, writer_idle=False)
    seen: list[int] = []
    store._write = lambda db, item: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))  # type: ignore[method-assign]
    offer(store, 1, 9.0)
    assert store.drain()
    assert seen == [min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)]
    # by default the writer only takes CPU that nothing else wants (Linux's idle class)
    idle = store_factory(root=store.root.parent / "idle")
    policies: list[int] = []
    idle._write = lambda db, item: policies.append(os.sched_getscheduler(0))  # type: ignore[method-assign]
    offer(idle, 2, 9.0)
    assert idle.drain()
    assert policies == [os.SCHED_IDLE]


def test_size_cap_deletes_oldest_first_and_counts(store_factory, tmp_path: Path) -> None:
    cap = 120_000  # a noise JPEG of 96x96 at quality 90 is ~20 kB: room for a handful
    store = store_factory(max_bytes=cap, good_every=1)
    for i in range(40):
        offer(store, i, 0.0)
        assert store.drain()
        assert store.snapshot()["bytes"] <= cap
    rows = query(tmp_path / "evidence")
    snap = store.snapshot()
    assert snap["evicted_size"] == 40 - len(rows) > 20
    assert [r.seq for r in rows] == list(range(40 - len(rows), 40))  # the newest survive, in order
    files = [p for p in (tmp_path / "evidence").rglob("*") if p.is_file() and "index.sqlite" not in p.name]
    assert len(files) == 2 * len(rows)  # image + result per good row; evicted files are gone from disk
    assert sum(p.stat().st_size for p in files) == snap["bytes"] <= cap


def test_the_cap_holds_while_a_frame_is_being_written(tmp_path: Path) -> None:
    """Room is made before the new files land, so the folder never exceeds the cap, even for a moment."""
    root = tmp_path / "evidence"
    cap = 120_000
    store = EvidenceStore(root, EvidenceConfig(enabled=True, max_bytes=cap, good_every=1))
    seen: list[int] = []

    class Watching:  # the index connection, checking the folder at each row's INSERT (its files are written)
        def __init__(self, db: object) -> None:
            self._db = db

        def execute(self, sql: str, *args: object) -> object:
            if sql.lstrip().startswith("INSERT"):
                seen.append(
                    sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "index" not in p.name)
                )
            return self._db.execute(sql, *args)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self._db, name)

    opened = store._open
    store._open = lambda: Watching(opened())  # type: ignore[method-assign]
    store.start()
    try:
        for i in range(30):
            offer(store, i, 0.0)
        assert store.drain()
    finally:
        store.close()
    assert len(seen) == 30 and store.snapshot()["evicted_size"] > 0
    assert max(seen) <= cap


def test_retention_age_deletes_old_rows(store_factory, tmp_path: Path) -> None:
    store = store_factory(max_age_s=60, good_every=1)
    old = time.time() - 3600
    for i in range(5):
        offer(store, i, 0.0, ts=old)
    assert store.drain()
    store.sweep_age()
    offer(store, 99, 0.0)
    assert store.drain()
    assert [r.seq for r in query(tmp_path / "evidence")] == [99]
    assert store.snapshot()["evicted_age"] == 5


def test_a_slow_disk_never_blocks_offer(store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real = EvidenceStore._write

    def stuck(self, db, item):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return real(self, db, item)

    monkeypatch.setattr(EvidenceStore, "_write", stuck)
    store = store_factory(queue_max=4)
    t0 = time.monotonic()
    results = [offer(store, i, 9.0) for i in range(20)]
    assert time.monotonic() - t0 < 1.0  # 20 offers against a stuck writer return at once
    gate.set()
    assert store.drain()
    snap = store.snapshot()
    assert snap["dropped_queue"] == results.count(False) >= 20 - 5  # queue of 4 + the one being written
    assert snap["written"] == results.count(True)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@pytest.fixture
def full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A store folder on a real 128 KiB tmpfs where this machine allows mounting one, else a folder whose
    writes fail with ENOSPC after 60 kB (fault injection into the writer's ``open``)."""
    root = tmp_path / "small"
    if _tmpfs(root, TMPFS_SIZE):
        yield root, "tmpfs"
        subprocess.run(
            ["umount", "-l", str(root)], capture_output=True, timeout=10
        )  # lazy: the store may still be open
        return
    written = {"n": 0}
    real_open = open

    def limited_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        fh = real_open(file, mode, *args, **kwargs)
        if "w" not in mode or not str(file).startswith(str(root)):
            return fh
        real_write = fh.write

        def write(data):  # type: ignore[no-untyped-def]
            written["n"] += len(data)
            if written["n"] > SIMULATED_LIMIT:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(data)

        fh.write = write
        return fh

    monkeypatch.setattr(ev, "open", limited_open, raising=False)
    yield root, "simulated"


def test_a_full_disk_stops_writing_reports_and_keeps_accepting(store_factory, full_disk) -> None:
    root, kind = full_disk
    # a cap far above the disk: the disk fills before the cap is reached
    store = store_factory(root=root / "evidence", max_bytes=64 * 1024**2, good_every=1)
    t0 = time.monotonic()
    for i in range(40):
        offer(store, i, 9.0)  # anomalous: image + mask + result each
        store.drain()
    assert time.monotonic() - t0 < 30
    snap = store.snapshot()
    assert snap["disk_full"], (kind, snap)
    assert snap["written"] >= 1 and snap["dropped_disk_full"] >= 1
    assert snap["written"] + snap["dropped_disk_full"] + snap["dropped_queue"] == 40
    assert any("disk full" in w for w in store.warnings())
    rows = query(root / "evidence")  # the index is intact and says what was written
    assert len(rows) == snap["written"] == snap["rows"]
    for r in rows:
        assert (root / "evidence" / r.image).is_file()


def test_export_writes_an_mvtec_layout_that_training_reads(store_factory, tmp_path: Path) -> None:
    from training.data import good_images

    store = store_factory(good_every=1, near_threshold=0.0)
    for i in range(12):
        offer(store, i, 9.0 if i % 4 == 3 else 0.5, camera="line" if i % 2 else "side")
    assert store.drain()
    out = tmp_path / f"export-{uuid.uuid4().hex[:6]}"
    assert evidence_main(["export", "--dir", str(tmp_path / "evidence"), "--out", str(out)]) == 0
    good = good_images(out)
    assert len(good) == 9 and all(cv2.imread(str(p)).shape == (SIZE, SIZE, 3) for p in good)
    review = sorted((out / "review" / "anomalous").iterdir())
    masks = sorted((out / "review" / "ground_truth" / "anomalous").iterdir())
    assert len(review) == 3 and [m.name for m in masks] == [f"{p.stem}_mask.png" for p in review]
    assert json.loads((out / "export.json").read_text())["train_good"] == 9

    # filters, and the list command through the module's entry point (what the console script runs)
    only = tmp_path / "only-line"
    assert (
        evidence_main(["export", "--dir", str(tmp_path / "evidence"), "--out", str(only), "--camera", "line"])
        == 0
    )
    assert len(good_images(only)) == 3  # line: frames 1, 5, 9 (3, 7, 11 are anomalous)
    listed = subprocess.run(
        [sys.executable, "-m", "edge.stores.evidence_cli", "list", "--dir", str(tmp_path / "evidence"),
         "--json", "--verdict", "anomalous"], capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    docs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(docs) == 3 and all(d["anomalous"] and d["mask"] for d in docs)
    missing = evidence_main(["list", "--dir", str(tmp_path / "nowhere")])
    assert missing == 2


def test_frames_waiting_for_the_writer_are_bounded_in_bytes(tmp_path: Path) -> None:
    """A slow writer pins at most queue_max_mb of frames (what the store can add to the daemon's RSS)."""
    f = frame(0)
    held = ev._held_bytes(f, verdict(9.0), None)
    store = EvidenceStore(
        tmp_path / "evidence", EvidenceConfig(enabled=True, queue_max=100, queue_max_mb=2.5 * held / 2**20)
    )  # not started: nothing is taken off the queue yet
    kept = [offer(store, i, 9.0) for i in range(6)]
    assert kept == [True, True, False, False, False, False]
    assert store.snapshot()["dropped_queue"] == 4 and store.snapshot()["queued"] == 2
    store.start()
    try:
        assert store.drain()
        assert offer(store, 10, 9.0) and offer(store, 11, 9.0)  # room again once written
        assert store.drain()
    finally:
        store.close()
    assert store.snapshot()["written"] == 4
