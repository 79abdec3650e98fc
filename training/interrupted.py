"""The one line ``edge-train`` prints when Ctrl-C stops it: how far it got and how to go on.

Each finished epoch is already in ``<out>/checkpoint.pt`` (written atomically), and running the same command
again resumes from it, so the interruption needs no traceback: only the epoch it stopped after.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from training.checkpoint import CheckpointError, load_checkpoint
from training.train import CHECKPOINT_NAME

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def interrupted_line(out: Path) -> str:
    """``interrupted after epoch N; run again to resume`` (or that no epoch had finished yet)."""
    path = Path(out) / CHECKPOINT_NAME
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = load_checkpoint(path).train_state if path.is_file() else {}
    except (CheckpointError, OSError):
        state = {}
    epoch = int(state.get("epoch", 0) or 0)
    if state.get("completed"):
        return f"interrupted after training finished (epoch {epoch}); {path} is complete"
    if epoch < 1:
        return "interrupted before the first epoch finished; run again to start (the same command)"
    return f"interrupted after epoch {epoch}; run again to resume (the same command, from {path})"
