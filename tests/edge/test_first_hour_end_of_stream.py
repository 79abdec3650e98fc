"""edge-run on a video file stops by itself at the end of the stream (issue 30, item 2).

A short generated video without ``loop``: edge-run exits 0 with a summary line once the camera has ended,
every frame's result delivered. ``loop = true`` keeps playing and ``--keep-running`` keeps an ended run up;
live cameras never reach ``ended``, so :func:`every_camera_ended` never stops a service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.service.run_end import every_camera_ended
from tests.edge.test_daemon_e2e import config_toml
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Subscriber
from tests.helpers.tiny_bundle import make_tiny_bundle
from training.synthetic import part_sequence, write_video

REPO = Path(__file__).resolve().parents[2]
FRAMES = 8

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eos")
    frames, _ = part_sequence(FRAMES, 3, size=96, seed=21)
    return {
        "bundle": make_tiny_bundle(root / "bundle", size=96),
        "video": write_video(root / "short.avi", frames),
    }


class Run:
    """``python -m edge.service.cli`` with its output collected line by line as it comes."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.service.cli", "--config", str(config), *args],
            cwd=REPO,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def finish(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


def _config(tmp_path: Path, broker: Broker, media: dict, dev: str, **camera: object) -> Path:
    tmp_path.mkdir(exist_ok=True)
    cfg = tmp_path / "edge.toml"
    cams = [{"name": "line", "source": str(media["video"]), "fps": 20, **camera}]
    cfg.write_text(config_toml(dev, broker, media["bundle"], cams), encoding="utf-8")
    return cfg


def test_a_video_file_that_ends_stops_edge_run_with_exit_0(
    broker: Broker, media: dict, tmp_path: Path, procs: list[subprocess.Popen]
) -> None:
    dev = f"eos-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.host, broker.port, [f"edge-anomaly/{dev}/line/result"])
    try:
        run = Run(_config(tmp_path, broker, media, dev))
        procs.append(run.proc)
        assert run.finish() == 0, "\n".join(run.lines)
        assert sub.wait_for(lambda m: len(m) >= FRAMES, 30), sub.count()
    finally:
        sub.close()
    summary = [line for line in run.lines if "end of stream" in line and "stopping" in line]
    assert len(summary) == 1, run.lines
    assert "frame(s) scored" in summary[0] and "--keep-running" in summary[0]
    assert sub.count() == FRAMES  # every frame of the file was scored and delivered


def test_keep_running_and_loop_stay_up_after_the_end(
    broker: Broker, media: dict, tmp_path: Path, procs: list[subprocess.Popen]
) -> None:
    runs = {
        "keep": Run(_config(tmp_path / "a", broker, media, f"keep-{uuid.uuid4().hex[:6]}"), "--keep-running"),
        "loop": Run(_config(tmp_path / "b", broker, media, f"loop-{uuid.uuid4().hex[:6]}", loop=True)),
    }
    procs.extend(run.proc for run in runs.values())
    # --keep-running: the camera ends, the daemon stays; loop = true: the file is reopened, never ends
    assert runs["keep"].wait_line("(end of stream)"), runs["keep"].lines
    time.sleep(2 * FRAMES / 20 + 1.0)  # well past the end of the 0.4 s video, for both
    for name, run in runs.items():
        assert run.proc.poll() is None, (name, run.lines)
        run.proc.send_signal(signal.SIGINT)
    for name, run in runs.items():
        assert run.finish() == 0, (name, run.lines)
        assert not [line for line in run.lines if "end of stream:" in line], (name, run.lines)


@pytest.mark.parametrize(
    ("states", "ended"),
    [
        (["ended"], True),
        (["ended", "ended"], True),
        (["ended", "online"], False),  # a live camera (or a looping file) keeps the daemon up
        (["ended", "fault"], False),  # a camera that cannot open is retried, not given up
        ([], False),
    ],
)
def test_every_camera_ended(states: list[str], ended: bool) -> None:
    cameras = [SimpleNamespace(source=SimpleNamespace(state=s)) for s in states]
    assert every_camera_ended(cameras) is ended
