"""An RTSP camera's password never leaves the process: not in the journal (stderr), not in --check-config,
not in any MQTT payload (availability, stats, status, results). The real daemon, a real broker, and a
camera URL that fails to open, so its URL lands in the fault reason that is published and logged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.faults.conftest import (
    REPO,
    WAIT,
    config_text,
    daemon_env,
    device_id,
    write_config,
)
from tests.helpers.mqtt import Subscriber

SECRET = "S3cr3t-rtsp-pw"
RTSP = f"rtsp://admin:{SECRET}@127.0.0.1:1/stream"  # port 1: refused at once, so the camera faults
QUERY_SECRET, QUERY_USER = "Qu3ry-pwd-s3cret", "qadmin-user"
HTTP = f"http://127.0.0.1:1/videostream.cgi?user={QUERY_USER}&pwd={QUERY_SECRET}&rate=5"
HTTP_SHOWN = "http://127.0.0.1:1/videostream.cgi?user=***&pwd=***&rate=5"


def test_rtsp_password_is_never_printed_or_published(tmp_path: Path, broker, media, spawn) -> None:  # noqa: ANN001
    dev = device_id("redact")
    prefix = f"edge-anomaly/{dev}"
    cams = [
        {"name": "line", "source": str(media.video), "loop": True, "fps": 20},
        {"name": "ip", "source": RTSP, "fault_after_s": 0.5},
        {"name": "web", "source": HTTP, "fault_after_s": 0.5},
    ]
    config = write_config(tmp_path, config_text(dev, broker, media.bundle, cams, log_level="DEBUG"))
    sub = Subscriber(broker.host, broker.port, [f"{prefix}/#"])
    try:
        daemon = spawn(config)

        def seen_everything(msgs: list) -> bool:
            topics = {m.topic for m in msgs}
            fault = [
                m for m in msgs if m.topic == f"{prefix}/ip/availability" and b'"state":"fault"' in m.payload
            ]
            web = [
                m for m in msgs if m.topic == f"{prefix}/web/availability" and b'"state":"fault"' in m.payload
            ]
            stats = [m for m in msgs if m.topic == f"{prefix}/stats" and b"cannot open" in m.payload]
            return bool(
                fault and web and stats and f"{prefix}/line/result" in topics and f"{prefix}/status" in topics
            )

        assert sub.wait_for(seen_everything, WAIT), [m.topic for m in sub.snapshot()]
        assert daemon.terminate() == 0, daemon.output()[-3000:]
        sub.barrier()
        messages = sub.snapshot()
    finally:
        sub.close()
    payloads = b"\n".join(m.payload for m in messages)
    for secret in (SECRET, QUERY_SECRET, QUERY_USER):
        assert secret.encode() not in payloads, secret
    assert HTTP_SHOWN.encode() in payloads  # the availability reason and the retained status name it redacted
    assert b"rtsp://***@127.0.0.1:1/stream" in payloads  # the reason is published, only redacted
    status = [m.json() for m in messages if m.topic == f"{prefix}/status" and m.payload.startswith(b"{")]
    assert status and all("signer" in s["model"] for s in status if s.get("state") == "online")
    log = daemon.output()
    assert SECRET not in log and QUERY_SECRET not in log and QUERY_USER not in log
    assert "rtsp://***@127.0.0.1:1/stream" in log

    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.service.cli",
            "--config",
            str(config),
            "--check-config",
            "--no-camera-open",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=REPO,
        env=daemon_env(),
    )
    assert check.returncode == 0, check.stderr
    for secret in (SECRET, QUERY_SECRET, QUERY_USER):
        assert secret not in check.stdout + check.stderr, secret
    assert HTTP_SHOWN in check.stdout
    assert "rtsp://***@127.0.0.1:1/stream" in check.stdout
