"""The part tracker, its verdicts and the trigger parser, on an injected clock (no threads, no broker)."""

from __future__ import annotations

import pytest

from edge.commands import parse_trigger
from edge.config import CameraConfig, PartConfig
from edge.config.parts import check_parts
from edge.results.parts import KEEP_CLOSED, CameraResult, PartSpec, PartTracker
from edge.results.verdicts import action_of, camera_verdict, combined_verdict


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(
    cameras: tuple = ("a", "b"), trigger: str = "message", default: str = "reject", band: float = 0.0
) -> tuple[PartTracker, Clock]:
    clock = Clock()
    spec = PartSpec("pair", cameras, 0.150, default, trigger, {c: band for c in cameras})  # type: ignore[arg-type]
    return PartTracker([spec], explain=lambda cam: f"{cam} is dark", clock=clock, wall=lambda: 1e9), clock


def res(capture: float, score: float = 0.2, threshold: float = 1.0, frame_id: int = 0) -> CameraResult:
    return CameraResult(capture, 1e9, score, threshold, score > threshold, frame_id, frame_id)


def test_camera_verdicts_and_the_warn_band() -> None:
    assert camera_verdict(1.2, 1.0, True, 0.0) == "ng"
    assert camera_verdict(0.95, 1.0, False, 0.0) == "ok"  # band off
    assert camera_verdict(0.95, 1.0, False, 0.1) == "warn"
    assert camera_verdict(0.9, 1.0, False, 0.1) == "warn"  # [0.9 * thr, thr]
    assert camera_verdict(0.89, 1.0, False, 0.1) == "ok"
    assert camera_verdict(-2.1, -2.0, False, 0.1) == "warn"  # a band below a negative threshold stays below
    assert camera_verdict(-2.3, -2.0, False, 0.1) == "ok"


def test_combined_verdict_and_actions() -> None:
    assert combined_verdict(["ok", "ng", "no_result"]) == "ng"
    assert combined_verdict(["ok", "no_result", "warn"]) == "no_result"
    assert combined_verdict(["ok", "warn"]) == "warn" and combined_verdict(["ok", "ok"]) == "ok"
    assert action_of("warn", "reject") == "pass" and action_of("ng", "pass") == "reject"
    assert action_of("no_result", "reject") == "reject" and action_of("no_result", "pass") == "pass"


def test_two_cameras_ok_only_when_both_report_ok() -> None:
    parts, clock = tracker()
    assert parts.trigger("a", "P1") is None
    clock.now += 0.01
    assert parts.result("a", res(clock.now)) == []  # b has not reported yet
    clock.now += 0.01
    [done] = parts.result("b", res(clock.now, frame_id=3))
    assert (done.part_id, done.verdict, done.action, done.late, done.reason) == (
        "P1",
        "ok",
        "pass",
        False,
        None,
    )
    assert done.cameras["b"].frame_id == 3 and done.cameras["a"].verdict == "ok"
    assert parts.counts()["pair"] == {"triggered": 1, "ok": 1, "warn": 0, "ng": 0, "no_result": 0, "late": 0}


def test_ng_when_either_camera_is_ng() -> None:
    for ng_camera in ("a", "b"):
        parts, clock = tracker()
        parts.trigger("b", "P1")  # a trigger on any camera of the part opens it for all
        clock.now += 0.01
        out = [
            v
            for cam in ("a", "b")
            for v in parts.result(cam, res(clock.now, 2.0 if cam == ng_camera else 0.1))
        ]
        assert [(v.verdict, v.action) for v in out] == [("ng", "reject")]


def test_a_missing_camera_is_no_result_at_the_deadline_with_the_default_action() -> None:
    for default in ("reject", "pass"):
        parts, clock = tracker(default=default)
        parts.trigger("a", "P7")
        clock.now += 0.01
        assert parts.result("a", res(clock.now)) == []
        clock.now += 0.13
        assert parts.expire() == [] and parts.next_deadline() == pytest.approx(100.15)
        clock.now += 0.02
        [done] = parts.expire()
        assert (done.verdict, done.action, done.late) == ("no_result", default, False)
        assert done.reason == "b: b is dark" and done.cameras["b"].reason == "b is dark"
        assert done.cameras["a"].verdict == "ok"
        assert parts.counts()["pair"]["no_result"] == 1 and parts.expire() == []


