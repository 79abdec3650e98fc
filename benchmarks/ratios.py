"""The ratios of a report, computed from the measured numbers (pipeline ÷ bare, INT8/FP16 ÷ FP32, backend ÷
torch-eager, ``--compare`` bundles).

Every ratio names the two fields it was computed from (``numerator.field`` / ``denominator.field``) with
their values, so anyone can recompute it from the JSON. Targets are shown as pass/fail text next to the
number; nothing here asserts or fails a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.model_bench import best_cell, find_cell


def _ratio(
    name: str,
    label: str,
    num: tuple[str, float | None],
    den: tuple[str, float | None],
    target: str = "",
    check: Callable[[float], bool] | None = None,
    note: str = "",
) -> dict[str, Any]:
    a, b = num[1], den[1]
    value = a / b if a is not None and b not in (None, 0) else None
    passed = check(value) if check is not None and value is not None else None
    return {
        "name": name,
        "label": label,
        "value": value,
        "numerator": {"field": num[0], "value": a},
        "denominator": {"field": den[0], "value": b},
        "target": target or None,
        "passed": passed,
        "note": note,
    }


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _cell_field(engine: str, precision: str, batch: int, field: str) -> str:
    return f"model.cells[engine={engine},precision={precision},batch={batch}].{field}"


def pipeline_ratios(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    """pipeline / bare (per camera count), 4 cameras / 1 camera, capture->publish p99 / backend p99."""
    out = []
    by_cams = pipeline.get("by_cameras", {})
    for cams, entry in by_cams.items():
        b = str(entry["batch"])
        out.append(
            _ratio(
                f"pipeline_vs_bare_{cams}cam",
                f"pipeline ÷ bare backend ({cams} camera(s), batch {b})",
                (f"pipeline.by_cameras.{cams}.throughput_rps", entry["throughput_rps"]),
                (f"pipeline.bare.{b}.throughput_ips", _get(pipeline, "bare", b, "throughput_ips")),
                "≥ 0.90" if cams == "1" else "",
                (lambda v: v >= 0.90) if cams == "1" else None,
            )
        )
        if entry.get("viewer_throughput_rps") is not None:  # --viewer: the same runs with a viewer polling
            out.append(
                _ratio(
                    f"pipeline_with_viewer_vs_bare_{cams}cam",
                    f"pipeline with one live-view viewer ÷ bare backend ({cams} camera(s), batch {b})",
                    (f"pipeline.by_cameras.{cams}.viewer_throughput_rps", entry["viewer_throughput_rps"]),
                    (f"pipeline.bare.{b}.throughput_ips", _get(pipeline, "bare", b, "throughput_ips")),
                    "≥ 0.85" if cams == "1" else "",
                    (lambda v: v >= 0.85) if cams == "1" else None,
                )
            )
        load = "paced" if "paced_latency_total_ms" in entry else "saturated"
        out.append(
            _ratio(
                f"latency_p99_vs_backend_p99_{cams}cam",
                f"capture→publish p99 ({load}) ÷ backend p99 ({cams} camera(s), batch {b})",
                (
                    f"pipeline.by_cameras.{cams}.{load}_latency_total_ms.p99",
                    _get(entry, f"{load}_latency_total_ms", "p99"),
                ),
                (f"pipeline.bare.{b}.latency_ms.p99", _get(pipeline, "bare", b, "latency_ms", "p99")),
                "≤ 2.0" if cams == "1" else "",
                (lambda v: v <= 2.0) if cams == "1" else None,
            )
        )
    if "1" in by_cams and "4" in by_cams:
        out.append(
            _ratio(
                "cams4_vs_cams1",
                "4 cameras ÷ 1 camera (pipeline throughput)",
                ("pipeline.by_cameras.4.throughput_rps", by_cams["4"]["throughput_rps"]),
                ("pipeline.by_cameras.1.throughput_rps", by_cams["1"]["throughput_rps"]),
                "≥ 1.2",
                lambda v: v >= 1.2,
            )
        )
    return out


def precision_ratios(
    model: dict[str, Any], accuracy: dict[str, Any] | None, backend: str
) -> list[dict[str, Any]]:
    """INT8 / FP32 and FP16 / FP32 throughput at FP32's best batch, with image AUROC beside them."""
    out = []
    ref = best_cell(model, backend, "fp32")
    if ref is None:
        return out
    batch = ref["batch"]
    engines = _get(accuracy, "engines") or {}
    for precision in ("int8", "fp16"):
        cell = find_cell(model, backend, precision, batch)
        if cell is None:
            continue
        auroc = _get(engines, f"{backend}/{precision}", "metrics", "image_auroc")
        auroc_ref = _get(engines, f"{backend}/fp32", "metrics", "image_auroc")
        delta = (auroc - auroc_ref) * 100.0 if auroc is not None and auroc_ref is not None else None
        note = (
            f"image AUROC {auroc:.4f} vs fp32 {auroc_ref:.4f} ({delta:+.2f} pt)"
            if delta is not None
            else "accuracy not measured (give --data)"
        )
        entry = _ratio(
            f"{precision}_vs_fp32",
            f"{precision.upper()} ÷ FP32 throughput (batch {batch}, {backend})",
            (_cell_field(backend, precision, batch, "throughput_ips"), cell["throughput_ips"]),
            (_cell_field(backend, "fp32", batch, "throughput_ips"), ref["throughput_ips"]),
            "≥ 1.3 with image AUROC within 0.5 pt" if precision == "int8" else "",
            None,
            note,
        )
        entry["image_auroc"] = auroc
        entry["image_auroc_fp32"] = auroc_ref
        entry["image_auroc_delta_pt"] = delta
        if precision == "int8" and entry["value"] is not None:
            speed_ok = entry["value"] >= 1.3
            entry["passed"] = None if delta is None else bool(speed_ok and abs(delta) <= 0.5)
            if delta is None:
                entry["note"] += f"; speed part {'met' if speed_ok else 'not met'}"
        out.append(entry)
    return out


