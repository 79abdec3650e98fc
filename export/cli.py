"""``edge-export``: checkpoint -> bundle (fp32 + optional fp16/int8 ONNX, manifest, accuracy gate), and
``edge-export --build-engine BUNDLE`` on the device; ``edge-export --sign-key KEY BUNDLE`` signs a bundle that
is already written (``--sign-key`` with ``--out`` signs the new bundle as it is written).

Exit codes: 0 done; 1 a precision failed the accuracy gate (no bundle written); 2 bad input or missing
dependency (checkpoint, images, bundle, TensorRT for --build-engine BUNDLE; no bundle written);
3 the bundle was written but building its TensorRT engine failed.
Progress goes to stderr, the gate table to stdout.

This module imports only what the device has (no torch, onnx or training code): the export pipeline
(``export.pipeline``) is imported when an export is asked for. The CLI defaults below therefore repeat a
few numbers from the pipeline's modules; tests/export/test_cli.py checks they agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.trust.manifest import BundleError
from edge.trust.signing import SignatureError, load_private_key
from edge.util.deps import MissingDependency
from export import ExportError, GateFailed
from export.engine import ON_DEVICE_HINT, EngineUnavailable, build_bundle_engines, tensorrt_available

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_ENGINE = 0, 1, 2, 3
DEFAULT_OPSET = 17  # export.onnx_export.DEFAULT_OPSET
DEFAULT_CALIB_COUNT = 200  # calibration.int8.DEFAULT_CALIB_COUNT
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # calibration.int8.CALIBRATION_METHODS
DEFAULT_METHOD = "minmax"  # calibration.int8.DEFAULT_METHOD
DEFAULT_FAR = 0.01  # calibration.scores.DEFAULT_FAR
DEFAULT_MAX_BATCH = 8  # export.pipeline.DEFAULT_MAX_BATCH
# errors a line engineer can act on (exit code 2), from the modules the device has; OSError: disk full,
# permission denied, a path that is a file
LIGHT_ERRORS = (ExportError, BundleError, SignatureError, MissingDependency, OSError)


def say(message: str) -> None:
    print(f"edge-export: {message}", file=sys.stderr, flush=True)


# ---- engines --------------------------------------------------------------------------------------------


def engines_after_export(bundle: Path, precisions: list[str], max_batch: int) -> int:
    """Engines for ``precisions`` right after an export: built where TensorRT is importable, else the user is
    told where they will be built. ``--int8`` asks for the int8 engine, ``--build-engine`` for all."""
    if not precisions:
        return EXIT_OK
    if not tensorrt_available():
        say(f"TensorRT is not importable here; {ON_DEVICE_HINT}")
        return EXIT_OK
    try:
        for precision, path in build_bundle_engines(bundle, precisions, max_batch).items():
            say(f"{precision} engine: {path}")
    except Exception as exc:  # TensorRT/CUDA raise many types; the bundle itself is fine
        say(f"the bundle is written, but building its TensorRT engine failed: {type(exc).__name__}: {exc}")
        return EXIT_ENGINE
    return EXIT_OK


def build_engines_command(bundle: Path, max_batch: int | None, cache_dir: Path | None = None) -> int:
    say(f"building TensorRT engines for {bundle}…")
    try:
        engines = build_bundle_engines(bundle, None, max_batch, cache_dir)
    except EngineUnavailable as exc:
        say(
            str(exc).replace(
                "run `edge-export --build-engine BUNDLE` there", "run this command on the device"
            )
        )
        return EXIT_INPUT
    for precision, path in engines.items():
        say(f"{precision} engine: {path}")
    return EXIT_OK


def sign_command(bundle: Path, key: Path) -> int:
    from export.bundle import sign_existing_bundle

    say(f"bundle {bundle} signed by {sign_existing_bundle(bundle, key)} ({bundle / 'manifest.sig'})")
    return EXIT_OK


# ---- command line ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-export",
        description="Export a checkpoint to a bundle (ONNX fp32/fp16/int8 + manifest.json), checked by an "
        "accuracy gate against torch; or, with --build-engine and no --out, build the TensorRT engines of a "
        "bundle.",
        epilog="Exit codes: 0 ok, 1 accuracy gate failed (nothing written), 2 bad input or missing "
        "dependency, "
        "3 bundle written but its engine build failed.",
    )
    p.add_argument(
        "source", type=Path, help="checkpoint (.pt) to export, or a bundle with --build-engine and no --out"
    )
    p.add_argument(
        "--out", type=Path, help="bundle directory to write (replaced only when the export succeeds)"
    )
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx")
    p.add_argument(
        "--int8", action="store_true", help="also write model.int8.onnx (explicit Q/DQ, calibrated)"
    )
    p.add_argument(
        "--calib",
        type=Path,
        help="folder of good images for int8 calibration "
        "(default: the checkpoint's training images, i.e. the data folder minus the validation slice)",
    )
    p.add_argument(
        "--calib-count",
        type=int,
        default=DEFAULT_CALIB_COUNT,
        help=f"use at most N calibration images, spread evenly (default {DEFAULT_CALIB_COUNT}; 0 = all)",
    )
    p.add_argument(
        "--calib-method",
        choices=sorted(CALIBRATION_METHODS),
        default=DEFAULT_METHOD,
        help=f"int8 range calibration (default {DEFAULT_METHOD})",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET}; TensorRT 8.5 reads <= 17)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        help=f"largest batch the engine is built for (default {DEFAULT_MAX_BATCH}, "
        "or the bundle's with --build-engine BUNDLE)",
    )
    p.add_argument(
        "--build-engine",
        action="store_true",
        help="build TensorRT engines into BUNDLE/engines (needs TensorRT: on the device)",
    )
    p.add_argument(
        "--engine-cache-dir",
        type=Path,
        help="with --build-engine BUNDLE: where the engines go (default BUNDLE/engines); give the daemon's "
        "model.engine_cache_dir when the bundle is installed read-only",
    )
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="write the bundle even if a precision fails the gate (recorded in the manifest)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="labelled validation set in MVTec layout: adds AUROC to the gate and picks "
        "the threshold by best F1 (use a validation set, not the test set you report on)",
    )
    p.add_argument(
        "--false-alarm-rate",
        type=float,
        default=DEFAULT_FAR,
        help=f"target false-alarm rate on good parts for the default threshold (default {DEFAULT_FAR})",
    )
    p.add_argument("--name", help="model name in the manifest (default: <kind>-<data folder name>)")
    p.add_argument(
        "--sign-key",
        type=Path,
        help="Ed25519 private key (from edge-keygen): sign the manifest (writes manifest.sig). Devices whose "
        "config names the public key in [model] trusted_keys refuse bundles it did not sign. Without --out: "
        "sign the existing bundle SOURCE",
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.max_batch is not None and args.max_batch < 1:
        raise ExportError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.calib_count < 0:
        raise ExportError(f"--calib-count must be 0 (all) or more, got {args.calib_count}")
    if not 0.0 < args.false_alarm_rate < 0.5:
        raise ExportError(
            f"--false-alarm-rate must be between 0 and 0.5 (e.g. 0.01), got {args.false_alarm_rate}"
        )
    if args.sign_key is not None:
        load_private_key(args.sign_key)  # a bad key fails now, not after a long export


def export_command(args: argparse.Namespace) -> int:
    """An export (workstation): the pipeline, then the engine where TensorRT is importable."""
    check_args(args)
    from export.pipeline import INPUT_ERRORS, ExportOptions, export_bundle  # torch, onnx, training

    opts = ExportOptions(
        checkpoint=args.source,
        out=args.out,
        fp16=args.fp16,
        int8=args.int8,
        calib=args.calib,
        calib_count=args.calib_count or None,
        calib_method=args.calib_method,
        opset=args.opset,
        max_batch=args.max_batch or DEFAULT_MAX_BATCH,
        build_engine=args.build_engine,
        gate=not args.no_gate,
        data=args.data,
        name=args.name,
        false_alarm_rate=args.false_alarm_rate,
        sign_key=args.sign_key,
    )
    try:
        export_bundle(opts)
    except INPUT_ERRORS as exc:
        say(f"error: {exc}")
        return EXIT_INPUT
    return engines_after_export(opts.out, opts.engine_precisions, opts.max_batch)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.out is None:
            if args.sign_key is not None and not args.build_engine:
                return sign_command(args.source, args.sign_key)
            if not args.build_engine:
                parser.error(
                    "--out BUNDLE is required to export (or use --build-engine BUNDLE on the device, "
                    "or --sign-key KEY BUNDLE to sign a bundle)"
                )
            return build_engines_command(args.source, args.max_batch, args.engine_cache_dir)
        return export_command(args)
    except GateFailed as exc:
        say(f"error: {exc}")
        return EXIT_GATE
    except LIGHT_ERRORS as exc:
        say(f"error: {exc}")
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
