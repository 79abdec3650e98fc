"""The daemon's last log line agrees with edge-run's exit status (issue 30, item 8).

With no broker the run exits 4 after an ERROR that results were not delivered; its last line used to read
"stopped cleanly". Both runs are subprocesses, so the last line is the one a user (or journald) sees.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.service.run_end import final_line
from tests.edge.test_daemon_e2e import config_toml
from tests.helpers.broker import Broker
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("exit")
    frames, _ = part_sequence(6, 3, size=32, seed=4)
    return {
        "bundle": make_tiny_bundle(root / "bundle", size=32),
        "video": write_video(root / "v.avi", frames),
    }


def last_line(tmp_path: Path, broker: object, media: dict) -> tuple[int, str, str]:
    cfg = tmp_path / "edge.toml"
    cams = [{"name": "line", "source": str(media["video"]), "loop": True, "fps": 20}]
    cfg.write_text(config_toml(f"x-{uuid.uuid4().hex[:6]}", broker, media["bundle"], cams))  # type: ignore[arg-type]
    done = subprocess.run(
        [sys.executable, "-m", "edge.service.cli", "--config", str(cfg), "--max-frames", "4"],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines[-1], done.stderr


def test_no_broker_ends_with_an_error_line_that_names_exit_status_4(media: dict, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, last, err = last_line(tmp_path, SimpleNamespace(host="127.0.0.1", port=port), media)
    assert rc == 4, err[-3000:]
    assert "never reached broker" in err and "stopped cleanly" not in err
    assert "level=ERROR" in last and "stopped with exit status 4" in last, last


def test_a_delivered_run_ends_stopped_cleanly_with_exit_status_0(
    broker: Broker, media: dict, tmp_path: Path
) -> None:
    rc, last, err = last_line(tmp_path, broker, media)
    assert rc == 0, err[-3000:]
    assert "level=INFO" in last and "stopped cleanly:" in last and "(exit status 0)" in last, last


def test_final_line_levels() -> None:
    assert final_line(0, 5, 1.0, 0) == (
        logging.INFO,
        "stopped cleanly: 5 frame(s) scored in 1.0 s, every result delivered (exit status 0)",
    )
    level, text = final_line(4, 5, 1.0, 3)
    assert (
        level == logging.ERROR
        and text.startswith("stopped with exit status 4: 5 frame(s)")
        and "3 result(s)" in text
    )
    level, text = final_line(1, 0, 0.2, 0)
    assert level == logging.ERROR and "unexpected error" in text and "exit status 1" in text