def torch_ratios(model: dict[str, Any], backend: str, precisions: list[str]) -> list[dict[str, Any]]:
    """Backend ÷ torch eager, per precision, at batch 1 and at the backend's best batch."""
    out = []
    for precision in precisions:
        best = best_cell(model, backend, precision)
        if best is None:
            continue
        for which, batch in (("b1", 1), ("best", best["batch"])):
            cell = find_cell(model, backend, precision, batch)
            torch_cell = find_cell(model, "torch-eager", "fp32", batch)
            if cell is None or torch_cell is None:
                continue
            out.append(
                _ratio(
                    f"{backend}_{precision}_vs_torch_{which}",
                    f"{backend} {precision.upper()} ÷ torch eager FP32 (batch "
                    f"{batch}{', best' if which == 'best' else ''})",
                    (_cell_field(backend, precision, batch, "throughput_ips"), cell["throughput_ips"]),
                    (
                        _cell_field("torch-eager", "fp32", batch, "throughput_ips"),
                        torch_cell["throughput_ips"],
                    ),
                    note=f"torch on {torch_cell['device']}",
                )
            )
    return out


def compute_ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    backend = report["settings"]["backend"]
    ratios: list[dict[str, Any]] = []
    if report.get("pipeline"):
        ratios += pipeline_ratios(report["pipeline"])
    if report.get("model"):
        ratios += precision_ratios(report["model"], report.get("accuracy"), backend)
        ratios += torch_ratios(report["model"], backend, report["settings"]["precisions"])
        ratios += compared_ratios(report["model"], backend)
    if report.get("line"):
        from benchmarks.line_report import line_ratios

        ratios += line_ratios(report["line"])
    return ratios


def compared_ratios(model: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    """Each ``--compare`` bundle's fp32 latency against this bundle's fp32, at batch 1, measured in one
    run."""
    ratios = []
    engines = sorted({c["engine"] for c in model.get("cells", []) if c["engine"].startswith(f"{backend}[")})
    for engine in engines:
        mine = find_cell(model, backend, "fp32", 1)
        other = find_cell(model, engine, "fp32", 1)
        ratios.append(
            _ratio(
                f"{engine}_fp32_vs_{backend}_fp32_b1_latency",
                f"{engine} fp32 ÷ this bundle's fp32, p50 latency at batch 1",
                (f"{engine}/fp32/b1.latency_ms.p50", _get(other, "latency_ms", "p50")),
                (f"{backend}/fp32/b1.latency_ms.p50", _get(mine, "latency_ms", "p50")),
            )
        )
    return ratios
