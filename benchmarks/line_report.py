"""The ``line`` section of the report: its ratios against the issue's targets and its markdown.

Targets (shown as PASS/FAIL, never asserted): with MQTT triggers, trigger -> verdict p99 at most the bare
backend's p99 + 10 ms (written as a ratio: p99 / (backend p99 + 10 ms) <= 1); no deadline misses at 80 % of
the bare backend's rate; with the OPC UA face on, pipeline / bare >= 0.90.
"""

from __future__ import annotations

from typing import Any

from benchmarks.ratios import _get, _ratio
from benchmarks.report_sections import _f, _table

P99_MARGIN_MS = 10.0


def line_ratios(line: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    bare_p99 = _get(line, "bare", "latency_ms", "p99")
    budget = None if bare_p99 is None else bare_p99 + P99_MARGIN_MS
    at_default_rate = line.get("trigger_rate_basis", "").startswith("0.8")
    for mode, m in line.get("modes", {}).items():
        p99 = _get(m, "trigger_to_verdict_ms", "p99")
        target = mode == "mqtt"
        over = None if p99 is None or bare_p99 is None else p99 - bare_p99
        out.append(
            _ratio(
                f"line_trigger_p99_vs_backend_p99_plus_10ms_{mode}",
                f"trigger→verdict p99 ({mode} triggers) ÷ (backend p99 + 10 ms)",
                (f"line.modes.{mode}.trigger_to_verdict_ms.p99", p99),
                ("line.bare.latency_ms.p99 + 10", budget),
                "≤ 1.0" if target else "",
                (lambda v: v <= 1.0) if target else None,
                note="" if over is None else f"p99 − backend p99 = {over:.1f} ms (target ≤ 10 ms)",
            )
        )
        misses = m["deadline_misses"]
        out.append(
            _ratio(
                f"line_deadline_misses_{mode}",
                f"deadline misses ÷ triggers ({mode}, {line['trigger_rate_hz']:.1f} triggers/s)",
                (f"line.modes.{mode}.deadline_misses", misses),
                (f"line.modes.{mode}.triggers_sent", m["triggers_sent"]),
                "= 0" if target and at_default_rate else "",
                (lambda v: v == 0) if target and at_default_rate else None,
                note=f"{m['no_result']} no_result, {m['unanswered']} unanswered, {m['late']} late"
                + ("" if at_default_rate else "; not at 80 % of bare (--trigger-rate): no target"),
            )
        )
    for face, on in (("opcua", True), ("plain", False)):
        sat = line.get(f"{face}_saturated")
        if sat:
            out.append(
                _ratio(
                    f"line_pipeline_vs_bare_{face}",
                    f"pipeline ÷ bare backend, OPC UA face {'on' if on else 'off'} (1 camera, batch 1)",
                    (f"line.{face}_saturated.throughput_rps", sat["throughput_rps"]),
                    (f"line.{face}_saturated.bare_ips", sat["bare_ips"]),
                    "≥ 0.90" if on else "",
                    (lambda v: v >= 0.90) if on else None,
                )
            )
    return out


def md_line(line: dict[str, Any]) -> list[str]:
    bare = line["bare"]
    lines = [
        "## Line: trigger → part verdict",
        "",
        f"One camera in part `{line['part']}`, deadline {_f(line['deadline_ms'], 0)} ms; triggers at "
        f"{_f(line['trigger_rate_hz'], 1)}/s ({line['trigger_rate_basis']}; bare rate at start "
        f"{_f(line['bare_rate_at_start_ips'], 1)} images/s), free-running camera at "
        f"{_f(line['camera_fps'], 1)} fps. Bare backend (batch 1, {bare['calls']} calls beside the runs): "
        f"p50 {_f(bare['latency_ms']['p50'])} ms, p99 {_f(bare['latency_ms']['p99'])} ms, "
        f"{_f(bare['throughput_ips'], 1)} images/s.",
        "",
    ]
    rows = []
    for mode, m in line["modes"].items():
        plc, station = m["trigger_to_verdict_ms"], m["station_elapsed_ms"]
        rows.append(
            [
                mode,
                m["triggers_sent"],
                _f(m["trigger_rate_achieved_hz"], 1),
                plc["p50"],
                plc["p99"],
                station["p50"],
                station["p99"],
                m["on_time"],
                m["no_result"],
                m["unanswered"],
                m["late"],
                ", ".join(f"{k} {v}" for k, v in sorted(m["verdicts"].items())) or "—",
            ]
        )
    lines += _table(
        [
            "triggers",
            "sent",
            "rate /s",
            "trigger→verdict p50 ms",
            "p99 ms",
            "station p50 ms",
            "station p99 ms",
            "on time",
            "no_result",
            "unanswered",
            "late",
            "verdicts",
        ],
        rows,
    )
    lines += [
        "trigger→verdict: trigger sent → verdict received on `<prefix>/part/<name>` by the benchmark (the "
        "PLC's view, through the broker; the OPC UA trigger is a method call, its verdict still read over "
        "MQTT; frame: the camera is the trigger at the trigger rate, one frame one part, and trigger→verdict "
        "is capture → verdict received). station: the verdict's `elapsed_ms` (trigger received, or frame "
        "captured → verdict published). The message-triggered camera runs free at the fps above.",
        "",
    ]
    for mode, m in line["modes"].items():
        if m["no_result_reasons"]:
            why = "; ".join(f"{n}× {r}" for r, n in m["no_result_reasons"].items())
            lines += [f"*{mode} no_result reasons: {why}*", ""]
    for face, on in (("plain", "off"), ("opcua", "on")):
        sat = line.get(f"{face}_saturated")
        if sat:
            lines += [
                f"OPC UA face {on}, saturated ({_f(sat['camera_fps_offered'], 1)} fps offered): "
                f"{_f(sat['throughput_rps'], 1)} results/s over {_f(sat['seconds'], 1)} s against "
                f"{_f(sat['bare_ips'], 1)} images/s bare in the interleaved slices.",
                "",
            ]
    return lines
