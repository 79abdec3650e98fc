"""A camera that is not there at start, appears, vanishes mid-run and returns (the real daemon, a subprocess).

The camera is a video file (loop on) whose path is renamed away and back: the grabber's real open-failure
path with its backoff, the same one an unplugged USB camera or an RTSP stream that is down takes. What must
hold: availability says ``fault`` with a reason while it is gone and ``online`` when it is back; no result is
published for a frame that never arrived (no stale or made-up frames while the camera is gone); frame ids keep
increasing across the outage.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.conftest import (
    WAIT,
    DaemonProcess,
    Media,
    config_text,
    device_id,
    is_msg,
    results,
    stats,
    wait_index,
    write_config,
)
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber, availability_text


def test_camera_missing_then_appearing_then_vanishing_and_returning(
    broker: Broker, media: Media, tmp_path: Path, spawn: Callable[..., DaemonProcess]
) -> None:
    dev = device_id("cam")
    prefix = f"edge-anomaly/{dev}"
    avail = f"{prefix}/line/availability"
    camera = tmp_path / "camera" / "line.avi"  # does not exist yet
    camera.parent.mkdir()
    parked = tmp_path / "parked.avi"
    shutil.copy(media.video, parked)
    # fault_after_s is long so that every fault seen here comes from the open failure, with its reason.
    cams = [
        {
            "name": "line",
            "source": str(camera),
            "loop": True,
            "fps": 15,
            "fault_after_s": 60,
            "publish_mask": "never",
        }
    ]
    config = write_config(tmp_path, config_text(dev, broker, media.bundle, cams))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    daemon = spawn(config)
    try:
        # 1. Not there at start: fault naming the path, retried with backoff, nothing scored.
        first_fault = wait_index(sub, is_msg(avail, startswith=b"fault: cannot open"))
        reason = availability_text(sub.snapshot()[first_fault])
        assert str(camera) in reason and "no such file" in reason, reason
        assert sub.wait_for(lambda m: _camera_stats(sub, prefix, "open_failures") >= 3, WAIT)
        assert _camera_stats(sub, prefix, "reconnects") >= 2  # the retries really ran (with backoff)
        assert results(sub, prefix, "line") == []

        # 2. It appears (atomically, like a camera being plugged in): online, results flow.
        appeared = time.time()
        parked.rename(camera)
        online = wait_index(sub, is_msg(avail, b"online"), since=first_fault)
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line")) >= 5, WAIT)

        # 3. It vanishes: at the end of the current loop the reopen fails -> fault with the reason.
        camera.rename(parked)
        gone = wait_index(sub, is_msg(avail, startswith=b"fault: cannot open"), since=online)
        gone_at = sub.snapshot()[gone].received_at

        # 4. It returns: online again, results resume.
        returned_at = time.time()
        parked.rename(camera)
        back = wait_index(sub, is_msg(avail, b"online"), since=gone)
        recovery_s = sub.snapshot()[back].received_at - returned_at
        assert sub.wait_for(lambda m: len(results(sub, prefix, "line", since=back)) >= 5, WAIT)
        assert daemon.alive()
        assert daemon.terminate() == 0
    finally:
        sub.close()

    got = results(sub, prefix, "line")
    ids = [r["frame_id"] for r in got]
    assert len(ids) == len(set(ids)), "a frame was published twice"
    assert ids == sorted(ids), f"frame ids went backwards: {ids}"
    # No result for a frame that never arrived: nothing
    # captured before the camera appeared or while it was gone.
    assert all(r["capture_ts"] >= appeared for r in got)
    assert not [r for r in got if gone_at < r["capture_ts"] < returned_at], "scored while the camera was gone"
    before = [r["frame_id"] for r in got if r["capture_ts"] <= gone_at]
    after = [r["frame_id"] for r in got if r["capture_ts"] >= returned_at]
    assert len(after) >= 5 and min(after) > max(before)
    final = stats(sub, prefix)[-1]["cameras"]["line"]
    assert final["open_failures"] >= 4 and final["loops"] >= 1
    statuses = [availability_text(m) for m in sub.on(avail) if m.payload]
    assert statuses.count("online") >= 2 and statuses[-1] == "offline"  # offline: the clean shutdown
    assert recovery_s < 3.0, f"the camera was back for {recovery_s:.1f} s before it was read again"
    assert not any(m.retain for m in sub.on(avail) if m.payload)  # a crash must not leave 'online' behind


def _camera_stats(sub: Subscriber, prefix: str, key: str) -> int:
    docs = stats(sub, prefix)
    return int(docs[-1]["cameras"]["line"][key]) if docs else 0
