"""ThresholdBook: precedence, refusals, the accepted range, and the state file that outlives a restart."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from edge.commands import ThresholdError
from edge.results.thresholds import InForce, ThresholdBook, resolve_state_dir, threshold_range

LO, HI = -10.0, 100.0


def test_precedence_and_a_refusal_changes_nothing() -> None:
    book = ThresholdBook(default=4.0, fixed={"a": None, "b": 2.5}, lo=LO, hi=HI)
    assert book.get("a") == (4.0, "manifest")
    assert book.get("b") == (2.5, "config")
    assert book.set_from_payload("a", b"1.25", now=1000.0) == InForce(1.25, "mqtt", 1000.0)
    assert book.get("a") == (1.25, "mqtt")
    with pytest.raises(ThresholdError, match="outside"):
        book.set_from_payload("a", b"1000")
    assert book.get("a") == (1.25, "mqtt")
    with pytest.raises(ThresholdError, match="fixed in the config"):
        book.set_from_payload("b", b"1.0")
    assert book.get("b") == (2.5, "config")


def test_range_comes_from_calibration_unless_configured() -> None:
    # from half way between the median good part (0) and its 99th percentile (1) to 3x the bundle's threshold
    # or 5 good spreads above it: a threshold in range still separates something
    assert threshold_range(4.0, None, None) == (0.5, 12.0)
    assert threshold_range(30.0, None, None) == (0.5, 90.0)
    assert threshold_range(0.2, None, None) == (0.2, 5.2)  # the bundle's own threshold is always accepted
    assert threshold_range(4.0, -2.0, 8.0) == (-2.0, 8.0)
    with pytest.raises(ValueError, match="empty"):
        threshold_range(4.0, 200.0, None)
    lo, hi = threshold_range(4.0, None, None)
    book = ThresholdBook(default=4.0, fixed={}, lo=lo, hi=hi)
    with pytest.raises(ThresholdError, match="outside the allowed range"):
        book.set_from_payload("a", b"-1")


@pytest.mark.parametrize("payload", [b"100", b"5e-324", b"0", b"0.49", b"33.7"])
def test_thresholds_that_switch_inspection_off_are_refused(payload: bytes) -> None:
    """The audit's values: 100 was accepted on a [0, 112] range (bundle threshold 11.2), and 5e-324."""
    lo, hi = threshold_range(11.2, None, None)
    assert (lo, hi) == (0.5, pytest.approx(33.6))
    book = ThresholdBook(default=11.2, fixed={}, lo=lo, hi=hi)
    with pytest.raises(ThresholdError, match="outside the allowed range"):
        book.set_from_payload("a", payload)
    assert book.get("a") == (11.2, "manifest")
    book.set_from_payload("a", b"20")  # inside: accepted
    assert book.get("a")[0] == 20.0
    wide_lo, wide_hi = threshold_range(11.2, 0.0, 200.0)  # the config widens the range
    widened = ThresholdBook(default=11.2, fixed={}, lo=wide_lo, hi=wide_hi)
    widened.set_from_payload("a", payload)


def test_a_set_that_cannot_be_recorded_is_refused_and_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "thresholds.json"
    book = ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1")
    book.set_from_payload("a", b"2.5", now=1.0)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edge.results.thresholds.write_json_atomically", full_disk)
    with pytest.raises(ThresholdError, match="cannot record the threshold.*No space left.*not applied"):
        book.set_from_payload("a", b"3.5")
    assert book.in_force("a") == InForce(2.5, "mqtt", 1.0)  # the recorded one stays in force
    monkeypatch.undo()
    assert ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1").get("a") == (2.5, "mqtt")


def test_a_set_survives_a_restart_through_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "thresholds.json"
    book = ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1")
    book.set_from_payload("a", b"2.5", now=1234.5)
    again = ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1")
    assert again.in_force("a") == InForce(2.5, "mqtt", 1234.5)
    assert again.in_force("b") == InForce(4.0, "manifest")


def test_a_recorded_value_for_another_model_or_out_of_range_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1").set_from_payload("a", b"50")
    assert ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@2").get("a") == (4.0, "manifest")
    assert ThresholdBook(4.0, {}, LO, 20.0, state_file=path, model_id="m@1").get("a") == (4.0, "manifest")
    path.write_text("{not json", encoding="utf-8")
    assert ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1").get("a") == (4.0, "manifest")
    path.write_text(
        json.dumps({"format": 1, "model": "m@1", "thresholds": {"a": {"x": 1}}}), encoding="utf-8"
    )
    assert ThresholdBook(4.0, {}, LO, HI, state_file=path, model_id="m@1").get("a") == (4.0, "manifest")


def test_state_dir_default_prefers_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_state_dir(tmp_path) == tmp_path
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert resolve_state_dir(None) == tmp_path / "a"


def test_a_changeover_gives_the_camera_its_new_model_default_and_records_sets_per_model(
    tmp_path: Path,
) -> None:
    state = tmp_path / "thresholds.json"
    book = ThresholdBook(default=4.0, fixed={}, lo=LO, hi=HI, state_file=state, model_id="A@1")
    book.set_from_payload("line", b"3.0")
    book.model_changed("line", 6.0, "B@2")  # the set was made for A's scores: dropped, B's default applies
    assert book.get("line") == (6.0, "manifest")
    book.set_from_payload("line", b"7.5")
    assert json.loads(state.read_text())["thresholds"]["line"]["model"] == "B@2"
    # a restart with the camera on B keeps the set; a restart with the camera back on A does not
    on_b = ThresholdBook(
        default=4.0, fixed={}, lo=LO, hi=HI, state_file=state, model_id="A@1", models={"line": "B@2"}
    )
    assert on_b.get("line") == (7.5, "mqtt")
    on_a = ThresholdBook(default=4.0, fixed={}, lo=LO, hi=HI, state_file=state, model_id="A@1")
    assert on_a.get("line") == (4.0, "manifest")


def test_each_camera_accepts_the_range_of_the_bundle_it_runs(tmp_path: Path) -> None:
    lo, hi = threshold_range(1.0, None, None)  # bundle A's calibration: [0.5, 6]
    state = tmp_path / "thresholds.json"
    book = ThresholdBook(default=1.0, fixed={}, lo=lo, hi=hi, state_file=state, model_id="A@1")
    book.model_changed("line", 50.0, "B@2")  # B's scores are larger: its range reaches 150
    assert book.range("line") == threshold_range(50.0, None, None) == (0.5, 150.0)
    assert book.range("side") == (0.5, 6.0)
    book.set_from_payload("line", b"100")
    with pytest.raises(ThresholdError):
        book.set_from_payload("side", b"100")  # still on A
    # after a restart, line (on B) keeps 100; it is checked against B's range, not A's
    again = ThresholdBook(1.0, {}, lo, hi, state_file=state, model_id="A@1", models={"line": "B@2"})
    again.model_changed("line", 50.0, "B@2", keep_live=True)
    assert again.get("line") == (100.0, "mqtt")
    # the same record on a B whose calibration now tops out lower is dropped, not applied
    low = ThresholdBook(1.0, {}, lo, hi, state_file=state, model_id="A@1", models={"line": "B@2"})
    low.model_changed("line", 20.0, "B@2", keep_live=True)
    assert low.get("line") == (20.0, "manifest")
    # configured bounds hold for every bundle
    fixed = ThresholdBook(1.0, {}, 0.5, 9.0, model_id="A@1", bounds=(0.5, 9.0))
    fixed.model_changed("line", 50.0, "B@2")
    assert fixed.range("line") == (0.5, 9.0)
