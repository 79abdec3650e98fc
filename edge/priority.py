"""Inference first: capture and publishing threads yield the CPU to the backend's threads.

On a small device the backend's worker threads want every core, and they meet at a barrier after each
parallel section: a capture or publishing thread that preempts one of them stalls all of them. Running
those helper threads at a higher nice value lets the scheduler give the cores to inference whenever it is
runnable while the helpers fill its idle gaps. Nice (not the idle scheduling class) means they are never
starved: under full load they still get their share, so frames keep arriving and results keep leaving.

Linux applies nice per thread (a thread is a task); elsewhere this is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def lower_current_thread_priority(increment: int) -> bool:
    """Add ``increment`` to the calling thread's nice value (capped at 19); True if it was applied."""
    if increment <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
        return True
    except OSError as exc:  # e.g. a seccomp filter: priorities are an optimisation, never a failure
        log.debug("could not lower the priority of thread %s: %s", threading.current_thread().name, exc)
        return False
