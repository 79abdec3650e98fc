"""The scenarios of ``edge-bench`` (model, pipeline, accuracy, soak, line; ``all`` runs the first three): each
reads the run's context, measures, and adds its section to the report."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.inputs import InputError, load_manifest

Log = Callable[[str], None]


def scenario_model(args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Log) -> None:
    from benchmarks.model_bench import open_backend, open_torch, run_memory_probes, run_model_bench

    engines = [
        open_backend(args.backend, args.bundle, ctx["manifest"], p, ctx["options"]) for p in ctx["precisions"]
    ]
    if args.checkpoint is not None:
        engines.append(open_torch(args.checkpoint, args.torch_device))
    for other in args.compare:
        manifest = load_manifest(other, ["fp32"])
        engine = open_backend(args.backend, other, manifest, "fp32", ctx["options"])
        engine.engine = f"{args.backend}[{manifest.model.kind}]"  # its own rows in the report
        engines.append(engine)
    try:
        report["model"] = run_model_bench(engines, ctx["batches"], ctx["bench"], log=log)
    finally:
        for engine in engines:
            engine.close()
    report["memory"] = run_memory_probes(
        args.bundle,
        args.backend,
        ctx["precisions"],
        ctx["options"],
        max(ctx["batches"]),
        args.checkpoint,
        args.torch_device,
        log=log,
    )


def _video(args: argparse.Namespace, ctx: dict[str, Any], out: Path) -> Path:
    from benchmarks.videos import dataset_video, generated_video

    if args.data is not None:
        return dataset_video(out / "bench-input.avi", args.data)
    size = args.frame_size or 2 * max(ctx["manifest"].input.height, ctx["manifest"].input.width)
    return generated_video(out / "bench-input.avi", size)


def _pipeline_precision(args: argparse.Namespace, ctx: dict[str, Any]) -> str:
    if args.pipeline_precision:
        if args.pipeline_precision not in ctx["manifest"].precisions:
            raise InputError(
                f"--pipeline-precision {args.pipeline_precision}: the bundle has "
                f"{', '.join(ctx['manifest'].precisions)}"
            )
        return args.pipeline_precision
    return "fp32" if "fp32" in ctx["precisions"] else ctx["precisions"][0]


def scenario_pipeline(
    args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Log
) -> None:
    from benchmarks.model_bench import open_backend
    from benchmarks.pipeline_bench import PipelineSettings, run_pipeline_bench
    from benchmarks.subscriber import QuietBroker
    from benchmarks.videos import video_info

    precision = _pipeline_precision(args, ctx)
    video = _video(args, ctx, args.out)
    settings = PipelineSettings(
        camera_counts=args.cameras or (1, 4),
        rounds=args.pipeline_rounds,
        measure_s=ctx["duration"] / args.pipeline_rounds,
        warmup_s=args.warmup,
        latency_load=args.latency_load,
        camera_fps=args.camera_fps,
        sparkplug=args.sparkplug,
        slices=args.slices,
        viewer=args.viewer,
    )
    engine = open_backend(args.backend, args.bundle, ctx["manifest"], precision, ctx["options"])
    broker = QuietBroker(args.out / "mosquitto").start()
    try:
        section = run_pipeline_bench(
            engine,
            broker,
            args.bundle,
            args.backend,
            precision,
            video,
            ctx["daemon_options"],
            ctx["manifest"].input.max_batch,
            settings,
            ctx["bench"],
            log,
        )
    finally:
        broker.stop()
        engine.close()
    section["video"] = video_info(video)
    section["evidence_settings"] = ctx["evidence"]  # None: the store was off
    report["pipeline"] = section


def scenario_accuracy(
    args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Log
) -> None:
    from benchmarks.accuracy_bench import run_accuracy_bench

    if args.data is None:
        if args.scenario == "accuracy":
            raise InputError("edge-bench accuracy needs --data (an MVTec-layout category folder)")
        report.setdefault("skipped", {})["accuracy"] = "no --data given"
        return
    report["accuracy"] = run_accuracy_bench(
        args.bundle,
        ctx["manifest"],
        args.backend,
        ctx["precisions"],
        ctx["options"],
        args.data,
        args.checkpoint,
        args.torch_device,
        log=log,
    )


def scenario_soak(args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Log) -> None:
    from benchmarks.soak import run_soak
    from benchmarks.subscriber import QuietBroker

    cams = args.cameras or [4]
    if len(cams) != 1:
        raise InputError(f"soak runs one configuration: give one --cameras value, not {cams}")
    broker = QuietBroker(args.out / "mosquitto").start()
    try:
        report["soak"] = run_soak(
            broker,
            args.bundle,
            args.backend,
            _pipeline_precision(args, ctx),
            _video(args, ctx, args.out),
            ctx["daemon_options"],
            cams[0],
            args.camera_fps or 25.0,
            ctx["duration"],
            args.interval,
            log,
        )
        report["soak"]["evidence_settings"] = ctx["evidence"]
    finally:
        broker.stop()


def scenario_line(args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Log) -> None:
    from benchmarks.line_bench import LineSettings, run_line_bench
    from benchmarks.model_bench import open_backend
    from benchmarks.subscriber import QuietBroker

    if args.trigger_rate is not None and args.trigger_rate <= 0 or args.deadline_ms <= 0:
        raise InputError("--trigger-rate and --deadline-ms must be positive")
    unknown = sorted(set(args.triggers) - {"mqtt", "opcua", "frame"})
    if unknown or not args.triggers:
        raise InputError(f"--triggers takes mqtt, opcua and/or frame, not {','.join(unknown) or 'nothing'}")
    precision = _pipeline_precision(args, ctx)
    settings = LineSettings(
        measure_s=ctx["duration"], warmup_s=args.warmup, trigger_rate=args.trigger_rate,
        deadline_ms=args.deadline_ms, camera_fps=args.camera_fps, slices=args.slices, modes=args.triggers,
    )  # fmt: skip
    engine = open_backend(args.backend, args.bundle, ctx["manifest"], precision, ctx["options"])
    broker = QuietBroker(args.out / "mosquitto").start()
    try:
        report["line"] = run_line_bench(
            engine, broker, args.bundle, args.backend, precision, _video(args, ctx, args.out),
            ctx["daemon_options"], settings, ctx["bench"], log,
        )  # fmt: skip
    finally:
        broker.stop()
        engine.close()


RUNS = {
    "model": (scenario_model,),
    "pipeline": (scenario_pipeline,),
    "accuracy": (scenario_accuracy,),
    "all": (scenario_model, scenario_pipeline, scenario_accuracy),
    "soak": (scenario_soak,),
    "line": (scenario_line,),
}
