"""The run's inputs: options checked and turned into the context every scenario reads (manifest,
precisions, batches, backend options, durations, evidence settings), and the report's fixed sections
(settings, bundle, torch reference). An unusable input raises :class:`InputError` (``edge-bench`` exits 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_DURATION_S = {"soak": 600.0, "pipeline": 30.0}  # other scenarios: 10 s
EXPORT_TIME_KEYS = ("export_time_s", "export_seconds", "export_duration_s", "duration_s")


class InputError(ValueError):
    """An option or input the benchmark cannot use; the message says what to change."""


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
