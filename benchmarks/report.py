"""The report: ratios computed from the measured numbers, JSON for machines, markdown + PNG plots for people.

Every ratio names the two fields it was computed from (``numerator.field`` / ``denominator.field``) with
their values, so anyone can recompute it from the JSON. Targets are shown as pass/fail text next to the
number; nothing here asserts or fails a run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.model_bench import best_cell, find_cell

REPORT_SCHEMA = 1
PLOTS = {
    "latency": "latency_by_batch.png",
    "throughput": "throughput_by_batch.png",
    "roc": "roc_curves.png",
    "pipeline_latency": "pipeline_latency.png",
    "soak": "soak.png",
}
SHORT = {"onnxruntime": "ort", "tensorrt": "trt", "torch-eager": "torch"}


# --- ratios -----------------------------------------------------------------------------------------------


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


# --- JSON ---------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the JSON report")


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(
        json.dumps(_finite(json.loads(json.dumps(report, default=_jsonable))), indent=1) + "\n",
        encoding="utf-8",
    )
    return path


# --- plots --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(model: dict[str, Any], path: Path) -> Path:
    """Per-call latency distributions: one panel per batch, one box per engine/precision."""
    plt = _pyplot()
    batches = sorted({c["batch"] for c in model["cells"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(3.2 * len(batches) + 1, 4), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        cells = [c for c in model["cells"] if c["batch"] == batch]
        ax.boxplot([c["samples_ms"] for c in cells], showfliers=True, whis=(1, 99))
        ax.set_xticks(
            range(1, len(cells) + 1),
            [f"{SHORT.get(c['engine'], c['engine'])}\n{c['precision']}" for c in cells],
            fontsize=8,
        )
        ax.set_yscale("log")
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("latency per call (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Backend latency per call (whiskers p1-p99, warm-up excluded)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(model: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = sorted({(c["engine"], c["precision"]) for c in model["cells"]})
    for engine, precision in labels:
        cells = sorted(
            (c for c in model["cells"] if c["engine"] == engine and c["precision"] == precision),
            key=lambda c: c["batch"],
        )
        ax.plot(
            [c["batch"] for c in cells],
            [c["throughput_ips"] for c in cells],
            marker="o",
            label=f"{engine} {precision}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title("Throughput by batch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(accuracy: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, entry in accuracy["engines"].items():
        roc, auc = entry["metrics"]["roc"], entry["metrics"]["image_auroc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"{label} (AUROC {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Image-level ROC per precision")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pipeline_latency(pipeline: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[str, list[float]] = {}
    for run in pipeline["runs"]:
        groups.setdefault(f"{run['cameras']} cam, {run['load']}", []).extend(
            v for v in run["samples_total_ms"] if v is not None and v == v
        )
    for label, values in groups.items():
        if values:
            ax.hist(values, bins=50, histtype="step", label=label)
    ax.set_xlabel("capture → publish (ms)")
    ax.set_ylabel("results")
    ax.set_title("Pipeline latency (result payloads' latency_ms.total)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_soak(soak: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    t = [s["t_s"] for s in soak["samples"]]
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for ax, key, label in zip(
        axes, ("rss_mb", "threads", "fds"), ("RSS (MiB)", "threads", "open fds"), strict=True
    ):
        ax.plot(t, [s[key] if s[key] is not None else float("nan") for s in soak["samples"]], marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since the first result")
    fig.suptitle(f"Daemon soak: {soak['cameras']} camera(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    written: dict[str, str] = {}
    if report.get("model") and report["model"].get("cells"):
        written["latency"] = plot_latency(report["model"], out_dir / PLOTS["latency"]).name
        written["throughput"] = plot_throughput(report["model"], out_dir / PLOTS["throughput"]).name
    if report.get("accuracy"):
        written["roc"] = plot_roc(report["accuracy"], out_dir / PLOTS["roc"]).name
    if report.get("pipeline"):
        written["pipeline_latency"] = plot_pipeline_latency(
            report["pipeline"], out_dir / PLOTS["pipeline_latency"]
        ).name
    if report.get("soak") and report["soak"].get("samples"):
        written["soak"] = plot_soak(report["soak"], out_dir / PLOTS["soak"]).name
    return written


# --- markdown -----------------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return lines + [""]


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "—"}[passed]


def md_environment(env: dict[str, Any]) -> list[str]:
    gpu = (
        env["gpu"]
        if isinstance(env["gpu"], str)
        else "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in env["gpu"])
    )
    cores = env["cores"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v is not None)
    missing = ", ".join(k for k, v in env["libraries"].items() if v is None) or "none"
    rows = [
        ["CPU", env["cpu"]],
        ["cores", f"{cores['logical']} logical, {cores['physical']} physical, {cores['usable']} usable"],
        ["CPU int8 features", _int8_flags(env.get("cpu_int8_flags"))],
        ["GPU", gpu],
        ["torch CUDA", str(env.get("torch_cuda"))],
        ["onnxruntime providers", ", ".join(env.get("onnxruntime_providers") or []) or "—"],
        ["libraries", libs],
        ["not importable", missing],
        ["mosquitto", str(env.get("mosquitto"))],
        ["OS", env["os"]],
        ["Python", f"{env['python']} ({env['python_implementation']})"],
        ["load average at start", ", ".join(str(v) for v in env.get("load_average") or []) or "—"],
    ]
    return ["## Environment", ""] + _table(["", ""], rows)


def md_ratios(ratios: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            r["label"],
            _f(r["value"], 3),
            f"{_f(r['numerator']['value'])} / {_f(r['denominator']['value'])}",
            r["target"] or "—",
            _verdict(r["passed"]),
            r["note"] or "",
        ]
        for r in ratios
    ]
    return ["## Ratios (measured in this run)", ""] + _table(
        ["ratio", "value", "from", "target", "", "note"], rows
    )


def md_model(model: dict[str, Any]) -> list[str]:
    rows = [
        [
            c["engine"],
            c["precision"],
            c["device"],
            c["batch"],
            c["throughput_ips"],
            c["latency_ms"]["p50"],
            c["latency_ms"]["p99"],
            c["latency_per_image_ms"],
            c["calls"],
            c["warmup_calls"],
            f"{min(c['throughput_per_round_ips']):.1f}–{max(c['throughput_per_round_ips']):.1f}",
        ]
        for c in model["cells"]
    ]
    return [
        "## Bare backend",
        "",
        f"{model['rounds']} interleaved rounds, {model['duration_s_per_cell']} s measured per cell "
        f"(warm-up {model['warmup_s_per_cell']} s per cell, not counted). Latency is per call (one batch).",
        "",
    ] + _table(
        [
            "engine",
            "precision",
            "device",
            "batch",
            "images/s",
            "p50 ms",
            "p99 ms",
            "ms/image",
            "calls",
            "warm-up calls",
            "images/s per round",
        ],
        rows,
    )


def md_memory(memory: dict[str, Any]) -> list[str]:
    rows = []
    for label, m in memory.items():
        if "error" in m:
            rows.append([label, "error: " + m["error"], "", "", ""])
        else:
            rows.append([label, m["baseline_rss_mb"], m["peak_rss_mb"], m["engine_rss_mb"], m["batch"]])
    return [
        "## Peak memory (fresh process per engine)",
        "",
        "RSS in MiB; engine = peak − baseline (runtime library + model + arenas), batch as shown.",
        "",
    ] + _table(["engine", "baseline", "peak", "engine", "batch"], rows)


def md_bundle(bundle: dict[str, Any]) -> list[str]:
    rows = [[p, f["file"], f["bytes"] / 2**20] for p, f in bundle["files"].items()]
    export = bundle["export_time_s"]
    lines = [
        "## Bundle",
        "",
        f"Model `{bundle['model_id']}` ({bundle['kind']}), input {bundle['input_hw'][0]}×"
        f"{bundle['input_hw'][1]}, max batch {bundle['max_batch']}. Export time: "
        f"{_f(export, 1) + ' s' if export is not None else 'not recorded'}.",
        "",
    ]
    return lines + _table(["precision", "file", "MiB"], rows)


def md_accuracy(accuracy: dict[str, Any]) -> list[str]:
    rows = []
    for label, e in accuracy["engines"].items():
        m, d = e["metrics"], e["vs_fp32"] or {}
        rows.append(
            [
                label,
                m["image_auroc"],
                m["pixel_auroc"],
                m["aupro"],
                m["f1_at_threshold"]["f1"],
                d.get("image_auroc_delta_pt"),
                d.get("score_correlation"),
            ]
        )
    return [
        "## Accuracy",
        "",
        f"Dataset `{accuracy['dataset']}`, {accuracy['n_images']} test images.",
        "",
    ] + _table(
        [
            "engine",
            "image AUROC",
            "pixel AUROC",
            "AUPRO",
            "F1 @ threshold",
            "Δ image AUROC (pt)",
            "score corr.",
        ],
        [[r[0]] + [_f(v, 4) for v in r[1:]] for r in rows],
    )


def _evidence_cell(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "-"
    dropped = ev.get("dropped_queue", 0) + ev.get("dropped_disk_full", 0)
    return f"{ev.get('written', 0)} / {dropped}"


def md_pipeline(pipeline: dict[str, Any]) -> list[str]:
    with_evidence = any(r.get("evidence") for r in pipeline["runs"])
    rows = []
    for r in pipeline["runs"]:
        lat = r["latency_ms"]["total"]
        rows.append(
            [
                r["round"],
                r["cameras"],
                r["load"],
                r["camera_fps_offered"],
                r["throughput_rps"],
                r["batch_mean"],
                lat["p50"],
                lat["p99"],
                r["capture_to_receive_ms"]["p99"],
                r["drops"].get("camera_slots"),
                r["results"],
            ]
            + ([_evidence_cell(r.get("evidence"))] if with_evidence else [])
        )
    bare = [
        [b, v["throughput_ips"], v["latency_ms"]["p50"], v["latency_ms"]["p99"]]
        for b, v in pipeline["bare"].items()
    ]
    return (
        [
            "## Full pipeline",
            "",
            f"Daemon ({pipeline['engine']} {pipeline['precision']}) with looping video cameras, a real "
            f"mosquitto and a "
            f"subscriber; results/s = results the subscriber received in the window. Saturated runs offer "
            f"{pipeline['saturation_factor']}× the bare backend's rate (slot drops expected); paced runs "
            f"offer "
            f"{pipeline['latency_load']}×. "
            + (
                f"Each saturated run's measurement was cut into {pipeline['slices_per_saturated_run']} "
                f"windows, "
                "each followed by a bare slice of the same length with the daemon frozen."
                if pipeline.get("slices_per_saturated_run")
                else "Bare slices ran in the same rounds."
            ),
            "",
        ]
        + _table(
            [
                "round",
                "cameras",
                "load",
                "fps/cam offered",
                "results/s",
                "mean batch",
                "p50 ms",
                "p99 ms",
                "capture→receive p99",
                "slot drops",
                "results",
            ]
            + (["evidence written / dropped (daemon total)"] if with_evidence else []),
            rows,
        )
        + ["Bare backend in the same rounds:", ""]
        + _table(["batch", "images/s", "p50 ms", "p99 ms"], bare)
    )


def md_soak(soak: dict[str, Any]) -> list[str]:
    g = soak["growth"]
    rows = [
        [
            "RSS growth",
            f"{_f(g.get('rss_growth_pct'))} % (median first {g.get('window_s', 0):.0f} s "
            f"{_f(g.get('rss_first_median_mb'), 1)} MiB → last {_f(g.get('rss_last_median_mb'), 1)} MiB)",
        ],
        ["threads", f"{g.get('threads_first')} → {g.get('threads_last')}"],
        ["open fds", f"{g.get('fds_first')} → {g.get('fds_last')}"],
        ["results received / scored", f"{soak['results_received']} / {soak['frames_scored']}"],
        ["drops", ", ".join(f"{k} {v}" for k, v in soak["drops"].items()) or "—"],
        ["errors", ", ".join(f"{k} {v}" for k, v in soak["errors"].items()) or "—"],
        [
            "capture→publish p50 / p99",
            f"{_f(soak['latency_total_ms']['p50'])} / {_f(soak['latency_total_ms']['p99'])} ms",
        ],
    ]
    ev = soak.get("evidence")
    if ev:  # edge-bench soak --evidence: the store's bounds under load
        rows += [
            [
                "evidence on disk, largest sample / cap",
                f"{_f(soak.get('evidence_mb_max'), 1)} / {_f(ev['max_bytes'] / 2**20, 1)} MiB",
            ],
            [
                "evidence written / evicted (size, age) / dropped (queue, disk full)",
                f"{ev['written']} / {ev['evicted_size']}, {ev['evicted_age']} / "
                f"{ev['dropped_queue']}, {ev['dropped_disk_full']}",
            ],
            ["evidence rows at the end", f"{ev['rows']} ({_f(ev['bytes'] / 2**20, 1)} MiB)"],
        ]
    return [
        "## Soak",
        "",
        f"{soak['cameras']} camera(s) at {soak['camera_fps_offered']} fps, "
        f"{soak['duration_s']} s, a sample every {soak['interval_s']} s.",
        "",
    ] + _table(["", ""], rows)


def markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    s = report["settings"]
    lines = [
        f"# edge-bench: {report['scenario']}",
        "",
        f"Bundle `{s['bundle']}`, backend `{s['backend']}`, precisions {', '.join(s['precisions'])}, "
        f"created {report['created_at']}. Command: `{' '.join(report['command'])}`",
        "",
    ]
    if report.get("ratios"):
        lines += md_ratios(report["ratios"])
    if report.get("model"):
        lines += md_model(report["model"])
    if report.get("memory"):
        lines += md_memory(report["memory"])
    if report.get("bundle"):
        lines += md_bundle(report["bundle"])
    if report.get("pipeline"):
        lines += md_pipeline(report["pipeline"])
    if report.get("accuracy"):
        lines += md_accuracy(report["accuracy"])
    ref = report.get("torch_reference")
    if ref and not ref["matches_bundle"]:
        lines += [
            f"*torch-eager reference: {ref['note']} (checkpoint sha256 {ref['checkpoint_sha256'][:12]}…, "
            f"bundle's {ref['bundle_checkpoint_sha256'][:12]}…).*",
            "",
        ]
    for key, why in (report.get("skipped") or {}).items():
        lines += [f"*{key}: not measured — {why}*", ""]
    for key, why in (report.get("failed") or {}).items():
        lines += [f"**{key}: FAILED — {why}** (no numbers from this part)", ""]
    if report.get("soak"):
        lines += md_soak(report["soak"])
    if plots:
        lines += ["## Plots", ""] + [f"![{key}]({name})" for key, name in plots.items()] + [""]
    lines += md_environment(report["environment"])
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and the PNG plots in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out_dir)
    report["plots"] = plots
    json_path = write_json(report, out_dir / "report.json")
    md_path = out_dir / "report.md"
    md_path.write_text(markdown(report, plots), encoding="utf-8")
    return {"json": json_path, "markdown": md_path, **{k: out_dir / v for k, v in plots.items()}}


def _int8_flags(flags: dict[str, bool] | None) -> str:
    if not flags:
        return "unknown"
    have = [k for k, v in flags.items() if v]
    lacking = [k for k, v in flags.items() if not v]
    return f"has {', '.join(have) or 'none'}; lacks {', '.join(lacking) or 'none'}"
