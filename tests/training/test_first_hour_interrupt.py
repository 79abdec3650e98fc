"""Ctrl-C during ``edge-train``: one line saying how far it got, exit 130, no traceback (issue 30, item 6).

edge-train runs as a subprocess on generated good images with a tiny model; SIGINT (what Ctrl-C sends) comes
once the first epoch's checkpoint is on disk, so the line must name an epoch that the checkpoint holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.checkpoint import load_checkpoint
from training.interrupted import interrupted_line
from training.synthetic import write_good_folder

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "image_size=64", "--set", "depth=1", "--set", "dim=32", "--val-fraction", "0.25"]


@pytest.mark.timeout(300)
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path: Path) -> None:
    good = write_good_folder(tmp_path / "good", 24, size=64, seed=3)
    out = tmp_path / "run"
    # Ctrl-C from a terminal: SIGINT raises KeyboardInterrupt. A run started in the background by a
    # non-interactive shell (`bash scripts/test.sh &`) inherits SIGINT ignored, and Python keeps it ignored.
    start = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    cmd = [sys.executable, "-c", start + "from training.cli import train_main; sys.exit(train_main())"]
    args = ["--model", "gtrans", "--data", str(good), "--out", str(out), "--epochs", "200", *TINY]
    proc = subprocess.Popen(
        [*cmd, *args],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    epoch = load_checkpoint(out / "checkpoint.pt").train_state["epoch"]
    assert epoch >= 1
    assert last == (
        f"edge-train: interrupted after epoch {epoch}; run again to resume "
        f"(the same command, from {out / 'checkpoint.pt'})"
    )
    assert stdout == ""  # the checkpoint's path is printed only when training finished


def test_interrupted_before_any_epoch(tmp_path: Path) -> None:
    assert interrupted_line(tmp_path).startswith("interrupted before the first epoch finished; run again")
