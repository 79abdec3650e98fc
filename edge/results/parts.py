"""The part tracker: triggers open parts, camera results join them, the deadline closes them.

A part opens on its trigger: a trigger message with a part id (cameras with ``trigger = "message"``) or the
captured frame itself (``trigger = "frame"``: :meth:`PartTracker.capture`, when the frame is read, so a frame
dropped before it is scored still closes its part ``no_result`` at the deadline, saying why). A camera's
result belongs to the part in front of the camera when its frame was captured: the newest part triggered at or
before the capture. A frame captured after the next part's trigger never goes to an earlier part: on a line
that part has moved on, and under overload handing each frame to the oldest waiting part would make every
later part late in turn; a part whose window held no scored frame closes ``no_result``.

The part closes with the combined verdict when every camera reported, or at its deadline with what it has: a
missing camera makes it ``no_result`` (with the reason :attr:`PartTracker.explain` gives and the configured
default action) unless another camera already said ``ng``. A camera that reports after the deadline completes
a *late* verdict: published with ``late`` set and the default action, never another.

Pure logic, thread-safe (one lock), clocks injected: the publish thread calls :meth:`PartTracker.result`,
the network thread :meth:`PartTracker.trigger`, the deadline thread (:mod:`edge.service.parts`)
:meth:`PartTracker.expire`, so a stalled inference thread still closes every part on time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from edge.results.verdicts import ActionName, VerdictName, action_of, camera_verdict, combined_verdict

COUNTED = ("triggered", "ok", "warn", "ng", "no_result", "late")
KEEP_CLOSED = 64  # parts closed at their deadline still waiting for a late camera (oldest forgotten first)


@dataclass(frozen=True)
class PartSpec:
    """One ``[[parts]]`` table, with the warn band of each of its cameras."""

    name: str
    cameras: Tuple[str, ...]
    deadline_s: float
    default_action: ActionName
    trigger: str  # "frame" or "message"
    warn_bands: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CameraResult:
    """What the tracker needs of one published per-camera result."""

    capture_mono: float
    capture_ts: float
    score: float
    threshold: float
    anomalous: bool
    seq: int
    frame_id: int
    verdict: Optional[VerdictName] = None  # as published on the result; None: judged here with the warn band


@dataclass(frozen=True)
class CameraOutcome:
    """One camera of a closed part: its verdict and, when it reported, its result."""

    verdict: VerdictName
    score: Optional[float] = None
    threshold: Optional[float] = None
    seq: Optional[int] = None
    frame_id: Optional[int] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class PartVerdict:
    """A closed part, as it is published on ``<prefix>/part/<name>``."""

    part: str
    part_id: str
    trigger: str
    verdict: VerdictName
    action: ActionName
    reason: Optional[str]
    late: bool
    trigger_mono: float
    trigger_ts: float
    verdict_mono: float
    verdict_ts: float
    deadline_s: float
    cameras: Dict[str, CameraOutcome]


@dataclass
class _Part:
    spec: PartSpec
    part_id: str
    trigger_mono: float
    trigger_ts: float
    reports: Dict[str, CameraOutcome] = field(default_factory=dict)
    closed: bool = False  # closed at the deadline; still waiting for a late camera
    until: float = float("inf")  # the next part's trigger: a frame captured from then on is not this part's
    captured: Dict[str, int] = field(default_factory=dict)  # frame-triggered: camera -> the frame id it took
    dropped: Dict[str, str] = field(default_factory=dict)  # camera -> why its frame was never scored

    @property
    def deadline(self) -> float:
        return self.trigger_mono + self.spec.deadline_s

    def waits_for(self, camera: str, capture_mono: float) -> bool:
        return camera not in self.reports and self.trigger_mono <= capture_mono < self.until


class PartTracker:
    """Open parts, their deadlines and the verdicts they close with (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[PartSpec],
        explain: Callable[[str], str] = lambda camera: "no frame since the trigger",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.explain = explain  # camera -> why it has no result (camera fault, model switch, stall, ...)
        self._clock = clock
        self._wall = wall
        self._spec_of: Dict[str, PartSpec] = {cam: spec for spec in specs for cam in spec.cameras}
        self._lock = threading.Lock()
        self._parts: List[_Part] = []  # open and closed-but-incomplete, oldest trigger first
        self._counts: Dict[str, Dict[str, int]] = {s.name: dict.fromkeys(COUNTED, 0) for s in specs}
        self._capturing: Set[str] = set()  # frame-triggered cameras told of their captures (capture())

    def spec(self, camera: str) -> Optional[PartSpec]:
        return self._spec_of.get(camera)

    # --- inputs ------------------------------------------------------------------------------------------

    def trigger(self, camera: str, part_id: str) -> Optional[str]:
        """A trigger message for ``camera``'s part: None when it opened (or joined) the part, else why not."""
        spec = self._spec_of.get(camera)
        if spec is None:
            return f"camera {camera!r} is in no [[parts]] table"
        if spec.trigger != "message":
            return f"camera {camera!r} is frame-triggered (trigger = 'frame'); set trigger = 'message'"
        with self._lock:
            for part in self._parts:
                if part.spec is spec and part.part_id == part_id:
                    return None if not part.closed else f"part {part_id!r} is already closed"
            self._open(spec, part_id, self._clock(), self._wall())
        return None

    def capture(self, camera: str, frame_id: int, capture_mono: float, capture_ts: float) -> None:
        """A frame-triggered camera read a frame: it opens a part (or joins the one its other cameras opened
        within the same trigger window), whose deadline runs from now."""
        spec = self._spec_of.get(camera)
        if spec is None or spec.trigger != "frame":
            return
        with self._lock:
            self._capturing.add(camera)
            part = next(
                (p for p in self._parts if p.spec is spec and not p.closed and camera not in p.captured
                 and p.trigger_mono <= capture_mono < p.until),
                None,
            )  # fmt: skip
            if part is None:
                part = self._open(spec, f"{camera}:{frame_id}", capture_mono, capture_ts)
            part.captured[camera] = frame_id

    def dropped(self, camera: str, frame_id: int, why: str) -> None:
        """``camera``'s frame ``frame_id`` will never be scored: its part's reason says ``why``."""
        with self._lock:
            part = self._captured(camera, frame_id)
            if part is not None and camera not in part.reports:
                part.dropped[camera] = why

    def result(self, camera: str, res: CameraResult) -> List[PartVerdict]:
        """A camera's published result: the verdicts it closes (a part on time, a late one, or none)."""
        spec = self._spec_of.get(camera)
        if spec is None:
            return []
        verdict = res.verdict or camera_verdict(
            res.score, res.threshold, res.anomalous, spec.warn_bands.get(camera, 0.0)
        )
        outcome = CameraOutcome(verdict, res.score, res.threshold, res.seq, res.frame_id)
        with self._lock:
            if camera in self._capturing:  # its part opened at capture (or was forgotten long ago)
                part = self._captured(camera, res.frame_id)
            else:
                part = self._waiting(camera, res.capture_mono)
                if part is None and spec.trigger == "frame":
                    part = self._open(spec, f"{camera}:{res.frame_id}", res.capture_mono, res.capture_ts)
            closed = self._expire_locked(self._clock())  # a result that comes after its deadline is late
            if part is None:
                return closed
            part.reports[camera] = outcome
            if len(part.reports) == len(spec.cameras):
                self._parts.remove(part)
                closed.append(self._close(part, late=part.closed))
            return closed

    def expire(self) -> List[PartVerdict]:
        """Close every part whose deadline has passed (the deadline thread calls this)."""
        with self._lock:
            return self._expire_locked(self._clock())

    # --- state -------------------------------------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        with self._lock:
            open_parts = [p.deadline for p in self._parts if not p.closed]
        return min(open_parts) if open_parts else None

    def counts(self) -> Dict[str, Dict[str, int]]:
        with self._lock:
            return {name: dict(c) for name, c in self._counts.items()}

    # --- inside the lock ---------------------------------------------------------------------------------

    def _open(self, spec: PartSpec, part_id: str, trigger_mono: float, trigger_ts: float) -> _Part:
        part = _Part(spec, part_id, trigger_mono, trigger_ts)
        for before in reversed(self._parts):
            if before.spec is spec and before.trigger_mono <= trigger_mono:
                before.until = min(before.until, trigger_mono)
                break
        self._parts.append(part)
        self._parts.sort(key=lambda p: p.trigger_mono)
        self._counts[spec.name]["triggered"] += 1
        return part

    def _waiting(self, camera: str, capture_mono: float) -> Optional[_Part]:
        """The part in front of ``camera`` at the capture (see the module docstring), if it still waits."""
        for part in self._parts:
            if camera in part.spec.cameras and part.waits_for(camera, capture_mono):
                return part
        return None

    def _captured(self, camera: str, frame_id: int) -> Optional[_Part]:
        for part in self._parts:
            if part.captured.get(camera) == frame_id:
                return part
        return None

    def _expire_locked(self, now: float) -> List[PartVerdict]:
        closed: List[PartVerdict] = []
        for part in self._parts:
            if not part.closed and now >= part.deadline:
                part.closed = True
                closed.append(self._close(part, late=False))
        pending = [p for p in self._parts if p.closed]
        for part in pending[: max(0, len(pending) - KEEP_CLOSED)]:
            self._parts.remove(part)  # a camera that never reports: forget the oldest
        return closed

    def _close(self, part: _Part, late: bool) -> PartVerdict:
        spec = part.spec
        cameras = dict(part.reports)
        for cam in spec.cameras:
            if cam not in cameras:
                cameras[cam] = CameraOutcome("no_result", reason=part.dropped.get(cam) or self._why(cam))
        verdict = combined_verdict(c.verdict for c in cameras.values())
        missing = [f"{cam}: {c.reason}" for cam, c in cameras.items() if c.verdict == "no_result"]
        reason = "; ".join(missing) or None
        action = spec.default_action if late else action_of(verdict, spec.default_action)
        if late:
            reason = "late: the deadline had passed; the default action stood"
        self._counts[spec.name]["late" if late else verdict] += 1
        return PartVerdict(
            part=spec.name, part_id=part.part_id, trigger=spec.trigger, verdict=verdict, action=action,
            reason=reason, late=late, trigger_mono=part.trigger_mono, trigger_ts=part.trigger_ts,
            verdict_mono=self._clock(), verdict_ts=self._wall(), deadline_s=spec.deadline_s, cameras=cameras,
        )  # fmt: skip

    def _why(self, camera: str) -> str:
        try:
            return self.explain(camera)
        except Exception as exc:  # a reason must never stop a verdict
            return f"unknown ({type(exc).__name__})"
