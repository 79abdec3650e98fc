"""``edge-bench``: measure a bundle the way it will run, and state the results as ratios from one run.

    edge-bench model    --bundle B [--precision fp32,fp16,int8] [--batch 1,2,4,8] [--checkpoint CKPT]
    edge-bench pipeline --bundle B [--cameras 1,4] [--data DIR]
    edge-bench accuracy --bundle B --data DIR [--checkpoint CKPT]
    edge-bench all      --bundle B [--data DIR] [--checkpoint CKPT] --out DIR
    edge-bench soak     --bundle B --cameras 4 --duration 600 [--interval 5]

Every run writes ``report.json``, ``report.md`` and PNG plots to ``--out``. Exit codes: 0 measured and
written; 2 unusable input (bundle, dataset, options); 1 a measurement failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.environment import environment

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
SCENARIOS = ("model", "pipeline", "accuracy", "all", "soak")
DEFAULT_DURATION_S = {"soak": 600.0, "pipeline": 30.0}  # other scenarios: 10 s
EXPORT_TIME_KEYS = ("export_time_s", "export_seconds", "export_duration_s", "duration_s")


class InputError(ValueError):
    """An option or input the benchmark cannot use; the message says what to change."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory written by edge-export")
    p.add_argument(
        "--data",
        type=Path,
        help="MVTec-layout category (e.g. .../bottle): accuracy, and the pipeline's video",
    )
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or tensorrt")
    p.add_argument(
        "--providers",
        type=_str_list,
        help="onnxruntime execution providers, e.g. tensorrt,cuda (default cpu)",
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--precision", type=_str_list, help="precisions to measure (default: all in the bundle)")
    p.add_argument(
        "--batch", type=_int_list, help="batch sizes (default 1,2,4,8 up to the bundle's max_batch)"
    )
    p.add_argument("--checkpoint", type=Path, help="training checkpoint for the torch-eager reference")
    p.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="BUNDLE",
        help="model scenario: also measure this bundle's fp32 in the same interleaved rounds "
        "(e.g. the PatchCore bundle beside GTrans); repeatable",
    )
    p.add_argument("--torch-device", default="auto", help="torch device for the reference: auto, cpu, cuda")
    p.add_argument(
        "--duration",
        type=float,
        help="measured seconds per scenario, split over the rounds (default 10; pipeline: 30, as its ratio "
        "is read from a few windows per run; soak: total seconds, default 600)",
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds per cell / pipeline run (not counted)"
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of the backend cells (default 5)"
    )
    p.add_argument(
        "--pipeline-rounds", type=int, default=2, help="interleaved rounds of the pipeline runs (default 2)"
    )
    p.add_argument(
        "--slices",
        type=int,
        default=5,
        help="pipeline: measurement windows per saturated run, each followed by a bare slice (default 5)",
    )
    p.add_argument(
        "--cameras", type=_int_list, help="pipeline: camera counts (default 1,4); soak: one count (default 4)"
    )
    p.add_argument(
        "--camera-fps",
        type=float,
        help="fixed fps offered per camera (pipeline default: derived from "
        "the backend's measured rate; soak default 25)",
    )
    p.add_argument(
        "--latency-load",
        type=float,
        default=0.5,
        help="paced pipeline runs offer this fraction of the backend's rate, for latency (0 = skip them)",
    )
    p.add_argument("--pipeline-precision", help="precision the daemon runs (default fp32, else the first)")
    p.add_argument(
        "--sparkplug", action="store_true", help="pipeline: the daemon also runs its Sparkplug B node"
    )
    p.add_argument(
        "--frame-size", type=int, help="generated video frame size in pixels (default 2x the model input)"
    )
    p.add_argument("--interval", type=float, default=5.0, help="soak: seconds between samples")
    p.add_argument(
        "--evidence",
        action="store_true",
        help="pipeline and soak: run the daemon with the evidence store on (OUT/evidence; a fresh store)",
    )
    p.add_argument("--evidence-max-mb", type=float, default=256.0, help="with --evidence: size cap (MiB)")
    p.add_argument("--evidence-max-age-s", type=float, default=120.0, help="with --evidence: retention (s)")
    p.add_argument(
        "--evidence-good-every", type=int, default=10, help="with --evidence: keep 1 in N good frames"
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="output directory (default ./bench-out)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


class Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[edge-bench {time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- inputs ---------------------------------------------------------------------------------------------


def load_manifest(bundle: Path, precisions: list[str] | None) -> Any:
    from edge.trust.manifest import BundleError, verify_bundle

    try:
        return verify_bundle(bundle, precisions)
    except BundleError as exc:
        raise InputError(str(exc)) from exc


def pick_precisions(manifest: Any, asked: list[str] | None) -> list[str]:
    from edge.trust.manifest import PRECISIONS

    if asked:
        unknown = [p for p in asked if p not in PRECISIONS]
        if unknown:
            raise InputError(f"unknown precision(s) {unknown}; use {', '.join(PRECISIONS)}")
        return asked
    return [p for p in PRECISIONS if p in manifest.precisions]


def pick_batches(manifest: Any, asked: list[int] | None) -> list[int]:
    """Explicit batches above the bundle's max_batch are an error (the backend would split them); the default
    list is cut to what the bundle takes."""
    from benchmarks.model_bench import DEFAULT_BATCHES

    max_batch = manifest.input.max_batch
    if asked:
        too_big = [b for b in asked if b > max_batch]
        if too_big:
            raise InputError(
                f"batch {too_big} exceeds the bundle's max_batch {max_batch}; "
                f"use batches up to {max_batch} or re-export with a larger max batch"
            )
        return sorted(set(asked))
    return [b for b in DEFAULT_BATCHES if b <= max_batch] or [max_batch]


def backend_options(args: argparse.Namespace) -> dict[str, object]:
    """Options for load_backend, mirrored in the daemon's config so both run the same session."""
    options: dict[str, object] = {}
    if args.backend == "onnxruntime":
        if args.providers:
            options["providers"] = list(args.providers)
        if args.threads:
            options["intra_op_threads"] = args.threads
    elif args.providers or args.threads:
        raise InputError("--providers and --threads apply to the onnxruntime backend only")
    return options


def bundle_section(bundle: Path, manifest: Any) -> dict[str, Any]:
    """File sizes per precision, engines on disk, and the export time if the exporter recorded one."""
    files = {
        p: {"file": e.file, "bytes": (bundle / e.file).stat().st_size} for p, e in manifest.precisions.items()
    }
    engines = bundle / "engines"
    engine_bytes = sum(f.stat().st_size for f in engines.rglob("*") if f.is_file()) if engines.is_dir() else 0
    export_time = None
    for key in EXPORT_TIME_KEYS:
        try:
            export_time = float(manifest.exporter[key])
            break
        except (KeyError, ValueError):
            continue
    return {
        "path": str(bundle),
        "model_id": manifest.model_id(),
        "kind": manifest.model.kind,
        "input_hw": [manifest.input.height, manifest.input.width],
        "max_batch": manifest.input.max_batch,
        "files": files,
        "engines_bytes": engine_bytes,
        "export_time_s": export_time,
        "export_time": f"{export_time:.1f} s" if export_time is not None else "not recorded",
    }


# --- scenarios ------------------------------------------------------------------------------------------


def scenario_model(
    args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Progress
) -> None:
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
    args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Progress
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
    args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Progress
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


def scenario_soak(
    args: argparse.Namespace, ctx: dict[str, Any], report: dict[str, Any], log: Progress
) -> None:
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


RUNS = {
    "model": (scenario_model,),
    "pipeline": (scenario_pipeline,),
    "accuracy": (scenario_accuracy,),
    "all": (scenario_model, scenario_pipeline, scenario_accuracy),
    "soak": (scenario_soak,),
}


# --- main -----------------------------------------------------------------------------------------------


def context(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.model_bench import BenchSettings

    if args.duration is not None and args.duration <= 0:
        raise InputError(f"--duration must be positive, got {args.duration}")
    if args.rounds < 1 or args.pipeline_rounds < 1 or args.slices < 1:
        raise InputError("--rounds, --pipeline-rounds and --slices must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise InputError(f"--data {args.data} is not a directory (expected an MVTec-layout category)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise InputError(f"--checkpoint {args.checkpoint} does not exist")
    manifest = load_manifest(args.bundle, args.precision)
    precisions = pick_precisions(manifest, args.precision)
    options = backend_options(args)
    daemon_options: dict[str, object] = {}
    if "providers" in options:
        daemon_options["providers"] = options["providers"]
    if "intra_op_threads" in options:
        daemon_options["intra_op_threads"] = options["intra_op_threads"]
    duration = args.duration if args.duration is not None else DEFAULT_DURATION_S.get(args.scenario, 10.0)
    evidence = evidence_settings(args)
    try:
        bench = BenchSettings(duration_s=duration, warmup_s=args.warmup, rounds=args.rounds)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return {
        "manifest": manifest,
        "precisions": precisions,
        "batches": pick_batches(manifest, args.batch),
        "options": options,
        "daemon_options": daemon_options,
        "duration": duration,
        "bench": bench,
        "evidence": evidence,
    }


def evidence_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """With --evidence: the daemon children (spawned, so they read the environment) keep evidence."""
    if not args.evidence:
        return None
    import shutil

    folder = (args.out / "evidence").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    settings = {
        "enabled": "true",
        "dir": str(folder),
        "max_bytes": str(int(args.evidence_max_mb * 1024 * 1024)),
        "max_age_s": str(args.evidence_max_age_s),
        "good_every": str(args.evidence_good_every),
    }
    for key, value in settings.items():
        os.environ[f"EDGE_EVIDENCE__{key.upper()}"] = value
    return settings


def torch_reference_section(checkpoint: Path | None, manifest: Any) -> dict[str, Any] | None:
    """Whether the checkpoint is the bundle's source: only then are torch-vs-bundle accuracy drifts
    meaningful."""
    if checkpoint is None:
        return None
    from edge.trust.manifest import sha256_file

    digest = sha256_file(checkpoint)
    matches = digest == manifest.model.checkpoint_sha256
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": digest,
        "bundle_checkpoint_sha256": manifest.model.checkpoint_sha256,
        "matches_bundle": matches,
        "note": ""
        if matches
        else "the checkpoint is not the one this bundle was exported from: torch-eager "
        "speed is still a reference for the runtime, but its accuracy drift vs the bundle compares different "
        "models",
    }


def settings_section(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    return {
        "bundle": str(args.bundle),
        "backend": args.backend,
        "backend_options": ctx["options"],
        "precisions": ctx["precisions"],
        "batches": ctx["batches"],
        "duration_s": ctx["duration"],
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "pipeline_rounds": args.pipeline_rounds,
        "data": str(args.data) if args.data else None,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "torch_device": args.torch_device,
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Measure, write the report; returns its paths and the parts that failed (``all`` carries on past
    one)."""
    from benchmarks.ratios import compute_ratios
    from benchmarks.report import REPORT_SCHEMA, write_report

    log = Progress(args.quiet)
    ctx = context(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "tool": "edge-bench",
        "scenario": args.scenario,
        "command": ["edge-bench", *argv],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
        "settings": settings_section(args, ctx),
        "bundle": bundle_section(args.bundle, ctx["manifest"]),
        "torch_reference": torch_reference_section(args.checkpoint, ctx["manifest"]),
    }
    failed: dict[str, str] = {}
    for step in RUNS[args.scenario]:
        part = step.__name__.removeprefix("scenario_")
        try:
            step(args, ctx, report, log)
        except InputError:
            raise
        except Exception as exc:
            if args.scenario != "all":
                raise
            traceback.print_exc()
            failed[part] = f"{type(exc).__name__}: {exc}"
            log(f"{part} failed ({failed[part]}); carrying on with the other parts")
    if failed:
        report["failed"] = failed
    report["ratios"] = compute_ratios(report)
    paths = write_report(report, args.out)
    log(f"wrote {paths['json']} and {paths['markdown']}")
    return paths, failed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        _, failed = run(args, argv)
    except InputError as exc:
        print(f"edge-bench: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:  # a measurement failed: say which, keep the traceback for the log
        traceback.print_exc()
        print(f"edge-bench: {args.scenario} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for part, why in failed.items():
        print(f"edge-bench: {part} failed: {why} (the other parts are in the report)", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