def test_nothing_at_all_is_never_ok() -> None:
    parts, clock = tracker()
    parts.trigger("a", "P1")
    clock.now += 10.0
    [done] = parts.expire()
    assert done.verdict == "no_result" and done.action == "reject"
    assert set(done.cameras) == {"a", "b"} and {c.verdict for c in done.cameras.values()} == {"no_result"}


def test_ng_with_a_missing_camera_still_rejects_at_the_deadline() -> None:
    parts, clock = tracker(default="pass")
    parts.trigger("a", "P1")
    parts.result("a", res(clock.now + 0.001, score=3.0))
    clock.now += 0.2
    [done] = parts.expire()
    assert (done.verdict, done.action) == ("ng", "reject") and "b: b is dark" in (done.reason or "")


def test_a_late_verdict_is_marked_late_and_keeps_the_default_action() -> None:
    parts, clock = tracker(default="reject")
    parts.trigger("a", "P1")
    parts.result("a", res(clock.now + 0.01))
    clock.now += 0.2
    [at_deadline] = parts.expire()
    assert (at_deadline.verdict, at_deadline.action) == ("no_result", "reject")
    clock.now += 0.1
    [late] = parts.result("b", res(clock.now - 0.05))  # b's frame was captured after the trigger, scored late
    assert (late.part_id, late.verdict, late.late, late.action) == ("P1", "ok", True, "reject")
    assert late.reason is not None and "late" in late.reason
    counts = parts.counts()["pair"]
    assert counts["late"] == 1 and counts["no_result"] == 1 and counts["ok"] == 0


def test_a_result_after_its_deadline_closes_no_result_first_even_without_the_deadline_thread() -> None:
    parts, clock = tracker(cameras=("a",))
    parts.trigger("a", "P1")
    clock.now += 0.5  # the deadline thread did not run (it is what the deadline thread is for)
    out = parts.result("a", res(clock.now - 0.45))
    assert [(v.verdict, v.late, v.action) for v in out] == [
        ("no_result", False, "reject"),
        ("ok", True, "reject"),
    ]


def test_a_frame_captured_before_the_trigger_does_not_belong_to_the_part() -> None:
    parts, clock = tracker(cameras=("a",))
    parts.trigger("a", "P1")
    assert parts.result("a", res(clock.now - 0.01)) == []  # in the pipeline when the trigger came
    [done] = parts.result("a", res(clock.now + 0.02, score=0.95))
    assert done.verdict == "ok"


def test_a_frame_belongs_to_the_part_triggered_last_before_its_capture() -> None:
    parts, clock = tracker(cameras=("a",), band=0.1)
    parts.trigger("a", "P1")
    assert parts.trigger("a", "P1") is None  # the same part again: joined, not a second part
    t1 = clock.now
    clock.now += 0.01
    parts.trigger("a", "P2")
    [second] = parts.result("a", res(clock.now + 0.001, score=0.95))  # captured after P2's trigger
    assert (second.part_id, second.verdict, second.action) == ("P2", "warn", "pass")
    assert parts.result("a", res(clock.now + 0.002, score=0.1)) == []  # P2 has its frame; P1 has moved on
    [first] = parts.result("a", res(t1 + 0.005, score=0.1))  # captured between the triggers: P1's
    assert (first.part_id, first.verdict) == ("P1", "ok")
    assert parts.counts()["pair"]["triggered"] == 2


def test_a_station_behind_its_triggers_misses_parts_instead_of_making_every_later_part_late() -> None:
    parts, clock = tracker(cameras=("a",))
    out = []
    for i in range(6):  # a trigger every 100 ms, a frame scored 250 ms after its capture
        parts.trigger("a", f"P{i}")
        clock.now += 0.1
        out += parts.result("a", res(clock.now - 0.25)) if i >= 2 else parts.expire()
    clock.now += 1.0
    out += parts.expire()
    on_time = [v.part_id for v in out if not v.late and v.verdict == "ok"]
    assert on_time == [] and sorted(v.part_id for v in out if v.late) == ["P0", "P1", "P2", "P3"]
    clock.now += 0.1
    parts.trigger("a", "P9")  # caught up: the next part is on time again
    [done] = parts.result("a", res(clock.now + 0.01))
    assert (done.part_id, done.verdict, done.late) == ("P9", "ok", False)


