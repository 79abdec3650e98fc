"""``edge-bench``: measure a bundle the way it will run, and state the results as ratios from one run.

    edge-bench model    --bundle B [--precision fp32,fp16,int8] [--batch 1,2,4,8] [--checkpoint CKPT]
    edge-bench pipeline --bundle B [--cameras 1,4] [--data DIR]
    edge-bench accuracy --bundle B --data DIR [--checkpoint CKPT]
    edge-bench all      --bundle B [--data DIR] [--checkpoint CKPT] --out DIR
    edge-bench soak     --bundle B --cameras 4 --duration 600 [--interval 5]
    edge-bench line     --bundle B [--trigger-rate HZ] [--deadline-ms 150] [--triggers mqtt,opcua,frame]
    edge-bench tiling   --out DIR [--sets small,deeppcb,ballscrew] [--select] [--cost]   (docs/tiling.md)

Every run writes ``report.json``, ``report.md`` and PNG plots to ``--out``. Exit codes: 0 measured and
written; 2 unusable input (bundle, dataset, options); 1 a measurement failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.environment import environment
from benchmarks.inputs import (
    InputError,
    bundle_section,
    context,
    settings_section,
    torch_reference_section,
)
from benchmarks.scenarios import RUNS

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
SCENARIOS = ("model", "pipeline", "accuracy", "all", "soak", "line")


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
        "--viewer",
        action="store_true",
        help="pipeline: the live-view page on in every run; saturated runs alternate windows without and "
        "with one viewer polling it as a browser does",
    )
    p.add_argument(
        "--frame-size", type=int, help="generated video frame size in pixels (default 2x the model input)"
    )
    p.add_argument("--interval", type=float, default=5.0, help="soak: seconds between samples")
    p.add_argument(
        "--trigger-rate", type=float, help="line: part triggers per second (default 0.8 x the bare backend's)"
    )
    p.add_argument("--deadline-ms", type=float, default=150.0, help="line: the part's deadline (default 150)")
    p.add_argument(
        "--triggers",
        type=_str_list,
        default=["mqtt", "opcua", "frame"],
        help="line: trigger kinds to measure, of mqtt, opcua, frame (default all three)",
    )
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
    if argv[:1] == ["tiling"]:  # whole-frame vs tiles: trains and evaluates its own models, no --bundle
        from benchmarks.tiling_bench import main as tiling_main

        return tiling_main(argv[1:])
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
