"""The pieces that bound what a command may cost: rebirth coalescing, the payload and metric caps, and log
lines that a storm cannot multiply (Sparkplug refusals, retained commands, model/set busy refusals).
The end-to-end bounds (70 MB DCMD, 3000 rebirths) are in tests/faults/test_sparkplug_limits.py."""

from __future__ import annotations

import logging

import pytest

from edge.commands import CommandDesk
from edge.faces.sparkplug import limits
from edge.faces.sparkplug.sparkplug_b_pb2 import Payload
from edge.util.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rebirths_are_served_at_once_then_coalesced() -> None:
    clock = Clock()
    gate = limits.RebirthGate(1.0, clock)
    assert gate.request()  # the first: at once
    assert not any(gate.request() for _ in range(2999))  # the storm: coalesced
    assert not gate.due()
    clock.now += 1.0
    assert gate.due() and not gate.due()  # one rebirth serves them all
    clock.now += 5.0
    assert gate.request()  # a later request, alone: at once again


def test_commands_over_the_byte_cap_are_refused_unread_and_too_many_metrics_whole() -> None:
    one = Payload()
    metric = one.metrics.add()
    metric.name, metric.datatype, metric.double_value = "Inspection/Threshold", 10, 2.0
    data = one.SerializeToString()
    commands, why, counter = limits.decode_commands(data)
    assert commands is not None and len(commands) == 1 and counter == ""
    commands, why, counter = limits.decode_commands(data * (limits.MAX_METRICS + 1))
    assert commands is None and counter == "commands_too_many_metrics" and "metrics" in why
    big = b"\x00" * (limits.MAX_COMMAND_BYTES + 1)  # not even valid protobuf: refused before decoding
    commands, why, counter = limits.decode_commands(big)
    assert commands is None and counter == "commands_too_large"
    assert limits.connect_properties().MaximumPacketSize == limits.MAX_PACKET_BYTES


def test_a_storm_is_one_log_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rate = RateLimitedLog(logging.getLogger("test.rate"), 10.0, clock)
    caplog.set_level(logging.WARNING, logger="test.rate")
    logged = [rate.warning("busy", "refused %d", i) for i in range(1000)]
    assert logged.count(True) == 1
    clock.now += 10.0
    assert rate.warning("busy", "refused %d", 1000)
    assert rate.warning("other", "another kind")  # keys are limited apart
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused 1000 (and 999 more like it in the last 10 s, not logged)",
                     "another kind"]  # fmt: skip


def test_retained_command_refusals_are_counted_each_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge.api")
    cleared: list = []
    desk = CommandDesk(cleared.append)
    for _ in range(500):
        assert not desk.admit("line/threshold/set", "p/line/threshold/set", b"9", retain=True)
    assert desk.snapshot()["rejected_retained"] == 500 and len(cleared) == 500
    assert len([r for r in caplog.records if "retained" in r.getMessage()]) == 1


def test_model_set_busy_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A model/set storm was already bounded (busy, counted) but wrote one ERROR line per refusal."""
    import queue
    import threading

    from edge.service.changeover import Changeover

    caplog.set_level(logging.ERROR, logger="edge.changeover")
    desk = object.__new__(Changeover)  # only the request path: a full queue, no thread, no model
    desk._requests = queue.Queue(1)
    desk._requests.put_nowait(([], "A", "mqtt"))
    desk._lock, desk._errors = threading.Lock(), {}
    published: list = []
    desk.publish_state = published.append  # type: ignore[method-assign]
    answers = [desk.request(["line"], "B", "mqtt") for _ in range(300)]
    assert all(a is not None and a.startswith("busy") for a in answers)
    assert len(published) == 300  # each refusal is still answered on model/state
    assert len([r for r in caplog.records if "busy" in r.getMessage()]) == 1
