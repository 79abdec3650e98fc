"""Progress on stderr: the training line (loss, images/s, ETA) and :func:`bar`, tqdm for every other long
step (evaluation, the export's reference run, int8 calibration, the accuracy gate)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, done: int = 0, enabled: bool = True, label: str = "train") -> None:
        self.total, self.done, self.enabled, self.label = total, done, enabled, label
        self.started = time.perf_counter()
        self.steps = 0  # steps taken by this process (a resumed run starts with done > 0)
        self.images = 0
        self.last_print = 0.0
        self.tty = sys.stderr.isatty()

    def step(self, images: int, loss: float) -> None:
        self.done += 1
        self.steps += 1
        self.images += images
        now = time.perf_counter()
        if not self.enabled or (
            now - self.last_print < (0.5 if self.tty else 10.0) and self.done < self.total
        ):
            return
        self.last_print = now
        elapsed = now - self.started
        rate = self.images / elapsed if elapsed > 0 else 0.0
        steps_rate = self.steps / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / steps_rate if steps_rate > 0 else float("inf")
        line = (
            f"{self.label} {self.done}/{self.total} steps | loss {loss:.4f} | {rate:.1f} img/s | "
            f"ETA {format_seconds(eta)}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def bar(total: int, desc: str, unit: str = "img", enabled: bool = True) -> Any:
    """A tqdm bar on stderr for a step that takes long (``with bar(n, "scoring") as b: ... b.update(k)``).

    On a terminal it redraws twice a second; in a log (not a terminal) it writes a line every 10 s, so a
    journal or CI log shows the step is alive without a line per batch."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.5 if tty else 10.0,
        leave=True,
        dynamic_ncols=tty,
    )
