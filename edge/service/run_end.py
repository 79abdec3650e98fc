"""How a run ends by itself: every camera's stream over (each video file played to its end).

``edge-run`` on video files stops by itself once every enabled camera has ``ended`` (a file without
``loop = true`` reached its end): the frames already read are scored and published, and it exits 0 with a
summary line. Live cameras (device, RTSP/HTTP, GStreamer) never reach ``ended`` and a looping file reopens,
so a service is never stopped by this; ``edge-run --keep-running`` keeps even an ended run up (until
SIGTERM), e.g. to look at the retained topics afterwards.

The daemon's last log line (:func:`final_line`) says how it stopped, so the end of a journal agrees with the
exit status: never "stopped cleanly" above an exit status 4.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Tuple

ENDED = "ended"  # edge.capture.sources' state for a stream that finished normally (a file without loop)


def every_camera_ended(cameras: Iterable[Any]) -> bool:
    """True when there is at least one camera and each one's source is ``ended``."""
    states = [cam.source.state for cam in cameras]
    return bool(states) and all(state == ENDED for state in states)


def ended_line(n_cameras: int, scored: int) -> str:
    """The INFO line when every stream is over and the daemon stops by itself."""
    what = "the video" if n_cameras == 1 else f"all {n_cameras} videos"
    return (
        f"end of stream: {what} played to the end, {scored} frame(s) scored; stopping "
        "(--keep-running keeps edge-run up after the end, loop = true plays a file again)"
    )


def final_line(exit_code: int, scored: int, seconds: float, undelivered: int) -> Tuple[int, str]:
    """(log level, text) of the daemon's last line; ``exit_code`` is what edge-run will return."""
    done = f"{scored} frame(s) scored in {seconds:.1f} s"
    if exit_code == 0:
        return logging.INFO, f"stopped cleanly: {done}, every result delivered (exit status 0)"
    if undelivered:
        return logging.ERROR, (
            f"stopped with exit status {exit_code}: {done}, but {undelivered} result(s) never reached the "
            "broker (the ERROR above says which and why)"
        )
    return logging.ERROR, f"stopped after an unexpected error: {done} (exit status {exit_code})"
