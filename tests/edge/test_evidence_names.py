"""The evidence store owns its names (issue 26, item 1): an index edited by the service account cannot make
``edge-evidence export`` (run by root) read a file outside the store or write one outside ``--out``; root
refuses a store it does not own; a corrupt index is found (start, --check-config), reported (stats, status)
and rebuilt from the files without losing a frame; ``edge-evidence list`` on it prints one line; camera names
that would leave a folder are refused by the config."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import CameraConfig, EvidenceConfig
from edge.service.cli import main as edge_run
from edge.stores import evidence_cli
from edge.stores.evidence import INDEX_NAME, EvidenceStore, Record
from edge.stores.evidence_cli import main as evidence_main
from tests.edge.test_evidence import frame, verdict
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video


@pytest.fixture
def store_factory() -> Iterator[Callable[..., EvidenceStore]]:
    made: list[EvidenceStore] = []

    def make(root: Path, **cfg: Any) -> EvidenceStore:
        store = EvidenceStore(root, EvidenceConfig(enabled=True, **cfg))
        store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def offer_full(store: EvidenceStore, i: int, score: float, camera: str = "line") -> bool:
    """An offer with the fields of a published result (what the daemon hands the store)."""
    f, v = frame(i, camera=camera), verdict(score)
    doc = {
        "run_id": "r1", "seq": i, "capture_ts": f.capture_ts, "score": score, "threshold": 4.0,
        "anomalous": v.anomalous, "frame_id": i, "frame_size": [96, 96], "model": {"id": "tiny@abc"},
    }  # fmt: skip
    return store.offer(camera, f, v, doc, "tiny@abc")


def run(main, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "../x", "a..b", "-x", "x" * 65, "a b", "a+b"])
def test_camera_names_that_would_leave_a_folder_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="camera name"):
        CameraConfig(name=name, source="0")
    assert CameraConfig(name="line-1.cam_2", source="0").name == "line-1.cam_2"


def test_a_tampered_index_cannot_make_export_leave_the_store_or_the_out_folder(
    store_factory: Callable[..., EvidenceStore], tmp_path: Path
) -> None:
    root = tmp_path / "evidence"
    store = store_factory(root, good_every=1)
    for i, score in enumerate([1.0, 9.0, 1.0]):
        assert offer_full(store, i, score)
    assert store.drain()
    secret = tmp_path / "secret.key"  # a 0600 file outside the store, as /etc/shadow would be
    secret.write_text("TOP-SECRET")
    secret.chmod(0o600)
    db = sqlite3.connect(str(root / INDEX_NAME))
    db.execute("UPDATE evidence SET image = ? WHERE id = 1", (str(secret),))
    db.execute("UPDATE evidence SET camera = '../../x' WHERE id = 2")
    (root / "link.jpg").symlink_to(secret)  # a link the service account planted inside the store
    db.execute("UPDATE evidence SET image = 'link.jpg' WHERE id = 3")
    db.commit()
    db.close()
    out = tmp_path / "work" / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, stdout, stderr = run(evidence_main, "export", "--dir", str(root), "--out", str(out))
    assert rc == evidence_cli.EXIT_ERROR, stderr
    refused = [line for line in stderr.splitlines() if line.startswith("edge-evidence: refused index row")]
    assert len(refused) == 3, stderr
    assert "is not a name inside the evidence store" in stderr  # the absolute path
    assert "'../../x' is not a camera name" in stderr
    assert "leads outside the evidence store" in stderr  # the planted link
    assert "3 row(s) refused" in stderr
    copied = [p for p in out.rglob("*") if p.is_file()]
    assert all(b"TOP-SECRET" not in p.read_bytes() for p in copied)
    assert sorted(p.name for p in tmp_path.iterdir()) == before + ["work"]  # nothing written beside --out
    assert not (tmp_path / "x").exists() and not (out.parent / "x").exists()


def test_the_writer_never_deletes_a_file_the_index_names_outside_the_store(
    store_factory: Callable[..., EvidenceStore], tmp_path: Path
) -> None:
    root = tmp_path / "evidence"
    store = store_factory(root)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    rec = Record(1, "line", 0.0, "m", 0.0, 0.0, False, "sample", "r", 0, 0, 1, 1, str(victim), None,
                 "../victim.txt", 0)  # fmt: skip
    store._unlink_inside(rec.image)
    store._unlink_inside(rec.result)
    assert victim.read_text() == "keep me"
    assert store.snapshot()["unsafe_names"] == 2


def test_root_refuses_a_store_it_does_not_own(
    store_factory: Callable[..., EvidenceStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "evidence"
    store = store_factory(root)
    assert offer_full(store, 1, 9.0)
    assert store.drain()
    if os.geteuid() == 0:  # make the store another user's, as the service account's is
        for path in [root, *root.rglob("*")]:
            os.lchown(path, 65534, 65534)
    monkeypatch.setattr(evidence_cli.os, "geteuid", lambda: 0)
    rc, _, err = run(evidence_main, "list", "--dir", str(root))
    assert rc == evidence_cli.EXIT_USAGE
    assert "refusing to run as root" in err and "sudo -u edge-anomaly" in err


def test_a_corrupt_index_is_reported_and_rebuilt_from_the_files(
    store_factory: Callable[..., EvidenceStore], tmp_path: Path
) -> None:
    root = tmp_path / "evidence"
    store = store_factory(root, good_every=1)
    for i, score in enumerate([1.0, 9.0, 2.0, 8.0]):
        assert offer_full(store, i, score)
    assert store.drain()
    store.close()
    (root / INDEX_NAME).write_bytes(b"this is not an SQLite database" * 100)
    for suffix in ("-wal", "-shm"):
        (root / f"{INDEX_NAME}{suffix}").unlink(missing_ok=True)

    rc, out, err = run(evidence_main, "list", "--dir", str(root))  # one clear line, no traceback
    assert rc == evidence_cli.EXIT_ERROR and out == ""
    assert len(err.strip().splitlines()) == 1 and "cannot be read" in err and "Traceback" not in err

    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    video = tmp_path / "v.avi"
    video.write_bytes(b"x")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[model]\nbundle = "{bundle}"\n[evidence]\nenabled = true\ndir = "{root}"\n'
                   f'[[cameras]]\nname = "line"\nsource = "{video}"\n')  # fmt: skip
    rc, _, err = run(edge_run, "--config", str(cfg), "--check-config", "--no-camera-open")  # a stub video
    assert rc == 0, err
    assert "WARN    evidence.index:" in err and "is corrupt" in err

    seen: list = []
    again = store_factory(root, good_every=1)
    again.on_warnings = seen.append
    assert offer_full(again, 10, 9.5)
    assert again.drain()
    snap = again.snapshot()
    assert snap["index_rebuilt"] == 1 and snap["rows"] == 5 and snap["written"] == 1  # 4 rebuilt + 1 new
    assert any("index was corrupt" in w for w in again.warnings())
    assert seen and "rebuilt from the kept files" in seen[-1][0]
    assert list(root.glob(f"{INDEX_NAME}.corrupt-*"))
    rc, out, err = run(evidence_main, "list", "--dir", str(root), "--json")
    assert rc == 0 and len(out.splitlines()) == 5, err


def test_a_corrupt_index_at_start_is_on_status_and_stats(broker: Broker, tmp_path: Path) -> None:
    from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml

    store = tmp_path / "evidence"
    store.mkdir()
    (store / INDEX_NAME).write_bytes(b"\x00garbage, not SQLite" * 64)
    frames, _ = part_sequence(10, 2, size=32, seed=3)
    video = write_video(tmp_path / "parts.avi", frames, fps=10)
    dev = f"evx-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(video), "fps": 10, "loop": True, "publish_mask": "never"}]
    evidence = {"enabled": True, "dir": str(store), "good_every": 1}
    text = config_toml(dev, broker, make_tiny_bundle(tmp_path / "b", size=32), cams, evidence=evidence)
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/status", f"{prefix}/stats"])
    run = InProcess(tmp_path, text).start()

    def warned() -> bool:
        return any(
            any("index was corrupt" in w for w in m.json().get("warnings", []))
            for m in sub.on(f"{prefix}/status")
            if m.payload
        )

    def rebuilt() -> bool:
        return any(
            (m.json().get("evidence") or {}).get("index_rebuilt") == 1 for m in sub.on(f"{prefix}/stats")
        )

    try:
        assert sub.wait_for(lambda _: warned() and rebuilt(), WAIT)
    finally:
        assert run.stop() == 0
        sub.close()
    assert list(store.glob(f"{INDEX_NAME}.corrupt-*"))
