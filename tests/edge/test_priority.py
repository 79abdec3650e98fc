"""Helper threads lower their own priority, never another thread's, and never fail the caller."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from edge.util.priority import lower_current_thread_priority

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice is Linux behaviour"
)


@linux_only
def test_only_the_calling_thread_is_lowered() -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, int] = {}

    def helper() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["applied"] = lower_current_thread_priority(5)
        seen["delta"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen["applied"] and seen["delta"] == min(5, 19 - main_before)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


def test_zero_means_off_and_errors_are_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lower_current_thread_priority(0) is False

    def refuse(*args: object) -> None:
        raise PermissionError("seccomp")

    monkeypatch.setattr(os, "setpriority", refuse)
    assert lower_current_thread_priority(3) is False
