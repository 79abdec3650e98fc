"""The evidence store inside the running daemon, with a real broker: what is kept matches what was published,
and a full disk never costs a result."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edge.evidence import query
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
    got, _ = _run(broker, media, tmp_path, {"dir": str(store), "good_every": 4, "near_threshold": 0.0})
    assert [r["seq"] for r in got] == list(range(len(got))) and len(got) == N_FRAMES
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
    assert [r["seq"] for r in got] == list(range(N_FRAMES)), kind  # every frame scored and published
    last = stats[-1]["evidence"]
    assert last["disk_full"] and last["dropped_disk_full"] > 0, (kind, last)
    assert any("disk full" in w for w in stats[-1]["warnings"])
    assert len(query(root / "evidence")) == last["written"] < N_FRAMES
