"""``edge-bench line`` end to end on the tiny bundle, a real mosquitto, the real daemon and real MQTT, OPC UA
and frame triggers. Durations are tiny, so the numbers are noise: the test checks that the report's fields
exist and agree with each other (every trigger accounted for, latencies ordered, ratios computed from the
fields they name), never a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import EXIT_INPUT, EXIT_OK, main
from benchmarks.line_report import line_ratios
from tests.helpers.tiny_bundle import make_tiny_bundle

pytest.importorskip("asyncua", reason="the OPC UA triggers need asyncua (pip install 'edge-anomaly[opcua]')")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("line") / "bundle", size=64)


def test_line_end_to_end(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["line", "--bundle", str(bundle), "--duration", "1.5", "--warmup", "0.2", "--slices", "1"]
    assert (
        main([*args, "--trigger-rate", "20", "--deadline-ms", "300", "--out", str(out), "--quiet"]) == EXIT_OK
    )
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    line = report["line"]
    assert report["scenario"] == "line" and line["trigger_rate_hz"] == 20.0 and line["deadline_ms"] == 300.0
    assert line["trigger_rate_basis"] == "--trigger-rate" and line["bare_rate_at_start_ips"] > 0
    bare = line["bare"]["latency_ms"]
    assert line["bare"]["calls"] == bare["n"] > 0 and 0 < bare["p50"] <= bare["p99"]
    assert set(line["modes"]) == {"mqtt", "opcua", "frame"}
    for mode, m in line["modes"].items():
        answered = m["on_time"] + m["no_result"]
        assert m["triggers_sent"] > 0 and m["triggers_refused"] == 0 and m["bad_payloads"] == 0, mode
        assert answered + m["unanswered"] == m["triggers_sent"] and answered > 0, mode
        assert m["deadline_misses"] == m["no_result"] + m["unanswered"]
        assert sum(m["verdicts"].values()) == answered and set(m["verdicts"]) <= {
            "ok",
            "warn",
            "ng",
            "no_result",
        }
        plc, station = m["trigger_to_verdict_ms"], m["station_elapsed_ms"]
        assert plc["n"] == station["n"] == answered and 0 < plc["p50"] <= plc["p99"]
        assert plc["p50"] >= station["p50"] > 0, mode  # the PLC's view includes the station's
        assert m["daemon_parts"]["line"]["triggered"] >= m["triggers_sent"], mode  # warm-up ones too
    assert line["modes"]["frame"]["camera_fps_offered"] == 20.0
    for face in ("plain", "opcua"):
        sat = line[f"{face}_saturated"]
        assert sat["results"] > 0 and sat["throughput_rps"] > 0 and sat["bare_ips"] > 0, face
        assert sat["bad_payloads"] == 0, face
    sat = line["opcua_saturated"]

    ratios = {r["name"]: r for r in report["ratios"]}
    p99 = ratios["line_trigger_p99_vs_backend_p99_plus_10ms_mqtt"]
    assert p99["denominator"]["value"] == pytest.approx(bare["p99"] + 10.0)
    assert p99["numerator"]["value"] == line["modes"]["mqtt"]["trigger_to_verdict_ms"]["p99"]
    assert p99["value"] == pytest.approx(p99["numerator"]["value"] / p99["denominator"]["value"])
    assert p99["passed"] in (True, False) and p99["target"] == "≤ 1.0"
    misses = ratios["line_deadline_misses_mqtt"]
    assert misses["target"] is None and "--trigger-rate" in misses["note"]  # not at 80 % of bare: no target
    opcua = ratios["line_pipeline_vs_bare_opcua"]
    assert (
        opcua["value"] == pytest.approx(sat["throughput_rps"] / sat["bare_ips"])
        and opcua["target"] == "≥ 0.90"
    )
    assert {f"line_trigger_p99_vs_backend_p99_plus_10ms_{m}" for m in ("opcua", "frame")} <= set(ratios)
    assert ratios["line_pipeline_vs_bare_plain"]["target"] is None
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Line: trigger → part verdict" in text and "| mqtt |" in text and "| frame |" in text


def test_line_targets_apply_at_the_default_rate_only() -> None:
    mode = {"trigger_to_verdict_ms": {"p99": 30.0}, "deadline_misses": 0, "triggers_sent": 10,
            "no_result": 0, "unanswered": 0, "late": 0}  # fmt: skip
    line = {"bare": {"latency_ms": {"p99": 25.0}}, "trigger_rate_hz": 8.0, "modes": {"mqtt": mode}}
    got = {r["name"]: r for r in line_ratios({**line, "trigger_rate_basis": "0.8 x the bare rate at start"})}
    assert got["line_deadline_misses_mqtt"]["passed"] is True
    assert got["line_trigger_p99_vs_backend_p99_plus_10ms_mqtt"]["value"] == pytest.approx(30.0 / 35.0)
    late = {**mode, "deadline_misses": 1, "no_result": 1}
    got = {
        r["name"]: r for r in line_ratios({**line, "modes": {"mqtt": late}, "trigger_rate_basis": "0.8 x"})
    }
    assert got["line_deadline_misses_mqtt"]["passed"] is False


def test_line_refuses_unknown_trigger_kinds(bundle: Path, tmp_path: Path) -> None:
    rc = main(["line", "--bundle", str(bundle), "--triggers", "mqtt,plc", "--out", str(tmp_path), "--quiet"])
    assert rc == EXIT_INPUT
