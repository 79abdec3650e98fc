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


def idle_current_thread() -> bool:
    """Put the calling thread in the idle scheduling class: it runs only on a core nothing else wants.

    For work that may starve when the CPU is saturated and lose nothing but itself (the evidence writer:
    its bounded queue then drops, counted). Linux only; False where it cannot be applied.
    """
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread on Linux
        return True
    except OSError as exc:
        log.debug("could not move thread %s to the idle class: %s", threading.current_thread().name, exc)
        return False
