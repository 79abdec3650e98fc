"""The markdown report: one section per scenario (model, memory, bundle, pipeline, accuracy, soak), the
ratios and the environment, put together by :func:`markdown`."""

from __future__ import annotations

from typing import Any


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
    with_viewer = any(r.get("viewer") for r in pipeline["runs"])
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
            + ([(r.get("viewer") or {}).get("frames", "-")] if with_viewer else [])
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
            + (["evidence written / dropped (daemon total)"] if with_evidence else [])
            + (["frames the viewer fetched"] if with_viewer else []),
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
    if report.get("line"):
        from benchmarks.line_report import md_line

        lines += md_line(report["line"])
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


def _int8_flags(flags: dict[str, bool] | None) -> str:
    if not flags:
        return "unknown"
    have = [k for k, v in flags.items() if v]
    lacking = [k for k, v in flags.items() if not v]
    return f"has {', '.join(have) or 'none'}; lacks {', '.join(lacking) or 'none'}"