def test_frame_trigger_each_frame_is_a_part() -> None:
    parts, clock = tracker(cameras=("a",), trigger="frame")
    assert parts.trigger("a", "P1") is not None  # a frame-triggered camera refuses trigger messages
    [one] = parts.result("a", res(clock.now - 0.02, frame_id=5))
    [two] = parts.result("a", res(clock.now - 0.01, score=5.0, frame_id=6))
    assert (one.part_id, one.verdict, one.trigger) == ("a:5", "ok", "frame")
    assert (two.part_id, two.verdict) == ("a:6", "ng")


def test_unknown_cameras_are_refused_and_closed_parts_are_forgotten_in_order() -> None:
    parts, clock = tracker()
    assert parts.trigger("zz", "P1") is not None and parts.result("zz", res(clock.now)) == []
    for i in range(KEEP_CLOSED + 5):
        parts.trigger("a", f"P{i}")
        clock.now += 1.0
        assert len(parts.expire()) == 1
    assert parts.trigger("a", f"P{KEEP_CLOSED + 4}") == f"part 'P{KEEP_CLOSED + 4}' is already closed"
    assert parts.trigger("a", "P0") is None  # forgotten: a new part of the same id


@pytest.mark.parametrize(
    ("payload", "part_id"),
    [(b"P-0042", "P-0042"), (b' "P 1" ', "P 1"), (b'{"part_id": "x"}', "x"), ("Teil-ä".encode(), "Teil-ä")],
)
def test_trigger_payloads_accepted(payload: bytes, part_id: str) -> None:
    assert parse_trigger(payload) == part_id


@pytest.mark.parametrize(
    "payload",
    [b"", b"a/b", b"#", b"x" * 65, b"{bad", b'{"part_id": 3}', b'{"id": "x"}', b"\xff", b"a\nb", b"1" * 200],
)
def test_trigger_payloads_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_trigger(payload)


def test_parts_config_is_checked() -> None:
    cams = [CameraConfig(name="a", source="0", trigger="message"), CameraConfig(name="b", source="1")]
    part = PartConfig(name="p", cameras=["a"])
    assert (part.deadline_ms, part.default_action) == (150.0, "reject")
    check_parts([part], cams)
    for bad, words in (
        ([PartConfig(name="p", cameras=["a", "b"])], "mixes trigger"),
        ([PartConfig(name="p", cameras=["c"])], "not an enabled camera"),
        ([part, PartConfig(name="q", cameras=["a"])], "one part per camera"),
        ([part, PartConfig(name="p", cameras=["b"])], "already used"),
    ):
        with pytest.raises(ValueError, match=words):
            check_parts(bad, cams)
    with pytest.raises(ValueError, match="listed twice"):
        PartConfig(name="p", cameras=["a", "a"])


def test_a_frame_triggered_part_opens_at_capture_and_a_dropped_frame_closes_it_no_result() -> None:
    parts, clock = tracker(cameras=("a",), trigger="frame")
    parts.capture("a", 5, clock.now, 1e9)  # read by the grabber: the part's deadline runs from now
    assert parts.next_deadline() == pytest.approx(clock.now + 0.150)
    clock.now += 0.01
    parts.capture("a", 6, clock.now, 1e9)
    parts.dropped("a", 5, "replaced in the slot")  # frame 5 never reaches the backend
    [six] = parts.result("a", res(clock.now, score=5.0, frame_id=6))
    assert (six.part_id, six.verdict, six.late) == ("a:6", "ng", False)
    clock.now += 0.2
    [five] = parts.expire()
    assert (five.part_id, five.verdict, five.action) == ("a:5", "no_result", "reject")
    assert five.reason == "a: replaced in the slot" and five.trigger_mono == pytest.approx(100.0)
    assert parts.result("a", res(clock.now, frame_id=99)) == []  # a frame it was never told of: no part
    assert parts.counts()["pair"] == {"triggered": 2, "ok": 0, "warn": 0, "ng": 1, "no_result": 1, "late": 0}


def test_two_frame_triggered_cameras_captured_together_make_one_part() -> None:
    parts, clock = tracker(trigger="frame")
    parts.capture("a", 1, clock.now, 1e9)
    parts.capture("b", 7, clock.now + 0.002, 1e9)
    parts.capture("a", 2, clock.now + 0.04, 1e9)  # the next part
    assert parts.result("a", res(clock.now, frame_id=1)) == []
    [one] = parts.result("b", res(clock.now + 0.002, frame_id=7))
    assert (one.part_id, sorted(one.cameras)) == ("a:1", ["a", "b"])
    assert one.cameras["b"].frame_id == 7 and parts.counts()["pair"]["triggered"] == 2
