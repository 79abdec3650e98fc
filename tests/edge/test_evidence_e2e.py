"""The evidence store inside the running daemon, with a real broker: what is kept matches what was published,
and a full disk never costs a result."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from edge.stores.evidence_index import query
from tests.edge.test_daemon_e2e import WAIT, InProcess, config_toml, results
from tests.edge.test_evidence import full_disk  # noqa: F401  (fixture)
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber, has_availability
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

N_FRAMES = 24


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evidence-e2e")
    bundle = make_tiny_bundle(root / "bundle", size=128)
    frames, _ = part_sequence(N_FRAMES, 3, size=128, seed=41)
    return {"bundle": bundle, "video": write_video(root / "parts.avi", frames, fps=20)}


def _run(broker: Broker, media: dict, tmp_path: Path, evidence: dict) -> tuple[list[dict], list[dict]]:
    dev = f"evid-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 25, "publish_mask": "never"}]
    text = config_toml(dev, broker, media["bundle"], cams, evidence={"enabled": True, **evidence})
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    run = InProcess(tmp_path, text).start()
    try:
        assert sub.wait_for(has_availability(f"{prefix}/line/availability", "ended: end of stream"), WAIT)
        assert run.daemon.evidence is not None and run.daemon.evidence.drain()
        assert sub.wait_for(lambda m: any(
            s.json()["evidence"]["written"] + s.json()["evidence"]["dropped_disk_full"] > 0
            and s.json()["evidence"]["queued"] == 0 for s in sub.on(f"{prefix}/stats")), WAIT)  # fmt: skip
    finally:
        assert run.stop() == 0
    sub.close()
    return results(sub, prefix, "line"), [m.json() for m in sub.on(f"{prefix}/stats")]


def test_kept_frames_match_the_published_results(broker: Broker, media: dict, tmp_path: Path) -> None:
    store = tmp_path / "evidence"
    got, stats = _run(broker, media, tmp_path, {"dir": str(store), "good_every": 4, "near_threshold": 0.0})
    assert [r["seq"] for r in got] == list(range(len(got)))
    assert (
        len(got) + stats[-1]["drops"]["camera_slots"] == N_FRAMES
    )  # a busy machine may skip frames, counted
    rows = query(store)
    anomalous = {r["seq"] for r in got if r["anomalous"]}
    assert anomalous and {r.seq for r in rows if r.anomalous} == anomalous
    good = [r["seq"] for r in got if not r["anomalous"]]
    assert {r.seq for r in rows if not r.anomalous} == set(good[::4])  # 1 in 4 good frames
    by_seq = {r["seq"]: r for r in got}
    for row in rows:
        assert row.model_id == by_seq[row.seq]["model"]["id"] and row.score == by_seq[row.seq]["score"]
        assert (row.width, row.height) == tuple(by_seq[row.seq]["frame_size"])


def test_a_full_disk_never_costs_a_result(broker: Broker, media: dict, tmp_path: Path, full_disk) -> None:  # noqa: F811
    root, kind = full_disk
    got, stats = _run(broker, media, tmp_path, {"dir": str(root / "evidence"), "good_every": 1})
    assert [r["seq"] for r in got] == list(range(len(got))), kind  # every frame scored was published
    assert len(got) + stats[-1]["drops"]["camera_slots"] == N_FRAMES, kind  # the rest: counted slot drops
    last = stats[-1]["evidence"]
    assert last["disk_full"] and last["dropped_disk_full"] > 0, (kind, last)
    assert any("disk full" in w for w in stats[-1]["warnings"])
    assert len(query(root / "evidence")) == last["written"] < len(got)


def test_a_short_soak_keeps_the_store_under_its_cap_and_age(
    broker: Broker, media: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 10-minute soak (edge-bench soak --evidence) in miniature: a looping camera, every frame kept,
    a 200 kB cap; the store's files stay under the cap the whole time (sampled). Evidence an hour old,
    left from an earlier run, goes at the first retention sweep (counted)."""
    import edge.stores.evidence as ev
    from benchmarks.soak import folder_mb
    from edge.config import EvidenceConfig
    from tests.edge.test_evidence import offer

    monkeypatch.setattr(ev, "AGE_SWEEP_S", 0.5)
    cap = 200_000
    store = tmp_path / "evidence"
    earlier = ev.EvidenceStore(store, EvidenceConfig(enabled=True, good_every=1))
    earlier.start()
    for i in range(5):
        offer(earlier, i, 0.0, ts=time.time() - 3600)
    assert earlier.drain()
    earlier.close()
    dev = f"soak-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-anomaly/{dev}"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 25, "loop": True, "publish_mask": "never"}]
    evidence = {"enabled": True, "dir": str(store), "good_every": 1, "max_bytes": cap, "max_age_s": 60}
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/stats"])
    run = InProcess(tmp_path, config_toml(dev, broker, media["bundle"], cams, evidence=evidence)).start()
    largest_item = 0
    sizes = []
    try:
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            sizes.append(folder_mb(str(store)) * 1024 * 1024)
            rows = query(store) if (store / "index.sqlite").exists() else []
            largest_item = max([largest_item] + [r.bytes for r in rows])
            time.sleep(0.2)
    finally:
        assert run.stop() == 0
    sub.close()
    snap = run.daemon.evidence.snapshot()
    assert snap["written"] > 50 and snap["evicted_size"] > 0 and snap["evicted_age"] == 5, snap
    # the cap holds after every write; a sample may catch one item written and not yet offset by deletion
    assert max(sizes) <= cap + largest_item, (max(sizes), cap)
    assert snap["bytes"] <= cap
    rows = query(store)
    assert rows and time.time() - rows[0].ts < 60 and all(r.run_id != "r1" for r in rows)
